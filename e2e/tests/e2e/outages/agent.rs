//! A node's agent gone while a container holding a device restarts.

use super::*;

/// How long node-a goes without an agent.
const AGENT_OUTAGE: Duration = Duration::from_secs(30);

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
