//! End to end on a real cluster (see `macvtap_e2e::cluster`): kubelet + containerd + runc per node, the
//! scheduler and controller-manager, the chart installed with helm so the operator and the agents run as pods
//! from our images, Multus calling our `macvtap` CNI. The scenarios of the README and config/, and those only a
//! real cluster can show (kubelet restart, agent pod recreated, drain, many pods at once, scheduling limits).
//!
//! One cluster runs every scenario in turn (bringing one up costs a minute or two); each scenario reports on its
//! own and the test fails listing every scenario that failed.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macvtap_api::MacvtapPool;
use macvtap_e2e::cluster::pods::RunningPod;
use macvtap_e2e::cluster::resources::{pool_ready, resource_name};
use macvtap_e2e::cluster::{Cluster, ClusterOptions};
use macvtap_e2e::tap::{Tap, parse_mac};
use macvtap_e2e::workspace::config_file;

type Scenario = for<'a> fn(&'a mut Cluster) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

const RUN: Duration = Duration::from_secs(120);
const GONE: Duration = Duration::from_secs(90);

/// A busybox pod (the image the original README's pods use), optionally on Multus networks, asking for one
/// device of `resource`, kept to a node by a nodeSelector (the scheduler still places it).
fn busybox(name: &str, networks: Option<&str>, resource: Option<&str>, node: Option<&str>) -> Pod {
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "busybox",
                "image": "busybox",
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {}},
            }],
        },
    });
    if let Some(n) = networks {
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = n.into();
    }
    if let Some(r) = resource {
        pod["spec"]["containers"][0]["resources"]["limits"][resource_name(r)] = 1.into();
    }
    if let Some(n) = node {
        pod["spec"]["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": n});
    }
    serde_json::from_value(pod).expect("a valid pod")
}

/// Reads an example of config/ as a pod, renamed and kept to a node.
fn example(file: &str, name: Option<&str>, node: Option<&str>) -> Result<Pod> {
    let mut pod: Pod = serde_saphyr::from_str(&std::fs::read_to_string(config_file(file))?)?;
    if let Some(n) = name {
        pod.metadata.name = Some(n.into());
    }
    if let Some(n) = node {
        pod.spec.as_mut().unwrap().node_selector = Some(
            [("kubernetes.io/hostname".to_string(), n.to_string())]
                .into_iter()
                .collect(),
        );
    }
    Ok(pod)
}

/// The original README's pod (config/original/pod.yaml, `net1` on `dataplane`) as `name`, kept to `node`.
async fn original_pod(c: &Cluster, name: &str, node: &str) -> Result<RunningPod> {
    c.run_pod(example("original/pod.yaml", Some(name), Some(node))?, RUN)
        .await
}

fn net1(pod: &RunningPod) -> Result<serde_json::Value> {
    pod.link("net1")?
        .with_context(|| format!("pod {} has no net1: {:?}", pod.name, pod.link_names()))
}

/// The pod's tap must be the device of its net1: same ifindex in the name, same device number as the machine's.
fn check_tap(pod: &RunningPod) -> Result<std::path::PathBuf> {
    let l = net1(pod)?;
    let ifindex = l["ifindex"].as_u64().context("ifindex")? as u32;
    let taps = pod.tap_devices();
    ensure!(taps.len() == 1, "pod {}: taps {taps:?}", pod.name);
    let tap = &taps[0];
    ensure!(
        tap.ifindex() == Some(ifindex),
        "pod {}: /dev/{} but net1 has ifindex {ifindex}",
        pod.name,
        tap.name
    );
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata(tap.host_path())?;
    ensure!(
        host.rdev() == tap.rdev,
        "pod {}: /dev/{} in the container is not the machine's",
        pod.name,
        tap.name
    );
    Ok(tap.host_path())
}

/// Our macvtap links in a node's network namespace (host side: not in any pod).
fn node_macvtaps(c: &Cluster, node: &str) -> Result<Vec<String>> {
    let out = c
        .node(node)
        .netns
        .ip(&["-d", "-j", "link", "show", "type", "macvtap"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect())
}

async fn wait_until<F: Future<Output = Result<bool>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f().await? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Edits a pool's capacity, as a user would with `kubectl patch`.
async fn set_capacity(c: &Cluster, pool: &str, capacity: i64) -> Result<()> {
    let patch = Patch::Merge(serde_json::json!({"spec": {"capacity": capacity}}));
    Api::<MacvtapPool>::all(c.client())
        .patch(pool, &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

async fn allocated(c: &Cluster, pool: &str) -> Result<i64> {
    let p = Api::<MacvtapPool>::all(c.client()).get(pool).await?;
    Ok(p.status.map(|s| s.allocated as i64).unwrap_or(-1))
}

// ------------------------------------------------------------------------------------------------------------

async fn chart_runs_as_pods(c: &mut Cluster) -> Result<()> {
    let ns = c.chart.namespace.clone();
    // Both agents and both operator replicas answer `kubectl logs`; one replica leads.
    for node in c
        .nodes
        .iter()
        .map(|n| n.name().to_string())
        .collect::<Vec<_>>()
    {
        let agent = c.agent_pod(&node).await?;
        let logs = c.kubectl_out(&["logs", "-n", &ns, &agent.name_any(), "-c", "agent"])?;
        ensure!(!logs.trim().is_empty(), "empty log of {}", agent.name_any());
    }
    let pods = Api::<Pod>::namespaced(c.client(), &ns)
        .list(&ListParams::default())
        .await?;
    let operators: Vec<String> = pods
        .items
        .iter()
        .map(|p| p.name_any())
        .filter(|n| n.contains("operator") && !n.contains("agent"))
        .collect();
    ensure!(operators.len() == 2, "operator pods: {operators:?}");
    for o in &operators {
        c.kubectl_out(&["logs", "-n", &ns, o])?;
    }
    let leases = Api::<Lease>::namespaced(c.client(), &ns)
        .list(&ListParams::default())
        .await?;
    let holders: Vec<String> = leases
        .items
        .iter()
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .collect();
    ensure!(
        holders
            .iter()
            .any(|h| operators.iter().any(|o| h.contains(o.as_str()))),
        "the operator Lease is held by one of {operators:?}: {holders:?}"
    );
    Ok(())
}

async fn dataplane(c: &mut Cluster) -> Result<()> {
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
    let l = net1(&pod)?;
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
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 1)
    })
    .await?;

    // Deletion: CNI DEL removes the link, the slot is free, a new pod gets a device.
    let node = pod.node.clone();
    c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    wait_until("the pod's link gone from its node", GONE, || async {
        Ok(node_macvtaps(c, &node)?.is_empty())
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

async fn pod_with_mac(c: &mut Cluster) -> Result<()> {
    let pod = c
        .run_pod(example("original/pod-with-mac.yaml", None, None)?, RUN)
        .await?;
    let l = net1(&pod)?;
    ensure!(
        l["address"] == "02:23:45:67:89:01",
        "MAC from the selection annotation: {l}"
    );
    c.delete_pod(&pod.namespace, &pod.name, GONE).await
}

async fn device_plugin_only(c: &mut Cluster) -> Result<()> {
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
    // Allocate made the link on the node; the container's tap is that link's.
    let out = c
        .node(&pod.node)
        .netns
        .ip(&["-j", "link", "show", "type", "macvtap"])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    let ifindex = taps[0].ifindex().context("tap name")?;
    ensure!(
        links
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["ifindex"] == ifindex),
        "no macvtap with ifindex {ifindex} on {}: {links}",
        pod.node
    );
    c.delete_pod(&pod.namespace, &pod.name, GONE).await
}

async fn data_path(c: &mut Cluster) -> Result<()> {
    let a = original_pod(c, "dp-a", "node-a").await?;
    let b = original_pod(c, "dp-b", "node-a").await?;
    let d = original_pod(c, "dp-c", "node-b").await?;
    let mac = |p: &RunningPod| -> Result<[u8; 6]> {
        parse_mac(net1(p)?["address"].as_str().unwrap_or_default()).context("MAC")
    };
    let (ma, mb, md) = (mac(&a)?, mac(&b)?, mac(&d)?);
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

async fn capacity_edit(c: &mut Cluster) -> Result<()> {
    set_capacity(c, "dataplane", 7).await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, a| {
            cap == 7 && a == 7
        })
        .await?;
    }
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.capacity == 14)
    })
    .await?;
    set_capacity(c, "dataplane", 50).await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, _| {
            cap == 50
        })
        .await?;
    }
    Ok(())
}

/// `p4p1`, not `eth0`: eth0 also carries the node's own traffic (kubelet, agent), like a host's only NIC.
async fn lower_device_down(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("pools/p4p1.yaml")).await?;
    c.wait_pool("p4p1", Duration::from_secs(90), pool_ready)
        .await?;
    c.node("node-b")
        .netns
        .ip(&["link", "set", "p4p1", "down"])?;
    let pool = c
        .wait_pool("p4p1", Duration::from_secs(60), |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.status == "True")
            })
        })
        .await;
    c.node("node-b").netns.ip(&["link", "set", "p4p1", "up"])?;
    let degraded = pool?
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    ensure!(
        degraded.message.contains("node-b"),
        "Degraded names the node: {degraded:?}"
    );
    c.wait_pool("p4p1", Duration::from_secs(60), pool_ready)
        .await?;
    Ok(())
}

/// kube-ovn as IPAM: its real CNI binary, against a stand-in daemon per node that answers from the pod's
/// annotations as kube-ovn-controller would have written them (subnet of config/kube-ovn/subnet-p4p1.yaml).
async fn kube_ovn(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("pools/p4p1.yaml")).await?;
    c.wait_pool("p4p1", Duration::from_secs(90), pool_ready)
        .await?;
    c.apply_file(&config_file("kube-ovn/nad-p4p1.yaml")).await?;
    let provider = "p4p1.default";
    let cases = [
        (
            "kube-ovn/pod-fixed-ip.yaml",
            "net1",
            Some("172.17.100.20"),
            None,
        ),
        (
            "kube-ovn/pod-fixed-mac.yaml",
            "net1",
            None,
            Some("02:00:ac:11:64:15"),
        ),
        (
            "kube-ovn/pod-fixed-ip-and-mac.yaml",
            "net1",
            Some("172.17.100.22"),
            Some("02:00:ac:11:64:16"),
        ),
        (
            "kube-ovn/pod-default-network.yaml",
            "eth0",
            Some("172.17.100.23"),
            Some("02:00:ac:11:64:17"),
        ),
    ];
    for (i, (file, ifname, ip, mac)) in cases.into_iter().enumerate() {
        let manifest = example(file, None, None)?;
        let name = manifest.name_any();
        let want_ip = ip
            .map(str::to_string)
            .unwrap_or_else(|| format!("172.17.100.{}", 50 + i));
        let want_mac = mac
            .map(str::to_string)
            .unwrap_or_else(|| format!("02:00:ac:11:64:{:02x}", 0x50 + i));
        for node in &c.nodes {
            let daemon = c.kube_ovn(node.name());
            for (k, v) in [
                ("ip_address", want_ip.as_str()),
                ("mac_address", want_mac.as_str()),
                ("cidr", "172.17.100.0/24"),
                ("gateway", "172.17.100.1"),
                (
                    "default_route",
                    if ifname == "eth0" { "true" } else { "false" },
                ),
            ] {
                daemon.set_annotation(
                    "default",
                    &name,
                    &format!("{provider}.kubernetes.io/{k}"),
                    v,
                );
            }
        }
        let pod = c
            .run_pod(manifest, RUN)
            .await
            .with_context(|| file.to_string())?;
        let l = pod
            .link(ifname)?
            .with_context(|| format!("{file}: no {ifname}"))?;
        ensure!(
            l["linkinfo"]["info_kind"] == "macvtap",
            "{file}: {ifname} is not macvtap: {l}"
        );
        ensure!(
            l["address"] == want_mac.as_str(),
            "{file}: MAC {} != {want_mac}",
            l["address"]
        );
        let addrs = pod.ip(&["-o", "-4", "addr", "show", "dev", ifname])?;
        ensure!(
            addrs.contains(&format!("{want_ip}/24")),
            "{file}: addresses {addrs}, want {want_ip}/24"
        );
        let routes = pod.ip(&["route", "show", "default"])?;
        if ifname == "eth0" {
            ensure!(
                routes.contains("172.17.100.1") && routes.contains("eth0"),
                "{file}: default route {routes:?}"
            );
        } else {
            ensure!(
                !routes.contains("net1"),
                "{file}: no default route via net1 expected: {routes:?}"
            );
        }
        c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    }
    Ok(())
}

/// The kubelet restarts while a pod holds a device: the pod keeps its interface, the agent re-registers, the
/// Node's allocatable comes back, and new pods still attach.
async fn kubelet_restart(c: &mut Cluster) -> Result<()> {
    let holder = original_pod(c, "holder", "node-a").await?;
    let before = net1(&holder)?;
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
    let after = net1(&holder)?;
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
async fn agent_recreated(c: &mut Cluster) -> Result<()> {
    let user = original_pod(c, "user", "node-a").await?;
    let orphan_pod = c
        .run_pod(
            busybox("orphan", None, Some("dataplane"), Some("node-a")),
            RUN,
        )
        .await?;
    let orphan_if = orphan_pod.tap_devices()[0].ifindex().context("tap")?;
    let before = net1(&user)?;
    let agent = c.agent_pod("node-a").await?;
    let pods = Api::<Pod>::namespaced(c.client(), &c.chart.namespace);
    // Stop the DaemonSet from replacing the agent until the orphan exists: delete the agent and the pod at once.
    pods.delete(&agent.name_any(), &DeleteParams::default())
        .await?;
    c.delete_pod(&orphan_pod.namespace, &orphan_pod.name, GONE)
        .await?;
    wait_until(
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
    wait_until(
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
    let after = net1(&user)?;
    ensure!(
        before == after,
        "the running pod's net1 changed: {before} -> {after}"
    );
    check_tap(&user)?;
    c.delete_pod(&user.namespace, &user.name, GONE).await
}

/// `kubectl drain`: the node's pods are evicted, their links removed and the devices free for the pods after.
async fn drain(c: &mut Cluster) -> Result<()> {
    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(
            c.run_pod(
                example(
                    "original/pod.yaml",
                    Some(&format!("drained-{i}")),
                    Some("node-b"),
                )?,
                RUN,
            )
            .await?,
        );
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
        wait_until("node-b's links gone", GONE, || async {
            Ok(node_macvtaps(c, "node-b")?.is_empty())
        })
        .await?;
        wait_until("nothing allocated", GONE, || async {
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

/// 20 pods at once on one node: all attached, every device, tap and link their own.
async fn twenty_at_once(c: &mut Cluster) -> Result<()> {
    let api = Api::<Pod>::namespaced(c.client(), "default");
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    let creates = names.iter().map(|n| {
        let api = api.clone();
        let pod = example("original/pod.yaml", Some(n), Some("node-a"));
        async move {
            api.create(&PostParams::default(), &pod?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let mut running = Vec::new();
    for n in &names {
        running.push(
            c.wait_running("default", n, Duration::from_secs(300))
                .await?,
        );
    }
    let mut taps = BTreeSet::new();
    let mut devices = BTreeSet::new();
    let mut aliases = BTreeSet::new();
    for p in &running {
        let tap = check_tap(p)?;
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&tap)?);
        taps.insert(tap);
        devices.insert(rdev);
        aliases.insert(net1(p)?["ifalias"].as_str().unwrap_or_default().to_string());
    }
    ensure!(taps.len() == 20 && devices.len() == 20, "taps {taps:?}");
    ensure!(
        aliases.len() == 20,
        "device IDs (link aliases) not all distinct: {aliases:?}"
    );
    for n in &names {
        c.delete_pod("default", n, GONE).await?;
    }
    Ok(())
}

/// Upgrading from kubevirt/macvtap-cni: the original left macvtap links on a node for our slots (its names, no
/// marker of ours). Pods scheduled there get those slots and attach; the ones no pod holds are cleaned up; a link
/// that is not the original's for one of our slots is never touched.
async fn upgrade_from_original(c: &mut Cluster) -> Result<()> {
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
            c.run_pod(
                example(
                    "original/pod.yaml",
                    Some(&format!("upgraded-{i}")),
                    Some("node-b"),
                )?,
                RUN,
            )
            .await
            .context("a pod on a slot the original's link occupied")?,
        );
    }
    for p in &pods {
        check_tap(p)?;
    }
    // The two slots no pod holds: their original links go (fast cleanup in this cluster); the stranger stays.
    wait_until(
        "unheld original links cleaned up",
        Duration::from_secs(90),
        || async { Ok(node_macvtaps(c, "node-b")? == ["mvt0123456789ab"]) },
    )
    .await?;
    for p in pods {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    let left = node_macvtaps(c, "node-b")?;
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

/// Capacity used up: the scheduler keeps the next pod Pending, saying which resource is short.
async fn capacity_exhausted(c: &mut Cluster) -> Result<()> {
    c.apply_yaml(
        "apiVersion: macvtap.network.kubevirt.io/v1alpha1\nkind: MacvtapPool\nmetadata:\n  name: scarce\n\
         spec:\n  lowerDevice: p4p1\n  capacity: 1\n  nodeSelector:\n    matchLabels:\n      kubernetes.io/hostname: node-a\n",
    )
    .await?;
    c.wait_node_resource("node-a", &resource_name("scarce"), RUN, |cap, a| {
        cap == 1 && a == 1
    })
    .await?;
    let first = c
        .run_pod(busybox("scarce-1", None, Some("scarce"), None), RUN)
        .await?;
    ensure!(first.node == "node-a", "scheduled on {}", first.node);
    let api = Api::<Pod>::namespaced(c.client(), "default");
    api.create(
        &PostParams::default(),
        &busybox("scarce-2", None, Some("scarce"), None),
    )
    .await?;
    wait_until(
        "scarce-2 Unschedulable",
        Duration::from_secs(60),
        || async {
            let p = api.get("scarce-2").await?;
            Ok(p.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                        && c.message.as_deref().is_some_and(|m| {
                            m.contains("Insufficient macvtap.network.kubevirt.io/scarce")
                        })
                }))
        },
    )
    .await?;
    // Freeing the device lets the scheduler place the waiting pod.
    c.delete_pod("default", "scarce-1", GONE).await?;
    c.wait_running("default", "scarce-2", RUN).await?;
    c.delete_pod("default", "scarce-2", GONE).await?;
    Api::<MacvtapPool>::all(c.client())
        .delete("scarce", &DeleteParams::default())
        .await?;
    Ok(())
}

#[test]
fn end_to_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("the cluster starts");
        // Orphaned links are cleaned within seconds instead of the default two minutes.
        let fast_cleanup = [
            "agent.extraArgs[0]=--cleanup-grace-secs=10",
            "agent.extraArgs[1]=--cleanup-interval-secs=3",
        ]
        .map(String::from);
        cluster
            .install_chart(&fast_cleanup)
            .await
            .expect("the chart installs and its pods run");
        let scenarios: Vec<(&str, Scenario)> = vec![
            (
                "operator and agents run as pods, logs, leader election",
                |c| Box::pin(chart_runs_as_pods(c)),
            ),
            ("dataplane pool + NAD + pod, delete, reuse", |c| {
                Box::pin(dataplane(c))
            }),
            ("pod with MAC in the selection annotation", |c| {
                Box::pin(pod_with_mac(c))
            }),
            ("device-plugin-only pod", |c| {
                Box::pin(device_plugin_only(c))
            }),
            (
                "data path through /dev/tapN, same node and across nodes",
                |c| Box::pin(data_path(c)),
            ),
            ("pool capacity edit reaches the Node's allocatable", |c| {
                Box::pin(capacity_edit(c))
            }),
            ("lower device down -> Degraded, up -> Ready", |c| {
                Box::pin(lower_device_down(c))
            }),
            (
                "kube-ovn IPAM: fixed IP, fixed MAC, both, default network",
                |c| Box::pin(kube_ovn(c)),
            ),
            ("kubelet restart while a pod holds a device", |c| {
                Box::pin(kubelet_restart(c))
            }),
            (
                "agent pod deleted: recreated, links in use untouched, orphans cleaned",
                |c| Box::pin(agent_recreated(c)),
            ),
            ("node drained: devices free again", |c| Box::pin(drain(c))),
            ("20 pods at once on one node", |c| {
                Box::pin(twenty_at_once(c))
            }),
            ("capacity used up: Pending, Unschedulable", |c| {
                Box::pin(capacity_exhausted(c))
            }),
            ("upgrade from the original: its links on our slots", |c| {
                Box::pin(upgrade_from_original(c))
            }),
        ];
        // E2E_ONLY=<part of a name>[,...] runs the matching scenarios only (development); it must match one.
        let only = std::env::var("E2E_ONLY").ok();
        let mut ran = 0;
        let mut failed = Vec::new();
        for (name, scenario) in scenarios {
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|o| name.contains(o)))
            {
                continue;
            }
            ran += 1;
            eprintln!("--- scenario: {name}");
            let t = std::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(420), scenario(&mut cluster)).await {
                Ok(Ok(())) => eprintln!("--- ok ({:.1?}): {name}", t.elapsed()),
                Ok(Err(e)) => {
                    eprintln!("--- FAILED: {name}: {e:#}");
                    for node in ["node-a", "node-b"] {
                        if let Ok(p) = cluster.agent_pod(node).await {
                            let logs = cluster
                                .kubectl_out(&[
                                    "logs",
                                    "-n",
                                    "macvtap-system",
                                    &p.name_any(),
                                    "-c",
                                    "agent",
                                    "--tail=25",
                                ])
                                .unwrap_or_else(|e| e.to_string());
                            eprintln!("--- agent on {node}:\n{logs}");
                        }
                    }
                    failed.push(format!("{name}: {e:#}"));
                }
                Err(_) => failed.push(format!("{name}: timed out")),
            }
        }
        drop(cluster);
        assert!(ran > 0, "E2E_ONLY={only:?} matched no scenario");
        assert!(
            failed.is_empty(),
            "{} scenario(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    });
}
