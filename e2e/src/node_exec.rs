//! Running a program "on a node": inside the node's network namespace, in a private mount namespace where the
//! node's own kubelet directories are bind-mounted at the paths real components hard-code
//! (`/var/lib/kubelet/pod-resources`, which Multus reads the allocated device IDs from).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

/// Where the kubelet serves PodResources; Multus has it compiled in.
pub const POD_RESOURCES_DIR: &str = "/var/lib/kubelet/pod-resources";
/// Where the kubelet keeps device plugin sockets and its device manager checkpoint.
pub const DEVICE_PLUGINS_DIR: &str = "/var/lib/kubelet/device-plugins";

/// How to enter a node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub netns_path: PathBuf,
    /// Bind mounts `(source on the host, target)` made in the child's private mount namespace.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl NodeContext {
    /// Runs `program` with `env` and `stdin` inside the node; returns its output whatever the exit status.
    pub fn run(&self, program: &Path, env: &[(&str, String)], stdin: &[u8]) -> io::Result<Output> {
        for (_, target) in &self.binds {
            std::fs::create_dir_all(target)?;
        }
        let ns = File::open(&self.netns_path)?;
        let ns_fd = ns.as_raw_fd();
        // Converted before the fork: nothing may allocate between fork and exec.
        let binds: Vec<(CString, CString)> = self
            .binds
            .iter()
            .map(|(s, d)| {
                Ok((
                    CString::new(s.as_os_str().as_bytes())?,
                    CString::new(d.as_os_str().as_bytes())?,
                ))
            })
            .collect::<Result<_, std::ffi::NulError>>()
            .map_err(io::Error::other)?;
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec only async-signal-safe calls: setns, unshare and mount are syscalls;
        // the paths were allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(ns_fd);
                setns(fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                if !binds.is_empty() {
                    unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
                    mount(
                        None::<&CStr>,
                        c"/",
                        None::<&CStr>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&CStr>,
                    )
                    .map_err(io::Error::from)?;
                    for (src, dst) in &binds {
                        mount(
                            Some(src.as_c_str()),
                            dst.as_c_str(),
                            None::<&CStr>,
                            MsFlags::MS_BIND,
                            None::<&CStr>,
                        )
                        .map_err(io::Error::from)?;
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // The child has its own copy of the descriptor; ours closes when `ns` drops.
        drop(ns);
        child.stdin.take().expect("piped stdin").write_all(stdin)?;
        child.wait_with_output()
    }
}
