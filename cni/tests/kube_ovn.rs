//! IPAM by the real kube-ovn CNI binary (built by e2e/tools/build-tools.sh) against the stand-in kube-ovn daemon: what
//! our CNI sends kube-ovn (the stand-in records each request: `deviceID` stripped, DEL sent, CHECK) and answers the
//! real daemon cannot be made to give on demand (a MAC in the answer, as for an OVN provider; no answer at all).
//! What kube-ovn itself decides (addresses from the Subnet, fixed IPs, MACs, release) is tested against the real
//! controller and daemons on the real cluster (e2e `kube-ovn` scenario). A missing binary fails every test here,
//! naming the build script.

mod common;

use common::*;
use macvtap_e2e::kube_ovn::stand_in::KubeOvnDaemon;
use macvtap_link::device_id;
use serde_json::{Value, json};

const PROVIDER: &str = "macvtap-nad.default";

/// The dir of the real kube-ovn binary. CI builds it first; a missing binary fails the test, never skips it.
fn kube_ovn_dir() -> String {
    match macvtap_e2e::tools::tool("kube-ovn") {
        Ok(p) => p.parent().unwrap().to_string_lossy().into_owned(),
        Err(e) => panic!("the kube-ovn CNI binary is needed (e2e/tools/build-tools.sh): {e}"),
    }
}

struct Setup {
    f: Fixture,
    daemon: KubeOvnDaemon,
    cni_path: String,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = kube_ovn_dir();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = KubeOvnDaemon::start(tmp.path().join("kube-ovn-daemon.sock")).unwrap();
    Setup {
        f: Fixture::new(),
        daemon,
        cni_path: format!("{SYSTEM_CNI}:{dir}"),
        _dir: tmp,
    }
}

impl Setup {
    fn annotate(&self, pod: &str, key: &str, value: &str) {
        self.daemon.set_annotation(
            "default",
            pod,
            &format!("{PROVIDER}.kubernetes.io/{key}"),
            value,
        );
    }

    fn conf(&self, version: &str, id: &str) -> Value {
        // What Multus hands us for the README's NAD with kube-ovn IPAM: top-level deviceID and pciBusID included.
        conf(
            version,
            id,
            json!({"pciBusID": "", "ipam": {"type": "kube-ovn",
                "server_socket": self.daemon.socket_path(), "provider": PROVIDER}}),
        )
    }

    fn call(&self, cmd: &str, pod: &str, ifname: &str, mac: Option<&str>) -> Call {
        let mut args = format!(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=abc"
        );
        if let Some(m) = mac {
            args.push_str(&format!(";MAC={m}"));
        }
        self.f
            .call(cmd, ifname)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_ARGS", &args)
    }
}

/// IP only: address from the annotation, the link keeps its own MAC, no gateway and no default route on net1.
#[test]
fn kube_ovn_ip_only() {
    let s = setup();
    let id = device_id("ovn", 0);
    let host = s.f.alloc_for("vm1", &id);
    s.annotate("vm1", "ip_address", "10.16.0.5");
    s.annotate("vm1", "cidr", "10.16.0.0/16");
    s.annotate("vm1", "gateway", "10.16.0.1");
    let c = s.conf("0.3.1", &id);
    let res = s.call("ADD", "vm1", "net1", None).run(&c).ok();
    assert_eq!(res["ips"][0]["address"], "10.16.0.5/16");
    assert_eq!(res["ips"][0]["version"], "4");
    assert!(
        res["ips"][0].get("gateway").is_none(),
        "not the default-route interface: {res}"
    );
    assert_eq!(
        s.f.pod.addresses("net1").unwrap(),
        vec!["10.16.0.5/16".to_string()]
    );
    assert!(
        s.f.pod
            .ip(&["route", "show", "default"])
            .unwrap()
            .trim()
            .is_empty()
    );
    assert_eq!(
        s.f.pod_link("net1").unwrap().mac,
        host.mac,
        "no MAC asked: the agent's MAC stays"
    );
    let reqs = s.daemon.requests();
    let (path, body) = &reqs[0];
    assert_eq!(path, "/api/v1/add");
    assert_eq!(body["provider"], PROVIDER);
    assert_eq!(body["if_name"], "net1");
    assert_eq!(body["cni_type"], "macvtap");
    assert_eq!(
        body["deviceID"], "",
        "deviceID must be stripped before kube-ovn sees it"
    );
    s.call("DEL", "vm1", "net1", None).run(&c).ok();
    assert!(s.daemon.requests().iter().any(|(p, _)| p == "/api/v1/del"));
    assert!(s.f.pod_link("net1").is_none());
    s.call("DEL", "vm1", "net1", None).run(&c).ok();
}

/// MAC only: the selection asked a MAC (CNI_ARGS), kube-ovn echoes it in the annotation; the link carries it.
#[test]
fn kube_ovn_mac_only() {
    let s = setup();
    let id = device_id("ovn", 1);
    s.f.alloc_for("vm2", &id);
    s.annotate("vm2", "ip_address", "10.16.0.6");
    s.annotate("vm2", "cidr", "10.16.0.0/16");
    s.annotate("vm2", "mac_address", "0a:58:0a:10:00:06");
    let c = s.conf("1.0.0", &id);
    let res = s
        .call("ADD", "vm2", "net1", Some("0a:58:0a:10:00:06"))
        .run(&c)
        .ok();
    assert_eq!(res["interfaces"][0]["mac"], "0a:58:0a:10:00:06");
    assert_eq!(
        s.f.pod_link("net1").unwrap().mac_string().as_deref(),
        Some("0a:58:0a:10:00:06")
    );
    s.call("CHECK", "vm2", "net1", None)
        .run(&with_prev(&c, &res))
        .ok();
}

/// Both: kube-ovn's MAC wins over a different CNI_ARGS MAC (IPAM > runtimeConfig > CNI_ARGS > config).
#[test]
fn kube_ovn_ip_and_mac_ipam_mac_wins() {
    let s = setup();
    let id = device_id("ovn", 2);
    s.f.alloc_for("vm3", &id);
    s.annotate("vm3", "ip_address", "10.16.0.7");
    s.annotate("vm3", "cidr", "10.16.0.0/16");
    s.annotate("vm3", "mac_address", "0a:58:0a:10:00:07");
    let mut c = s.conf("1.1.0", &id);
    c["runtimeConfig"] = json!({"mac": "02:00:00:00:00:99"});
    let res = s
        .call("ADD", "vm3", "net1", Some("02:00:00:00:00:98"))
        .run(&c)
        .ok();
    assert_eq!(res["interfaces"][0]["mac"], "0a:58:0a:10:00:07");
    assert!(res["ips"][0].get("version").is_none());
    let link = s.f.pod_link("net1").unwrap();
    assert_eq!(link.mac_string().as_deref(), Some("0a:58:0a:10:00:07"));
    assert_eq!(
        s.f.pod.addresses("net1").unwrap(),
        vec!["10.16.0.7/16".to_string()]
    );
    // kube-ovn has no STATUS/GC handlers (success in its skel): forwarded and answered.
    s.call("STATUS", "vm3", "net1", None).run(&c).ok();
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "net1"}]);
    s.call("GC", "vm3", "net1", None).run(&gc).ok();
    s.call("DEL", "vm3", "net1", None).run(&c).ok();
}

/// The pod's default network (eth0): gateway included, default route via it.
#[test]
fn kube_ovn_pod_default_network() {
    let s = setup();
    let id = device_id("ovn", 3);
    s.f.alloc_for("vm4", &id);
    s.annotate("vm4", "ip_address", "10.16.0.8");
    s.annotate("vm4", "cidr", "10.16.0.0/16");
    s.annotate("vm4", "gateway", "10.16.0.1");
    s.annotate("vm4", "mac_address", "0a:58:0a:10:00:08");
    let c = s.conf("0.4.0", &id);
    let res = s
        .call("ADD", "vm4", "eth0", Some("0a:58:0a:10:00:08"))
        .run(&c)
        .ok();
    assert_eq!(res["ips"][0]["gateway"], "10.16.0.1");
    assert_eq!(
        s.f.pod.addresses("eth0").unwrap(),
        vec!["10.16.0.8/16".to_string()]
    );
    let default = s.f.pod.ip(&["route", "show", "default"]).unwrap();
    assert!(default.contains("via 10.16.0.1 dev eth0"), "{default}");
    assert_eq!(
        s.f.pod_link("eth0").unwrap().mac_string().as_deref(),
        Some("0a:58:0a:10:00:08")
    );
    s.call("CHECK", "vm4", "eth0", None)
        .run(&with_prev(&c, &res))
        .ok();
    s.call("DEL", "vm4", "eth0", None).run(&c).ok();
}

/// The daemon cannot answer (no annotation): kube-ovn's error 11 is passed through, the host left as it was.
#[test]
fn kube_ovn_unavailable_leaves_the_host_alone() {
    let s = setup();
    let id = device_id("ovn", 4);
    let host = s.f.alloc_for("vm5", &id);
    let msg = s
        .call("ADD", "vm5", "net1", None)
        .run(&s.conf("1.0.0", &id))
        .err(11);
    assert!(msg.contains("kube-ovn"), "{msg}");
    assert!(s.f.node_link(&host.name).unwrap().is_ours(&id));
    // Missing K8S_POD_NAME (a call from outside Kubernetes, which this node allows): kube-ovn's own config
    // error (7) is passed through.
    let allow =
        s.f.other_node_config("allow.json", json!({"outsideKubernetes": "allow"}));
    let r =
        s.f.call("ADD", "net1")
            .env("CNI_PATH", &s.cni_path)
            .env("CNI_ARGS", "")
            .env(NODE_CONFIG_ENV, allow.to_str().unwrap())
            .run(&s.conf("1.0.0", &id));
    r.err(7);
    assert!(s.f.node_link(&host.name).is_some());
}
