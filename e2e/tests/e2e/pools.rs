//! Pools as the cluster sees them: capacity edits, a lower device going down, capacity used up.

use super::*;

pub async fn capacity_edit(c: &mut Cluster) -> Result<()> {
    set_capacity(c, "dataplane", 7).await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, a| {
            cap == 7 && a == 7
        })
        .await?;
    }
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.capacity == 14)
    })
    .await?;
    set_capacity(c, "dataplane", 50).await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, _| {
            cap == 50
        })
        .await?;
    }
    Ok(())
}

/// `p4p1`, not `eth0`: eth0 also carries the node's own traffic (kubelet, agent), like a host's only NIC.
pub async fn lower_device_down(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("pools/p4p1.yaml")).await?;
    c.wait_pool("p4p1", Duration::from_secs(90), pool_ready)
        .await?;
    c.node("node-b")
        .netns
        .ip(&["link", "set", "p4p1", "down"])?;
    let pool = c
        .wait_pool("p4p1", Duration::from_secs(60), |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.status == "True")
            })
        })
        .await;
    c.node("node-b").netns.ip(&["link", "set", "p4p1", "up"])?;
    let degraded = pool?
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    ensure!(
        degraded.message.contains("node-b"),
        "Degraded names the node: {degraded:?}"
    );
    c.wait_pool("p4p1", Duration::from_secs(60), pool_ready)
        .await?;
    Ok(())
}

/// Capacity used up: the scheduler keeps the next pod Pending, saying which resource is short.
pub async fn capacity_exhausted(c: &mut Cluster) -> Result<()> {
    c.apply_yaml(
        "apiVersion: macvtap.network.kubevirt.io/v1alpha1\nkind: MacvtapPool\nmetadata:\n  name: scarce\n\
         spec:\n  lowerDevice: p4p1\n  capacity: 1\n  nodeSelector:\n    matchLabels:\n      kubernetes.io/hostname: node-a\n",
    )
    .await?;
    c.wait_node_resource("node-a", &resource_name("scarce"), RUN, |cap, a| {
        cap == 1 && a == 1
    })
    .await?;
    let first = c
        .run_pod(busybox("scarce-1", None, Some("scarce"), None), RUN)
        .await?;
    ensure!(first.node == "node-a", "scheduled on {}", first.node);
    let api = Api::<Pod>::namespaced(c.client(), "default");
    api.create(
        &PostParams::default(),
        &busybox("scarce-2", None, Some("scarce"), None),
    )
    .await?;
    wait::until(
        "scarce-2 Unschedulable",
        Duration::from_secs(60),
        || async {
            let p = api.get("scarce-2").await?;
            Ok(p.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                        && c.message.as_deref().is_some_and(|m| {
                            m.contains("Insufficient macvtap.network.kubevirt.io/scarce")
                        })
                }))
        },
    )
    .await?;
    // Freeing the device lets the scheduler place the waiting pod.
    c.delete_pod("default", "scarce-1", GONE).await?;
    c.wait_running("default", "scarce-2", RUN).await?;
    c.delete_pod("default", "scarce-2", GONE).await?;
    Api::<MacvtapPool>::all(c.client())
        .delete("scarce", &DeleteParams::default())
        .await?;
    Ok(())
}
