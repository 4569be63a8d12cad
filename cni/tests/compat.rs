//! Upgrading from kubevirt/macvtap-cni: links its device plugin created (same name scheme, no marker) attach for the
//! pod the kubelet allocated them to; and the original's config semantics (`mtu` 0, keys in any letter case,
//! `owner`/`group`) hold on the built binary.

mod common;

use common::*;
use macvtap_link::{device_id, host_link_name, ownership_alias};
use serde_json::json;

/// What the original's Allocate leaves: `mvt<hash>` macvtap on the lower device, up, no alias.
fn original_link(f: &Fixture, id: &str) -> macvtap_link::LinkInfo {
    original_link_named(f, &host_link_name(id))
}

/// The same, named as the original's releases up to v0.13.1 name it: the device ID itself.
fn original_link_named(f: &Fixture, name: &str) -> macvtap_link::LinkInfo {
    let at = unique_index().to_string();
    f.node
        .ip(&[
            "link", "add", "link", "lower0", "name", name, "index", &at, "type", "macvtap", "mode",
            "bridge",
        ])
        .unwrap();
    f.node.ip(&["link", "set", name, "up"]).unwrap();
    f.node_link(name).unwrap()
}

/// An original's host link attaches for the pod holding its device: net1 is that link, now marked as ours, its tap
/// the pod's; CHECK passes; DEL removes it.
fn attaches_for_its_pod(f: &Fixture, id: &str, host: &macvtap_link::LinkInfo) {
    assert!(host.is_unmarked_original(id) && !host.is_ours(id));
    f.grant(&f.pod_name, id);
    let c = conf("0.3.1", id, json!({}));
    let res = f.call("ADD", "net1").run(&c).ok();
    assert_eq!(res["interfaces"][0]["name"], "net1");
    let link = f.pod_link("net1").unwrap();
    assert_eq!(link.index, host.index);
    // Adopted: from now on DEL and CHECK know it as ours.
    assert_eq!(link.alias.as_deref(), Some(ownership_alias(id).as_str()));
    let tap = f.pod_tap("net1");
    assert_eq!(tap.node_dev, tap.sysfs_dev);
    assert_eq!((tap.uid, tap.gid), (107, 107));
    let c4 = conf("0.4.0", id, json!({}));
    f.call("CHECK", "net1").run(&with_prev(&c4, &res)).ok();
    f.call("DEL", "net1").run(&c).ok();
    assert!(f.pod_link("net1").is_none());
}

#[test]
fn an_original_link_attaches_for_the_pod_holding_it() {
    let f = Fixture::new();
    let id = device_id("orig", 0);
    let host = original_link(&f, &id);
    attaches_for_its_pod(&f, &id, &host);
}

/// kubevirt/macvtap-cni v0.13.1 (its latest release) names the link after the device ID: a device it allocated before
/// the upgrade attaches for the pod holding it, never for another pod.
#[test]
fn a_v0_13_1_link_named_after_the_device_attaches_for_the_pod_holding_it() {
    let f = Fixture::new();
    let theirs = device_id("rel", 1);
    original_link_named(&f, &theirs);
    f.kubelet.grant(NAMESPACE, "victim", RESOURCE, &theirs);
    let before = node_state(&f);
    let msg = f
        .call("ADD", "net1")
        .run(&conf("0.3.1", &theirs, json!({})))
        .err(107);
    assert!(msg.contains(theirs.as_str()), "{msg}");
    assert_eq!(node_state(&f), before, "another pod's device: node changed");

    let id = device_id("rel", 0);
    let host = original_link_named(&f, &id);
    attaches_for_its_pod(&f, &id, &host);
}

#[test]
fn original_links_need_the_kubelets_word() {
    let f = Fixture::new();
    // Not allocated to this pod.
    let theirs = device_id("orig", 1);
    original_link(&f, &theirs);
    f.kubelet.grant(NAMESPACE, "victim", RESOURCE, &theirs);
    // Allocated, but someone else's marker is on it (not the original's link any more).
    let marked = device_id("orig", 2);
    let l = original_link(&f, &marked);
    f.node
        .ip(&[
            "link",
            "set",
            &l.name,
            "alias",
            &ownership_alias("otherMvp9"),
        ])
        .unwrap();
    f.grant(&f.pod_name, &marked);
    let aliased = device_id("orig", 3);
    let l = original_link(&f, &aliased);
    f.node
        .ip(&["link", "set", &l.name, "alias", "someone-else"])
        .unwrap();
    f.grant(&f.pod_name, &aliased);
    // Allocated, right name, but not a macvtap.
    let veth = device_id("orig", 4);
    f.node
        .ip(&[
            "link",
            "add",
            &host_link_name(&veth),
            "type",
            "veth",
            "peer",
            "name",
            "vpeer4",
        ])
        .unwrap();
    f.grant(&f.pod_name, &veth);
    let before = node_state(&f);
    let pod_before = f.pod.link_names().unwrap();
    for (id, code) in [
        (&theirs, 107),
        (&marked, 101),
        (&aliased, 101),
        (&veth, 101),
    ] {
        let msg = f
            .call("ADD", "net1")
            .run(&conf("1.0.0", id, json!({})))
            .err(code);
        assert!(msg.contains(id.as_str()), "{msg}");
        assert_eq!(node_state(&f), before, "{id}: node changed");
        assert_eq!(f.pod.link_names().unwrap(), pod_before, "{id}: pod changed");
    }
}

/// A failure after the move returns an adopted original link without our marker, as it came.
#[test]
fn a_failed_add_returns_an_original_link_unmarked() {
    let f = Fixture::new();
    let id = device_id("orig", 5);
    let host = original_link(&f, &id);
    f.grant(&f.pod_name, &id);
    let before = node_state(&f);
    let bad_route = json!({"type": "static", "addresses": [{"address": "10.79.0.5/24"}],
                           "routes": [{"dst": "10.80.0.0/16", "gw": "10.81.0.1"}]});
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({"mtu": 1300, "ipam": bad_route})))
        .err(102);
    assert_eq!(node_state(&f), before);
    assert!(f.node_link(&host.name).unwrap().is_unmarked_original(&id));
}

/// `"mtu": 0` means "not set" (the original's `if mtu != 0`, the reference plugins' omitempty).
#[test]
fn mtu_zero_keeps_the_links_mtu() {
    let f = Fixture::new();
    let id = device_id("mtu0", 0);
    let host = f.alloc(&id);
    f.call("ADD", "net1")
        .run(&conf("0.3.1", &id, json!({"mtu": 0})))
        .ok();
    assert_eq!(f.pod_link("net1").unwrap().mtu, host.mtu);
}

/// Go's encoding/json matched the original's keys case-insensitively, the last one winning.
#[test]
fn keys_in_any_letter_case_like_the_original() {
    let f = Fixture::new();
    let id = device_id("case", 0);
    let host = f.alloc(&id);
    let c = json!({"CNIVersion": "0.3.1", "Name": "dataplane", "Type": "macvtap", "DeviceID": id,
                   "MTU": 1400, "PromiscMode": true, "OWNER": 4242, "Group": 4343});
    let res = f.call("ADD", "net1").run(&c).ok();
    assert_eq!(res["cniVersion"], "0.3.1");
    let link = f.pod_link("net1").unwrap();
    assert_eq!(link.index, host.index);
    assert_eq!(link.mtu, 1400);
    assert!(link.promisc);
    let tap = f.pod_tap("net1");
    assert_eq!((tap.uid, tap.gid), (4242, 4343));
    f.call("DEL", "net1").run(&c).ok();
    // Duplicates: the later key wins, as in Go.
    let id = device_id("case", 1);
    f.alloc(&id);
    let raw = format!(
        r#"{{"cniVersion":"1.0.0","type":"macvtap","deviceID":"{id}","mtu":1300,"Mtu":1450}}"#
    );
    f.call("ADD", "net2").run_raw(raw.as_bytes()).ok();
    assert_eq!(f.pod_link("net2").unwrap().mtu, 1450);
}

/// owner/group as the original: unset → 107:107, 0 → root, -1 → that id left as it is (the node is root's after
/// the kernel re-creates it in the pod).
#[test]
fn tap_owner_and_group_like_the_original() {
    let f = Fixture::new();
    for (i, (extra, want)) in [
        (json!({}), (107, 107)),
        (json!({"owner": null, "group": null}), (107, 107)),
        (json!({"owner": 0, "group": 0}), (0, 0)),
        (json!({"owner": -1, "group": 4343}), (0, 4343)),
        (json!({"owner": 4242, "group": -1}), (4242, 0)),
        (json!({"owner": -1, "group": -1}), (0, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = device_id("owner", i as u32);
        let host = f.alloc(&id);
        let c = conf("0.3.1", &id, extra.clone());
        f.call("ADD", "net1").run(&c).ok();
        let tap = f.pod_tap("net1");
        assert_eq!(tap.index, host.index);
        assert_eq!(tap.node_dev, tap.sysfs_dev, "{extra}: the verified tap");
        assert_eq!((tap.uid, tap.gid), want, "{extra}");
        f.call("DEL", "net1").run(&c).ok();
    }
    let id = device_id("owner", 99);
    f.alloc(&id);
    for bad in [
        json!({"owner": -2}),
        json!({"group": "107"}),
        json!({"owner": 1.5}),
    ] {
        f.call("ADD", "net1").run(&conf("1.0.0", &id, bad)).err(7);
    }
}
