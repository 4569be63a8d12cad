//! A test node: a network namespace with a veth lower device, a kubelet stand-in on a temp directory, and the
//! built `macvtap-agent` binary running inside the namespace (as the DaemonSet runs it on a node).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use macvtap_e2e::agent::agent_command;
use macvtap_e2e::kubelet::KubeletStandIn;
use macvtap_e2e::netns::Netns;
use macvtap_e2e::process::Process;

pub const GROUP_PREFIX: &str = "macvtap.network.kubevirt.io/";
pub const HEALTH_PORT: u16 = 9808;

pub fn resource(name: &str) -> String {
    format!("{GROUP_PREFIX}{name}")
}

/// Fails the test at once when not root: these tests need network namespaces and never pass by skipping.
pub fn require_root() {
    assert!(
        macvtap_e2e::netns::can_create_netns(),
        "this test needs root (network namespaces, macvtap links); run the agent tests as root"
    );
}

/// The agent, run in this process on a runtime whose threads live in a node's network namespace (for tests that
/// need its library hooks). Stopped (cancelled and joined) on drop.
pub struct InProcessAgent {
    cancel: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessAgent {
    pub fn start(netns: &Path, opts: macvtap_agent::agent::AgentOptions) -> InProcessAgent {
        use std::os::fd::AsFd;
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let ns = std::fs::File::open(netns).expect("opening the node's netns");
        let thread = std::thread::spawn(move || {
            // Threads inherit the namespace of the thread that spawns them: every runtime thread is in the node.
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(macvtap_agent::agent::run(opts, stop))
        });
        InProcessAgent {
            cancel,
            thread: Some(thread),
        }
    }

    /// Stops the agent; its result.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fields drop in order: the agent stops first, the namespace goes last.
pub struct Node {
    pub agent: Option<Process>,
    pub kubelet: KubeletStandIn,
    pub dir: tempfile::TempDir,
    pub netns: Netns,
}

impl Node {
    /// A namespace with veth `lower0` <-> `peer0` (both up) and a kubelet stand-in; no agent yet.
    pub async fn new(prefix: &str) -> Node {
        let netns = Netns::new(prefix).expect("netns");
        netns.add_veth("lower0", "peer0").expect("veth");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubelet = KubeletStandIn::start(
            &dir.path().join("device-plugins"),
            &dir.path().join("pod-resources").join("kubelet.sock"),
        )
        .await
        .expect("kubelet stand-in");
        Node {
            netns,
            dir,
            kubelet,
            agent: None,
        }
    }

    pub fn device_plugin_dir(&self) -> PathBuf {
        self.dir.path().join("device-plugins")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub fn write_config(&self, json: &str) {
        // Atomic replace, as a ConfigMap update does.
        let tmp = self.dir.path().join(".config.tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(&tmp, self.config_file()).unwrap();
    }

    /// The agent command line (in the netns), with fast cleanup timings for tests.
    pub fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.agent_command_without_node_name(extra);
        cmd.args(["--node-name", "test-node"]);
        cmd
    }

    /// [`Node::agent_command`] without `--node-name` (and without `NODE_NAME` in the environment).
    pub fn agent_command_without_node_name(&self, extra: &[&str]) -> Command {
        let mut cmd = agent_command(
            env!("CARGO_BIN_EXE_macvtap-agent"),
            &self.netns,
            &self.kubelet,
            &format!("127.0.0.1:{HEALTH_PORT}"),
        );
        cmd.args(extra).env("RUST_LOG", "info,macvtap_agent=debug");
        if !extra.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(self.state_dir());
        }
        // Fast cleanup unless the test sets its own timings.
        for (flag, value) in [
            ("--cleanup-interval-secs", "1"),
            ("--cleanup-grace-secs", "2"),
        ] {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd
    }

    /// Agent options for [`InProcessAgent`] with this node's directories and the same fast timings.
    pub fn agent_options(
        &self,
        source: macvtap_agent::config::ConfigSource,
    ) -> macvtap_agent::agent::AgentOptions {
        let mut opts = macvtap_agent::agent::AgentOptions::new("test-node", source);
        opts.device_plugin_dir = self.device_plugin_dir();
        opts.pod_resources_socket = self.kubelet.pod_resources_socket().to_path_buf();
        opts.health_addr = Some(([127, 0, 0, 1], HEALTH_PORT).into());
        opts.cleanup_interval = Duration::from_secs(1);
        opts.cleanup_grace = Duration::from_secs(2);
        opts.state.state_dir = self.state_dir();
        opts
    }

    /// The agent's state directory (allocation records, tap-index reservations).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The allocation record `Allocate` wrote for `device_id` (node `test-node`).
    pub fn record(&self, device_id: &str) -> Option<macvtap_core::AllocationRecord> {
        let dir = self.state_dir().join("nodes/test-node");
        macvtap_core::AllocationRecord::read(&dir, device_id).unwrap()
    }

    /// Starts the agent with `--config-file` (written first).
    pub fn start_agent_with_file(&mut self, json: &str, extra: &[&str]) {
        self.write_config(json);
        let mut args = vec!["--config-file", self.config_file().to_str().unwrap()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let cmd = self.agent_command(&args);
        self.spawn(cmd);
    }

    pub fn spawn(&mut self, cmd: Command) {
        let log = self.dir.path().join("agent.log");
        self.agent = Some(Process::spawn("agent", cmd, &log).expect("spawn agent"));
    }

    /// Waits until the kubelet stand-in lists `healthy` Healthy devices of `res`; panics with the agent's log
    /// otherwise. The devices.
    pub async fn wait_for_healthy(
        &self,
        res: &str,
        healthy: usize,
    ) -> Vec<macvtap_e2e::kubelet::Device> {
        self.kubelet
            .wait_for_resource(res, Duration::from_secs(10), |d| {
                macvtap_e2e::kubelet::healthy_count(d) == healthy
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// HTTP GET on the agent's health port inside the netns: (status, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        self.netns.run(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", HEALTH_PORT)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            let status = out.split_whitespace().nth(1)?.parse().ok()?;
            let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            Some((status, body))
        })
    }

    /// Value of a metric line `name{labels} value` (first match of `needle`), if exposed.
    pub fn metric(&self, needle: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// `ip -d -j link show` of a link in the node.
    pub fn link(&self, name: &str) -> Option<serde_json::Value> {
        self.netns.link_json(name).unwrap()
    }

    /// Whether the link `name` is gone within 15 s (a few of the tests' cleanup passes).
    pub async fn link_removed(&self, name: &str) -> bool {
        eventually(Duration::from_secs(15), || self.link(name).is_none()).await
    }

    pub fn ip(&self, args: &[&str]) {
        self.netns.ip(args).unwrap();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub use macvtap_e2e::wait::until_true as eventually;

pub fn ifindex_of(link: &serde_json::Value) -> u64 {
    link["ifindex"].as_u64().expect("ifindex")
}

pub fn sockets_in(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
