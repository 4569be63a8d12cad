//! A node reboots while pods hold devices (see `Cluster::reboot_node` for what a reboot ends and what it keeps).

use super::*;
use anyhow::bail;

/// How long the node stays off.
const OFF: Duration = Duration::from_secs(3);
/// Kubelet start → every workload of the node Running again (the kubelet's back-off included).
const BACK: Duration = Duration::from_secs(300);

fn container_id(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?[0]
        .container_id
        .clone()
}

fn ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().all(|c| c.ready))
}

/// A Deployment of `replicas` copies of an example pod of config/, kept to `node` (the way users run pods that must
/// come back).
fn deployment(
    name: &str,
    example_file: &str,
    replicas: i32,
    node: &str,
) -> Result<serde_json::Value> {
    let pod = example(example_file, None, Some(node))?;
    let mut spec = serde_json::to_value(pod.spec)?;
    // The examples' sleep ends on its own (the device-plugin-only one after 123 s): a restart is not what this shows.
    spec["containers"][0]["command"] = serde_json::json!(["/bin/sleep", "3600"]);
    spec["terminationGracePeriodSeconds"] = 1.into();
    Ok(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": pod.metadata.annotations},
                "spec": spec,
            },
        },
    }))
}

/// The ready pods of a Deployment that are not in `before` (names), once there are `replicas` of them.
async fn replaced(
    c: &Cluster,
    app: &str,
    replicas: usize,
    before: &BTreeSet<String>,
) -> Result<Option<Vec<RunningPod>>> {
    let pods = Api::<Pod>::namespaced(c.client(), "default")
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    let fresh: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| ready(p) && !before.contains(&p.name_any()))
        .collect();
    if fresh.len() < replicas {
        return Ok(None);
    }
    let mut out = Vec::new();
    for p in fresh {
        out.push(c.wait_running("default", &p.name_any(), RUN).await?);
    }
    Ok(Some(out))
}

async fn pods_of(c: &Cluster, app: &str, replicas: usize) -> Result<Vec<RunningPod>> {
    let deadline = std::time::Instant::now() + RUN;
    loop {
        if let Some(pods) = replaced(c, app, replicas, &BTreeSet::new()).await? {
            return Ok(pods);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{replicas} pods of {app} not Running within {RUN:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A frame written to `from`'s tap arrives at the peer's.
fn frame_to_peer(tap: &std::path::Path, mac: [u8; 6], peer: &RunningPod, what: &str) -> Result<()> {
    let peer_mac = net1_mac(peer)?;
    let mut to = Tap::open(&check_tap(peer)?)?;
    Tap::open(tap)?.send(peer_mac, mac, what.as_bytes())?;
    ensure!(
        to.receive(what.as_bytes(), Duration::from_secs(5))? == Some(mac),
        "frame {what:?} from {} lost",
        tap.display()
    );
    Ok(())
}

/// Each pod's device (from its tap index) on `node`: the one record with that index.
fn device_of(c: &Cluster, node: &str, tap_index: u32) -> Result<String> {
    device_with_tap(&c.allocation_records(node)?, tap_index)
}

/// The tap index of each pod's device on `node`, checked against its record: net1's ifindex (attached pods) or the
/// container's `/dev/tapN` (device-plugin-only pods); and a frame from its tap reaches `peer`.
fn check_pod_after(
    c: &Cluster,
    p: &RunningPod,
    attached: bool,
    peer: &RunningPod,
) -> Result<String> {
    let (index, tap, mac) = if attached {
        let index = p.net1()?["ifindex"].as_u64().context("net1 ifindex")? as u32;
        (index, check_tap(p)?, net1_mac(p)?)
    } else {
        let taps = p.tap_devices();
        ensure!(taps.len() == 1, "{}: taps {taps:?}", p.name);
        let index = taps[0].ifindex().context("tap name")?;
        (
            index,
            taps[0].host_path(),
            link_mac(&host_link(c, &p.node, index)?)?,
        )
    };
    let device = device_of(c, &p.node, index)?;
    frame_to_peer(
        &tap,
        mac,
        peer,
        &format!("from {} after the reboot", p.name),
    )?;
    Ok(device)
}

/// node-a reboots (see `Cluster::reboot_node`) while its pods hold devices: two pods attached in place and a
/// device-plugin-only pod, each of a Deployment, and a bare pod.
///
/// The kubelet admits the node's pods again before any device plugin has registered (ours runs as a pod the same
/// kubelet starts), and its device manager rejects every pod that holds a device with `UnexpectedAdmissionError` (its
/// "scenario 3", node reboot, in `devicesToAllocate`): the bare pod stays `Failed`; the Deployments' replacements are
/// scheduled once the agent is back and attach. Pass: the bare pod `Failed` with that reason, every replacement
/// Running with net1 at its device's recorded tap index and a tap that carries frames to a peer on node-b, no device
/// twice, records only for devices pods hold; after everything is deleted no record, reservation or link left.
pub async fn node_reboot(c: &mut Cluster) -> Result<()> {
    let peer = original_pod(c, "reboot-peer", "node-b").await?;
    c.apply_yaml(&serde_json::to_string(&deployment(
        "reboot-attached",
        "original/pod.yaml",
        2,
        "node-a",
    )?)?)
    .await?;
    c.apply_yaml(&serde_json::to_string(&deployment(
        "reboot-dp-only",
        "original/pod-device-plugin-only.yaml",
        1,
        "node-a",
    )?)?)
    .await?;
    let bare = original_pod(c, "reboot-bare", "node-a").await?;
    let attached = pods_of(c, "reboot-attached", 2).await?;
    let dp_only = pods_of(c, "reboot-dp-only", 1).await?;
    let mut seen = BTreeSet::new();
    for p in attached.iter().chain([&bare]) {
        seen.insert(check_pod_after(c, p, true, &peer)?);
    }
    seen.insert(check_pod_after(c, &dp_only[0], false, &peer)?);
    ensure!(
        seen.len() == 4,
        "a device held twice before the reboot: {seen:?}"
    );
    let before: BTreeSet<String> = attached
        .iter()
        .chain(&dp_only)
        .map(|p| p.name.clone())
        .collect();
    let bare_container = container_id(&bare.pod).context("container ID")?;

    let agent_before = container_id(&c.agent_pod("node-a").await?);

    let reboot = c.reboot_node("node-a", OFF)?;
    let started = reboot.kubelet_started;
    wait::until("the agent Ready again after the reboot", BACK, || async {
        let agent = c.agent_pod("node-a").await?;
        Ok(ready(&agent) && container_id(&agent) != agent_before)
    })
    .await?;
    let agent_back = started.elapsed();
    let (mut attached, mut dp_only) = (None, None);
    let deadline = std::time::Instant::now() + BACK;
    while attached.is_none() || dp_only.is_none() {
        if attached.is_none() {
            attached = replaced(c, "reboot-attached", 2, &before).await?;
        }
        if dp_only.is_none() {
            dp_only = replaced(c, "reboot-dp-only", 1, &before).await?;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the Deployments' pods not Running again within {BACK:?} of the kubelet's start\nkubelet:\n{}",
                c.node("node-a").kubelet_log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_back = started.elapsed();
    let (attached, dp_only) = (attached.unwrap_or_default(), dp_only.unwrap_or_default());
    // The bare pod: rejected by the kubelet's device manager, never run again.
    let pod = Api::<Pod>::namespaced(c.client(), "default")
        .get("reboot-bare")
        .await?;
    let status = pod.status.clone().unwrap_or_default();
    ensure!(
        status.phase.as_deref() == Some("Failed")
            && status.reason.as_deref() == Some("UnexpectedAdmissionError")
            && status
                .message
                .as_deref()
                .is_some_and(|m| m.contains(&resource_name("dataplane"))),
        "the bare pod after the reboot: phase {:?}, reason {:?}, message {:?}, container {:?} (was {bare_container})",
        status.phase,
        status.reason,
        status.message,
        container_id(&pod)
    );
    eprintln!(
        "    node-a rebooted ({OFF:?} off; the kernel's clean-up of its pods' netns {:.1?}): kubelet start -> agent Ready {agent_back:.1?}, -> the Deployments' \
         replacements Running {all_back:.1?}; the bare pod: {}",
        reboot.kernel_cleanup,
        status.message.unwrap_or_default()
    );
    c.wait_chart_ready(RUN).await?;
    let mut held = BTreeSet::new();
    for p in &attached {
        held.insert(check_pod_after(c, p, true, &peer)?);
    }
    held.insert(check_pod_after(c, &dp_only[0], false, &peer)?);
    ensure!(
        held.len() == 3,
        "a device held twice after the reboot: {held:?}"
    );
    // The rejected pods' devices are free again: records only for what the replacements hold.
    let freed = wait::until("records only for the devices pods hold", RUN, || async {
        let records: BTreeSet<String> = c.allocation_records("node-a")?.into_keys().collect();
        Ok(records == held)
    })
    .await;
    if let Err(e) = freed {
        let checkpoint = std::fs::read_to_string(
            c.node("node-a")
                .dir
                .join("kubelet/device-plugins/kubelet_internal_checkpoint"),
        )
        .unwrap_or_default();
        let agent = c.agent_pod("node-a").await?.name_any();
        let log = c
            .kubectl_out(&[
                "logs",
                "-n",
                "macvtap-system",
                &agent,
                "-c",
                "agent",
                "--tail=400",
            ])
            .unwrap_or_default();
        let taps: Vec<String> = std::fs::read_dir("/sys/dev/char")?
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .filter(|l| l.contains("macvtap"))
            .collect();
        bail!(
            "{e:#}: records {:?}, held {held:?}; the kubelet's checkpoint: {checkpoint}\ntaps: {taps:?}\nagent log:\n{log}",
            c.allocation_records("node-a")?
        );
    }

    // Deleted: nothing of theirs left on node-a.
    for d in ["reboot-attached", "reboot-dp-only"] {
        c.kubectl_out(&["delete", "deployment", d, "--wait=true"])?;
    }
    c.delete_pod("default", "reboot-bare", GONE).await?;
    for name in attached
        .iter()
        .chain(&dp_only)
        .map(|p| &p.name)
        .chain(&before)
    {
        c.delete_pod("default", name, GONE).await?;
    }
    c.delete_pod(&peer.namespace, &peer.name, GONE).await?;
    let reservations =
        macvtap_core::TapReservations::in_dir(c.node("node-a").spec.tap_reservations.clone());
    wait::until(
        "no record, reservation or link of the rebooted pods left",
        GONE,
        || async {
            let records = c.allocation_records("node-a")?;
            let reserved = reservations.of_node("node-a")?;
            let links = c.node_macvtaps("node-a")?;
            Ok(records.is_empty() && reserved.is_empty() && links.is_empty())
        },
    )
    .await
}
