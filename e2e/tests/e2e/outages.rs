//! Outages of what our pods depend on (issue 24): the API server down for a minute, and a node's agent gone while
//! a container holding a device restarts. Each scenario restores what it took away on every path.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::jiff::Timestamp;
use macvtap_api::MacvtapNodeState;

use super::*;

/// How long the API server stays down.
const API_OUTAGE: Duration = Duration::from_secs(60);
/// After the API server is back, node states and pool status must be current within this.
const CURRENT_WITHIN: Duration = Duration::from_secs(30);
/// How long node-a goes without an agent.
const AGENT_OUTAGE: Duration = Duration::from_secs(30);

/// Our pods (operator and agents) by name: uid and restarts of all containers.
async fn our_pods(c: &Cluster) -> Result<BTreeMap<String, (String, i32)>> {
    let pods = Api::<Pod>::namespaced(c.client(), &c.chart.namespace)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .map(|s| s.restart_count)
                .sum();
            (p.name_any(), (p.uid().unwrap_or_default(), restarts))
        })
        .collect())
}

/// The pid of the pod's `/bin/sleep` (its container's main process: busybox's `command`).
fn main_pid(pod: &RunningPod) -> Result<u32> {
    pod.pids()
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/bin/sleep\0"))
        })
        .with_context(|| format!("no /bin/sleep in pod {}", pod.name))
}

/// SIGKILL to the container's main process: the container exits and the kubelet starts it again.
fn kill_main(pod: &RunningPod) -> Result<u32> {
    let pid = main_pid(pod)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("killing pid {pid} of {}", pod.name))?;
    Ok(pid)
}

/// The host macvtap whose tap a device-plugin-only pod holds (ifindex, MAC): PreStartContainer made it.
fn host_link_of(c: &Cluster, pod: &RunningPod) -> Result<serde_json::Value> {
    let taps = pod.tap_devices();
    let ifindex = taps
        .first()
        .and_then(|t| t.ifindex())
        .with_context(|| format!("pod {}: taps {taps:?}", pod.name))?;
    host_link(c, &pod.node, ifindex)
}

/// A frame from `from` reaches `to`, and one back.
fn frames(from: &mut (Tap, [u8; 6]), to: &mut (Tap, [u8; 6]), what: &str) -> Result<()> {
    one_frame(from, to, &format!("{what}: there"))?;
    one_frame(to, from, &format!("{what}: back"))
}

fn one_frame(from: &mut (Tap, [u8; 6]), to: &mut (Tap, [u8; 6]), payload: &str) -> Result<()> {
    from.0.send(to.1, from.1, payload.as_bytes())?;
    ensure!(
        to.0.receive(payload.as_bytes(), Duration::from_secs(5))? == Some(from.1),
        "frame lost: {payload}"
    );
    Ok(())
}

fn tap_of(pod: &RunningPod) -> Result<(Tap, [u8; 6])> {
    Ok((Tap::open(&check_tap(pod)?)?, net1_mac(pod)?))
}

/// A container's waiting reason and message, and its restarts.
async fn container_state(c: &Cluster, name: &str) -> Result<(String, String, i32)> {
    let pod = Api::<Pod>::namespaced(c.client(), "default")
        .get(name)
        .await?;
    let cs = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .with_context(|| format!("pod {name} has no container status"))?;
    let waiting = cs.state.and_then(|s| s.waiting).unwrap_or_default();
    Ok((
        waiting.reason.unwrap_or_default(),
        waiting.message.unwrap_or_default(),
        cs.restart_count,
    ))
}

/// How often the kubelet failed to start the pod's container at PreStartContainer: the `Failed` events' counts
/// (the kubelet aggregates repeats into one event with a count).
async fn prestart_failures(c: &Cluster, pod: &str) -> Result<i32> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.client(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod},reason=Failed")))
        .await?;
    Ok(events
        .items
        .iter()
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("PreStartContainer"))
        })
        .map(|e| e.count.unwrap_or(1))
        .sum())
}

/// Deletes the scenario's pods (those that exist).
async fn delete_pods(c: &Cluster, names: &[&str]) -> Result<()> {
    for n in names {
        c.delete_pod("default", n, GONE).await?;
    }
    Ok(())
}

// --- API server down ------------------------------------------------------------------------------------------

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

// --- agent gone -------------------------------------------------------------------------------------------------

const AGENT_PODS: [&str; 4] = ["victim", "victim-dp", "bystander", "peer"];

/// node-a's agent kept away (as a user's own automation would: the DaemonSet's update strategy set to `OnDelete`
/// so no other node's agent is replaced, then a node affinity excluding node-a; both restored after): a container
/// holding a device that exits cannot start again, the kubelet failing PreStartContainer with
/// `CreateContainerConfigError` and retrying, while running pods' traffic flows; the agent back and ready, the
/// containers run again (the time printed).
pub async fn agent_outage(c: &mut Cluster) -> Result<()> {
    let daemonsets = Api::<DaemonSet>::namespaced(c.client(), &c.chart.namespace);
    let ds = daemonsets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .context("the agent DaemonSet")?;
    let name = ds.name_any();
    let spec = ds.spec.context("DaemonSet spec")?;
    let saved_strategy = serde_json::to_value(&spec.update_strategy)?;
    let saved_affinity = serde_json::to_value(spec.template.spec.and_then(|s| s.affinity))?;
    let result = agent_outage_checks(c, &name, &saved_affinity, &saved_strategy).await;
    // Whatever failed: the DaemonSet as it was (affinity first, so node-a's new agent is of the original
    // revision and no other agent is replaced), every agent ready, the pods gone.
    let restored = async {
        restore_daemonset(c, &name, &saved_affinity, &saved_strategy).await?;
        c.wait_chart_ready(Duration::from_secs(120)).await?;
        delete_pods(c, &AGENT_PODS).await
    }
    .await;
    result.and(restored)
}

async fn restore_daemonset(
    c: &Cluster,
    name: &str,
    affinity: &serde_json::Value,
    strategy: &serde_json::Value,
) -> Result<()> {
    let daemonsets = Api::<DaemonSet>::namespaced(c.client(), &c.chart.namespace);
    for patch in [
        serde_json::json!({"spec": {"template": {"spec": {"affinity": affinity}}}}),
        serde_json::json!({"spec": {"updateStrategy": strategy}}),
    ] {
        daemonsets
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("restoring the DaemonSet: {patch}"))?;
    }
    Ok(())
}

async fn agent_outage_checks(
    c: &mut Cluster,
    ds: &str,
    saved_affinity: &serde_json::Value,
    saved_strategy: &serde_json::Value,
) -> Result<()> {
    let victim = original_pod(c, AGENT_PODS[0], "node-a").await?;
    let victim_dp = c
        .run_pod(
            busybox(AGENT_PODS[1], None, Some("dataplane"), Some("node-a")),
            RUN,
        )
        .await?;
    let bystander = original_pod(c, AGENT_PODS[2], "node-a").await?;
    let peer = original_pod(c, AGENT_PODS[3], "node-b").await?;
    let victim_net1 = victim.net1()?;
    let victim_dp_link = host_link_of(c, &victim_dp)?;
    let mut tby = tap_of(&bystander)?;
    let mut tpeer = tap_of(&peer)?;
    let agent = c.agent_pod("node-a").await?;

    let daemonsets = Api::<DaemonSet>::namespaced(c.client(), &c.chart.namespace);
    let on_delete = serde_json::json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}});
    let not_node_a = serde_json::json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-a"]}
        ]}]}
    }}}}}});
    for patch in [on_delete, not_node_a] {
        daemonsets
            .patch(ds, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let pods = Api::<Pod>::namespaced(c.client(), &c.chart.namespace);
    let node_b_agent = c.agent_pod("node-b").await?.uid();
    wait::until("node-a's agent gone", Duration::from_secs(60), || async {
        Ok(pods.get_opt(&agent.name_any()).await?.is_none())
    })
    .await?;
    let gone = Instant::now();
    ensure!(
        c.agent_pod("node-a").await.is_err(),
        "the DaemonSet made a new agent on node-a"
    );

    kill_main(&victim)?;
    kill_main(&victim_dp)?;
    let killed = Instant::now();
    let mut refusals = Vec::new();
    for name in [AGENT_PODS[0], AGENT_PODS[1]] {
        wait::until(
            &format!("{name}'s container refused: PreStartContainer"),
            Duration::from_secs(60),
            || async {
                let (reason, message, _) = container_state(c, name).await?;
                Ok(reason == "CreateContainerConfigError" && message.contains("PreStartContainer"))
            },
        )
        .await?;
        refusals.push(killed.elapsed());
    }
    let (_, message, _) = container_state(c, AGENT_PODS[0]).await?;
    // Running pods keep their traffic: a pod on the agentless node and one across.
    while gone.elapsed() < AGENT_OUTAGE {
        frames(&mut tby, &mut tpeer, "while node-a has no agent")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    ensure!(
        same_net1(&victim.net1()?, &victim_net1),
        "the victim's net1 changed while its container could not start"
    );
    let dp_index = victim_dp_link["ifindex"].as_u64().context("ifindex")? as u32;
    ensure!(
        host_link(c, "node-a", dp_index)?["address"] == victim_dp_link["address"],
        "victim-dp's host link changed while its container could not start"
    );
    let tries = [
        prestart_failures(c, AGENT_PODS[0]).await?,
        prestart_failures(c, AGENT_PODS[1]).await?,
    ];

    let agent_gone_for = gone.elapsed();
    restore_daemonset(c, ds, saved_affinity, saved_strategy).await?;
    let restored = Instant::now();
    wait::until("node-a's agent /readyz 200", RUN, || async {
        Ok(agent_readyz(c, "node-a").is_ok_and(|s| s == 200))
    })
    .await?;
    let agent_ready = Instant::now();
    let mut running = Vec::new();
    for name in [AGENT_PODS[0], AGENT_PODS[1]] {
        c.wait_running("default", name, RUN).await?;
        running.push(agent_ready.elapsed());
    }
    ensure!(
        same_net1(&victim.net1()?, &victim_net1),
        "the victim's net1 changed after its restart"
    );
    check_tap(&victim)?;
    ensure!(
        host_link_of(c, &victim_dp)?["ifindex"] == victim_dp_link["ifindex"],
        "victim-dp's host link changed after its restart"
    );
    frames(&mut tby, &mut tpeer, "after the agent is back")?;
    ensure!(
        c.agent_pod("node-b").await?.uid() == node_b_agent,
        "node-b's agent was replaced: the DaemonSet rolled it"
    );
    eprintln!(
        "    node-a's agent gone {agent_gone_for:.1?}; main processes killed -> CreateContainerConfigError after \
         {:.1?} (in place) and {:.1?} (device-plugin-only), the kubelet's failed tries {tries:?}: {message:?}; \
         frames flowed throughout; DaemonSet restored -> agent /readyz 200 {:.1?} -> in-place pod's container \
         Running {:.1?}, device-plugin-only pod's {:.1?} (from /readyz 200); node-b's agent untouched",
        refusals[0],
        refusals[1],
        agent_ready - restored,
        running[0],
        running[1]
    );
    Ok(())
}
