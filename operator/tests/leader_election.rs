//! Two operator replicas: one holds the Lease and reconciles; when it dies the other takes over; a stopped
//! leader releases the Lease.

mod common;

use std::time::Duration;

use common::{Cluster, NAMESPACE, TIMEOUT, eventually, res};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

async fn holder(c: &Cluster) -> Option<String> {
    Api::<Lease>::namespaced(c.admin.clone(), NAMESPACE)
        .get_opt(&c.lease_name)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let c = Cluster::start(&[]).await;
    c.create_node("le-n1", &[]).await;
    let mut a = c.operator("le-a", &[]);
    eventually("le-a leads", TIMEOUT, || async {
        match holder(&c).await {
            Some(h) if h == "le-a" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut b = c.operator("le-b", &[]);
    eventually("le-b is a ready standby", TIMEOUT, || async {
        match b.http_get("/readyz").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(b.metric("macvtap_operator_leader ").await, 0.0);
    assert_eq!(a.metric("macvtap_operator_leader ").await, 1.0);

    c.create_pool("le-p1", json!({"lowerDevice": "eth1", "capacity": 2}))
        .await;
    eventually("le-a writes le-p1", TIMEOUT, || async {
        let r = c.resources_of("le-n1").await;
        if r == Some(vec![res("le-p1", "le-p1", "eth1", 2)]) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    // The standby wrote nothing.
    assert_eq!(
        b.metric("macvtap_operator_reconciliations_total").await,
        0.0
    );

    // The leader dies without releasing the Lease: the standby takes over once it expires (4s here).
    a.process.kill();
    c.create_pool("le-p2", json!({"lowerDevice": "eth2", "capacity": 3}))
        .await;
    eventually(
        "le-b takes over and writes le-p2",
        Duration::from_secs(40),
        || async {
            let r = c.resources_of("le-n1").await;
            if r == Some(vec![
                res("le-p1", "le-p1", "eth1", 2),
                res("le-p2", "le-p2", "eth2", 3),
            ]) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    assert_eq!(holder(&c).await.as_deref(), Some("le-b"));
    assert_eq!(b.metric("macvtap_operator_leader ").await, 1.0);

    // SIGTERM: the leader stops promptly and releases the Lease for the next replica.
    let stopped = std::time::Instant::now();
    b.process.stop(Duration::from_secs(10));
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "took {:?}",
        stopped.elapsed()
    );
    assert!(!b.process.is_running());
    eventually("Lease released", Duration::from_secs(5), || async {
        match holder(&c).await {
            None => Ok(()),
            Some(h) => Err(format!("still held by {h}")),
        }
    })
    .await;
    assert!(
        b.process.log_tail(5).contains("leader Lease released"),
        "{}",
        b.log_tail()
    );
}
