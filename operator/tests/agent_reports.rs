//! Pool readiness says the truth about the agents: registration, healthy devices, the spec generation they serve,
//! and whether they still report at all (`--agent-stale-after-seconds`). `Degraded` names the nodes and why.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, TIMEOUT, eventually};
use serde_json::{Value, json};

/// What a stand-in agent reports for a node: pinned observed generation (else the current one), resources.
type Reports = Arc<Mutex<BTreeMap<String, (Option<i64>, Value)>>>;

/// Stand-in agents: every 500 ms each node in `reports` gets its status written again (a heartbeat).
fn heartbeat(c: Arc<Cluster>, reports: Reports) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now: Vec<_> = reports
                .lock()
                .unwrap()
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            for (node, (pinned, resources)) in now {
                match pinned {
                    Some(g) => c.report_status_for(&node, Some(g), resources).await,
                    None => c.report_status(&node, resources).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

fn entry(registered: bool, healthy: u32) -> Value {
    json!([{"name": "ar-pool", "pool": "ar-pool", "lowerDevice": "eth1", "lowerDevicePresent": true,
            "lowerDeviceUp": true, "capacity": 5, "healthy": healthy, "allocated": 0, "registered": registered}])
}

/// Waits for the pool's Ready condition to be `status` with `reason`, and Degraded to say `degraded_part`.
async fn wait_ready(c: &Cluster, status: &str, reason: &str, part: &str) -> String {
    eventually(
        &format!("Ready={status} ({reason}: {part})"),
        TIMEOUT,
        || async {
            let p = c.pools().get("ar-pool").await.unwrap();
            let conds = p.status.clone().unwrap_or_default().conditions;
            let get = |t: &str| conds.iter().find(|c| c.type_ == t).cloned();
            match (get("Ready"), get("Degraded")) {
                (Some(r), Some(d))
                    if r.status == status
                        && r.reason == reason
                        && r.message.contains(part)
                        && d.message == r.message
                        && d.status == if status == "True" { "False" } else { "True" } =>
                {
                    Ok(r.message)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_ready_follows_registration_health_generation_and_agent_heartbeats() {
    let c = Arc::new(Cluster::start(&[]).await);
    for n in ["ar-a", "ar-b"] {
        c.create_node(n, &[("ar", "yes")]).await;
    }
    let _op = c.operator("ar-op", &["--agent-stale-after-seconds=3"]);
    c.create_pool(
        "ar-pool",
        json!({"lowerDevice": "eth1", "capacity": 5, "nodeSelector": {"matchLabels": {"ar": "yes"}}}),
    )
    .await;
    for n in ["ar-a", "ar-b"] {
        eventually(&format!("{n} serves ar-pool"), TIMEOUT, || async {
            match c.resources_of(n).await {
                Some(r) if r.len() == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let reports: Reports = Arc::default();
    let set = |node: &str, pinned: Option<i64>, r: Value| {
        reports
            .lock()
            .unwrap()
            .insert(node.to_string(), (pinned, r));
    };
    set("ar-a", None, entry(true, 5));
    set("ar-b", None, entry(true, 5));
    let beat = heartbeat(c.clone(), reports.clone());
    wait_ready(&c, "True", "AllNodesReady", "2 of 2 nodes serve the pool").await;

    // Not registered with the kubelet.
    set("ar-b", None, entry(false, 5));
    wait_ready(
        &c,
        "False",
        "NotRegistered",
        "1 of 2 nodes serve the pool: device plugin not registered with the kubelet on node ar-b",
    )
    .await;
    let pool = c.pools().get("ar-pool").await.unwrap();
    assert_eq!(
        pool.status.unwrap().allocatable,
        5,
        "unregistered devices are not allocatable"
    );

    // Registered, no healthy device.
    set("ar-b", None, entry(true, 0));
    wait_ready(
        &c,
        "False",
        "NoHealthyDevices",
        "no healthy devices on node ar-b",
    )
    .await;

    // A spec change the agent on b has not caught up with.
    set("ar-b", None, entry(true, 5));
    wait_ready(&c, "True", "AllNodesReady", "2 of 2").await;
    let old = c.states().get("ar-b").await.unwrap().metadata.generation;
    set("ar-b", old, entry(true, 5));
    c.patch_pool("ar-pool", json!({"capacity": 6})).await;
    wait_ready(
        &c,
        "False",
        "AgentOutdated",
        "agent has not applied the latest node state spec on node ar-b",
    )
    .await;
    set("ar-b", None, entry(true, 6));
    wait_ready(&c, "True", "AllNodesReady", "2 of 2").await;

    // b's agent stops writing: after the threshold it is not reporting, whatever it said last.
    reports.lock().unwrap().remove("ar-b");
    let msg = wait_ready(
        &c,
        "False",
        "AgentNotReporting",
        "agent not reporting (status not updated recently) on node ar-b",
    )
    .await;
    assert!(!msg.contains("ar-a"), "{msg}");
    // And back.
    set("ar-b", None, entry(true, 6));
    wait_ready(&c, "True", "AllNodesReady", "2 of 2").await;

    beat.abort();
    c.delete_pool("ar-pool").await;
    for n in ["ar-a", "ar-b"] {
        c.delete_node(n).await;
    }
}
