//! Network namespaces for tests: a [`Netns`] guard (unique name, `ip netns add`, deleted on drop, also while a
//! test panics), veth pairs between namespaces, and running closures or commands inside one.
//!
//! Uses the `ip` tool (iproute2) on purpose: it is what an operator would type, and it handles the bind mount under
//! `/var/run/netns` and its cleanup robustly. Needs root.
//!
//! ```no_run
//! use macvtap_e2e::netns::Netns;
//! let node = Netns::new("node").unwrap();
//! let pod = Netns::new("pod").unwrap();
//! node.add_veth("lower0", "peer0").unwrap(); // both ends in `node`
//! let idx = node.run(|| std::fs::read_to_string("/sys/class/net/lower0/ifindex").unwrap());
//! node.ip(&["link", "set", "lower0", "up"]).unwrap();
//! assert!(pod.path().exists());
//! ```

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Directory `ip netns` keeps its bind mounts in.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Create a namespace named `<prefix>-<pid>-<n>` (unique across parallel tests and processes) with `lo` up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let ns = Self {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`, what `CNI_NETNS` takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on a fresh thread that entered this namespace; the caller's thread is never moved.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file =
            File::open(&self.path).unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", self.path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip -n <name> <args>`; an error (with stderr) when it fails. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `ip netns exec <name> <program> <args>`: the raw output, whatever the exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
    }

    /// A veth pair with both ends in this namespace, both up. Typical use: `a` is a macvtap lower device.
    pub fn add_veth(&self, a: &str, b: &str) -> io::Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// A veth pair `a` (here) <-> `b` (in `peer`), both up.
    pub fn add_veth_to(&self, a: &str, peer: &Netns, b: &str) -> io::Result<()> {
        self.ip(&[
            "link", "add", a, "type", "veth", "peer", "name", b, "netns", &peer.name,
        ])?;
        self.ip(&["link", "set", a, "up"])?;
        peer.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// Names of the links in this namespace.
    pub fn link_names(&self) -> io::Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let name = l.split(':').nth(1)?.trim();
                Some(name.split('@').next().unwrap_or(name).to_string())
            })
            .collect())
    }

    /// `ip -j link show <name>` parsed, or `None` when there is no such link.
    pub fn link_json(&self, name: &str) -> io::Result<Option<serde_json::Value>> {
        match self.ip(&["-d", "-j", "link", "show", "dev", name]) {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
                Ok(v.as_array().and_then(|a| a.first().cloned()))
            }
            Err(_) if !self.link_names()?.iter().any(|n| n == name) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<addr>/<prefix>` strings on `name`, both families, no link-local IPv6.
    pub fn addresses(&self, name: &str) -> io::Result<Vec<String>> {
        let out = self.ip(&["-j", "addr", "show", "dev", name])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
        let mut addrs = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if a["scope"] == "link" && a["family"] == "inet6" {
                    continue;
                }
                if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                    addrs.push(format!("{ip}/{len}"));
                }
            }
        }
        Ok(addrs)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Links inside go with the namespace (a macvtap returns to nothing: it is destroyed with its netns).
        // A cluster's teardown script may have deleted it already: nothing left to do then.
        if !self.path.exists() {
            return;
        }
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("netns {}: cleanup failed: {e}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes `cmd` enter the network namespace `ns` between fork and exec, as a container runtime runs a CNI plugin.
/// The command owns `ns` from now on, so the namespace stays open until the spawn.
#[allow(unsafe_code)]
pub fn enter_before_exec(cmd: &mut Command, ns: File) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setns is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
}

/// Whether this process can create network namespaces (root with CAP_SYS_ADMIN); tests print a reason and skip
/// when not.
pub fn can_create_netns() -> bool {
    nix::unistd::geteuid().is_root()
}
