//! With `--clean-stale-node-resources` (and the chart's matching nodes/status rule), a deleted pool's extended
//! resource left at 0 in Node status is removed; one still in use is left alone.

mod common;

use common::{Cluster, TIMEOUT, eventually};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const GONE: &str = "macvtap.network.kubevirt.io/gone";
const BUSY: &str = "macvtap.network.kubevirt.io/busy";

async fn node_resources(c: &Cluster, node: &str) -> (Vec<String>, Vec<String>) {
    let n = c.nodes().get(node).await.unwrap();
    let status = n.status.unwrap_or_default();
    let keys = |m: Option<std::collections::BTreeMap<String, _>>| {
        m.unwrap_or_default().into_keys().collect()
    };
    (keys(status.capacity), keys(status.allocatable))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pools_leave_no_zero_resources_on_nodes() {
    let c = Cluster::start(&["operator.cleanStaleNodeResources=true"]).await;
    c.create_node("st-n1", &[]).await;
    let op = c.operator(
        "st-op",
        &["--clean-stale-node-resources", "--log-format", "json"],
    );
    c.create_pool("gone", json!({"lowerDevice": "eth1"})).await;
    c.create_pool("busy", json!({"lowerDevice": "eth2"})).await;
    eventually("state written", TIMEOUT, || async {
        match c.resources_of("st-n1").await {
            Some(r) if r.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // What the kubelet leaves behind: "gone" at 0 (its plugin went away), "busy" still with devices.
    c.nodes()
        .patch_status(
            "st-n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "capacity": {GONE: "0", BUSY: "5", "cpu": "2"},
                "allocatable": {GONE: "0", BUSY: "5", "cpu": "2"},
            }})),
        )
        .await
        .unwrap();
    c.delete_pool("gone").await;
    c.delete_pool("busy").await;
    eventually("stale resource removed", TIMEOUT, || async {
        let (cap, alloc) = node_resources(&c, "st-n1").await;
        if !cap.iter().any(|k| k == GONE) && !alloc.iter().any(|k| k == GONE) {
            Ok((cap, alloc))
        } else {
            Err(format!("capacity {cap:?} allocatable {alloc:?}"))
        }
    })
    .await;
    // Still advertised devices and other resources stay.
    let (cap, alloc) = node_resources(&c, "st-n1").await;
    for k in [BUSY, "cpu"] {
        assert!(
            cap.iter().any(|c| c == k) && alloc.iter().any(|a| a == k),
            "{k}: {cap:?} {alloc:?}"
        );
    }

    // --log-format json: one JSON object per line, with level and message.
    let log = std::fs::read_to_string(op.process.log_path()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
    assert!(
        log.contains("removed stale extended resource from node status"),
        "{log}"
    );
}
