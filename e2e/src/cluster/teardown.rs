//! Leaving nothing behind: one shell script per cluster, written before anything is started, that removes
//! every trace of it, run by [`Teardown`]'s drop and, when this process dies without unwinding (a panic with
//! abort, SIGKILL, Ctrl-C of `cargo test`), by a reaper `sh` in its own process group that waits for this
//! process's end on a pipe.
//!
//! The script is idempotent and knows the cluster only by names: it kills every process in a node's mount
//! namespace (containerd, its shims, the kubelet, kube-proxy) and in a node's cgroup root (the containers),
//! releases the mount namespaces (with them every container rootfs and pod netns mount), deletes the network
//! namespaces (with them every link of the nodes and pods), removes the cgroups, the directories the cluster
//! made, and the mount points it had to create on the machine.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// What a cluster's teardown removes.
#[derive(Debug, Default, Clone)]
pub struct TeardownPlan {
    /// Files that keep node mount namespaces.
    pub mount_ns_files: Vec<PathBuf>,
    /// Directory of the mount namespace files (a private bind mount of itself).
    pub run_dir: PathBuf,
    /// Names of network namespaces (`ip netns`).
    pub netns: Vec<String>,
    /// The host's veth on the segment.
    pub host_link: String,
    /// cgroup roots of the nodes, relative to each hierarchy.
    pub cgroup_roots: Vec<String>,
    /// Directories removed with everything in them.
    pub dirs: Vec<PathBuf>,
    /// Mount points this cluster created on the machine, removed when empty (in reverse order), and only when no
    /// other cluster runs: removing a directory detaches the mounts on it in every other mount namespace.
    pub created_mount_points: Vec<PathBuf>,
    /// This cluster's slot lock file; every other `slot-*.lock` beside it that is held is another live cluster.
    pub own_slot_lock: PathBuf,
}

impl TeardownPlan {
    pub fn script(&self) -> String {
        let words = |v: &[String]| v.join(" ");
        let paths = |v: &[PathBuf]| {
            v.iter()
                .map(|p| format!("'{}'", p.display()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut created = self.created_mount_points.clone();
        created.reverse();
        format!(
            r#"#!/bin/sh
# Teardown of a macvtap-e2e cluster (generated). Idempotent.
NS_FILES="{ns_files}"
CGROUP_ROOTS="{cgroups}"
ns_ids=
for f in $NS_FILES; do
  i=$(stat -L -c %i "$f" 2>/dev/null) && [ "$(stat -f -c %T "$f" 2>/dev/null)" = nsfs ] && ns_ids="$ns_ids $i"
done
round=0
while [ $round -lt 50 ]; do
  pids=
  # One find per namespace reads every process's link (a readlink per process would fork hundreds of times a round).
  for id in $ns_ids; do
    pids="$pids $(find /proc/[0-9]*/ns/mnt -maxdepth 0 -lname "mnt:\[$id\]" 2>/dev/null | cut -d/ -f3 | tr '\n' ' ')"
  done
  for r in $CGROUP_ROOTS; do
    for h in /sys/fs/cgroup/*/; do
      [ -d "$h$r" ] && pids="$pids $(find "$h$r" -name cgroup.procs -exec cat {{}} + 2>/dev/null | tr '\n' ' ')"
    done
  done
  pids=$(echo $pids)
  [ -z "$pids" ] && break
  kill -9 $pids 2>/dev/null
  round=$((round + 1)); sleep 0.1
done
for f in $NS_FILES; do umount -l "$f" 2>/dev/null; rm -f "$f"; done
umount -l '{run_dir}' 2>/dev/null; rm -rf '{run_dir}'
# The host's veth first: once the namespaces are deleted, the kernel's clean-up of them holds RTNL for many seconds,
# and `ip link del` would wait for all of it (the veth goes with its peer's namespace anyway).
ip link del '{host_link}' 2>/dev/null
for n in {netns}; do ip netns del "$n" 2>/dev/null; done
round=0
while [ $round -lt 50 ]; do
  left=
  for r in $CGROUP_ROOTS; do
    for h in /sys/fs/cgroup/*/; do
      [ -d "$h$r" ] || continue
      find "$h$r" -depth -type d -exec rmdir {{}} + 2>/dev/null
      [ -d "$h$r" ] && left=1
    done
  done
  [ -z "$left" ] && break
  round=$((round + 1)); sleep 0.1
done
for d in {dirs}; do rm -rf "$d"; done
others=
for f in "$(dirname '{own_lock}')"/slot-*.lock; do
  [ "$f" = '{own_lock}' ] && continue
  [ -e "$f" ] && ! flock -n "$f" true 2>/dev/null && others=1
done
if [ -z "$others" ]; then
  for d in {created}; do rmdir "$d" 2>/dev/null; done
fi
rm -f "$0"
exit 0
"#,
            ns_files = paths(&self.mount_ns_files).replace('\'', ""),
            cgroups = words(&self.cgroup_roots),
            run_dir = self.run_dir.display(),
            netns = words(&self.netns),
            host_link = self.host_link,
            dirs = paths(&self.dirs),
            created = paths(&created),
            own_lock = self.own_slot_lock.display(),
        )
    }
}

/// The armed teardown of a cluster: the script on disk and its reaper.
#[derive(Debug)]
pub struct Teardown {
    script: PathBuf,
    reaper: Option<(Child, ChildStdin)>,
}

impl Teardown {
    /// Writes the script to `path` and arms the reaper.
    pub fn arm(plan: &TeardownPlan, path: &Path) -> std::io::Result<Teardown> {
        std::fs::write(path, plan.script())?;
        let mut child = Command::new("sh")
            .arg("-c")
            // Ctrl-C and hang-ups reach the whole process group: the reaper has its own and ignores them.
            .arg("trap '' INT HUP TERM PIPE; cat >/dev/null; exec sh \"$0\"")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        Ok(Teardown {
            script: path.to_path_buf(),
            reaper: Some((child, stdin)),
        })
    }

    /// Rewrites the script (the plan grew, e.g. another node).
    pub fn update(&self, plan: &TeardownPlan) -> std::io::Result<()> {
        let tmp = self.script.with_extension("tmp");
        std::fs::write(&tmp, plan.script())?;
        std::fs::rename(tmp, &self.script)
    }

    /// Runs the script now and waits for it.
    pub fn run(&mut self) {
        let script = std::fs::read(&self.script).unwrap_or_default();
        if let Some((mut child, stdin)) = self.reaper.take() {
            // Closing the pipe makes the reaper run the script; wait for it.
            drop(stdin);
            let _ = child.wait();
        } else if !script.is_empty() {
            let _ = Command::new("sh").arg(&self.script).status();
        }
        // The script removes itself with the cluster dir when it lives there; write nothing after it ran.
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_valid_shell_and_names_everything() {
        let plan = TeardownPlan {
            mount_ns_files: vec!["/run/x/a.mnt".into()],
            run_dir: "/run/x".into(),
            netns: vec!["mvt-a-1".into(), "mvt-switch-1".into()],
            host_link: "mvte2e0".into(),
            cgroup_roots: vec!["macvtap-e2e-1-a".into()],
            dirs: vec!["/tmp/c".into()],
            created_mount_points: vec!["/opt/cni".into(), "/opt/cni/bin".into()],
            own_slot_lock: "/run/x/slot-0.lock".into(),
        };
        let s = plan.script();
        for needle in [
            "mvt-a-1",
            "mvt-switch-1",
            "mvte2e0",
            "macvtap-e2e-1-a",
            "/tmp/c",
            "rm -rf \"$d\"; done",
        ] {
            assert!(s.contains(needle), "{needle} missing");
        }
        // Created mount points go innermost first.
        assert!(s.find("/opt/cni/bin").unwrap() < s.rfind("'/opt/cni'").unwrap());
        let out = Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn teardown_runs_once_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let plan = TeardownPlan {
            run_dir: dir.path().join("run"),
            host_link: "mvte2e-none".into(),
            dirs: vec![victim.clone()],
            ..Default::default()
        };
        let t = Teardown::arm(&plan, &dir.path().join("teardown.sh")).unwrap();
        assert!(victim.exists());
        drop(t);
        assert!(!victim.exists());
    }
}
