//! Pods on macvtap networks: the original README's pod, a MAC asked for, device-plugin only, traffic through
//! the tap, many pods at once.

use super::*;

pub async fn dataplane(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("pools/dataplane.yaml")).await?;
    let pool = c
        .wait_pool("dataplane", Duration::from_secs(90), pool_ready)
        .await?;
    let st = pool.status.unwrap();
    ensure!(st.nodes_matched == 2 && st.capacity == 100, "status {st:?}");
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, a| {
            cap == 50 && a == 50
        })
        .await?;
    }
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    let pod = c
        .run_pod(example("original/pod.yaml", None, None)?, RUN)
        .await?;
    let l = pod.net1()?;
    ensure!(
        l["linkinfo"]["info_kind"] == "macvtap",
        "net1 is not a macvtap: {l}"
    );
    ensure!(l["linkinfo"]["info_data"]["mode"] == "bridge", "mode: {l}");
    ensure!(l["mtu"] == 1500, "mtu: {l}");
    ensure!(l["operstate"] != "DOWN", "net1 is down: {l}");
    check_tap(&pod)?;
    let tap = &pod.tap_devices()[0];
    ensure!(
        (tap.uid, tap.gid) == (107, 107),
        "tap owner {tap:?} (KubeVirt's qemu is 107:107)"
    );
    // Created in place: no link of ours on the node while the pod runs, and net1's ifindex is the tap index
    // Allocate recorded (and announced as /dev/tapN).
    ensure!(
        c.node_macvtaps(&pod.node)?.is_empty(),
        "a host link on {}: {:?}",
        pod.node,
        c.node_macvtaps(&pod.node)?
    );
    let records = c.allocation_records(&pod.node)?;
    ensure!(
        records.values().any(|r| l["ifindex"] == r.tap_index),
        "net1 ifindex {} is no record's tap index: {records:?}",
        l["ifindex"]
    );
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 1)
    })
    .await?;

    // Deletion: CNI DEL removes the link, the slot is free, a new pod gets a device.
    let node = pod.node.clone();
    c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    wait::until("the pod's link gone from its node", GONE, || async {
        Ok(c.node_macvtaps(&node)?.is_empty())
    })
    .await?;
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 0)
    })
    .await?;
    let again = c
        .run_pod(example("original/pod.yaml", None, None)?, RUN)
        .await?;
    check_tap(&again)?;
    c.delete_pod(&again.namespace, &again.name, GONE).await
}

pub async fn pod_with_mac(c: &mut Cluster) -> Result<()> {
    let pod = c
        .run_pod(example("original/pod-with-mac.yaml", None, None)?, RUN)
        .await?;
    let l = pod.net1()?;
    ensure!(
        l["address"] == "02:23:45:67:89:01",
        "MAC from the selection annotation: {l}"
    );
    c.delete_pod(&pod.namespace, &pod.name, GONE).await
}

pub async fn device_plugin_only(c: &mut Cluster) -> Result<()> {
    let pod = c
        .run_pod(
            example("original/pod-device-plugin-only.yaml", None, None)?,
            RUN,
        )
        .await?;
    let taps = pod.tap_devices();
    ensure!(taps.len() == 1, "tap device given: {taps:?}");
    let names = pod.link_names()?;
    ensure!(
        !names.iter().any(|n| n == "net1"),
        "no CNI interface expected: {names:?}"
    );
    // PreStartContainer made the link on the node (no CNI ADD made one); the container's tap is that link's.
    host_link(c, &pod.node, taps[0].ifindex().context("tap name")?)?;
    c.delete_pod(&pod.namespace, &pod.name, GONE).await
}

pub async fn data_path(c: &mut Cluster) -> Result<()> {
    let a = original_pod(c, "dp-a", "node-a").await?;
    let b = original_pod(c, "dp-b", "node-a").await?;
    let d = original_pod(c, "dp-c", "node-b").await?;
    let (ma, mb, md) = (net1_mac(&a)?, net1_mac(&b)?, net1_mac(&d)?);
    let mut ta = Tap::open(&check_tap(&a)?)?;
    let mut tb = Tap::open(&check_tap(&b)?)?;
    let mut td = Tap::open(&check_tap(&d)?)?;
    ta.send(mb, ma, b"same node")?;
    ensure!(
        tb.receive(b"same node", Duration::from_secs(5))? == Some(ma),
        "same-node frame lost"
    );
    ta.send(md, ma, b"across nodes")?;
    ensure!(
        td.receive(b"across nodes", Duration::from_secs(5))? == Some(ma),
        "cross-node frame lost"
    );
    td.send(ma, md, b"and back")?;
    ensure!(
        ta.receive(b"and back", Duration::from_secs(5))? == Some(md),
        "reply lost"
    );
    for p in [a, b, d] {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    Ok(())
}
/// How many pods the burst starts at once on one node: every device of the `dataplane` pool there.
pub const BURST: usize = 50;

/// 50 pods at once on one node (a KubeVirt node starting its VMs): all attached with the kubelet's PodResources
/// check (rate-limited, 100 calls/s for the CNI and Multus together), no sandbox failure of ours, every device, tap and
/// link their own.
pub async fn fifty_at_once(c: &mut Cluster) -> Result<()> {
    let api = Api::<Pod>::namespaced(c.client(), "default");
    let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    let creates = names.iter().map(|n| {
        let api = api.clone();
        let pod = example("original/pod.yaml", Some(n), Some("node-a"));
        async move {
            api.create(&PostParams::default(), &pod?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let t = std::time::Instant::now();
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let mut running = Vec::new();
    for n in &names {
        running.push(
            c.wait_running("default", n, Duration::from_secs(360))
                .await?,
        );
    }
    let all = t.elapsed();
    // Failed sandboxes of these pods, and those our CNI caused (the kubelet retries them, so they cost time only).
    let failed = c.failed_sandboxes("default", "burst-").await?;
    // Multus names the network whose ADD failed: ours is the NAD `dataplane` (`"type": "macvtap"`).
    let ours: Vec<&String> = failed
        .iter()
        .filter(|m| m.contains("to network \"dataplane\""))
        .collect();
    // Each pod's create -> Ready from its own timestamps (whole seconds: the API's resolution).
    let mut secs: Vec<i64> = running
        .iter()
        .filter_map(RunningPod::create_to_ready_secs)
        .collect();
    secs.sort_unstable();
    ensure!(
        secs.len() == BURST,
        "pods without creation or Ready timestamps"
    );
    let pct = |q: usize| secs[(secs.len() * q / 100).min(secs.len() - 1)];
    eprintln!(
        "    {BURST} pods with a macvtap network at once on node-a: all Running after {all:.1?}; each create -> Ready \
         p50 {} s, p95 {} s (pod timestamps); FailedCreatePodSandBox events: {} ({} ours)",
        pct(50),
        pct(95),
        failed.len(),
        ours.len()
    );
    ensure!(ours.is_empty(), "sandboxes failed by our CNI: {ours:#?}");
    let mut taps = BTreeSet::new();
    let mut devices = BTreeSet::new();
    // Each pod's net1 has the tap index of exactly one device's allocation record: its device.
    let records = c.allocation_records("node-a")?;
    let mut ids = BTreeSet::new();
    for p in &running {
        let tap = check_tap(p)?;
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&tap)?);
        taps.insert(tap);
        devices.insert(rdev);
        let index = p.net1()?["ifindex"].as_u64().context("net1 ifindex")? as u32;
        ids.insert(device_with_tap(&records, index).with_context(|| format!("{}'s net1", p.name))?);
    }
    ensure!(
        taps.len() == BURST && devices.len() == BURST,
        "taps {taps:?}"
    );
    ensure!(ids.len() == BURST, "device IDs not all distinct: {ids:?}");
    for n in &names {
        c.delete_pod("default", n, GONE).await?;
    }
    Ok(())
}
