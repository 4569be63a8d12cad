//! Pools and Node labels drive MacvtapNodeStates: create/edit/delete pools, label/unlabel/delete nodes, per-node
//! overrides, edits by others reverted. The operator runs as the chart's ServiceAccount with the chart's RBAC.

mod common;

use common::{Cluster, TIMEOUT, eventually, res};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_node_labels_drive_node_states() {
    let c = Cluster::start(&[]).await;
    let n1 = c.create_node("ns-n1", &[("role", "worker")]).await;
    c.create_node("ns-n2", &[("role", "worker")]).await;
    c.create_node("ns-n3", &[]).await;
    let op = c.operator("ns-op", &[]);

    // Every node gets a state, empty until a pool selects it, owned by its Node.
    for n in ["ns-n1", "ns-n2", "ns-n3"] {
        eventually(&format!("empty state for {n}"), TIMEOUT, || async {
            match c.resources_of(n).await {
                Some(r) if r.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let s1 = c.states().get("ns-n1").await.unwrap();
    let owner = &s1.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", "ns-n1")
    );
    assert_eq!(Some(&owner.uid), n1.metadata.uid.as_ref());

    // A pool for workers.
    c.create_pool(
        "dataplane",
        json!({"lowerDevice": "eth1", "capacity": 5, "nodeSelector": {"matchLabels": {"role": "worker"}}}),
    )
    .await;
    for n in ["ns-n1", "ns-n2"] {
        eventually(&format!("{n} serves dataplane"), TIMEOUT, || async {
            let r = c.resources_of(n).await;
            if r == Some(vec![res("dataplane", "dataplane", "eth1", 5)]) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
    }
    assert_eq!(c.resources_of("ns-n3").await, Some(vec![]));

    // Editing the pool writes exactly the two node states it selects.
    let n3_version = c.states().get("ns-n3").await.unwrap().resource_version();
    let writes_before = op
        .metric("macvtap_operator_api_writes_total{resource=\"macvtapnodestates\",verb=\"apply\"}")
        .await;
    c.patch_pool("dataplane", json!({"capacity": 7})).await;
    for n in ["ns-n1", "ns-n2"] {
        eventually(&format!("{n} capacity 7"), TIMEOUT, || async {
            let r = c.resources_of(n).await;
            if r == Some(vec![res("dataplane", "dataplane", "eth1", 7)]) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
    }
    // Let any stray reconcile finish before counting.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let writes_after = op
        .metric("macvtap_operator_api_writes_total{resource=\"macvtapnodestates\",verb=\"apply\"}")
        .await;
    assert_eq!(
        writes_after - writes_before,
        2.0,
        "one write per affected node state, none for unchanged ones"
    );
    assert_eq!(
        c.states().get("ns-n3").await.unwrap().resource_version(),
        n3_version
    );

    // Relabel: n3 joins, n1 leaves.
    c.label_node("ns-n3", &[("role", Some("worker"))]).await;
    c.label_node("ns-n1", &[("role", None)]).await;
    eventually("n3 joins, n1 leaves", TIMEOUT, || async {
        let (r1, r3) = (c.resources_of("ns-n1").await, c.resources_of("ns-n3").await);
        if r1 == Some(vec![]) && r3 == Some(vec![res("dataplane", "dataplane", "eth1", 7)]) {
            Ok(())
        } else {
            Err(format!("n1 {r1:?} n3 {r3:?}"))
        }
    })
    .await;

    // Per-node override of the lower device.
    c.patch_pool(
        "dataplane",
        json!({"lowerDeviceOverrides": [{"nodeSelector": {"matchLabels": {"nic": "mlx"}}, "lowerDevice": "ens5f0"}]}),
    )
    .await;
    c.label_node("ns-n2", &[("nic", Some("mlx"))]).await;
    // n2 has the override, n3 the pool's own lower device.
    let overridden = || async {
        let (r2, r3) = (c.resources_of("ns-n2").await, c.resources_of("ns-n3").await);
        if r2 == Some(vec![res("dataplane", "dataplane", "ens5f0", 7)])
            && r3 == Some(vec![res("dataplane", "dataplane", "eth1", 7)])
        {
            Ok(())
        } else {
            Err(format!("n2 {r2:?} n3 {r3:?}"))
        }
    };
    eventually("override on n2", TIMEOUT, overridden).await;

    // Edits of the spec by someone else are reverted; a deleted state of a live node comes back.
    c.states()
        .patch(
            "ns-n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": [{"name": "rogue", "pool": "x", "lowerDevice": "eth9", "capacity": 1}]}})),
        )
        .await
        .unwrap();
    c.states()
        .delete("ns-n2", &DeleteParams::default())
        .await
        .unwrap();
    eventually("edits reverted, state recreated", TIMEOUT, overridden).await;

    // A deleted Node takes its state along (no garbage collector runs here: the operator deletes it).
    c.delete_node("ns-n2").await;
    eventually("state of deleted node gone", TIMEOUT, || async {
        match c.resources_of("ns-n2").await {
            None => Ok(()),
            Some(r) => Err(format!("still there: {r:?}")),
        }
    })
    .await;

    // Deleting the pool empties the states of the remaining nodes.
    c.delete_pool("dataplane").await;
    eventually("pool gone from every state", TIMEOUT, || async {
        let (r1, r3) = (c.resources_of("ns-n1").await, c.resources_of("ns-n3").await);
        if r1 == Some(vec![]) && r3 == Some(vec![]) {
            Ok(())
        } else {
            Err(format!("n1 {r1:?} n3 {r3:?}"))
        }
    })
    .await;

    // Probes and metrics.
    assert_eq!(op.http_get("/healthz").await.unwrap().0, 200);
    assert_eq!(op.http_get("/readyz").await.unwrap().0, 200);
    assert_eq!(op.metric("macvtap_operator_leader ").await, 1.0);
    assert!(
        op.metric("macvtap_operator_reconciliations_total{controller=\"nodestate\"}")
            .await
            > 0.0
    );
    assert_eq!(
        op.metric("macvtap_operator_reconcile_errors_total").await,
        0.0,
        "no reconcile failed under the chart's RBAC:\n{}",
        op.log_tail()
    );
}
