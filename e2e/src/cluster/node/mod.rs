//! A node of the test cluster: what one host of a user's cluster is, made of namespaces on this machine.
//!
//! - **network**: a network namespace (its "host network") with `eth0` (node IP, lower device) and `p4p1` on the
//!   cluster's segments (see [`super::network`]);
//! - **files**: a private mount namespace, kept in a file so every process of the node can enter it, in which the
//!   paths the kubelet, containerd, the CNI plugins and the device plugin API fix (`/var/lib/kubelet`,
//!   `/run/containerd`, `/etc/cni/net.d`, `/opt/cni/bin`, ...) are bind mounts of the node's own directories.
//!   Container rootfs and pod netns mounts live and die in it;
//! - **cgroups**: a root of its own (`cgroupRoot` of the kubelet) in every hierarchy;
//! - **programs**: containerd 2.x (built from the Go module proxy, with Debian's runc), the kubelet and kube-proxy (nftables mode), each entered into
//!   both namespaces with `nsenter`. Everything else on the node (our agent, Multus's NADs, pods) comes through
//!   the API server, as on a real node. Multus (the thin plugin) is installed the way its install step would:
//!   binary into `/opt/cni/bin`, `00-multus.conf` first in `/etc/cni/net.d`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

mod files;
mod reboot;

pub use files::cgroup_hierarchies;
pub use reboot::Reboot;

use super::network::ifindex_base;
use crate::netns::Netns;
use crate::process::Process;
use crate::tools;
use crate::wait::{LOCAL_INTERVAL, poll_blocking};

/// Paths every node has privately: (name of the node's directory, path inside the node).
pub const NODE_MOUNTS: [(&str, &str); 17] = [
    ("kubelet", "/var/lib/kubelet"),
    // The agent's state directory (the chart's default `agent.stateDir`); its `taps/` is bound over by
    // [`NodeSpec::tap_reservations`].
    ("macvtap-state", "/var/lib/macvtap-operator"),
    ("containerd", "/var/lib/containerd"),
    ("run-containerd", "/run/containerd"),
    // containerd 2.x's NRI socket (`/var/run/nri/nri.sock`, a fixed path).
    ("run-nri", "/run/nri"),
    ("cni-conf", "/etc/cni/net.d"),
    ("cni-bin", "/opt/cni/bin"),
    ("cni-state", "/var/lib/cni"),
    ("pod-logs", "/var/log/pods"),
    ("container-logs", "/var/log/containers"),
    ("netns", "/run/netns"),
    // kube-ovn's node programs (crate::kube_ovn::node_side): the daemon's socket and Open vSwitch's run dir, OVN's,
    // Open vSwitch's database and the chassis name, and the daemon's log dir (it refuses to start without it).
    ("openvswitch", "/run/openvswitch"),
    ("run-ovn", "/run/ovn"),
    ("etc-openvswitch", "/etc/openvswitch"),
    ("log-kube-ovn", "/var/log/kube-ovn"),
    ("log-openvswitch", "/var/log/openvswitch"),
    ("etc-kubernetes", "/etc/kubernetes"),
];

/// The CNI network every pod gets first (Multus' `clusterNetwork`): a bridge with the node's pod network.
pub const CLUSTER_NETWORK_NAME: &str = "cluster";

/// Everything a node needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Position in the cluster (address and ifindex ranges).
    pub index: usize,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub pod_cidr: String,
    pub cluster_cidr: String,
    /// containerd's registry `config_path`: a `hosts.toml` per mirrored registry naming the cluster's registry
    /// as its only server (see `crate::registry`), so no pull ever leaves the machine.
    pub registry_hosts_dir: PathBuf,
    /// The CRI sandbox image.
    pub pause_image: String,
    /// cgroup root of this node's pods, relative to every hierarchy (the kubelet gets it with a leading `/`).
    pub cgroup_root: String,
    /// The tap-index reservations every node of the cluster shares (bound over its
    /// `/var/lib/macvtap-operator/taps`): `/dev/tapN` is one name per kernel, and all the cluster's nodes share this
    /// kernel. One directory per cluster, not per machine: the agents know a reservation's owner by node name and
    /// device ID, which another cluster's nodes repeat (its agents would release ours as superseded); the agents'
    /// check of the kernel's taps at every assignment keeps clusters' indices apart.
    pub tap_reservations: PathBuf,
}

/// A running node. Dropping it stops its programs; the cluster's teardown script removes the rest.
pub struct Node {
    pub spec: NodeSpec,
    pub netns: Netns,
    /// The node's own directory (what [`NODE_MOUNTS`] bind).
    pub dir: PathBuf,
    /// The file that keeps the node's mount namespace.
    pub mount_ns: PathBuf,
    containerd: Option<Process>,
    kubelet: Option<Process>,
    kube_proxy: Option<Process>,
}

impl Node {
    /// Creates the node's namespaces and directories and writes its configuration; starts nothing yet.
    pub fn create(spec: NodeSpec, netns: Netns, dir: PathBuf, mount_ns: PathBuf) -> Result<Node> {
        for (sub, _) in NODE_MOUNTS {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::File::create(&mount_ns)
            .with_context(|| format!("creating {}", mount_ns.display()))?;
        // `unshare --mount=<file>` keeps the namespace alive in the file after the setup shell exits.
        let mut script = String::from("set -e\n");
        for (sub, target) in NODE_MOUNTS {
            script.push_str(&format!(
                "mount --bind '{}' '{target}'\n",
                dir.join(sub).display()
            ));
        }
        script.push_str(&format!(
            "mkdir -p '{taps}' /var/lib/macvtap-operator/taps\n\
             mount --bind '{taps}' /var/lib/macvtap-operator/taps\n",
            taps = spec.tap_reservations.display()
        ));
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg("unshare")
            .arg(format!("--mount={}", mount_ns.display()))
            .args(["--propagation", "private", "sh", "-c", &script])
            .output()
            .context("nsenter/unshare (util-linux)")?;
        if !out.status.success() {
            bail!(
                "setting up the mount namespace of {}: {}",
                spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        files::create_cgroup_root(&spec.cgroup_root)?;
        let node = Node {
            spec,
            netns,
            dir,
            mount_ns,
            containerd: None,
            kubelet: None,
            kube_proxy: None,
        };
        node.write_containerd_config()?;
        node.install_cni()?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A command run on the node: inside its network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.mount_ns.display()))
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs a command on the node and returns its stdout; an error with its stderr when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} on {}", self.name()))?;
        if !out.status.success() {
            bail!(
                "{program} {} on {}: {}{}",
                args.join(" "),
                self.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts containerd 2.x (built by `e2e/tools/build-tools.sh`). Its runc shim is found on `PATH`, so the tools'
    /// directory comes first there: a shim of another containerd on the machine must never serve this one.
    pub fn start_containerd(&mut self) -> Result<()> {
        let containerd = tools::tool("containerd").map_err(anyhow::Error::msg)?;
        let mut cmd = self.command(&containerd);
        cmd.arg("--config")
            .arg(self.dir.join("containerd.toml"))
            .env("PATH", tools::path_with_tools_first());
        self.containerd = Some(Process::spawn(
            &format!("containerd-{}", self.name()),
            cmd,
            &self.log("containerd"),
        )?);
        let sock = self.dir.join("run-containerd/containerd.sock");
        let up = poll_blocking(Duration::from_secs(30), LOCAL_INTERVAL, || {
            sock.exists().then_some(()).ok_or(())
        });
        up.map_err(|()| {
            anyhow!(
                "containerd of {} did not start within 30s: {}",
                self.name(),
                self.containerd_log_tail()
            )
        })
    }

    fn containerd_log_tail(&self) -> String {
        self.containerd
            .as_ref()
            .map(|p| p.log_tail(20))
            .unwrap_or_default()
    }

    /// Starts (or restarts) the kubelet.
    pub fn start_kubelet(&mut self, kubeconfig: &Path, client_ca: &Path) -> Result<()> {
        self.stop_kubelet();
        let config = self.dir.join("kubelet.yaml");
        std::fs::write(&config, self.kubelet_config(client_ca))?;
        let mut cmd = self.command(tools::tool("kubelet").map_err(anyhow::Error::msg)?);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.name()))
            .arg(format!("--node-ip={}", self.spec.ip))
            .arg("--v=1");
        self.kubelet = Some(Process::spawn(
            &format!("kubelet-{}", self.name()),
            cmd,
            &self.log("kubelet"),
        )?);
        Ok(())
    }

    /// Kills the kubelet (SIGKILL), as a crash would: its pods keep running, its socket files stay.
    pub fn kill_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.kill();
        }
    }

    /// Stops the kubelet (SIGTERM), leaving its pods running, as `systemctl stop kubelet` would.
    pub fn stop_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(20));
        }
    }

    pub fn start_kube_proxy(&mut self, kubeconfig: &Path) -> Result<()> {
        let mut cmd = self.command(tools::tool("kube-proxy").map_err(anyhow::Error::msg)?);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.name()))
            .arg("--proxy-mode=nftables")
            .arg(format!("--cluster-cidr={}", self.spec.cluster_cidr))
            // Leave the machine's conntrack sysctls alone.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0")
            .arg("--metrics-bind-address=127.0.0.1:10249")
            .arg("--healthz-bind-address=127.0.0.1:10256")
            .arg("--v=1");
        self.kube_proxy = Some(Process::spawn(
            &format!("kube-proxy-{}", self.name()),
            cmd,
            &self.log("kube-proxy"),
        )?);
        Ok(())
    }

    /// The kubelet's log, last `lines` lines.
    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        self.kubelet
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// The ifindex range of this node's links (see [`super::network`]).
    pub fn ifindex_base(&self) -> u32 {
        ifindex_base(self.spec.index)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it does not restart what containerd stops.
        for p in [
            &mut self.kubelet,
            &mut self.kube_proxy,
            &mut self.containerd,
        ] {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(5));
            }
        }
    }
}
