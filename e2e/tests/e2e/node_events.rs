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

/// The same link, still up: index, MAC, MTU, admin state (its counters move on, and a fresh macvtap's operstate
/// goes from UNKNOWN to UP by itself).
pub fn same_net1(now: &serde_json::Value, before: &serde_json::Value) -> bool {
    let up = |l: &serde_json::Value| {
        l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP"))
    };
    ["ifindex", "address", "mtu"]
        .iter()
        .all(|k| now[k] == before[k])
        && up(now)
}

/// `GET /readyz` of node-a's agent (host network, the chart's `agent.metricsPort`): the HTTP status.
pub fn agent_readyz(c: &Cluster, node: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((c.node(node).spec.ip, 9808));
    let ask = || -> std::io::Result<String> {
        // Generous for a loaded 2-core machine; the kubelet's own probe is what decides in a cluster.
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    let t = std::time::Instant::now();
    let reply = ask().with_context(|| {
        format!(
            "{node}'s agent /readyz ({addr}): no answer after {:.1?}",
            t.elapsed()
        )
    })?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("an HTTP answer: {reply:?}"))
}

/// node-a's status of the `dataplane` resource, as its agent last wrote it.
async fn dataplane_status(c: &Cluster) -> Result<Option<macvtap_api::NodeResourceStatus>> {
    let state = Api::<macvtap_api::MacvtapNodeState>::all(c.client())
        .get("node-a")
        .await?;
    Ok(state
        .status
        .and_then(|s| s.resources.into_iter().find(|r| r.name == "dataplane")))
}

/// The kubelet crashes and leaves its socket file: the agent is unready within 5 s, its node state says why, the
/// pool is Degraded naming the node; a kubelet again → registered, ready, pool Ready. Pods keep their network.
pub async fn kubelet_outage(c: &mut Cluster) -> Result<()> {
    let holder = original_pod(c, "outage-holder", "node-a").await?;
    let before = holder.net1()?;
    wait::until("node-a's agent ready", RUN, || async {
        Ok(agent_readyz(c, "node-a")? == 200)
    })
    .await?;
    let socket = c
        .node("node-a")
        .dir
        .join("kubelet/device-plugins/kubelet.sock");
    c.node_mut("node-a").kill_kubelet();
    let killed = std::time::Instant::now();
    // Whatever the checks find, node-a gets its kubelet back (the next scenarios need it).
    let outage = async {
        ensure!(socket.exists(), "the killed kubelet's socket file stays");
        wait::until("/readyz failing", Duration::from_secs(5), || async {
            Ok(agent_readyz(c, "node-a")? != 200)
        })
        .await?;
        let unready = killed.elapsed();
        wait::until(
            "node-a's status: not registered, kubelet not answering",
            Duration::from_secs(30),
            || async {
                Ok(dataplane_status(c).await?.is_some_and(|r| {
                    !r.registered
                        && r.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("kubelet not answering"))
                }))
            },
        )
        .await?;
        let reported = killed.elapsed();
        let pool = c
            .wait_pool("dataplane", Duration::from_secs(60), |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Degraded" && c.status == "True" && c.message.contains("node-a")
                    })
                })
            })
            .await?;
        let degraded = killed.elapsed();
        ensure!(
            !pool_ready(&pool),
            "the pool is not Ready while node-a has no kubelet"
        );
        let during = holder.net1()?;
        ensure!(
            same_net1(&during, &before),
            "the pod's net1 changed during the outage: {before} -> {during}"
        );

        anyhow::Ok((unready, reported, degraded))
    }
    .await;
    let kubeconfig = c.dir.join("node-a/kubelet.kubeconfig");
    let ca = c.control_plane.ca_path().to_path_buf();
    c.node_mut("node-a").start_kubelet(&kubeconfig, &ca)?;
    let started = std::time::Instant::now();
    let (unready, reported, degraded) = outage?;
    wait::until("node-a's status: registered again", RUN, || async {
        Ok(dataplane_status(c)
            .await?
            .is_some_and(|r| r.registered && r.last_error.is_none()))
    })
    .await?;
    let registered = started.elapsed();
    wait::until("node-a's agent ready again", RUN, || async {
        Ok(agent_readyz(c, "node-a")? == 200)
    })
    .await?;
    c.wait_pool("dataplane", Duration::from_secs(90), pool_ready)
        .await?;
    let ready = started.elapsed();
    c.wait_nodes_ready().await?;
    c.wait_running(&holder.namespace, &holder.name, RUN).await?;
    ensure!(
        same_net1(&holder.net1()?, &before),
        "the pod's net1 changed after the outage"
    );
    eprintln!(
        "    kubelet killed -> agent /readyz 503 {unready:.1?}, node state says why {reported:.1?}, pool Degraded \
         {degraded:.1?}; kubelet started -> registered (status) {registered:.1?}, pool Ready {ready:.1?}"
    );
    c.delete_pod(&holder.namespace, &holder.name, GONE).await?;
    Ok(())
}
