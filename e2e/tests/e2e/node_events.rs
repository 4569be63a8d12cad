//! What happens to a node while pods hold devices: the kubelet restarts, the agent pod is recreated, a drain.

use super::*;

/// The kubelet restarts while a pod holds a device: the pod keeps its interface, the agent re-registers, the
/// Node's allocatable comes back, and new pods still attach.
pub async fn kubelet_restart(c: &mut Cluster) -> Result<()> {
    let holder = original_pod(c, "holder", "node-a").await?;
    let before = holder.net1()?;
    let kubeconfig = c.dir.join("node-a/kubelet.kubeconfig");
    let ca = c.control_plane.ca_path().to_path_buf();
    c.node_mut("node-a").stop_kubelet();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.node_mut("node-a").start_kubelet(&kubeconfig, &ca)?;
    c.wait_nodes_ready().await?;
    c.wait_node_resource("node-a", &resource_name("dataplane"), RUN, |cap, a| {
        cap == 50 && a == 50
    })
    .await
    .context("allocatable back after the kubelet restart")?;
    let after = holder.net1()?;
    ensure!(
        before["ifindex"] == after["ifindex"],
        "net1 changed: {before} -> {after}"
    );
    c.wait_running(&holder.namespace, &holder.name, RUN).await?;
    let next = original_pod(c, "after-restart", "node-a").await?;
    ensure!(
        check_tap(&next)? != check_tap(&holder)?,
        "the new pod got the holder's tap"
    );
    for p in [holder, next] {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    Ok(())
}

/// The agent pod is deleted: the DaemonSet makes a new one, the link of a running pod is untouched, and a link
/// whose pod went away while no agent ran (an orphan) is cleaned up.
pub async fn agent_recreated(c: &mut Cluster) -> Result<()> {
    let user = original_pod(c, "user", "node-a").await?;
    let orphan_pod = c
        .run_pod(
            busybox("orphan", None, Some("dataplane"), Some("node-a")),
            RUN,
        )
        .await?;
    let orphan_if = orphan_pod.tap_devices()[0].ifindex().context("tap")?;
    let before = user.net1()?;
    let agent = c.agent_pod("node-a").await?;
    let pods = Api::<Pod>::namespaced(c.client(), &c.chart.namespace);
    // Stop the DaemonSet from replacing the agent until the orphan exists: delete the agent and the pod at once.
    pods.delete(&agent.name_any(), &DeleteParams::default())
        .await?;
    c.delete_pod(&orphan_pod.namespace, &orphan_pod.name, GONE)
        .await?;
    wait::until(
        "a new agent pod on node-a",
        Duration::from_secs(120),
        || async {
            Ok(c.agent_pod("node-a").await.is_ok_and(|p| {
                p.uid() != agent.uid()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| cs.iter().all(|c| c.ready))
            }))
        },
    )
    .await?;
    wait::until(
        "the orphan's link cleaned up",
        Duration::from_secs(120),
        || async {
            let out = c
                .node("node-a")
                .netns
                .ip(&["-j", "link", "show", "type", "macvtap"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok(!v
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["ifindex"] == orphan_if))
        },
    )
    .await?;
    let after = user.net1()?;
    ensure!(
        before == after,
        "the running pod's net1 changed: {before} -> {after}"
    );
    check_tap(&user)?;
    c.delete_pod(&user.namespace, &user.name, GONE).await
}

/// `kubectl drain`: the node's pods are evicted, their links removed and the devices free for the pods after.
pub async fn drain(c: &mut Cluster) -> Result<()> {
    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(original_pod(c, &format!("drained-{i}"), "node-b").await?);
    }
    c.kubectl_out(&[
        "drain",
        "node-b",
        "--ignore-daemonsets",
        "--force",
        "--delete-emptydir-data",
        "--grace-period=1",
        "--timeout=120s",
    ])?;
    let result = async {
        wait::until("node-b's links gone", GONE, || async {
            Ok(c.node_macvtaps("node-b")?.is_empty())
        })
        .await?;
        wait::until("nothing allocated", GONE, || async {
            Ok(allocated(c, "dataplane").await? == 0)
        })
        .await
    }
    .await;
    c.kubectl_out(&["uncordon", "node-b"])?;
    result?;
    let back = original_pod(c, "after-drain", "node-b").await?;
    check_tap(&back)?;
    c.delete_pod(&back.namespace, &back.name, GONE).await
}
