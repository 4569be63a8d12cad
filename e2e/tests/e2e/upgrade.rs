//! Upgrading from kubevirt/macvtap-cni on a live node.

use super::*;

/// Upgrading from kubevirt/macvtap-cni: the original left macvtap links on a node for our slots (its names, no
/// marker of ours). Pods scheduled there get those slots and attach; the ones no pod holds are cleaned up; a link
/// that is not the original's for one of our slots is never touched.
pub async fn upgrade_from_original(c: &mut Cluster) -> Result<()> {
    set_capacity(c, "dataplane", 5).await?;
    c.wait_node_resource("node-b", &resource_name("dataplane"), RUN, |cap, _| {
        cap == 5
    })
    .await?;
    let node = c.node("node-b");
    // What the original's Allocate made: `ip link add mvt<hash> link eth0 type macvtap mode bridge`, up.
    let originals: Vec<String> = (0..5)
        .map(|slot| macvtap_link::host_link_name(&macvtap_link::device_id("dataplane", slot)))
        .collect();
    for name in originals
        .iter()
        .chain(std::iter::once(&"mvt0123456789ab".to_string()))
    {
        node.netns.ip(&[
            "link", "add", name, "link", "eth0", "type", "macvtap", "mode", "bridge",
        ])?;
        node.netns.ip(&["link", "set", name, "up"])?;
    }
    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(
            original_pod(c, &format!("upgraded-{i}"), "node-b")
                .await
                .context("a pod on a slot the original's link occupied")?,
        );
    }
    for p in &pods {
        check_tap(p)?;
    }
    // The two slots no pod holds: their original links go (fast cleanup in this cluster); the stranger stays.
    wait::until(
        "unheld original links cleaned up",
        Duration::from_secs(90),
        || async { Ok(c.node_macvtaps("node-b")? == ["mvt0123456789ab"]) },
    )
    .await?;
    for p in pods {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    let left = c.node_macvtaps("node-b")?;
    c.node("node-b")
        .netns
        .ip(&["link", "del", "mvt0123456789ab"])?;
    ensure!(left == ["mvt0123456789ab"], "after the pods: {left:?}");
    set_capacity(c, "dataplane", 50).await?;
    c.wait_node_resource("node-b", &resource_name("dataplane"), RUN, |cap, _| {
        cap == 50
    })
    .await?;
    Ok(())
}
