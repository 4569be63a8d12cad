//! A node's reboot, as far as one machine allows: everything a power cycle ends or empties goes, what a host keeps on
//! disk stays.
//!
//! Gone: the kubelet, kube-proxy, containerd, every shim and container (SIGKILL: no clean shutdown), every mount made
//! at run time (container root filesystems, pod netns files, the kubelet's tmpfs volumes), the contents of what lives
//! under `/run` on a real host (containerd's state, NRI, `/run/netns`, `/run/openvswitch`), the pods' cgroups, every
//! link made at run time in the node's network namespace (the pods' network namespaces go with their last process and
//! mount, the macvtaps in them with them; the device-plugin-only pods' host macvtaps, the CNI bridge and veths are
//! deleted), and the firewall rules. Kept: `/var/lib` (the kubelet's pod directories and device checkpoint, containerd's
//! images and metadata, the agent's allocation records and tap-index reservations), `/etc`, the node's NICs.
//!
//! Not a reboot: the kernel stays, so a network namespace's ifindex counter is not reset and `/dev/tapN` names stay
//! taken by other nodes' links (the agents' shared reservations keep those apart, as on one kernel they must).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{NODE_MOUNTS, Node, cgroup_hierarchies};
use crate::cluster::Cluster;
use crate::cluster::network::LOWER_DEVICES;

/// Directories of the node's own under which a real host has tmpfs (`/run`): emptied.
const RUN_DIRS: [&str; 5] = [
    "run-containerd",
    "run-nri",
    "netns",
    "openvswitch",
    "run-ovn",
];

impl Node {
    /// Powers the node off: see the module doc. Start it again with `start_containerd`, `start_kubelet` and
    /// `start_kube_proxy`.
    pub fn power_off(&mut self) -> Result<Duration> {
        let taps = self.recorded_taps()?;
        for p in [
            &mut self.kubelet,
            &mut self.kube_proxy,
            &mut self.containerd,
        ] {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        self.kill_everything()?;
        self.unmount_runtime_mounts()?;
        for sub in RUN_DIRS {
            let dir = self.dir.join(sub);
            for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
                let path = entry?.path();
                let removed = if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.with_context(|| format!("removing {}", path.display()))?;
            }
        }
        self.remove_pod_cgroups()?;
        self.remove_runtime_links()?;
        let out = self.netns.exec("nft", &["flush", "ruleset"])?;
        ensure!(
            out.status.success(),
            "nft flush ruleset on {}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The kernel destroys a network namespace (and the macvtaps in it) in the background once its last process and
        // mount are gone, slowly while other namespaces are being destroyed: until then the pods' `/dev/tapN` still
        // exist, which after a real reboot they never do.
        let t = Instant::now();
        loop {
            let left: Vec<&u32> = taps
                .iter()
                .filter(|i| Path::new(&format!("/dev/tap{i}")).exists())
                .collect();
            if left.is_empty() {
                return Ok(t.elapsed());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(180),
                "the kernel did not remove the taps of {}'s pods within 180 s: {left:?}",
                self.name()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tap indices of the node's allocation records (every device its pods hold).
    fn recorded_taps(&self) -> Result<Vec<u32>> {
        let dir = self.dir.join("macvtap-state/nodes").join(self.name());
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(r) = macvtap_core::AllocationRecord::read(&dir, id)?
            {
                out.push(r.tap_index);
            }
        }
        Ok(out)
    }

    /// SIGKILL to every process of the node (its mount namespace) and of its pods (its cgroup root) until none is left.
    fn kill_everything(&self) -> Result<()> {
        let ns = std::fs::metadata(&self.mount_ns)?.ino();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut pids = std::collections::BTreeSet::new();
            for entry in std::fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if std::fs::read_link(entry.path().join("ns/mnt"))
                    .is_ok_and(|l| l.to_string_lossy() == format!("mnt:[{ns}]"))
                {
                    pids.insert(pid);
                }
            }
            for h in cgroup_hierarchies() {
                let root = h.join(&self.spec.cgroup_root);
                for procs in walkdir(&root).into_iter().map(|d| d.join("cgroup.procs")) {
                    let text = std::fs::read_to_string(procs).unwrap_or_default();
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
            if pids.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "processes of {} still alive after 10 s of SIGKILL: {pids:?}",
                self.name()
            );
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every mount inside the node's own paths (not the node's binds themselves), innermost first.
    fn unmount_runtime_mounts(&self) -> Result<()> {
        let mountinfo = String::from_utf8(
            std::process::Command::new("nsenter")
                .arg(format!("--mount={}", self.mount_ns.display()))
                .args(["cat", "/proc/self/mountinfo"])
                .output()?
                .stdout,
        )?;
        let taps = self.spec.tap_reservations.display().to_string();
        let roots: Vec<&str> = NODE_MOUNTS
            .iter()
            .map(|(_, target)| *target)
            .chain(["/var/lib/macvtap-operator/taps", taps.as_str()])
            .collect();
        let mut runtime: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| {
                !roots.contains(m)
                    && roots
                        .iter()
                        .any(|r| m.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
            })
            .collect();
        runtime.sort_by_key(|m| std::cmp::Reverse(m.len()));
        runtime.dedup();
        if runtime.is_empty() {
            return Ok(());
        }
        // mountinfo escapes blanks as octal; `printf %b` turns them back. A mount the node's binds hide (the machine's
        // own, under a path the node binds over) cannot be named from inside and is left alone.
        let script: String = runtime
            .iter()
            .map(|m| format!("umount -l \"$(printf '%b' '{m}')\" 2>/dev/null\n"))
            .chain(["true\n".to_string()])
            .collect();
        let out = std::process::Command::new("nsenter")
            .arg(format!("--mount={}", self.mount_ns.display()))
            .args(["sh", "-c", &script])
            .output()?;
        if !out.status.success() {
            bail!(
                "unmounting on {}: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The pods' cgroups under the node's root (the root itself is the machine's: it stays).
    fn remove_pod_cgroups(&self) -> Result<()> {
        for h in cgroup_hierarchies() {
            let root = h.join(&self.spec.cgroup_root);
            let mut dirs = walkdir(&root);
            dirs.retain(|d| d != &root);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                // A cgroup whose last task just died can be busy for a moment.
                let deadline = Instant::now() + Duration::from_secs(5);
                while let Err(e) = std::fs::remove_dir(&d) {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "removing cgroup {}: {e}",
                        d.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    /// Every link made at run time: all but loopback, the node's NICs and the links that set its ifindex range.
    fn remove_runtime_links(&self) -> Result<()> {
        for name in self.netns.link_names()? {
            if name == "lo" || LOWER_DEVICES.contains(&name.as_str()) || name.starts_with("ifbump")
            {
                continue;
            }
            // A veth goes with its peer; a link gone already is what we wanted.
            if let Err(e) = self.netns.ip(&["link", "del", &name])
                && self.netns.link_json(&name)?.is_some()
            {
                bail!("deleting {name} on {}: {e}", self.name());
            }
        }
        Ok(())
    }
}

impl Cluster {
    /// Reboots a node (see the module doc): powered off, then containerd, the kube-ovn daemon, the kubelet and
    /// kube-proxy started again, as a host's boot would.
    pub fn reboot_node(&mut self, name: &str, off_for: Duration) -> Result<Reboot> {
        let n = self
            .nodes
            .iter()
            .position(|n| n.name() == name)
            .with_context(|| format!("no node {name}"))?;
        let kernel_cleanup = self.nodes[n].power_off()?;
        std::thread::sleep(off_for);
        let node = &mut self.nodes[n];
        node.start_containerd()?;
        self.restart_kube_ovn_on(n)?;
        let node = &mut self.nodes[n];
        let kubeconfig = node.dir.join("kubelet.kubeconfig");
        let started = Instant::now();
        node.start_kubelet(&kubeconfig, self.control_plane.ca_path())?;
        node.start_kube_proxy(&self.node_admin_kubeconfig)?;
        Ok(Reboot {
            kernel_cleanup,
            kubelet_started: started,
        })
    }
}

/// What a reboot took.
#[derive(Debug, Clone, Copy)]
pub struct Reboot {
    /// Power off → the kernel had destroyed the pods' network namespaces and taps.
    pub kernel_cleanup: Duration,
    pub kubelet_started: Instant,
}

/// `dir` and every directory below it (empty when it does not exist).
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        out.push(d);
        todo.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    out
}
