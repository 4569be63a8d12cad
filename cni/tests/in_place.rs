//! In-place attach: the agent's Allocate wrote a record (lower device, mode, tap index N), no link exists; ADD creates
//! the pod's macvtap inside the pod netns with index N, so `/dev/tapN` (what Allocate answered) is the pod's tap. And
//! the kept contracts: PodResources check first, clashes fail cleanly and never hand over another link's tap, DEL
//! removes the pod's link, a device allocated before the upgrade (host link, no record) still attaches, and a node
//! starting many VMs at once gets through the kubelet's PodResources rate limit.

mod common;

use common::*;
use macvtap_link::{MacvtapMode, Netlink, PodMacvtap, device_id};
use serde_json::json;

fn pod_links(f: &Fixture) -> Vec<String> {
    let mut names = f.pod.link_names().unwrap();
    names.retain(|n| n != "lo");
    names
}

/// A macvtap at `index` in `target` on the node's `lower0` (another pod's link).
fn foreign_macvtap(
    f: &Fixture,
    target: &macvtap_e2e::netns::Netns,
    name: &'static str,
    index: u32,
) {
    let fd = std::fs::File::open(target.path()).unwrap();
    nl(&f.node, |n: Netlink| async move {
        let lower = n.find_link("lower0").await.unwrap().unwrap();
        let spec = PodMacvtap {
            name,
            index,
            lower: &lower,
            mode: MacvtapMode::Bridge,
            mac: [2, 0, 0, 0, 0, 9],
            mtu: None,
            promisc: false,
            up: true,
        };
        n.create_macvtap_in(&spec, &fd).await.unwrap()
    });
}

/// Every version: ADD creates the link in the pod at the announced index with the config's MAC/MTU/promisc, proves
/// and chowns its tap; the node netns never sees a link; CHECK passes; DEL removes it.
#[test]
fn add_creates_the_link_in_the_pod_at_the_announced_index() {
    let f = Fixture::new();
    let before = node_state(&f);
    for (i, v) in VERSIONS.iter().enumerate() {
        let id = device_id("dataplane", i as u32);
        let n = f.alloc_in_place(&id);
        let c = conf(
            v,
            &id,
            json!({"mtu": 1400, "promiscMode": true, "owner": 4242, "group": 4343}),
        );
        let res = f
            .call("ADD", "net1")
            .arg("MAC=0a:58:0a:00:00:07")
            .run(&c)
            .ok();
        let link = f.pod_link("net1").expect("created in the pod");
        assert_eq!(link.index, n, "the index Allocate announced");
        assert!(link.is_in_place() && link.is_ours_in_pod());
        assert_eq!(link.macvtap_mode, Some(MacvtapMode::Bridge));
        assert_eq!(link.mac_string().as_deref(), Some("0a:58:0a:00:00:07"));
        assert_eq!(link.mtu, 1400);
        assert!(link.promisc && link.admin_up);
        assert_eq!(res["interfaces"][0]["name"], "net1");
        assert_eq!(res["interfaces"][0]["mac"], "0a:58:0a:00:00:07");
        if *v == "1.1.0" {
            assert_eq!(res["interfaces"][0]["mtu"], 1400, "{res}");
        }
        assert_eq!(pod_links(&f), ["net1"]);
        let tap = f.pod_tap("net1");
        assert_eq!(tap.index, n);
        assert_eq!(tap.node_dev, tap.sysfs_dev, "/dev/tap{n} is net1's tap");
        // The claim the agent's PreStartContainer hands the tap over on: this device, this boot.
        let claim = macvtap_core::AttachClaim::read(&f.alloc_dir, &id)
            .unwrap()
            .expect("the attach claim");
        assert_eq!((claim.tap_index, claim.ifname.as_str()), (n, "net1"));
        assert_eq!(
            nix::sys::stat::makedev(claim.major, claim.minor),
            tap.node_dev
        );
        assert_eq!(
            claim.boot_id,
            macvtap_core::attach_claim::boot_id().unwrap()
        );
        assert_eq!((tap.uid, tap.gid), (4242, 4343));
        let arp = f
            .pod
            .exec("cat", &["/proc/sys/net/ipv4/conf/net1/arp_notify"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&arp.stdout).trim(), "1");
        assert_eq!(node_state(&f), before, "no link on the node, ever");
        if *v >= "0.4.0" {
            f.call("CHECK", "net1").run(&with_prev(&c, &res)).ok();
            // CHECK for another device's record: not this link.
            let other = device_id("dataplane", 90 + i as u32);
            f.record(&other);
            let mut c2 = c.clone();
            c2["deviceID"] = json!(other);
            f.call("CHECK", "net1").run(&with_prev(&c2, &res)).err(105);
        }
        f.call("DEL", "net1").run(&c).ok();
        assert!(f.pod_link("net1").is_none(), "DEL removed the pod link");
        assert!(!std::path::Path::new(&format!("/dev/tap{n}")).exists());
        f.call("DEL", "net1").run(&c).ok();
    }
}

/// No MAC asked for: one we chose (locally administered), reported as the link has it; MTU reported from the lower
/// device (1500) without reading the link back.
#[test]
fn without_a_mac_the_result_reports_the_links() {
    let f = Fixture::new();
    let id = device_id("dataplane", 0);
    f.alloc_in_place(&id);
    let res = f
        .call("ADD", "net1")
        .run(&conf("1.1.0", &id, json!({})))
        .ok();
    let link = f.pod_link("net1").unwrap();
    let mac = link.mac_string().unwrap();
    assert_eq!(res["interfaces"][0]["mac"], mac.as_str());
    assert_eq!(u8::from_str_radix(&mac[..2], 16).unwrap() & 3, 2, "{mac}");
    assert_eq!(res["interfaces"][0]["mtu"], 1500);
    assert_eq!(link.mtu, 1500);
    assert!(!link.promisc);
    assert_eq!((f.pod_tap("net1").uid, f.pod_tap("net1").gid), (107, 107));
}

/// The PodResources check comes first: a record alone is no permission.
#[test]
fn a_record_is_no_permission_without_the_kubelets_word() {
    let f = Fixture::new();
    let id = device_id("dataplane", 0);
    f.record(&id);
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .err(107);
    assert!(pod_links(&f).is_empty());
    // A device ID that cannot be a record's file name is refused, not looked up.
    f.grant(&f.pod_name.clone(), "../x");
    f.call("ADD", "net1")
        .run(&conf("1.0.0", "../x", json!({})))
        .err(101);
}

/// A record a crash left empty or half-written: a clear "retry" (11), nothing created; once the agent has
/// re-derived it, the next ADD attaches at its index.
#[test]
fn an_unreadable_record_is_a_retry_and_its_repair_attaches() {
    let f = Fixture::new();
    let id = device_id("dataplane", 0);
    let n = f.alloc_in_place(&id);
    let path = f.alloc_dir.join(format!("{id}.json"));
    let good = std::fs::read(&path).unwrap();
    for garbage in ["", "{\"resource\":\"datap"] {
        std::fs::write(&path, garbage).unwrap();
        let msg = f
            .call("ADD", "net1")
            .run(&conf("1.0.0", &id, json!({})))
            .err(11);
        assert!(
            msg.contains("cannot be read") && msg.contains("retry"),
            "{msg}"
        );
        assert!(pod_links(&f).is_empty());
    }
    std::fs::write(&path, good).unwrap();
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .ok();
    assert_eq!(f.pod_link("net1").unwrap().index, n);
}

/// Clashes fail cleanly: a taken name (104) or index (106) in the pod creates nothing; an index another netns's
/// macvtap already has (its `/dev/tapN`) is never handed over: the new link is deleted, 106, the other untouched.
#[test]
fn clashes_fail_cleanly_and_never_give_another_links_tap() {
    let f = Fixture::new();
    let c = |id: &str| conf("1.0.0", id, json!({"mtu": 1400}));

    let id = device_id("dataplane", 1);
    let n = f.alloc_in_place(&id);
    f.pod.add_veth("net1", "peer-net1").unwrap();
    let msg = f.call("ADD", "net1").run(&c(&id)).err(104);
    assert!(msg.contains("net1"), "{msg}");
    f.pod.ip(&["link", "del", "net1"]).unwrap();

    foreign_macvtap(&f, &f.pod, "other", n);
    let msg = f.call("ADD", "net1").run(&c(&id)).err(106);
    assert!(msg.contains(&n.to_string()), "{msg}");
    assert_eq!(pod_links(&f), ["other"], "nothing created");
    f.pod.ip(&["link", "del", "other"]).unwrap();

    let elsewhere = macvtap_e2e::netns::Netns::new("cni-elsewhere").unwrap();
    let id2 = device_id("dataplane", 2);
    let n2 = f.alloc_in_place(&id2);
    foreign_macvtap(&f, &elsewhere, "theirs", n2);
    let their_tap = std::fs::metadata(format!("/dev/tap{n2}")).unwrap();
    let msg = f.call("ADD", "net1").run(&c(&id2)).err(106);
    assert!(msg.contains("deleted"), "{msg}");
    assert!(pod_links(&f).is_empty(), "our new link was deleted");
    let after = std::fs::metadata(format!("/dev/tap{n2}")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.rdev(), after.uid()),
        (their_tap.rdev(), their_tap.uid()),
        "their tap untouched, not chowned"
    );
    // Once theirs is gone, the retry succeeds.
    drop(elsewhere);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/dev/tap{n2}")).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f.call("ADD", "net1").run(&c(&id2)).ok();
    assert_eq!(f.pod_tap("net1").index, n2);

    // An MTU above the lower device's: refused up front, nothing created.
    let id3 = device_id("dataplane", 3);
    f.alloc_in_place(&id3);
    f.call("ADD", "net2")
        .run(&conf("1.0.0", &id3, json!({"mtu": 9000})))
        .err(7);
    assert_eq!(pod_links(&f), ["net1"]);
}

/// A device allocated before the upgrade (the agent made a host link, no record): still moved in, as before.
#[test]
fn a_device_allocated_before_the_upgrade_still_attaches() {
    let f = Fixture::new();
    let id = device_id("dataplane", 0);
    let host = f.alloc(&id);
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .ok();
    let link = f.pod_link("net1").unwrap();
    assert_eq!(link.index, host.index);
    assert_eq!(link.marker_device_id(), Some(id.as_str()));
    assert!(f.node_link(&host.name).is_none());
    f.call("DEL", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .ok();
    assert!(f.pod_link("net1").is_none());
}

/// DEL leaves a macvtap alone that is neither marked nor in the in-place range.
#[test]
fn del_leaves_other_macvtaps_alone() {
    let f = Fixture::new();
    foreign_macvtap(&f, &f.pod, "net1", unique_index());
    f.call("DEL", "net1")
        .run(&conf("1.0.0", &device_id("dataplane", 0), json!({})))
        .ok();
    assert_eq!(pod_links(&f), ["net1"], "net1 stays");
}

/// With host-local IPAM: addresses and routes in the pod; a failed ADD releases the IP.
#[test]
fn host_local_ipam_in_place() {
    let f = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    let ipam = json!({"type": "host-local", "subnet": "10.78.0.0/24", "gateway": "10.78.0.1",
                      "dataDir": data.path(), "routes": [{"dst": "0.0.0.0/0"}]});
    let id = device_id("hl", 0);
    f.alloc_in_place(&id);
    let c = conf("1.0.0", &id, json!({ "ipam": ipam }));
    let res = f.call("ADD", "net1").run(&c).ok();
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(f.pod.addresses("net1").unwrap().contains(&addr), "{addr}");
    let routes = f.pod.ip(&["route", "show", "default"]).unwrap();
    assert!(routes.contains("via 10.78.0.1 dev net1"), "{routes}");
    f.call("DEL", "net1").run(&c).ok();
    assert!(f.pod_link("net1").is_none());

    // A taken name after IPAM ADD: the IP is released again.
    f.pod.add_veth("net1", "peer-net1").unwrap();
    f.call("ADD", "net1").run(&c).err(104);
    let left: Vec<_> = std::fs::read_dir(data.path().join("dataplane"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10.78."))
        .collect();
    assert!(left.is_empty(), "IP released: {left:?}");
}

/// 50 pods' ADDs at once, each asking PodResources `Get` through the kubelet's rate limit (100/s, burst 10): the
/// limiter refuses some calls (counted, so this cannot pass without it), the refused ADDs wait and retry, and every
/// pod gets its own device at its announced index.
#[test]
fn fifty_adds_at_once_get_through_the_kubelets_rate_limit() {
    const N: usize = 50;
    let f = Fixture::new();
    let pods: Vec<_> = (0..N)
        .map(|_| macvtap_e2e::netns::Netns::new("cni-rpod").unwrap())
        .collect();
    let ids: Vec<String> = (0..N).map(|i| device_id("rate", i as u32)).collect();
    let indices: Vec<u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            f.grant(&format!("rpod{i}"), id);
            f.record(id)
        })
        .collect();
    let before = node_state(&f);
    f.kubelet.take_refused();
    f.kubelet.take_calls();
    let start = std::sync::Barrier::new(N);
    std::thread::scope(|s| {
        for (i, (pod, id)) in pods.iter().zip(&ids).enumerate() {
            let (f, start, index) = (&f, &start, indices[i]);
            s.spawn(move || {
                let call = f
                    .call_as(&format!("rpod{i}"), pod, "ADD", "net1")
                    .env("CNI_CONTAINERID", &format!("ctr{i}"));
                start.wait();
                call.run(&conf("1.0.0", id, json!({}))).ok();
                let link = nl(pod, |n| async move {
                    n.find_link("net1").await.unwrap().unwrap()
                });
                assert_eq!(link.index, index, "pod {i} got another pod's device");
            });
        }
    });
    let refused = f.kubelet.take_refused();
    assert!(
        !refused.is_empty(),
        "the limiter refused nothing: the test did not load it"
    );
    assert!(refused.iter().all(|m| *m == "Get"), "{refused:?}");
    assert_eq!(
        f.kubelet.take_calls(),
        vec!["Get"; N],
        "one answered Get per ADD"
    );
    assert_eq!(node_state(&f), before, "no link on the node");
    eprintln!(
        "{} calls refused by the rate limit on the way",
        refused.len()
    );
}
