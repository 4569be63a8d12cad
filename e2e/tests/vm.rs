//! A virtual machine on the tap, on the real cluster: VM pods (`images/vm`: the `vm-launcher` and QEMU) whose
//! guest's virtio-net NIC runs on the `/dev/tapN` our device plugin handed out, the way KubeVirt uses macvtap.
//! Each guest pings a pod on the other node over the macvtap network and is pinged back; with 2 queues (that pod
//! written without its device limit: the operator's injector adds it); a VM pod deleted frees its link and device
//! for the next; a guest gets its kube-ovn IPAM address.
//!
//! Needs root, the tools (`make tools`) and the images including the VM image (`make images`); QEMU runs with
//! TCG here (no usable KVM, no vhost-net: see the README), so a guest takes 5 s idle and up to a minute or two
//! on a loaded machine to boot; the waits are generous, the checks are the guest's own reports.
//!
//! One cluster runs every scenario in turn; the test fails listing every scenario that failed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use macvtap_api::MacvtapPool;
use macvtap_e2e::cluster::Cluster;
use macvtap_e2e::cluster::pods::RunningPod;
use macvtap_e2e::cluster::resources::resource_name;
use macvtap_e2e::vm_pod::{
    VmPod, dataplane_ips, peer_pod, ping_from, pod_log, push_vm_image, vm_image, wait_log_line,
};
use macvtap_e2e::wait;
use macvtap_e2e::workspace::config_file;

type Scenario =
    for<'a> fn(&'a mut Cluster, &'a str) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// Pod create → Running (includes pulling the VM image once).
const RUN: Duration = Duration::from_secs(300);
/// VM pod Running → the guest's report (TCG boot on a loaded 2-core machine).
const BOOT: Duration = Duration::from_secs(420);
const GONE: Duration = Duration::from_secs(90);
const PING: Duration = Duration::from_secs(60);

/// The VMs' peer on the dataplane network (config/vm/pod-peer.yaml), on node-b; the VMs run on node-a.
const PEER: &str = "vm-peer";
const PEER_IP: &str = "10.200.0.20";

/// QEMU's open files on the pod's tap: QEMU is the pod's process named `qemu-system-x86` (comm is cut at 15).
fn qemu_tap_fds(pod: &RunningPod, tap: &str) -> Result<usize> {
    let qemu = pod
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
        .with_context(|| format!("no QEMU process in pod {}", pod.name))?;
    Ok(std::fs::read_dir(format!("/proc/{qemu}/fd"))?
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l == std::path::Path::new("/dev").join(tap))
        })
        .count())
}

/// Whether a VM pod carries its device limit or gets it from the operator's injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    Written,
    Injected,
}

/// Runs a VM pod on node-a pinging the peer, waits for the guest's ping report, checks the launcher's and the
/// guest's account of MAC, address, queues, accelerator and vhost, then the way back: with the pod's own copy of
/// the address removed from net1, only the guest can answer the peer's ping. With `limits: Limits::Injected` the pod is
/// created without its `resources` (a KubeVirt launcher pod under `ExternalNetResourceInjection`): the operator's
/// injector must add the device.
async fn vm_pings_and_is_pinged(
    c: &Cluster,
    image: &str,
    name: &str,
    mac: &str,
    ip: &str,
    queues: u8,
    limits: Limits,
) -> Result<RunningPod> {
    let spec = VmPod {
        name,
        image,
        networks: dataplane_ips(mac, ip),
        queues,
        ping: Some(PEER_IP),
        node: Some("node-a"),
    };
    let mut pod = spec.pod()?;
    if limits == Limits::Injected {
        pod.spec.as_mut().context("pod spec")?.containers[0].resources = None;
    }
    let vm = c.run_pod(pod, RUN).await?;
    if limits == Limits::Injected {
        let injected = vm
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].resources.clone());
        let has = |q: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >| {
            q.and_then(|m| m.get(&resource_name("dataplane")))
                .is_some_and(|v| v.0 == "1")
        };
        ensure!(
            injected
                .as_ref()
                .is_some_and(|r| has(r.limits.as_ref()) && has(r.requests.as_ref())),
            "VM pod {name} without resources: the injector set {injected:?}"
        );
    }
    let log = wait_log_line(
        c,
        "default",
        name,
        &format!("GUEST: ping {PEER_IP} ok"),
        BOOT,
    )
    .await?;
    let l = vm.net1()?;
    ensure!(l["address"] == mac, "net1 MAC from the annotation: {l}");
    let ifindex = l["ifindex"].as_u64().context("ifindex")?;
    let tap = format!("tap{ifindex}");
    let queue_list = (0..queues)
        .map(|q| format!("rx-{q}"))
        .chain((0..queues).map(|q| format!("tx-{q}")))
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        format!(
            "vm-launcher: tap /dev/{tap} (ifindex {ifindex}), MAC {mac}, guest address {ip}/24"
        ),
        // Here the pod has neither device (no KVM device plugin; the kernel lacks vhost-net): TCG, no vhost.
        "vm-launcher: accelerator tcg (no usable KVM: there is no /dev/kvm)".into(),
        "vm-launcher: vhost-net off (no /dev/vhost-net".into(),
        format!("vm-launcher: /dev/{tap} opened {queues} time(s)"),
        format!("GUEST: eth0 mac={mac} ip={ip}/24 queues={queue_list}"),
        format!("{queues} vCPU(s)"),
    ] {
        ensure!(
            log.contains(&want),
            "pod {name}: no {want:?} in the log:\n{log}"
        );
    }
    let fds = qemu_tap_fds(&vm, &tap)?;
    ensure!(
        fds == queues as usize,
        "QEMU holds /dev/{tap} {fds} times, want one per queue ({queues})"
    );
    vm.ip(&["addr", "flush", "dev", "net1"])?;
    ping_from(c, "default", PEER, ip, PING)
        .await
        .context("the peer pings the guest")?;
    Ok(vm)
}

// ------------------------------------------------------------------------------------------------------------

async fn vm_on_dataplane(c: &mut Cluster, image: &str) -> Result<()> {
    vm_pings_and_is_pinged(
        c,
        image,
        "vm-1",
        "02:00:0a:c8:00:0a",
        "10.200.0.10",
        1,
        Limits::Written,
    )
    .await?;
    Ok(())
}

/// vm-1 deleted: CNI DEL removes its link (with it the machine's `/dev/tapN`), nothing is left on node-a, the
/// pool counts only the peer. The pool has one device per node, so the next scenario's VM can only start on the
/// device vm-1 freed.
async fn vm_deleted(c: &mut Cluster, _image: &str) -> Result<()> {
    let vm = c
        .wait_running("default", "vm-1", Duration::from_secs(5))
        .await
        .context("vm-1 (the first scenario's VM)")?;
    let tap = format!("tap{}", vm.net1()?["ifindex"]);
    let dev = std::path::Path::new("/dev").join(&tap);
    ensure!(
        dev.exists(),
        "vm-1's {} is not on the machine",
        dev.display()
    );
    c.delete_pod("default", "vm-1", GONE).await?;
    wait::until("vm-1's link and tap gone", GONE, || async {
        Ok(!dev.exists() && c.node_macvtaps("node-a")?.is_empty())
    })
    .await?;
    c.wait_pool("dataplane", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 1)
    })
    .await?;
    Ok(())
}

async fn vm_two_queues(c: &mut Cluster, image: &str) -> Result<()> {
    let vm = vm_pings_and_is_pinged(
        c,
        image,
        "vm-2",
        "02:00:0a:c8:00:0b",
        "10.200.0.11",
        2,
        Limits::Injected,
    )
    .await?;
    c.delete_pod(&vm.namespace, &vm.name, GONE).await?;
    wait::until("vm-2's link gone from node-a (CNI DEL)", GONE, || async {
        Ok(c.node_macvtaps("node-a")?.is_empty())
    })
    .await
}

/// One device of the p4p1 pool, instead of the example's dataplane device.
fn p4p1_limit() -> serde_json::Value {
    let mut limits = serde_json::Map::new();
    limits.insert(resource_name("p4p1"), 1.into());
    limits.into()
}

/// kube-ovn as IPAM (the real controller and daemons): the guest gets the address kube-ovn's controller assigned to
/// the pod from the Subnet, with the MAC of the network selection (kube-ovn gives none for this provider), and
/// reaches a kube-ovn peer on the other node.
async fn vm_kube_ovn(c: &mut Cluster, image: &str) -> Result<()> {
    c.kube_ovn_examples_network().await?;
    let (vm_ip, vm_mac, peer_ip) = ("172.17.100.40", "02:00:ac:11:64:40", "172.17.100.41");
    let fixed_ip = "p4p1.default.kubernetes.io/ip_address";
    let mut peer = serde_json::to_value(peer_pod("node-b")?)?;
    peer["metadata"]["name"] = "ovn-peer".into();
    peer["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "default/p4p1".into();
    peer["metadata"]["annotations"][fixed_ip] = peer_ip.into();
    peer["spec"]["containers"][0]["resources"]["limits"] = p4p1_limit();
    let peer = c.run_pod(serde_json::from_value(peer)?, RUN).await?;
    let spec = VmPod {
        name: "vm-ovn",
        image,
        networks: format!(r#"[{{"name": "p4p1", "namespace": "default", "mac": "{vm_mac}"}}]"#),
        queues: 1,
        ping: Some(peer_ip),
        node: Some("node-a"),
    };
    let mut pod: serde_json::Value = serde_json::to_value(spec.pod()?)?;
    pod["spec"]["containers"][0]["resources"]["limits"] = p4p1_limit();
    pod["metadata"]["annotations"][fixed_ip] = vm_ip.into();
    let vm = c.run_pod(serde_json::from_value(pod)?, RUN).await?;
    let log = wait_log_line(
        c,
        "default",
        "vm-ovn",
        &format!("GUEST: ping {peer_ip} ok"),
        BOOT,
    )
    .await?;
    let want = format!("GUEST: eth0 mac={vm_mac} ip={vm_ip}/24");
    ensure!(log.contains(&want), "no {want:?} in the log:\n{log}");
    vm.ip(&["addr", "flush", "dev", "net1"])?;
    ping_from(c, "default", "ovn-peer", vm_ip, PING)
        .await
        .context("the kube-ovn peer pings the guest")?;
    for p in [vm, peer] {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    Ok(())
}

#[test]
fn vm_on_the_tap() {
    // Fails before the minutes of cluster start when the VM image was not built.
    vm_image().expect("the VM image (images/build.sh vm)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start_with_chart()
            .await
            .expect("the cluster with the chart");
        let image = push_vm_image(&cluster).expect("the VM image in the registry");
        setup_dataplane(&cluster)
            .await
            .expect("the dataplane pool (one device per node), its NAD and the peer pod");
        let scenarios: Vec<(&str, Scenario)> = vec![
            (
                "VM on dataplane, MAC from the annotation: guest <-> pod on the other node",
                |c, i| Box::pin(vm_on_dataplane(c, i)),
            ),
            ("VM pod deleted: link gone, device free", |c, i| {
                Box::pin(vm_deleted(c, i))
            }),
            (
                "VM with 2 queues on the freed device, its pod without limits (the injector adds the device): guest <-> pod on the other node",
                |c, i| Box::pin(vm_two_queues(c, i)),
            ),
            ("VM with kube-ovn IPAM: the address in the guest", |c, i| {
                Box::pin(vm_kube_ovn(c, i))
            }),
        ];
        let mut failed = Vec::new();
        for (name, scenario) in scenarios {
            eprintln!("--- scenario: {name}");
            let t = std::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(900), scenario(&mut cluster, &image))
                .await
            {
                Ok(Ok(())) => eprintln!("--- ok ({:.1?}): {name}", t.elapsed()),
                Ok(Err(e)) => {
                    eprintln!("--- FAILED: {name}: {e:#}");
                    dump(&cluster).await;
                    failed.push(format!("{name}: {e:#}"));
                }
                Err(_) => {
                    dump(&cluster).await;
                    failed.push(format!("{name}: timed out"));
                }
            }
        }
        drop(cluster);
        assert!(
            failed.is_empty(),
            "{} VM scenario(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    });
}

/// The `dataplane` pool with one device per node, the NAD with addresses from the annotation, the peer on node-b.
async fn setup_dataplane(c: &Cluster) -> Result<()> {
    c.apply_file(&config_file("pools/dataplane.yaml")).await?;
    Api::<MacvtapPool>::all(c.client())
        .patch(
            "dataplane",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"capacity": 1}})),
        )
        .await?;
    for node in &c.nodes {
        c.wait_node_resource(node.name(), &resource_name("dataplane"), RUN, |cap, a| {
            cap == 1 && a == 1
        })
        .await?;
    }
    c.apply_file(&config_file("vm/nad-dataplane-ips.yaml"))
        .await?;
    let peer = c.run_pod(peer_pod("node-b")?, RUN).await?;
    let addrs = peer.ip(&["-o", "-4", "addr", "show", "dev", "net1"])?;
    ensure!(
        addrs.contains(&format!("{PEER_IP}/24")),
        "the peer's net1 from the static IPAM: {addrs}"
    );
    Ok(())
}

/// On a failure: the VM pods' logs and the pods.
async fn dump(c: &Cluster) {
    eprintln!(
        "{}",
        c.kubectl_out(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default()
    );
    for name in ["vm-1", "vm-2", "vm-ovn"] {
        if let Ok(log) = pod_log(c, "default", name, false) {
            eprintln!("--- log of {name}:\n{log}");
            eprintln!("--- events of {name}:\n{}", c.events_of("default", name));
        }
    }
}
