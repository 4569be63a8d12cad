//! The operator is killed mid-way, the cluster changes while it is down, a new one starts: it converges with
//! exactly one node state per existing node, each with the right spec, and no orphans.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, TIMEOUT, eventually, res};
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

const NODES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_way_converges_without_orphans() {
    let c = Cluster::start(&[]).await;
    for i in 0..NODES {
        let zone = if i % 2 == 0 { "a" } else { "b" };
        c.create_node(&format!("rs-{i}"), &[("zone", zone)]).await;
    }
    let mut first = c.operator("rs-op1", &[]);
    c.create_pool("rs-all", json!({"lowerDevice": "eth1", "capacity": 8}))
        .await;
    c.create_pool(
        "rs-za",
        json!({"lowerDevice": "eth2", "nodeSelector": {"matchLabels": {"zone": "a"}}}),
    )
    .await;
    c.create_pool(
        "rs-zb",
        json!({"lowerDevice": "eth3", "resourceName": "zb", "nodeSelector": {"matchLabels": {"zone": "b"}}}),
    )
    .await;
    // Mid-way: some node states written, not necessarily all.
    eventually("first writes", TIMEOUT, || async {
        let n = c
            .states()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if n > 0 {
            Ok(())
        } else {
            Err("no node state yet".to_string())
        }
    })
    .await;
    first.process.kill();

    // Changes while no operator runs.
    for i in 0..5 {
        c.delete_node(&format!("rs-{i}")).await;
    }
    c.label_node("rs-5", &[("zone", Some("a"))]).await;
    c.patch_pool("rs-all", json!({"capacity": 3})).await;
    c.delete_pool("rs-za").await;
    c.create_node("rs-new", &[("zone", "b")]).await;

    let second = c.operator("rs-op2", &[]);
    let nodes: BTreeSet<String> = c
        .nodes()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .filter(|n| n.starts_with("rs-"))
        .collect();
    assert_eq!(nodes.len(), NODES - 5 + 1);
    let expected = |node: &str| {
        let zone_b = node == "rs-new"
            || (node != "rs-5"
                && node.trim_start_matches("rs-").parse::<usize>().unwrap() % 2 == 1);
        let mut want = vec![res("rs-all", "rs-all", "eth1", 3)];
        if zone_b {
            want.push(res("zb", "rs-zb", "eth3", 100));
        }
        want
    };
    eventually("converged", TIMEOUT, || async {
        let states = c.states().list(&ListParams::default()).await.unwrap().items;
        let names: BTreeSet<String> = states.iter().map(|s| s.name_any()).collect();
        let ours: BTreeSet<String> = names
            .iter()
            .filter(|n| n.starts_with("rs-"))
            .cloned()
            .collect();
        if ours != nodes {
            return Err(format!("states {ours:?} != nodes {nodes:?}"));
        }
        for node in &nodes {
            let got = c.resources_of(node).await;
            if got.as_ref() != Some(&expected(node)) {
                return Err(format!("{node}: {got:?} != {:?}", expected(node)));
            }
        }
        Ok(())
    })
    .await;
    // Exactly one owner reference, to the live Node.
    for node in &nodes {
        let state = c.states().get(node).await.unwrap();
        let uid = c.nodes().get(node).await.unwrap().metadata.uid;
        let owners = state.owner_references();
        assert_eq!(owners.len(), 1, "{node}: {owners:?}");
        assert_eq!(Some(&owners[0].uid), uid.as_ref(), "{node}");
    }
    // Pool status follows too.
    eventually("pool status", TIMEOUT, || async {
        let p = c.pools().get("rs-zb").await.unwrap();
        match p.status.as_ref().map(|s| s.nodes_matched) {
            // 15 odd nodes, minus rs-1 and rs-3 (deleted) and rs-5 (relabelled), plus rs-new.
            Some(13) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Give a stray late write a chance to show up, then nothing changed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        second
            .metric("macvtap_operator_reconcile_errors_total")
            .await,
        0.0,
        "{}",
        second.log_tail()
    );
}
