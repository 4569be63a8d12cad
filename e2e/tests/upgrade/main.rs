//! The real upgrade from kubevirt/macvtap-cni (issue 24), on its own real cluster: the original v0.13.1 deployed
//! as its README does (its DaemonSet with `DP_MACVTAP_CONF` from its ConfigMap, its CNI as `/opt/cni/bin/macvtap`),
//! the original README's pod attached by the original's CNI and a device-plugin-only pod; then the switch to ours
//! as the README's "Upgrading from kubevirt/macvtap-cni" tells users:
//!
//! 1. `kubectl delete daemonset macvtap-cni` (and wait until its pods are gone);
//! 2. `helm install` our chart;
//! 3. `kubectl apply` the `MacvtapPool` equal to the old `DP_MACVTAP_CONF` entry (config/pools/dataplane.yaml:
//!    `dataplane`, eth0, bridge, 50) and wait for it to be `Ready`;
//! 4. `kubectl delete configmap macvtap-deviceplugin-config`.
//!
//! Pass: the old pods keep net1 and their taps (same ifindex and MAC, frames through, a probe stream through the
//! whole switch), an old pod's container restarts under our agent, new pods get devices (no
//! UnexpectedAdmissionError, no device twice), deleting an old pod frees its slot and link (the device-plugin-only
//! pod's host link adopted, then cleaned; the original-attached link through our CNI's DEL), nothing left at the end.
//!
//! Needs root, the tools, our images (`make images`) and the original's binaries (`../shared/original-macvtap-cni`,
//! or `MACVTAP_ORIGINAL_DIR`); fails, never skips, when one is missing.
//!
//! Just over 400 lines: one scenario, its steps in the order a user takes them ([`observe`] holds what it looks at).

mod observe;
mod original;
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use macvtap_e2e::cluster::pods::RunningPod;
use macvtap_e2e::cluster::resources::{pool_ready, resource_name};
use macvtap_e2e::cluster::{Cluster, ClusterOptions, FAST_CLEANUP};
use macvtap_e2e::tap::{Tap, parse_mac};
use macvtap_e2e::test_pods::{check_tap, example, net1_mac};
use macvtap_e2e::wait;
use macvtap_e2e::workspace::config_file;
use observe::*;

const RUN: Duration = Duration::from_secs(120);
const GONE: Duration = Duration::from_secs(90);
const POOL: &str = "dataplane";
/// The original's `DP_MACVTAP_CONF` capacity in config/original/deviceplugin-configmap.yaml, and the pool's.
const CAPACITY: i64 = 50;
/// Event reasons that mean a pod was hurt by the switch.
const BAD_REASONS: [&str; 4] = [
    "UnexpectedAdmissionError",
    "FailedKillPod",
    "FailedCreatePodSandBox",
    "FailedPreStopHook",
];

#[test]
fn upgrade_from_kubevirt_macvtap_cni() {
    // Before the minutes of cluster start: the original's binaries and its image.
    let bins = original::Binaries::locate().expect("the original's v0.13.1 binaries");
    let work = tempfile::tempdir().expect("a work directory");
    let archive = original::build_image(&bins, work.path()).expect("the original's image");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("the cluster (without our chart)");
        let result = upgrade(&cluster, &bins, &archive).await;
        if result.is_err() {
            dump(&cluster);
        }
        drop(cluster);
        eprintln!("upgrade test: {:.1?} in all", t.elapsed());
        if let Err(e) = result {
            panic!("upgrade from kubevirt/macvtap-cni: {e:#}");
        }
    });
}

async fn upgrade(c: &Cluster, bins: &original::Binaries, archive: &std::path::Path) -> Result<()> {
    let resource = resource_name(POOL);

    // --- The original, as its README deploys it.
    c.registry
        .push(archive, original::IMAGE)
        .context("pushing the original's image")?;
    c.apply_file(&config_file("original/deviceplugin-configmap.yaml"))
        .await?;
    c.apply_yaml(&original::daemonset_yaml()).await?;
    original::wait_ready(c, RUN).await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource, RUN, |cap, a| {
            cap == CAPACITY && a == CAPACITY
        })
        .await
        .context("the original's device plugin registered")?;
    }
    for node in &c.nodes {
        let installed = std::fs::read(node.dir.join("cni-bin/macvtap"))?;
        ensure!(
            installed == std::fs::read(bins.cni())?,
            "{}: /opt/cni/bin/macvtap is not the original's CNI",
            node.name()
        );
    }
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;

    let old_net_a = attached_by_the_original(c, "old-net-a", "node-a").await?;
    let old_net_b = attached_by_the_original(c, "old-net-b", "node-b").await?;
    let old_dp_a = device_plugin_only_of_the_original(c, "old-dp-a", "node-a").await?;
    // A device-plugin-only pod that ended under the original: the original never removes its host link.
    let ended = device_plugin_only_of_the_original(c, "ended-dp-a", "node-a").await?;
    let ended_id = ended
        .devices
        .first()
        .context("ended-dp-a's device")?
        .clone();
    c.delete_pod("default", &ended.pod.name, GONE).await?;
    ensure!(
        host_link(c, "node-a", ended.ifindex)?.is_some(),
        "the original removed ended-dp-a's host link (it never did)"
    );
    // Links that only look like the original's: never touched by our agent.
    let strangers = strangers(c)?;
    let mut t_net_a = Tap::open(&old_net_a.tap)?;
    let mut t_dp_a = Tap::open(&old_dp_a.tap)?;
    let mut t_net_b = Tap::open(&old_net_b.tap)?;
    frames_through(
        &mut t_net_a,
        &old_net_a,
        &mut t_dp_a,
        &old_dp_a,
        "same node",
    )?;
    frames_through(
        &mut t_net_a,
        &old_net_a,
        &mut t_net_b,
        &old_net_b,
        "across nodes",
    )?;
    frames_through(&mut t_net_b, &old_net_b, &mut t_net_a, &old_net_a, "back")?;
    eprintln!(
        "original running: old-net-a net1 ifindex {} ({:?}), old-net-b {} ({:?}), old-dp-a host link {} ({:?})",
        old_net_a.ifindex,
        old_net_a.devices,
        old_net_b.ifindex,
        old_net_b.devices,
        old_dp_a.ifindex,
        old_dp_a.devices
    );

    // --- The switch, with frames flowing between two old pods' taps all through it.
    let probe = traffic::Probe::start(
        t_net_a,
        old_net_a.mac,
        t_dp_a,
        old_dp_a.mac,
        Duration::from_millis(20),
    );
    let t0 = Instant::now();
    c.kubectl_out(&[
        "delete",
        "daemonset",
        original::DAEMONSET,
        "-n",
        original::NAMESPACE,
        "--cascade=foreground",
    ])?;
    original::wait_gone(c, GONE).await?;
    let original_gone = t0.elapsed();
    let t_helm = Instant::now();
    c.install_chart(&FAST_CLEANUP.map(String::from))
        .await
        .context("helm install of our chart")?;
    let chart_ready = t_helm.elapsed();
    c.apply_file(&config_file("pools/dataplane.yaml")).await?;
    c.wait_pool(POOL, RUN, pool_ready).await?;
    let pool_ready_after = t_helm.elapsed();
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource, RUN, |cap, a| {
            cap == CAPACITY && a == CAPACITY
        })
        .await
        .context("our agent serves the resource")?;
    }
    let window = t0.elapsed();
    c.kubectl_out(&[
        "delete",
        "configmap",
        original::CONFIGMAP,
        "-n",
        original::NAMESPACE,
    ])?;
    let report = probe.stop()?;
    eprintln!(
        "switch: original's DaemonSet deleted and its pods gone {original_gone:.1?}; helm install -> chart ready \
         {chart_ready:.1?}, -> pool Ready {pool_ready_after:.1?}; original deleted -> both Nodes' allocatable back \
         at {CAPACITY}: {window:.1?}. Probe old-net-a -> old-dp-a (a frame every 20 ms): {} sent, {} received, \
         longest time without a frame {:.0?}",
        report.sent, report.received, report.max_gap
    );
    ensure!(
        report.max_gap < Duration::from_secs(1),
        "traffic between old pods stopped for {:?} during the switch",
        report.max_gap
    );
    let (mut t_net_a, mut t_dp_a) = (report.from, report.to);

    // --- After the switch: ours is installed, the old pods are as they were.
    for node in &c.nodes {
        let installed = std::fs::read(node.dir.join("cni-bin/macvtap"))?;
        ensure!(
            installed != std::fs::read(bins.cni())?
                && node.dir.join("cni-bin/macvtap-node.json").is_file(),
            "{}: /opt/cni/bin/macvtap is not ours after helm install",
            node.name()
        );
    }
    for old in [&old_net_a, &old_net_b] {
        let l = old.pod.net1()?;
        ensure!(
            l["ifindex"] == old.ifindex && net1_mac(&old.pod)? == old.mac,
            "{}: net1 changed in the switch: {l}",
            old.pod.name
        );
        ensure!(
            check_tap(&old.pod)? == old.tap,
            "{}: tap changed",
            old.pod.name
        );
    }
    // Adopted by our agent: renamed to our scheme, marked; the same link (ifindex, so the same tap). Its cleanup
    // pass adopts: the first one after the agent has the pool, within one interval (3 s here) of serving it.
    let id = old_dp_a.devices.first().context("old-dp-a's device")?;
    let t_adopt = Instant::now();
    let ours = |l: &serde_json::Value| {
        l["ifname"] == macvtap_core::device::host_link_name(id)
            && l["ifalias"] == macvtap_core::device::ownership_alias(id)
            && l["operstate"] != "DOWN"
    };
    // Not adopted in time: the check below says how the link looks.
    if wait::until(
        "old-dp-a's host link adopted",
        Duration::from_secs(30),
        || async {
            Ok(host_link(c, "node-a", old_dp_a.ifindex)?
                .as_ref()
                .is_some_and(ours))
        },
    )
    .await
    .is_ok()
    {
        eprintln!(
            "old-dp-a's host link adopted {:.1?} after both Nodes' allocatable was back",
            t_adopt.elapsed()
        );
    }
    let adopted = host_link(c, "node-a", old_dp_a.ifindex)?
        .context("old-dp-a's host link is gone after the switch")?;
    ensure!(
        ours(&adopted),
        "old-dp-a's host link not adopted (our name and marker for {id}, up): {adopted}"
    );
    // The link ended-dp-a left: adopted, then cleaned as no pod holds its device.
    wait::until("ended-dp-a's leftover link cleaned", GONE, || async {
        Ok(host_link(c, "node-a", ended.ifindex)?.is_none())
    })
    .await
    .with_context(|| format!("{ended_id}: {:?}", c.node_macvtaps("node-a")))?;
    frames_through(
        &mut t_net_a,
        &old_net_a,
        &mut t_dp_a,
        &old_dp_a,
        "same node, after",
    )?;
    frames_through(
        &mut t_net_a,
        &old_net_a,
        &mut t_net_b,
        &old_net_b,
        "across nodes, after",
    )?;
    frames_through(
        &mut t_net_b,
        &old_net_b,
        &mut t_net_a,
        &old_net_a,
        "back, after",
    )?;
    c.wait_pool(POOL, RUN, |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 3)
    })
    .await
    .context("our agent counts the original's three allocations")?;

    // An old pod's container restarts under our agent: the kubelet now calls our PreStartContainer for a device
    // the original allocated.
    container_restarts(c, &old_dp_a).await?;
    ensure!(
        old_dp_a.pod.tap_devices().len() == 1
            && host_link(c, "node-a", old_dp_a.ifindex)?.is_some(),
        "old-dp-a lost its tap or host link in the restart"
    );
    frames_through(
        &mut t_net_a,
        &old_net_a,
        &mut t_dp_a,
        &old_dp_a,
        "after the restart",
    )?;

    // --- New pods, attached by our CNI in place, beside the old ones.
    let new_net_a = c
        .run_pod(
            example("original/pod.yaml", Some("new-net-a"), Some("node-a"))?,
            RUN,
        )
        .await?;
    let new_net_b = c
        .run_pod(
            example("original/pod.yaml", Some("new-net-b"), Some("node-b"))?,
            RUN,
        )
        .await?;
    let new_dp_a = c
        .run_pod(device_plugin_only("new-dp-a", "node-a")?, RUN)
        .await?;
    for p in [&new_net_a, &new_net_b] {
        let index = p.net1()?["ifindex"].as_u64().context("ifindex")?;
        ensure!(
            macvtap_core::is_tap_index(index as u32),
            "{}: net1 ifindex {index} is not from our tap-index range: not attached in place",
            p.name
        );
        ensure!(
            c.allocation_records(&p.node)?
                .values()
                .any(|r| u64::from(r.tap_index) == index),
            "{}: no allocation record has net1's tap index {index}",
            p.name
        );
    }
    ensure!(new_dp_a.tap_devices().len() == 1, "new-dp-a has no tap");
    let mut t_new_a = Tap::open(&check_tap(&new_net_a)?)?;
    let new_a_mac = net1_mac(&new_net_a)?;
    t_new_a.send(old_net_a.mac, new_a_mac, b"new to old")?;
    ensure!(
        t_net_a.receive(b"new to old", Duration::from_secs(5))? == Some(new_a_mac),
        "frame new-net-a -> old-net-a lost"
    );
    t_net_a.send(new_a_mac, old_net_a.mac, b"old to new")?;
    ensure!(
        t_new_a.receive(b"old to new", Duration::from_secs(5))? == Some(old_net_a.mac),
        "frame old-net-a -> new-net-a lost"
    );
    // No device twice: the kubelet's own record, and the taps the containers have.
    let everyone: Vec<&RunningPod> = vec![
        &old_net_a.pod,
        &old_net_b.pod,
        &old_dp_a.pod,
        &new_net_a,
        &new_net_b,
        &new_dp_a,
    ];
    let mut per_node: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut taps = BTreeSet::new();
    for p in &everyone {
        let ids = pod_devices(c, p)?;
        ensure!(ids.len() == 1, "{}: devices {ids:?}", p.name);
        for id in ids {
            ensure!(
                per_node.entry(&p.node).or_default().insert(id.clone()),
                "device {id} on {} given twice ({})",
                p.node,
                p.name
            );
        }
        let t = p.tap_devices();
        ensure!(t.len() == 1, "{}: taps {t:?}", p.name);
        ensure!(
            taps.insert(t[0].rdev),
            "{}: /dev/{} given twice",
            p.name,
            t[0].name
        );
    }
    eprintln!("devices after the switch: {per_node:?}");
    bad_events(c).await?;
    c.wait_pool(POOL, RUN, |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 6)
    })
    .await?;
    drop((t_new_a, t_net_b));

    // --- Deleting old pods: the original-attached link through our CNI's DEL, the adopted host link by cleanup.
    drop(t_net_a);
    c.delete_pod("default", &old_net_a.pod.name, GONE)
        .await
        .context("deleting old-net-a (our CNI's DEL of the original's link)")?;
    ensure!(
        !old_net_a.tap.exists(),
        "old-net-a's {} still exists after the pod is gone",
        old_net_a.tap.display()
    );
    slot_freed(c, &old_net_a, 5).await?;
    drop(t_dp_a);
    c.delete_pod("default", &old_dp_a.pod.name, GONE).await?;
    wait::until("old-dp-a's adopted host link cleaned", GONE, || async {
        Ok(host_link(c, "node-a", old_dp_a.ifindex)?.is_none())
    })
    .await?;
    slot_freed(c, &old_dp_a, 4).await?;
    bad_events(c).await?;

    // --- Everything deleted: nothing of ours or the original's left on the nodes.
    for p in [&old_net_b.pod, &new_net_a, &new_net_b, &new_dp_a] {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    // The strangers went through all of it unchanged; then they go, and nothing may be left.
    ensure!(
        strangers == strangers_now(c)?,
        "links that are not the original's changed: before {strangers:?}, now {:?}",
        strangers_now(c)?
    );
    for (name, _) in &strangers {
        c.node("node-a").netns.ip(&["link", "del", name])?;
    }
    for node in &c.nodes {
        wait::until("no macvtap left on the node", GONE, || async {
            Ok(c.node_macvtaps(node.name())?.is_empty())
        })
        .await
        .with_context(|| format!("{}: {:?}", node.name(), c.node_macvtaps(node.name())))?;
    }
    c.wait_pool(POOL, RUN, |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 0)
    })
    .await?;
    bad_events(c).await
}
