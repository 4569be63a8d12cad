//! The built `macvtap` binary run like a runtime, as root, in throwaway netns with a veth lower device.
//! A list of cases (every verb × every spec version, bad input) over the shared fixture, hence over 400 lines.

mod common;

use common::*;
use macvtap_link::{device_id, host_link_name};
use serde_json::{Value, json};

#[test]
fn version_lists_every_supported_version() {
    let f = Fixture::new();
    for v in VERSIONS {
        let out = Call::new(&f.node, "VERSION")
            .run(&json!({"cniVersion": v}))
            .ok();
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out["supportedVersions"], json!(VERSIONS));
    }
}

/// ADD → CHECK → STATUS → GC → DEL → DEL, for every version, no IPAM (the original's L2 use).
#[test]
fn every_verb_every_version_without_ipam() {
    let f = Fixture::new();
    for (i, v) in VERSIONS.iter().enumerate() {
        let id = device_id("dataplane", i as u32);
        let host = f.alloc(&id);
        let c = conf(v, &id, json!({}));

        let res = f.call("ADD", "net1").run(&c).ok();
        assert_eq!(res["cniVersion"], *v);
        let ifaces = res["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 1, "{res}");
        assert_eq!(ifaces[0]["name"], "net1");
        assert_eq!(ifaces[0]["sandbox"], f.pod.path().to_str().unwrap());
        assert_eq!(ifaces[0].get("mtu").is_some(), *v == "1.1.0", "{v}: {res}");
        assert!(res.get("ips").is_none(), "no IPAM, no IPs: {res}");

        let link = f.pod_link("net1").expect("link in the pod");
        assert_eq!(
            ifaces[0]["mac"].as_str(),
            link.mac_string().as_deref(),
            "result MAC == link MAC"
        );
        assert_eq!(link.marker_device_id(), Some(id.as_str()));
        assert!(link.admin_up);
        assert_eq!(
            f.pod
                .link_names()
                .unwrap()
                .iter()
                .filter(|n| *n != "lo")
                .count(),
            1,
            "exactly one interface"
        );
        assert!(f.node_link(&host.name).is_none(), "moved off the node");
        // The pod's link kept the ifindex the device plugin announced, and /dev/tap<that> is its tap, chowned.
        let tap = f.pod_tap("net1");
        assert_eq!(tap.index, host.index);
        assert_eq!(
            tap.node_dev, tap.sysfs_dev,
            "/dev/tap{} is net1's tap",
            tap.index
        );
        assert_eq!((tap.uid, tap.gid), (107, 107));

        let check = f.call("CHECK", "net1").run(&with_prev(&c, &res));
        let status = f.call("STATUS", "net1").run(&c);
        let gc = f.call("GC", "net1").run(&c);
        if *v >= "0.4.0" {
            check.ok();
        } else {
            assert!(check.err(1).contains("CHECK"));
        }
        if *v == "1.1.0" {
            status.ok();
            gc.ok();
        } else {
            status.err(1);
            gc.err(1);
        }

        let del_conf = if *v >= "0.4.0" {
            with_prev(&c, &res)
        } else {
            c.clone()
        };
        f.call("DEL", "net1").run(&del_conf).ok();
        assert!(f.pod_link("net1").is_none(), "DEL removed the pod link");
        f.call("DEL", "net1").run(&del_conf).ok();
        // CHECK after DEL notices the interface is gone.
        if *v >= "0.4.0" {
            f.call("CHECK", "net1").run(&with_prev(&c, &res)).err(105);
        }
    }
}

/// The original's cases: rename, MAC via CNI_ARGS, MTU, promisc, tap ownership, DEL twice / without netns.
#[test]
fn original_cases_move_rename_mac_mtu_promisc() {
    let f = Fixture::new();
    let id = device_id("dataplane", 0);
    let host = f.alloc(&id);
    assert!(host.is_ours(&id));
    let c = conf(
        "0.3.1",
        &id,
        json!({"mtu": 1400, "promiscMode": true, "owner": 4242, "group": 4343}),
    );
    let res = f
        .call("ADD", "eth7")
        .arg("MAC=0a:58:0a:00:00:07")
        .run(&c)
        .ok();
    let link = f.pod_link("eth7").expect("renamed to CNI_IFNAME");
    assert_eq!(link.mac_string().as_deref(), Some("0a:58:0a:00:00:07"));
    assert_eq!(res["interfaces"][0]["mac"], "0a:58:0a:00:00:07");
    assert_eq!(link.mtu, 1400);
    assert!(link.promisc);
    // Every run: the link kept the announced ifindex, /dev/tap<it> is this link's tap, and it was chowned.
    let tap = f.pod_tap("eth7");
    assert_eq!(tap.index, host.index, "ifindex announced by Allocate");
    assert_eq!(
        tap.node_dev, tap.sysfs_dev,
        "/dev/tap{} is eth7's tap",
        tap.index
    );
    assert_eq!(
        (tap.uid, tap.gid),
        (4242, 4343),
        "/dev/tap{} chowned",
        tap.index
    );
    // arp_notify inside the pod netns.
    let arp = f
        .pod
        .exec("cat", &["/proc/sys/net/ipv4/conf/eth7/arp_notify"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&arp.stdout).trim(), "1");

    // DEL without a netns: succeeds, touches nothing.
    f.call("DEL", "eth7").without("CNI_NETNS").run(&c).ok();
    assert!(f.pod_link("eth7").is_some());
    f.call("DEL", "eth7").run(&c).ok();
    f.call("DEL", "eth7").run(&c).ok();
    assert!(f.pod_link("eth7").is_none());
}

#[test]
fn mac_precedence_runtime_config_then_cni_args_then_config() {
    let f = Fixture::new();
    let cases = [
        (
            json!({"mac": "02:00:00:00:00:01", "runtimeConfig": {"mac": "02:00:00:00:00:03"}}),
            "02:00:00:00:00:03",
        ),
        (json!({"mac": "02:00:00:00:00:01"}), "02:00:00:00:00:02"),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let id = device_id("prec", i as u32);
        f.alloc(&id);
        let c = conf("1.0.0", &id, extra.clone());
        f.call("ADD", "net1")
            .arg("MAC=02:00:00:00:00:02")
            .run(&c)
            .ok();
        assert_eq!(
            f.pod_link("net1").unwrap().mac_string().as_deref(),
            Some(*want)
        );
        f.call("DEL", "net1").run(&c).ok();
    }
    let id = device_id("prec", 9);
    f.alloc(&id);
    let c = conf("1.0.0", &id, json!({"mac": "02:00:00:00:00:01"}));
    f.call("ADD", "net1").run(&c).ok();
    assert_eq!(
        f.pod_link("net1").unwrap().mac_string().as_deref(),
        Some("02:00:00:00:00:01")
    );
}

fn host_local(data_dir: &std::path::Path, subnet: &str, gw: &str) -> Value {
    json!({"type": "host-local", "subnet": subnet, "gateway": gw, "dataDir": data_dir,
           "routes": [{"dst": "0.0.0.0/0"}]})
}

/// Files host-local keeps per allocated IP (besides its lock and last-reserved markers).
fn allocations(dir: &std::path::Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn host_local_ipam_every_version() {
    let f = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    for (i, v) in VERSIONS.iter().enumerate() {
        let id = device_id("hl", i as u32);
        let host = f.alloc(&id);
        let c = conf(
            v,
            &id,
            json!({"ipam": host_local(data.path(), "10.77.0.0/24", "10.77.0.1")}),
        );
        let reply = f.call("ADD", "net1").run(&c);
        if *v == "1.1.0" {
            // Debian's host-local (CNI lib 1.1.2) stops at 1.0.0: its refusal is passed through, host untouched.
            let msg = reply.err(1);
            assert!(msg.contains("host-local"), "{msg}");
            assert!(f.node_link(&host.name).unwrap().is_ours(&id));
            assert!(allocations(data.path()).is_empty());
            // STATUS is forwarded to IPAM: this host-local cannot answer it, and that is what we report.
            let status = f.call("STATUS", "net1").run(&c);
            assert_ne!(status.code, 0, "{status:?}");
            assert!(
                status.json()["msg"]
                    .as_str()
                    .unwrap()
                    .contains("ipam host-local STATUS"),
                "{status:?}"
            );
            continue;
        }
        let res = reply.ok();
        let ip = &res["ips"][0];
        assert_eq!(ip["interface"], 0);
        assert_eq!(
            ip.get("version").is_some(),
            v.starts_with("0."),
            "{v}: {res}"
        );
        let addr = ip["address"].as_str().unwrap().to_string();
        assert!(
            addr.starts_with("10.77.0.") && addr.ends_with("/24"),
            "{addr}"
        );
        assert!(
            f.pod.addresses("net1").unwrap().contains(&addr),
            "address present in the pod"
        );
        let routes = f.pod.ip(&["route", "show", "default"]).unwrap();
        assert!(routes.contains("via 10.77.0.1 dev net1"), "{routes}");
        assert_eq!(allocations(data.path()).len(), 1);
        if *v >= "0.4.0" {
            f.call("CHECK", "net1").run(&with_prev(&c, &res)).ok();
        }
        f.call("DEL", "net1").run(&with_prev(&c, &res)).ok();
        assert!(allocations(data.path()).is_empty(), "IP released");
        f.call("DEL", "net1").run(&with_prev(&c, &res)).ok();
    }
}

#[test]
fn static_ipam_addresses_and_routes() {
    let f = Fixture::new();
    let id = device_id("st", 0);
    f.alloc(&id);
    let ipam = json!({"type": "static",
        "addresses": [{"address": "192.168.50.10/24", "gateway": "192.168.50.1"}, {"address": "fd00:50::10/64"}],
        "routes": [{"dst": "10.200.0.0/16", "gw": "192.168.50.254"}, {"dst": "0.0.0.0/0"}]});
    let c = conf("1.0.0", &id, json!({"ipam": ipam}));
    let res = f.call("ADD", "net2").run(&c).ok();
    assert_eq!(res["ips"].as_array().unwrap().len(), 2);
    let addrs = f.pod.addresses("net2").unwrap();
    assert!(addrs.contains(&"192.168.50.10/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd00:50::10/64".to_string()), "{addrs:?}");
    let routes = f.pod.ip(&["route", "show"]).unwrap();
    assert!(
        routes.contains("10.200.0.0/16 via 192.168.50.254 dev net2"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 192.168.50.1 dev net2"),
        "route without gw takes the IP's gateway: {routes}"
    );
    f.call("CHECK", "net2").run(&with_prev(&c, &res)).ok();
    f.call("DEL", "net2").run(&c).ok();
    assert!(f.pod_link("net2").is_none());
}

#[test]
fn bad_input_gives_the_right_code_and_leaves_the_host_alone() {
    let f = Fixture::new();
    let id = device_id("bad", 0);
    f.alloc(&id);
    let good = conf("1.0.0", &id, json!({}));
    let before = node_state(&f);
    let pod_before = f.pod.link_names().unwrap();
    let data = tempfile::tempdir().unwrap();

    let cases: Vec<(&str, Reply, u64, &str)> = vec![
        ("invalid JSON", f.call("ADD", "net1").run_raw(b"{not json"), 6, "decode"),
        ("missing version", f.call("ADD", "net1").run(&json!({"type": "macvtap", "deviceID": id})), 1, "cniVersion"),
        ("unknown version", f.call("ADD", "net1").run(&conf("2.0.0", &id, json!({}))), 1, "2.0.0"),
        ("no CNI_COMMAND", f.call("ADD", "net1").without("CNI_COMMAND").run(&good), 4, "CNI_COMMAND"),
        ("no CNI_NETNS", f.call("ADD", "net1").without("CNI_NETNS").run(&good), 4, "CNI_NETNS"),
        ("no CNI_IFNAME", f.call("ADD", "net1").without("CNI_IFNAME").run(&good), 4, "CNI_IFNAME"),
        ("no CNI_CONTAINERID", f.call("ADD", "net1").without("CNI_CONTAINERID").run(&good), 4, "CNI_CONTAINERID"),
        ("no deviceID", f.call("ADD", "net1").run(&json!({"cniVersion": "1.0.0", "type": "macvtap"})), 7, "deviceID"),
        // The pod does not hold these: refused before the link is even looked at.
        ("deviceID lo", f.call("ADD", "net1").run(&conf("1.0.0", "lo", json!({}))), 107, "lo"),
        ("deviceID veth", f.call("ADD", "net1").run(&conf("1.0.0", "lower0", json!({}))), 107, "lower0"),
        ("deviceID not allocated", f.call("ADD", "net1").run(&conf("1.0.0", "badMvp9", json!({}))), 107, "badMvp9"),
        ("bad config MAC", f.call("ADD", "net1").run(&conf("1.0.0", &id, json!({"mac": "nope"}))), 7, "mac"),
        ("bad CNI_ARGS MAC", f.call("ADD", "net1").arg("MAC=zz:00:00:00:00:01").run(&good), 4, "MAC"),
        ("MTU above lower", f.call("ADD", "net1").run(&conf("1.0.0", &id, json!({"mtu": 9000}))), 7, "mtu"),
        (
            "IPAM missing",
            f.call("ADD", "net1").run(&conf("1.0.0", &id, json!({"ipam": {"type": "no-such-ipam"}}))),
            7,
            "no-such-ipam",
        ),
        (
            "IPAM failing",
            f.call("ADD", "net1").run(&conf(
                "1.0.0",
                &id,
                json!({"ipam": {"type": "host-local", "subnet": "not-a-subnet", "dataDir": data.path()}}),
            )),
            0,
            "host-local",
        ),
        ("netns gone", f.call("ADD", "net1").env("CNI_NETNS", "/var/run/netns/does-not-exist").run(&good), 3, "CNI_NETNS"),
    ];
    for (what, reply, code, word) in cases {
        let msg = if code == 0 {
            // Whatever code the IPAM plugin chose is passed through; it must be an error naming the plugin.
            assert_ne!(reply.code, 0, "{what}: {reply:?}");
            reply.json()["msg"].as_str().unwrap().to_string()
        } else {
            reply.err(code)
        };
        assert!(
            msg.contains(word),
            "{what}: message {msg:?} should name {word:?}"
        );
        assert_eq!(node_state(&f), before, "{what}: node changed");
        assert_eq!(
            f.pod.link_names().unwrap(),
            pod_before,
            "{what}: pod changed"
        );
    }
    assert!(allocations(data.path()).is_empty());
    // Even if the kubelet said the pod held them (it never does for such IDs), other interfaces are refused.
    for (id, code) in [
        ("lo", 101),
        ("lower0", 101),
        ("peer0", 101),
        ("badMvp8", 100),
    ] {
        f.grant(&f.pod_name, id);
        let msg = f
            .call("ADD", "net1")
            .run(&conf("1.0.0", id, json!({})))
            .err(code);
        assert!(msg.contains(id), "{id}: {msg}");
        assert_eq!(node_state(&f), before, "{id}: node changed");
    }
    // After all that, the device still works.
    f.call("ADD", "net1").run(&good).ok();
}

/// A failure after IPAM ADD and after the move: the IP is released and the link returns to the host unchanged.
#[test]
fn failure_after_ipam_releases_the_ip_and_returns_the_link() {
    let f = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    let id = device_id("late", 0);
    let host = f.alloc(&id);
    let before = node_state(&f);
    // CNI_IFNAME already taken in the pod.
    f.pod
        .ip(&[
            "link", "add", "net1", "type", "veth", "peer", "name", "other1",
        ])
        .unwrap();
    let c = conf(
        "1.0.0",
        &id,
        json!({"ipam": host_local(data.path(), "10.78.0.0/24", "10.78.0.1")}),
    );
    let msg = f.call("ADD", "net1").run(&c).err(104);
    assert!(msg.contains("net1"), "{msg}");
    assert!(allocations(data.path()).is_empty(), "IP released");
    assert_eq!(node_state(&f), before);
    // A route that cannot be added (gateway outside every subnet) fails inside the pod, after the move.
    let bad_route = json!({"type": "static", "addresses": [{"address": "10.79.0.5/24"}],
                           "routes": [{"dst": "10.80.0.0/16", "gw": "10.81.0.1"}]});
    let reply = f.call("ADD", "net9").run(&conf(
        "1.0.0",
        &id,
        json!({"mtu": 1300, "mac": "02:00:00:00:09:09", "ipam": bad_route}),
    ));
    reply.err(102);
    assert_eq!(
        node_state(&f),
        before,
        "link back on the node under its name, MTU/MAC/up restored"
    );
    assert!(f.node_link(&host.name).unwrap().is_ours(&id));
    assert!(f.pod_link("net9").is_none());
}

#[test]
fn a_non_macvtap_cni_ifname_survives_del() {
    let f = Fixture::new();
    f.pod
        .ip(&[
            "link", "add", "net1", "type", "veth", "peer", "name", "other1",
        ])
        .unwrap();
    f.call("DEL", "net1")
        .run(&conf("1.0.0", "xMvp0", json!({})))
        .ok();
    assert!(
        f.pod_link("net1").is_some(),
        "DEL only deletes our macvtap links"
    );
}

/// 32 ADD/DEL pairs on different containers at once: each pod gets its own device and MAC.
#[test]
fn concurrent_add_del_do_not_cross_devices() {
    const N: usize = 32;
    let f = Fixture::new();
    let pods: Vec<_> = (0..N)
        .map(|_| macvtap_e2e::netns::Netns::new("cni-cpod").unwrap())
        .collect();
    let ids: Vec<String> = (0..N).map(|i| device_id("conc", i as u32)).collect();
    for (i, id) in ids.iter().enumerate() {
        f.alloc_for(&format!("cpod{i}"), id);
    }
    std::thread::scope(|s| {
        for (i, (pod, id)) in pods.iter().zip(&ids).enumerate() {
            let f = &f;
            s.spawn(move || {
                let mac = format!("02:00:00:00:01:{i:02x}");
                let call = |cmd: &str| {
                    f.call_as(&format!("cpod{i}"), pod, cmd, "net1")
                        .env("CNI_CONTAINERID", &format!("ctr{i}"))
                        .arg(&format!("MAC={mac}"))
                };
                let c = conf("1.0.0", id, json!({}));
                let res = call("ADD").run(&c).ok();
                assert_eq!(res["interfaces"][0]["mac"], mac.as_str());
                let link = common::nl(pod, |n| async move {
                    n.find_link("net1").await.unwrap().unwrap()
                });
                assert_eq!(
                    link.marker_device_id(),
                    Some(id.as_str()),
                    "pod {i} got another pod's device"
                );
                assert_eq!(link.mac_string().as_deref(), Some(mac.as_str()));
                call("DEL").run(&c).ok();
                assert!(
                    common::nl(pod, |n| async move { n.find_link("net1").await.unwrap() })
                        .is_none()
                );
            });
        }
    });
    for id in &ids {
        assert!(
            f.node_link(&host_link_name(id)).is_none(),
            "{id} was consumed exactly once"
        );
    }
}
