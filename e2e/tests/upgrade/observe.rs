//! What the scenario looks at: a pod as seen before the switch, the links, devices and events after it.

use super::*;

/// A pod as seen before the switch, to compare with after.
pub(crate) struct Seen {
    pub(crate) pod: RunningPod,
    /// net1's (or, device-plugin only, the host link's) ifindex: the tap's number.
    pub(crate) ifindex: u64,
    pub(crate) mac: [u8; 6],
    pub(crate) tap: PathBuf,
    pub(crate) devices: BTreeSet<String>,
}

/// The original README's pod on `node`, attached by the original's CNI: net1 a macvtap moved in from the host
/// (its ifindex from the node's range, not our tap-index range; no alias), its tap net1's.
pub(crate) async fn attached_by_the_original(c: &Cluster, name: &str, node: &str) -> Result<Seen> {
    let pod = c
        .run_pod(example("original/pod.yaml", Some(name), Some(node))?, RUN)
        .await?;
    let l = pod.net1()?;
    let ifindex = l["ifindex"].as_u64().context("ifindex")?;
    ensure!(
        l["linkinfo"]["info_kind"] == "macvtap"
            && !macvtap_core::is_tap_index(ifindex as u32)
            && l.get("ifalias").is_none(),
        "{name}: net1 is not the original's moved-in macvtap: {l}"
    );
    let tap = check_tap(&pod)?;
    let mac = net1_mac(&pod)?;
    let devices = pod_devices(c, &pod)?;
    Ok(Seen {
        pod,
        ifindex,
        mac,
        tap,
        devices,
    })
}

/// The original README's device-plugin-only pod (config/original/pod-device-plugin-only.yaml; sleeping an hour
/// instead of 123 s, so that its only restart is the one this test makes) on `node`: its tap is the host link the
/// original's Allocate made (named after the device ID, no alias).
pub(crate) async fn device_plugin_only_of_the_original(
    c: &Cluster,
    name: &str,
    node: &str,
) -> Result<Seen> {
    let pod = c.run_pod(device_plugin_only(name, node)?, RUN).await?;
    let taps = pod.tap_devices();
    ensure!(taps.len() == 1, "{name}: taps {taps:?}");
    let ifindex = u64::from(taps[0].ifindex().context("tap name")?);
    let devices = pod_devices(c, &pod)?;
    let id = devices.first().context("no device")?;
    let l = host_link(c, node, ifindex)?
        .with_context(|| format!("{name}: no host link with ifindex {ifindex}"))?;
    // v0.13.1 names the link after the device ID (the `mvt<hash>` names came after that release).
    ensure!(
        l["ifname"] == id.as_str() && l.get("ifalias").is_none(),
        "{name}: /dev/tap{ifindex} is not v0.13.1's host link for {id}: {l}"
    );
    let mac = parse_mac(l["address"].as_str().unwrap_or_default()).context("host link MAC")?;
    Ok(Seen {
        pod,
        ifindex,
        mac,
        tap: taps[0].host_path(),
        devices,
    })
}

pub(crate) fn device_plugin_only(name: &str, node: &str) -> Result<Pod> {
    let mut pod = example(
        "original/pod-device-plugin-only.yaml",
        Some(name),
        Some(node),
    )?;
    pod.spec.as_mut().context("spec")?.containers[0].command =
        Some(vec!["/bin/sleep".into(), "3600".into()]);
    Ok(pod)
}

/// Macvtaps on node-a's `eth0` that look like the original's and are not: our scheme's name for no slot of ours,
/// a device ID beyond the capacity, and a slot's name carrying someone's alias. Returns (name, "ifindex alias").
pub(crate) fn strangers(c: &Cluster) -> Result<Vec<(String, String)>> {
    let netns = &c.node("node-a").netns;
    let aliased = macvtap_core::device::host_link_name("dataplaneMvp49");
    for name in ["mvt0123456789ab", "dataplaneMvp99", &aliased] {
        netns.ip(&[
            "link", "add", "link", "eth0", "name", name, "type", "macvtap", "mode", "bridge",
        ])?;
        netns.ip(&["link", "set", name, "up"])?;
    }
    netns.ip(&["link", "set", &aliased, "alias", "someone-else"])?;
    strangers_now(c)
}

pub(crate) fn strangers_now(c: &Cluster) -> Result<Vec<(String, String)>> {
    let aliased = macvtap_core::device::host_link_name("dataplaneMvp49");
    let mut out = Vec::new();
    for name in ["mvt0123456789ab", "dataplaneMvp99", aliased.as_str()] {
        let l = c
            .node("node-a")
            .netns
            .link_json(name)?
            .with_context(|| format!("{name} is gone"))?;
        out.push((
            name.to_string(),
            format!("{} {}", l["ifindex"], l["ifalias"]),
        ));
    }
    Ok(out)
}

/// The device IDs the kubelet gave `pod` (its checkpoint).
pub(crate) fn pod_devices(c: &Cluster, pod: &RunningPod) -> Result<BTreeSet<String>> {
    Ok(c.kubelet_devices(&pod.node, &resource_name(POOL))?
        .remove(&pod.uid)
        .unwrap_or_default())
}

/// The link with `ifindex` in `node`'s host network namespace (`ip -d -j link`).
pub(crate) fn host_link(
    c: &Cluster,
    node: &str,
    ifindex: u64,
) -> Result<Option<serde_json::Value>> {
    let all: serde_json::Value =
        serde_json::from_str(&c.node(node).netns.ip(&["-d", "-j", "link", "show"])?)?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifindex"] == ifindex)
        .cloned())
}

/// One frame `from` → `to` through their taps.
pub(crate) fn frames_through(
    from: &mut Tap,
    a: &Seen,
    to: &mut Tap,
    b: &Seen,
    what: &str,
) -> Result<()> {
    let payload = format!("upgrade {what}");
    from.send(b.mac, a.mac, payload.as_bytes())?;
    ensure!(
        to.receive(payload.as_bytes(), Duration::from_secs(5))? == Some(a.mac),
        "frame {} -> {} lost ({what})",
        a.pod.name,
        b.pod.name
    );
    Ok(())
}

/// Kills the pod's container process; the kubelet starts it again (PreStartContainer first).
pub(crate) async fn container_restarts(c: &Cluster, old: &Seen) -> Result<()> {
    let sleep = old
        .pod
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .with_context(|| format!("{}: no sleep process", old.pod.name))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleep as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let api = Api::<Pod>::namespaced(c.client(), "default");
    let t = Instant::now();
    wait::until("the container restarted and ready", RUN, || async {
        let p = api.get(&old.pod.name).await?;
        Ok(p.status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .is_some_and(|st| st.restart_count >= 1 && st.ready))
    })
    .await
    .with_context(|| c.events_of("default", &old.pod.name))?;
    eprintln!(
        "{}: container killed, restarted under our agent in {:.1?}",
        old.pod.name,
        t.elapsed()
    );
    Ok(())
}

/// After `old` is deleted: our pool counts its slot free (the agent's count is the kubelet's PodResources answer:
/// the pods alive now; the kubelet's checkpoint keeps a deleted pod's devices until its next allocation).
pub(crate) async fn slot_freed(c: &Cluster, old: &Seen, allocated: u32) -> Result<()> {
    c.wait_pool(POOL, RUN, |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == allocated)
    })
    .await
    .with_context(|| format!("{}'s slot {:?} counted free", old.pod.name, old.devices))?;
    Ok(())
}

/// Fails on any event of [`BAD_REASONS`] in `default` (the test's pods).
pub(crate) async fn bad_events(c: &Cluster) -> Result<()> {
    let events = Api::<Event>::namespaced(c.client(), "default")
        .list(&ListParams::default())
        .await?;
    let bad: Vec<String> = events
        .items
        .iter()
        .filter(|e| BAD_REASONS.contains(&e.reason.as_deref().unwrap_or_default()))
        .map(|e| {
            format!(
                "{} {}: {}",
                e.involved_object.name.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect();
    ensure!(bad.is_empty(), "events: {bad:#?}");
    let failed: Vec<String> = Api::<Pod>::namespaced(c.client(), "default")
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .map(|p| p.name_any())
        .collect();
    ensure!(failed.is_empty(), "failed pods: {failed:?}");
    Ok(())
}

/// On a failure: pods, events, the original's and our agents' logs.
pub(crate) fn dump(c: &Cluster) {
    eprintln!(
        "{}",
        c.kubectl_out(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default()
    );
    eprintln!(
        "{}",
        c.kubectl_out(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
            .unwrap_or_default()
    );
    eprintln!("--- the original:\n{}", original::logs(c));
    eprintln!(
        "--- our agents:\n{}",
        c.kubectl_out(&[
            "logs",
            "-n",
            &c.chart.namespace,
            "-l",
            "app.kubernetes.io/component=agent",
            "-c",
            "agent",
            "--prefix",
            "--tail=40",
        ])
        .unwrap_or_else(|e| e.to_string())
    );
}
