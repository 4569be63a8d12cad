//! A test node: a network namespace with a veth lower device, a kubelet stand-in on a temp directory, and the
//! built `macvtap-agent` binary running inside the namespace (as the DaemonSet runs it on a node).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use macvtap_e2e::kubelet::KubeletStandIn;
use macvtap_e2e::netns::Netns;
use macvtap_e2e::process::Process;

pub const GROUP_PREFIX: &str = "macvtap.network.kubevirt.io/";
pub const HEALTH_PORT: u16 = 9808;

pub fn resource(name: &str) -> String {
    format!("{GROUP_PREFIX}{name}")
}

/// Skips (returns true) when not root, with the reason printed.
pub fn skip_unless_root() -> bool {
    if !macvtap_e2e::netns::can_create_netns() {
        eprintln!("SKIPPED: needs root to create network namespaces");
        return true;
    }
    false
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
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.name()])
            .arg(env!("CARGO_BIN_EXE_macvtap-agent"))
            .arg("--node-name")
            .arg("test-node")
            .arg("--device-plugin-dir")
            .arg(self.device_plugin_dir())
            .arg("--pod-resources-socket")
            .arg(self.kubelet.pod_resources_socket())
            .args(["--health-addr", &format!("127.0.0.1:{HEALTH_PORT}")])
            .args(["--cleanup-interval-secs", "1", "--cleanup-grace-secs", "2"])
            .args(extra)
            .env("RUST_LOG", "info,macvtap_agent=debug")
            .env_remove(macvtap_api::legacy::ENV_VAR);
        cmd
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

    pub fn ip(&self, args: &[&str]) {
        self.netns.ip(args).unwrap();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

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
