//! The tap the kubelet handed out stays this pod's tap: after ADD the pod's link has the ifindex Allocate announced
//! (`/dev/tap<ifindex>`), and that node is its tap; otherwise ADD fails with the link back on the host, unchanged.

mod common;

use common::*;
use macvtap_link::device_id;
use serde_json::json;

fn host_local(data_dir: &std::path::Path) -> serde_json::Value {
    json!({"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": data_dir})
}

fn ip_files(dir: &std::path::Path) -> usize {
    fn walk(d: &std::path::Path, n: &mut usize) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), n);
            } else if e
                .file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
            {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// The pod netns already has a link with the host link's ifindex: the kernel would renumber the macvtap (and
/// /dev/tapN would name another device or none). ADD fails cleanly instead; once the index is free it succeeds
/// with that index.
#[test]
fn ifindex_taken_in_the_pod_fails_cleanly() {
    let f = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    let id = device_id("idx", 0);
    let host = f.alloc(&id);
    f.pod
        .ip(&[
            "link",
            "add",
            "squat0",
            "index",
            &host.index.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "squat1",
        ])
        .unwrap();
    let before = node_state(&f);
    let pod_before = f.pod.link_names().unwrap();
    let c = conf(
        "0.3.1",
        &id,
        json!({"mtu": 1400, "mac": "02:00:00:00:07:07", "ipam": host_local(data.path())}),
    );
    let reply = f.call("ADD", "net1").run(&c);
    let msg = reply.err(106);
    assert!(
        msg.contains(&format!("/dev/tap{}", host.index)) && msg.contains(&host.name),
        "{msg}"
    );
    assert_eq!(reply.json()["cniVersion"], "0.3.1");
    assert_eq!(node_state(&f), before, "link back on the host, unchanged");
    assert!(f.node_link(&host.name).unwrap().is_ours(&id));
    assert_eq!(f.pod.link_names().unwrap(), pod_before, "pod unchanged");
    assert_eq!(ip_files(data.path()), 0, "the IP was released");

    f.pod.ip(&["link", "del", "squat0"]).unwrap();
    f.call("ADD", "net1").run(&c).ok();
    let tap = f.pod_tap("net1");
    assert_eq!(tap.index, host.index);
    assert_eq!(tap.node_dev, tap.sysfs_dev);
    assert_eq!((tap.uid, tap.gid), (107, 107));
}

/// `/dev/tapN` belongs to another device (a macvtap with the same ifindex in another namespace got the node first):
/// the pod would get that device. ADD fails cleanly and the other device's node is left as it was.
#[test]
fn a_tap_node_of_another_device_fails_cleanly() {
    let f = Fixture::new();
    let at = unique_index();
    let other = macvtap_e2e::netns::Netns::new("cni-other").unwrap();
    other.add_veth("lower0", "peer0").unwrap();
    let squatter = nl(&other, |n| async move {
        n.create_macvtap_at(
            "lower0",
            "squatMvp0",
            macvtap_link::MacvtapMode::Bridge,
            Some(at),
        )
        .await
        .unwrap()
    });
    let id = device_id("tapother", 0);
    let host = nl(&f.node, |n| {
        let id = id.clone();
        async move {
            n.create_macvtap_at("lower0", &id, macvtap_link::MacvtapMode::Bridge, Some(at))
                .await
                .unwrap()
        }
    });
    f.grant(&f.pod_name, &id);
    assert_eq!((squatter.index, host.index), (at, at));
    let squatter_tap = TapCheck::read(&other, &squatter);
    assert_eq!(
        squatter_tap.node_dev, squatter_tap.sysfs_dev,
        "the other one owns /dev/tap{at}"
    );
    let before = node_state(&f);
    let msg = f
        .call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({"owner": 4242})))
        .err(106);
    assert!(msg.contains(&format!("/dev/tap{at}")), "{msg}");
    assert_eq!(node_state(&f), before, "link back on the host, unchanged");
    assert_eq!(
        TapCheck::read(&other, &squatter),
        squatter_tap,
        "the other device's node untouched"
    );
    assert!(f.pod_link("net1").is_none());
}

/// The pod already has a link named like the host link: the kernel refuses the move; 104, nothing moved.
#[test]
fn a_link_of_the_host_name_in_the_pod_leaves_the_device_alone() {
    let f = Fixture::new();
    let id = device_id("samename", 0);
    let host = f.alloc(&id);
    f.pod
        .ip(&[
            "link", "add", &host.name, "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let before = node_state(&f);
    let msg = f
        .call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .err(104);
    assert!(msg.contains(&host.name), "{msg}");
    assert_eq!(node_state(&f), before);
}
