//! Shared fixture for the CNI tests: a "node" netns with a veth lower device (`lower0`, MTU 1500) where the agent's
//! host links are created with macvtap-link (as the agent would), a "pod" netns, and a runner that executes the
//! built `macvtap` binary inside the node netns exactly as a runtime would (env + stdin, stdout + exit code).
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use macvtap_e2e::netns::Netns;
use macvtap_link::{LinkInfo, MacvtapMode, Netlink, block_on, in_netns};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_macvtap");
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const SYSTEM_CNI: &str = "/usr/lib/cni";

pub struct Fixture {
    pub node: Netns,
    pub pod: Netns,
}

impl Fixture {
    pub fn new() -> Self {
        let node = Netns::new("cni-node").expect("node netns");
        node.add_veth("lower0", "peer0").expect("veth lower device");
        let pod = Netns::new("cni-pod").expect("pod netns");
        Self { node, pod }
    }

    /// What the agent does on Allocate.
    pub fn alloc(&self, device_id: &str) -> LinkInfo {
        nl(&self.node, |n| async move {
            n.create_macvtap("lower0", device_id, MacvtapMode::Bridge)
                .await
                .unwrap()
        })
    }

    pub fn node_link(&self, name: &str) -> Option<LinkInfo> {
        nl(
            &self.node,
            |n| async move { n.find_link(name).await.unwrap() },
        )
    }

    pub fn pod_link(&self, name: &str) -> Option<LinkInfo> {
        nl(
            &self.pod,
            |n| async move { n.find_link(name).await.unwrap() },
        )
    }

    /// A runtime-like invocation with the usual env for this fixture.
    pub fn call(&self, command: &str, ifname: &str) -> Call {
        Call::new(&self.node, command)
            .env("CNI_CONTAINERID", "ctr1")
            .env("CNI_NETNS", self.pod.path().to_str().unwrap())
            .env("CNI_IFNAME", ifname)
    }
}

/// Netlink work inside `ns` on its own thread.
pub fn nl<T: Send, F: std::future::Future<Output = T>>(
    ns: &Netns,
    f: impl FnOnce(Netlink) -> F + Send,
) -> T {
    in_netns(ns.path(), || {
        block_on(async { f(Netlink::new().unwrap()).await }).unwrap()
    })
    .unwrap()
}

/// The macvtap config of the original README plus `extra` keys.
pub fn conf(version: &str, device_id: &str, extra: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "dataplane", "type": "macvtap", "deviceID": device_id});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    c
}

pub struct Call {
    node: std::path::PathBuf,
    env: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    /// Succeeded, with the parsed result (or Null for empty output).
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
    /// Failed with CNI error `code`; returns the message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "expected failure with code {code}: {self:?}");
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong code: {self:?}");
        assert!(
            v.get("cniVersion").is_some() && v.get("details").is_some(),
            "spec error shape: {v}"
        );
        v["msg"].as_str().unwrap().to_string()
    }
}

impl Call {
    pub fn new(node: &Netns, command: &str) -> Self {
        Call {
            node: node.path().to_path_buf(),
            env: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_PATH".into(), SYSTEM_CNI.into()),
            ],
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(n, _)| n != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn without(mut self, k: &str) -> Self {
        self.env.retain(|(n, _)| n != k);
        self
    }

    pub fn run(&self, stdin: &Value) -> Reply {
        self.run_raw(stdin.to_string().as_bytes())
    }

    /// Run the binary inside the node netns (entered between fork and exec).
    pub fn run_raw(&self, stdin: &[u8]) -> Reply {
        let ns = File::open(&self.node).unwrap();
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(ns);
        Reply {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Add `prevResult` to a config (for CHECK and DEL).
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
