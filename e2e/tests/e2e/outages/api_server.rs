//! The API server down for a minute.

use super::*;

/// How long the API server stays down.
const API_OUTAGE: Duration = Duration::from_secs(60);
/// After the API server is back, node states and pool status must be current within this.
const CURRENT_WITHIN: Duration = Duration::from_secs(30);

const API_PODS: [&str; 4] = ["api-a1", "api-a2", "api-b1", "api-dp"];

/// kube-apiserver down for 60 s: pods keep their traffic (same node, across nodes, a device-plugin-only pod's
/// host link), agents keep serving the kubelet (ready, and a container restart meanwhile gets its tap through
/// PreStartContainer), no link is touched and none of our pods restarts; a lower device that went down meanwhile
/// shows in the node state and the pool within 30 s of the API server's return.
pub async fn apiserver_outage(c: &mut Cluster) -> Result<()> {
    let result = apiserver_outage_checks(c).await;
    // Whatever failed: the API server up, node-b's p4p1 up, the pods gone, for the next scenarios.
    let started = tokio::task::block_in_place(|| c.control_plane.start_apiserver());
    let up = c.node("node-b").netns.ip(&["link", "set", "p4p1", "up"]);
    let restored = async {
        started.context("starting the API server again")?;
        up?;
        delete_all(c, &API_PODS, AFTER_API_OUTAGE).await?;
        c.wait_pool("p4p1", Duration::from_secs(60), pool_ready)
            .await
            .map(drop)
    }
    .await;
    result.and(restored)
}

async fn apiserver_outage_checks(c: &mut Cluster) -> Result<()> {
    // The pool whose lower device goes down during the outage (the one `lower_device_down` uses).
    c.apply_file(&config_file("pools/p4p1.yaml")).await?;
    c.wait_pool("p4p1", Duration::from_secs(90), pool_ready)
        .await?;
    let a1 = original_pod(c, API_PODS[0], "node-a").await?;
    let a2 = original_pod(c, API_PODS[1], "node-a").await?;
    let b1 = original_pod(c, API_PODS[2], "node-b").await?;
    let dp = c
        .run_pod(
            busybox(API_PODS[3], None, Some("dataplane"), Some("node-b")),
            RUN,
        )
        .await?;
    let net1s = [&a1, &a2, &b1].map(|p| p.net1());
    let net1s: Vec<serde_json::Value> = net1s.into_iter().collect::<Result<_>>()?;
    let dp_link = host_link_of(c, &dp)?;
    let ours = our_pods(c).await?;
    for node in ["node-a", "node-b"] {
        wait::until(&format!("{node}'s agent ready"), RUN, || async {
            Ok(agent_readyz(c, node)? == 200)
        })
        .await?;
    }
    let mut ta1 = tap_of(&a1)?;
    let mut ta2 = tap_of(&a2)?;
    let mut tb1 = tap_of(&b1)?;
    let dp_mac = link_mac(&dp_link)?;
    let mut tdp = (Tap::open(&dp.tap_devices()[0].host_path())?, dp_mac);
    let links_unchanged = |c: &Cluster| -> Result<()> {
        for (p, before) in [&a1, &a2, &b1].into_iter().zip(&net1s) {
            let now = p.net1()?;
            ensure!(
                same_net1(&now, before),
                "{}'s net1 changed: {before} -> {now}",
                p.name
            );
        }
        let now = host_link_of(c, &dp)?;
        ensure!(
            ["ifindex", "address"].iter().all(|k| now[k] == dp_link[k]),
            "api-dp's host link changed: {dp_link} -> {now}"
        );
        Ok(())
    };

    let stopped_at = Timestamp::now();
    c.control_plane.stop_apiserver();
    let down = Instant::now();
    let during = async {
        ensure!(
            Api::<Pod>::namespaced(c.client(), "default")
                .get(API_PODS[0])
                .await
                .is_err(),
            "the API server still answers"
        );
        c.node("node-b")
            .netns
            .ip(&["link", "set", "p4p1", "down"])?;
        // A container restart needs the agent's PreStartContainer; the kubelet and the agent do it without the
        // API server.
        let dp_main = kill_main(&dp)?;
        let killed = Instant::now();
        wait::until(
            "api-dp's container started again with its tap",
            Duration::from_secs(45),
            || async {
                Ok(main_pid(&dp).is_ok_and(|p| p != dp_main)
                    && host_link_of(c, &dp).is_ok_and(|l| l["ifindex"] == dp_link["ifindex"]))
            },
        )
        .await?;
        let restarted = killed.elapsed();
        let mut checks = 0;
        while down.elapsed() < API_OUTAGE {
            for node in ["node-a", "node-b"] {
                ensure!(
                    agent_readyz(c, node)? == 200,
                    "{node}'s agent unready during the API server outage"
                );
            }
            links_unchanged(c)?;
            frames(&mut ta1, &mut ta2, "same node")?;
            frames(&mut ta1, &mut tb1, "across nodes")?;
            frames(&mut ta1, &mut tdp, "to the device-plugin-only pod")?;
            checks += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        anyhow::Ok((restarted, checks))
    }
    .await;
    let t = Instant::now();
    tokio::task::block_in_place(|| c.control_plane.start_apiserver())?;
    let back = Instant::now();
    let start_took = t.elapsed();
    let (restarted, checks) = during?;

    // Current: both node states written since the outage began (nothing could be written while it lasted),
    // node-b's saying p4p1 is down; the pool Degraded naming node-b, the other pool Ready.
    wait::until(
        "node states and pool status current",
        CURRENT_WITHIN,
        || async {
            let states = Api::<MacvtapNodeState>::all(c.client())
                .list(&ListParams::default())
                .await?;
            let fresh = states.items.len() == 2
                && states.items.iter().all(|s| {
                    s.status
                        .as_ref()
                        .and_then(|s| s.last_update_time.as_ref())
                        .is_some_and(|t| t.0 > stopped_at)
                });
            let b_down = states.items.iter().any(|s| {
                s.name_any() == "node-b"
                    && s.status.as_ref().is_some_and(|st| {
                        st.resources
                            .iter()
                            .any(|r| r.lower_device == "p4p1" && !r.lower_device_up)
                    })
            });
            let pools = Api::<MacvtapPool>::all(c.client());
            let p4p1 = pools.get("p4p1").await?;
            let degraded = p4p1.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.message.contains("node-b")
                })
            });
            let dataplane = pool_ready(&pools.get("dataplane").await?);
            Ok(fresh && b_down && degraded && dataplane)
        },
    )
    .await?;
    let current = back.elapsed();

    c.wait_nodes_ready().await?;
    // Reported by node-b's kubelet once its own connection is back (minutes, at worst).
    wait::until(
        "api-dp Running after its restart",
        AFTER_API_OUTAGE,
        || async {
            let (reason, _, restarts) = container_state(c, API_PODS[3]).await?;
            Ok(reason.is_empty() && restarts == 1)
        },
    )
    .await?;
    links_unchanged(c)?;
    frames(&mut ta1, &mut tb1, "after the outage")?;
    let now = our_pods(c).await?;
    ensure!(
        now == ours,
        "our pods restarted or were replaced: {ours:?} -> {now:?}"
    );
    // What a user meets next: the kubelets see pods again only when their own watches are back (client-go's
    // back-off, up to 30 s and as much jitter), so deletions, like creations, wait for that.
    let deleting = back.elapsed();
    let gone = delete_all(c, &API_PODS, AFTER_API_OUTAGE).await?;
    eprintln!(
        "    API server down {:.1?} ({checks} rounds of checks: agents ready, links unchanged, frames same node, \
         across nodes, to a device-plugin-only pod); a container killed meanwhile ran again with its tap after \
         {restarted:.1?}; started again in {start_took:.1?} -> node states and pool status current {current:.1?} \
         after /readyz ok; agents and operator: no restart; pods deleted {deleting:.1?} after the return gone \
         after {gone:.1?} ({API_PODS:?}: the kubelets' watch back-off)",
        back - down - start_took
    );
    Ok(())
}

/// How long a kubelet may take after the API server's return to act on a pod (a deletion) or report one (a
/// restart): its own watch may still be backing off.
const AFTER_API_OUTAGE: Duration = Duration::from_secs(240);

/// Deletes the pods at once and waits until each is gone: how long each took; the error has the kubelet's lines
/// about a pod that stayed.
async fn delete_all(c: &Cluster, names: &[&str], timeout: Duration) -> Result<Vec<Duration>> {
    let api = Api::<Pod>::namespaced(c.client(), "default");
    let dp = DeleteParams {
        grace_period_seconds: Some(1),
        ..Default::default()
    };
    let mut nodes = BTreeMap::new();
    for n in names {
        if let Some(p) = api.get_opt(n).await? {
            nodes.insert(*n, p.spec.and_then(|s| s.node_name).unwrap_or_default());
            api.delete(n, &dp).await?;
        }
    }
    let t = Instant::now();
    let mut gone = Vec::new();
    for n in names {
        let waited = wait::until(&format!("pod {n} gone"), timeout, || async {
            Ok(api.get_opt(n).await?.is_none())
        })
        .await;
        if let Err(e) = waited {
            let node = nodes.get(n).cloned().unwrap_or_default();
            let log = c
                .nodes
                .iter()
                .find(|x| x.name() == node)
                .map(|x| x.kubelet_log_tail(400))
                .unwrap_or_default();
            let about: Vec<&str> = log.lines().filter(|l| l.contains(n)).collect();
            let about = about[about.len().saturating_sub(15)..].join("\n");
            bail!("{e:#}\n--- kubelet of {node} about {n}:\n{about}");
        }
        gone.push(t.elapsed());
    }
    Ok(gone)
}
