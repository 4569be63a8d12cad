//! Replacing kubevirt/macvtap-cni on a running node: its links (our name scheme, on the lower device, no marker)
//! are adopted for their slots; every other link is left alone; `DP_MACVTAP_CONF` reads as the original reads it.

mod common;

use std::time::Duration;

use common::*;
use macvtap_core::device::{host_link_name, ownership_alias};
use macvtap_e2e::kubelet::healthy_count;

const T: Duration = Duration::from_secs(10);

/// A link as the original creates it: a macvtap named by the scheme on `lower`, no alias.
fn originals_link(node: &Node, device_id: &str, lower: &str) -> u64 {
    originals_link_named(node, &host_link_name(device_id), lower)
}

/// The same as the original's releases up to v0.13.1 name it: the device ID itself.
fn originals_link_named(node: &Node, name: &str, lower: &str) -> u64 {
    node.ip(&[
        "link", "add", "link", lower, "name", name, "type", "macvtap", "mode", "bridge",
    ]);
    node.ip(&["link", "set", name, "up"]);
    ifindex_of(&node.link(name).unwrap())
}

/// (ifindex, alias, parent) of a link, to show it unchanged.
fn identity(node: &Node, name: &str) -> (u64, Option<String>, Option<String>) {
    let l = node
        .link(name)
        .unwrap_or_else(|| panic!("{name} is gone\n{}", node.log()));
    (
        ifindex_of(&l),
        l["ifalias"].as_str().map(String::from),
        l["link"].as_str().map(String::from),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_links_are_adopted_and_unrelated_links_are_never_touched() {
    require_root();
    let mut node = Node::new("agent-upgrade").await;
    node.netns.add_veth("lower1", "peer1").unwrap();
    let cfg = r#"[{"name":"dp","lowerDevice":"lower0","capacity":8}]"#;
    // Phase 1: no periodic cleanup pass (the first one runs at start, before any link below exists), so only
    // Allocate and GetPreferredAllocation meet the original's link.
    node.start_agent_with_file(cfg, &["--cleanup-interval-secs", "3600"]);
    let res = resource("dp");
    node.wait_for_healthy(&res, 8).await;

    // The original's link for dpMvp0, and links that only look similar.
    let original0 = originals_link(&node, "dpMvp0", "lower0");
    let on_other_lower = host_link_name("dpMvp2");
    node.ip(&[
        "link",
        "add",
        "link",
        "lower1",
        "name",
        &on_other_lower,
        "type",
        "macvtap",
    ]);
    let foreign_alias = host_link_name("dpMvp3");
    node.ip(&[
        "link",
        "add",
        "link",
        "lower0",
        "name",
        &foreign_alias,
        "type",
        "macvtap",
    ]);
    node.ip(&["link", "set", &foreign_alias, "alias", "someone-else"]);
    let veth_named = host_link_name("dpMvp4");
    node.ip(&[
        "link",
        "add",
        &veth_named,
        "type",
        "veth",
        "peer",
        "name",
        "vpeer4",
    ]);
    let macvlan_named = host_link_name("dpMvp5");
    node.ip(&[
        "link",
        "add",
        "link",
        "lower0",
        "name",
        &macvlan_named,
        "type",
        "macvlan",
    ]);
    node.ip(&[
        "link", "add", "link", "lower0", "name", "other0", "type", "macvtap",
    ]);
    // Our scheme's name, but for a slot beyond the capacity (not one of the agent's device IDs).
    let beyond = host_link_name("dpMvp8");
    node.ip(&[
        "link", "add", "link", "lower0", "name", &beyond, "type", "macvtap",
    ]);
    let unrelated = [
        on_other_lower.as_str(),
        foreign_alias.as_str(),
        veth_named.as_str(),
        "vpeer4",
        macvlan_named.as_str(),
        "other0",
        beyond.as_str(),
    ];
    let before: Vec<_> = unrelated.iter().map(|n| identity(&node, n)).collect();
    // Let the link monitor see them (netlink events, usually within milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Preferred allocation passes over the slot whose host link is still there.
    node.kubelet
        .start_pod("ns", "vm-a", "c", &res, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert_eq!(
        node.kubelet.allocated(&res).into_iter().collect::<Vec<_>>(),
        ["dpMvp1"],
        "dpMvp0 has the original's link: offered only after free slots"
    );

    // Allocate of that slot succeeds: the link is adopted and recreated, and the tap answered is the new link's.
    let resp = node
        .kubelet
        .start_pod_ids("ns", "vm-b", "c", &res, &["dpMvp0"])
        .await
        .unwrap_or_else(|e| panic!("Allocate of the original's slot: {e}\n{}", node.log()));
    let link = node.link(&host_link_name("dpMvp0")).unwrap();
    assert_ne!(
        ifindex_of(&link),
        original0,
        "recreated, as the original does"
    );
    assert_eq!(link["ifalias"], ownership_alias("dpMvp0"));
    assert_eq!(link["link"], "lower0");
    assert_eq!(
        resp.devices[0].host_path,
        format!("/dev/tap{}", ifindex_of(&link))
    );
    assert!(
        node.metric("macvtap_agent_links_adopted_total")
            .unwrap_or(0.0)
            >= 1.0,
        "{:?}",
        node.http_get("/metrics")
    );

    // Slots whose name is taken by an unrelated link are refused, and the link stays as it was.
    for id in ["dpMvp2", "dpMvp3", "dpMvp4", "dpMvp5"] {
        let err = node
            .kubelet
            .start_pod_ids("ns", "vm-x", "c", &res, &[id])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not ours"), "{id}: {err}");
    }
    node.kubelet.release_pod("ns", "vm-x").await;
    let after: Vec<_> = unrelated.iter().map(|n| identity(&node, n)).collect();
    assert_eq!(after, before, "unrelated links changed");

    // Phase 2: cleanup running (1 s passes, 2 s grace). The original's links for two more slots: dpMvp6 held by a
    // pod (allocated by the original before the upgrade) and named as v0.13.1 names it, dpMvp7 held by nobody.
    node.agent.take().unwrap().stop(Duration::from_secs(5));
    let original6 = originals_link_named(&node, "dpMvp6", "lower0");
    originals_link(&node, "dpMvp7", "lower0");
    node.kubelet
        .record_pod("ns", "vm-old", "c", &res, &["dpMvp6"]);
    node.start_agent_with_file(cfg, &[]);
    node.wait_for_healthy(&res, 8).await;
    // Unheld: adopted, then removed like a stale link of ours.
    let cleaned = node.link_removed(&host_link_name("dpMvp7")).await;
    assert!(
        cleaned,
        "the original's unheld link not cleaned\n{}",
        node.log()
    );
    // Held: adopted (marker set, same link, renamed to our name, up again), never removed while a pod holds it.
    let renamed = eventually(T, || node.link(&host_link_name("dpMvp6")).is_some()).await;
    assert!(renamed, "v0.13.1's link not renamed\n{}", node.log());
    let held = node.link(&host_link_name("dpMvp6")).unwrap();
    assert_eq!(ifindex_of(&held), original6);
    assert_eq!(held["ifalias"], ownership_alias("dpMvp6"));
    assert!(
        held["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
        "{held}"
    );
    assert!(node.link("dpMvp6").is_none(), "the old name is gone");
    // Links of ours held by vm-a and vm-b stay too.
    for id in ["dpMvp0", "dpMvp1"] {
        assert!(node.link(&host_link_name(id)).is_some(), "{id} is held");
    }
    // Several passes later, nothing unrelated changed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after: Vec<_> = unrelated.iter().map(|n| identity(&node, n)).collect();
    assert_eq!(after, before, "unrelated links changed by cleanup");
    // The pod of the original goes away: its (now adopted) link is cleaned like ours.
    node.kubelet.release_pod("ns", "vm-old").await;
    let cleaned = node.link_removed(&host_link_name("dpMvp6")).await;
    assert!(
        cleaned,
        "adopted link not cleaned after release\n{}",
        node.log()
    );
    let after: Vec<_> = unrelated.iter().map(|n| identity(&node, n)).collect();
    assert_eq!(after, before);
}

/// The original exits when `DP_MACVTAP_CONF` is unset ("must be set") or not JSON (an empty value is not), and
/// serves discovery for `[]` (and `null`, which Go decodes into an empty list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_macvtap_conf_unset_empty_and_empty_list_behave_as_the_original() {
    require_root();
    let mut node = Node::new("agent-env-empty").await;
    let var = macvtap_api::legacy::ENV_VAR;

    // Unset, and no node name to serve a MacvtapNodeState instead: exits, naming the variable.
    let out = node.agent_command_without_node_name(&[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DP_MACVTAP_CONF environment variable must be set"),
        "{err}"
    );

    // Set but empty (or blank): not JSON, exits with the parse error, before touching anything.
    for empty in ["", "  "] {
        let out = node.agent_command(&[]).env(var, empty).output().unwrap();
        assert!(!out.status.success(), "{empty:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid configuration")
                && err.contains("DP_MACVTAP_CONF is not a JSON array"),
            "{empty:?}: {err}"
        );
    }
    assert_eq!(sockets_in(&node.device_plugin_dir()), ["kubelet.sock"]);

    // `[]` and `null`: discovery, one resource per suitable link (veths count here).
    for list in ["[]", "null"] {
        let mut cmd = node.agent_command(&["--discovery-include-kind", "veth"]);
        cmd.env(var, list);
        node.spawn(cmd);
        node.kubelet
            .wait_for_resource(&resource("lower0"), T, |d| healthy_count(d) == 100)
            .await
            .unwrap_or_else(|e| panic!("{list}: {e}\n{}", node.log()));
        node.agent.take().unwrap().stop(Duration::from_secs(5));
        node.kubelet
            .wait_for_unregistered(&resource("lower0"), T)
            .await
            .unwrap();
    }
}
