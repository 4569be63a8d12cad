//! Shared fixture for the CNI tests: a "node" netns with a veth lower device (`lower0`, MTU 1500) where the agent's
//! host links are created with macvtap-link (as the agent would), a "pod" netns, a kubelet PodResources stand-in
//! that knows which devices the fixture's pod holds, a node config file pointing the plugin at it, and a runner that
//! executes the built `macvtap` binary inside the node netns exactly as a runtime would (env + stdin, stdout + exit
//! code), as that Kubernetes pod.
#![allow(dead_code)]

pub mod hostile;
pub mod pod_resources;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use macvtap_e2e::netns::{Netns, enter_before_exec};
use macvtap_link::{LinkInfo, MacvtapMode, Netlink, block_on, in_netns};
use serde_json::{Value, json};

use pod_resources::PodResourcesStandIn;

pub const BIN: &str = env!("CARGO_BIN_EXE_macvtap");
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const SYSTEM_CNI: &str = "/usr/lib/cni";
/// The namespace of the fixture's pods, and the resource their devices come from.
pub const NAMESPACE: &str = "default";
pub const RESOURCE: &str = "macvtap.network.kubevirt.io/dataplane";
/// The variable naming the plugin's node config file.
pub const NODE_CONFIG_ENV: &str = "MACVTAP_CNI_NODE_CONFIG";

/// An ifindex no other process on this machine uses (the kernel's own picks stay far below): `/dev/tap<ifindex>`
/// is one node for the whole machine, so links whose tap the plugin must prove theirs get indices nobody else has.
pub fn unique_index() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    10_000_000 + (std::process::id() % 1_000_000) * 1000 + N.fetch_add(1, Ordering::Relaxed) % 1000
}

/// An index of the in-place tap range no other process on this machine uses.
pub fn unique_tap_index() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    macvtap_core::allocation::TAP_INDEX_FIRST
        + (std::process::id() % 16_000) * 1000
        + N.fetch_add(1, Ordering::Relaxed) % 1000
}

pub struct Fixture {
    pub node: Netns,
    pub pod: Netns,
    /// The fixture pod's name (namespace [`NAMESPACE`]).
    pub pod_name: String,
    pub kubelet: PodResourcesStandIn,
    /// The node config file the plugin reads (`MACVTAP_CNI_NODE_CONFIG`).
    pub node_config: PathBuf,
    /// This node's allocation records (the node config's `allocationDir`), where [`Fixture::alloc_in_place`]
    /// writes as the agent's Allocate does.
    pub alloc_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let node = Netns::new("cni-node").expect("node netns");
        node.add_veth("lower0", "peer0").expect("veth lower device");
        let pod = Netns::new("cni-pod").expect("pod netns");
        let dir = tempfile::tempdir().unwrap();
        let kubelet = PodResourcesStandIn::start(&dir.path().join("kubelet.sock"));
        let node_config = dir.path().join("macvtap-node.json");
        let alloc_dir = dir.path().join("state/nodes/node1");
        write_node_config(
            &node_config,
            &json!({"podResourcesSocket": kubelet.socket(), "allocationDir": alloc_dir}),
        );
        Self {
            node,
            pod,
            pod_name: format!(
                "vm-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            kubelet,
            node_config,
            alloc_dir,
            dir,
        }
    }

    /// The agent's in-place Allocate (a record with a tap index no one else has, no link) and the kubelet's grant to
    /// the fixture's pod. Returns the tap index.
    pub fn alloc_in_place(&self, device_id: &str) -> u32 {
        let index = self.record(device_id);
        self.grant(&self.pod_name.clone(), device_id);
        index
    }

    /// Only the agent's in-place part: the record of `device_id` on `lower0`, bridge mode.
    pub fn record(&self, device_id: &str) -> u32 {
        let index = unique_tap_index();
        macvtap_core::AllocationRecord {
            resource: "dataplane".into(),
            lower_device: "lower0".into(),
            mode: MacvtapMode::Bridge,
            tap_index: index,
        }
        .write(&self.alloc_dir, device_id)
        .unwrap();
        index
    }

    /// What the kubelet and the agent do when the fixture's pod is admitted: the agent creates the link (at an
    /// ifindex no one else has), the kubelet records the device for the pod.
    pub fn alloc(&self, device_id: &str) -> LinkInfo {
        self.alloc_for(&self.pod_name.clone(), device_id)
    }

    /// [`Fixture::alloc`] for another pod of [`NAMESPACE`].
    pub fn alloc_for(&self, pod: &str, device_id: &str) -> LinkInfo {
        let link = self.create_link(device_id);
        self.grant(pod, device_id);
        link
    }

    /// Only the agent's part: the link exists, no pod holds the device (pending, or device-plugin only).
    pub fn create_link(&self, device_id: &str) -> LinkInfo {
        let at = unique_index();
        nl(&self.node, |n| async move {
            n.create_macvtap_at("lower0", device_id, MacvtapMode::Bridge, Some(at))
                .await
                .unwrap()
        })
    }

    /// Only the kubelet's part: `pod` holds `device_id` of [`RESOURCE`].
    pub fn grant(&self, pod: &str, device_id: &str) {
        self.kubelet.grant(NAMESPACE, pod, RESOURCE, device_id);
    }

    /// The `CNI_ARGS` a runtime and Multus give a call for `pod` of [`NAMESPACE`].
    pub fn pod_args(pod: &str) -> String {
        format!(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID=uid-{pod}"
        )
    }

    /// Another node config file (e.g. `{"outsideKubernetes": "allow"}` plus this fixture's socket).
    pub fn other_node_config(&self, name: &str, extra: Value) -> PathBuf {
        let mut c = json!({"podResourcesSocket": self.kubelet.socket()});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                c[k] = v;
            }
        }
        let p = self.dir.path().join(name);
        write_node_config(&p, &c);
        p
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

    /// A runtime-like invocation with the usual env for this fixture, as its pod.
    pub fn call(&self, command: &str, ifname: &str) -> Call {
        self.call_as(&self.pod_name, &self.pod, command, ifname)
    }

    /// A runtime-like invocation for `pod` whose network namespace is `netns`.
    pub fn call_as(&self, pod: &str, netns: &Netns, command: &str, ifname: &str) -> Call {
        Call::new(&self.node, command)
            .env("CNI_CONTAINERID", "ctr1")
            .env("CNI_NETNS", netns.path().to_str().unwrap())
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", &Self::pod_args(pod))
            .env(NODE_CONFIG_ENV, self.node_config.to_str().unwrap())
    }

    /// `/dev/tap<index>` of the pod's link `ifname`: its device number as the pod's own sysfs shows it, and the
    /// node's (device number, uid, gid). Panics when either is missing.
    pub fn pod_tap(&self, ifname: &str) -> TapCheck {
        let link = self.pod_link(ifname).expect("link in the pod");
        TapCheck::read(&self.pod, &link)
    }
}

/// What a pod link's tap node looks like on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapCheck {
    pub index: u32,
    /// Device number of the link's tap in the pod's own sysfs.
    pub sysfs_dev: u64,
    /// Device number, uid and gid of `/dev/tap<index>`.
    pub node_dev: u64,
    pub uid: u32,
    pub gid: u32,
}

impl TapCheck {
    pub fn read(ns: &Netns, link: &LinkInfo) -> Self {
        use std::os::unix::fs::MetadataExt;
        let out = ns
            .exec(
                "cat",
                &[&format!(
                    "/sys/class/net/{}/tap{}/dev",
                    link.name, link.index
                )],
            )
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let (major, minor) = s.trim().split_once(':').unwrap_or_else(|| {
            panic!(
                "no tap{} in the sysfs of {}: {out:?}",
                link.index, link.name
            )
        });
        let sysfs_dev = nix::sys::stat::makedev(major.parse().unwrap(), minor.parse().unwrap());
        let md = std::fs::metadata(link.tap_path())
            .unwrap_or_else(|e| panic!("{}: {e}", link.tap_path().display()));
        Self {
            index: link.index,
            sysfs_dev,
            node_dev: md.rdev(),
            uid: md.uid(),
            gid: md.gid(),
        }
    }
}

/// What must not change on a netns when ADD fails or is refused: each link's name, ifindex, MTU, up state, MAC and
/// alias (the marker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<String>,
    pub alias: Option<String>,
}

/// Every link of the fixture's node, sorted.
pub fn node_state(f: &Fixture) -> Vec<LinkState> {
    let mut v: Vec<_> = nl(&f.node, |n| async move { n.list_links().await.unwrap() })
        .into_iter()
        .map(|l| LinkState {
            mac: l.mac_string(),
            name: l.name,
            index: l.index,
            mtu: l.mtu,
            up: l.admin_up,
            alias: l.alias,
        })
        .collect();
    v.sort();
    v
}

pub fn write_node_config(path: &Path, config: &Value) {
    std::fs::write(path, config.to_string()).unwrap();
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

    /// Append `K=V` pairs to `CNI_ARGS`.
    pub fn arg(mut self, kv: &str) -> Self {
        match self.env.iter_mut().find(|(n, _)| n == "CNI_ARGS") {
            Some((_, v)) if !v.is_empty() => {
                v.push(';');
                v.push_str(kv);
            }
            Some((_, v)) => v.push_str(kv),
            None => self.env.push(("CNI_ARGS".into(), kv.into())),
        }
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
        let mut cmd = Command::new(BIN);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        enter_before_exec(&mut cmd, File::open(&self.node).unwrap());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
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
