//! Conflicting pools get a Conflict condition and an Event while the older pool wins; node state status written
//! by an agent (here: admin standing in for it) becomes pool status.

mod common;

use common::{Cluster, TIMEOUT, eventually, res};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use macvtap_api::MacvtapPool;
use serde_json::json;

fn condition(pool: &MacvtapPool, type_: &str) -> Option<(String, String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn pool_condition(c: &Cluster, pool: &str, type_: &str) -> Option<(String, String, String)> {
    condition(&c.pools().get(pool).await.unwrap(), type_)
}

/// Events about `pool` (cluster-scoped objects' Events land in `default`): (reason, note).
async fn events_for(c: &Cluster, pool: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(c.admin.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_agent_status_reach_pool_status() {
    let c = Cluster::start(&[]).await;
    c.create_node("cs-a", &[("pool", "yes")]).await;
    c.create_node("cs-b", &[("pool", "yes")]).await;
    let mut op = c.operator("cs-op", &[]);

    c.create_pool(
        "old",
        json!({"lowerDevice": "eth1", "resourceName": "shared", "capacity": 10}),
    )
    .await;
    // creationTimestamp has seconds: make "young" strictly younger (the name breaks ties the same way anyway).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.create_pool(
        "young",
        json!({"lowerDevice": "eth2", "resourceName": "shared", "capacity": 10}),
    )
    .await;
    c.create_pool(
        "vepa",
        json!({"lowerDevice": "eth1", "mode": "vepa", "capacity": 4}),
    )
    .await;

    // The older pool wins on both nodes; the loser says so, naming the winner and the nodes.
    for n in ["cs-a", "cs-b"] {
        eventually(&format!("{n} serves only the winners"), TIMEOUT, || async {
            let r = c.resources_of(n).await;
            if r == Some(vec![res("shared", "old", "eth1", 10)]) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
    }
    let (status, reason, message) = eventually("Conflict on young", TIMEOUT, || async {
        match pool_condition(&c, "young", "Conflict").await {
            Some(cond) if cond.0 == "True" => Ok(cond),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ResourceNameConflict")
    );
    assert!(
        message.contains("\"old\"") && message.contains("cs-a") && message.contains("cs-b"),
        "{message}"
    );
    let (_, reason, message) = eventually("Conflict on vepa", TIMEOUT, || async {
        match pool_condition(&c, "vepa", "Conflict").await {
            Some(cond) if cond.0 == "True" => Ok(cond),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reason, "LowerDeviceConflict");
    assert!(
        message.contains("eth1") && message.contains("\"old\""),
        "{message}"
    );
    assert_eq!(
        pool_condition(&c, "old", "Conflict").await.unwrap().0,
        "False"
    );
    let events = eventually("Conflict Event for young", TIMEOUT, || async {
        let ev = events_for(&c, "young").await;
        if ev.iter().any(|(r, _)| r == "ResourceNameConflict") {
            Ok(ev)
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;
    assert!(
        events.iter().any(|(_, note)| note.contains("\"old\"")),
        "{events:?}"
    );

    // The winner goes away: the loser takes over and its Conflict clears, with an Event saying so.
    c.delete_pool("old").await;
    for n in ["cs-a", "cs-b"] {
        eventually(&format!("{n} serves young and vepa"), TIMEOUT, || async {
            let r = c.resources_of(n).await;
            let want = vec![
                res("shared", "young", "eth2", 10),
                res("vepa", "vepa", "eth1", 4),
            ];
            if r == Some(want) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
    }
    eventually("young's Conflict cleared", TIMEOUT, || async {
        match pool_condition(&c, "young", "Conflict").await {
            Some(cond) if cond.0 == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("ConflictResolved Event", TIMEOUT, || async {
        let ev = events_for(&c, "young").await;
        if ev.iter().any(|(r, _)| r == "ConflictResolved") {
            Ok(())
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;

    // Agents report: a is fine, b lacks the lower device.
    c.report_status(
        "cs-a",
        json!([{"name": "shared", "pool": "young", "lowerDevice": "eth2", "lowerDevicePresent": true,
                "lowerDeviceUp": true, "capacity": 10, "healthy": 10, "allocated": 3, "registered": true}]),
    )
    .await;
    c.report_status(
        "cs-b",
        json!([{"name": "shared", "pool": "young", "lowerDevice": "eth2", "lowerDevicePresent": false,
                "lowerDeviceUp": false, "capacity": 10, "healthy": 0, "allocated": 0, "registered": true}]),
    )
    .await;
    let pool = eventually("young degraded on b", TIMEOUT, || async {
        let p = c.pools().get("young").await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        if s.nodes_ready == 1 && s.allocated == 3 {
            Ok(p)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let s = pool.status.clone().unwrap();
    assert_eq!(
        (
            s.nodes_matched,
            s.nodes_ready,
            s.capacity,
            s.allocatable,
            s.allocated
        ),
        (2, 1, 20, 10, 3)
    );
    assert_eq!(s.observed_generation, pool.metadata.generation);
    let (ready, reason, message) = condition(&pool, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "LowerDeviceMissing")
    );
    assert!(
        message.contains("lower device eth2 missing on node cs-b"),
        "{message}"
    );
    assert_eq!(condition(&pool, "Degraded").unwrap().0, "True");

    // b's device shows up: Ready.
    c.report_status(
        "cs-b",
        json!([{"name": "shared", "pool": "young", "lowerDevice": "eth2", "lowerDevicePresent": true,
                "lowerDeviceUp": true, "capacity": 10, "healthy": 10, "allocated": 1, "registered": true}]),
    )
    .await;
    eventually("young Ready", TIMEOUT, || async {
        let p = c.pools().get("young").await.unwrap();
        match (
            condition(&p, "Ready"),
            p.status.as_ref().map(|s| (s.nodes_ready, s.allocated)),
        ) {
            (Some((st, _, _)), Some((2, 4))) if st == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // vepa has no agent report on either node.
    let (_, reason, message) = pool_condition(&c, "vepa", "Ready").await.unwrap();
    assert_eq!(reason, "AgentNotReporting", "{message}");

    // A pool that selects nothing says so.
    c.create_pool(
        "nowhere",
        json!({"lowerDevice": "eth3", "nodeSelector": {"matchLabels": {"pool": "no"}}}),
    )
    .await;
    eventually("nowhere: NoMatchingNodes", TIMEOUT, || async {
        match pool_condition(&c, "nowhere", "Ready").await {
            Some((s, r, _)) if s == "False" && r == "NoMatchingNodes" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A selector the API server accepts but nobody can evaluate: reported, never a crash loop, others unharmed.
    c.create_pool(
        "odd",
        json!({"lowerDevice": "eth4", "nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "Near", "values": ["yes"]}]}}),
    )
    .await;
    eventually("odd: InvalidNodeSelector", TIMEOUT, || async {
        match pool_condition(&c, "odd", "Ready").await {
            Some((s, r, _)) if s == "False" && r == "InvalidNodeSelector" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let r = c.resources_of("cs-a").await;
    assert_eq!(
        r,
        Some(vec![
            res("shared", "young", "eth2", 10),
            res("vepa", "vepa", "eth1", 4)
        ])
    );
    assert!(op.process.is_running());
}
