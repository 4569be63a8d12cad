//! The README's main job: a real Kubernetes cluster on this machine that attaches a macvtap interface to a pod.
//!
//!   cargo run -p macvtap-e2e --bin sandbox [-- --keep] [--nodes N] [--vm]
//!
//! Brings up the cluster (control plane with scheduler and controller-manager, an image registry, N nodes with
//! containerd + runc + kubelet + kube-proxy), installs the chart with helm (operator Deployment and agent
//! DaemonSet run as pods from our images), creates the `dataplane` pool, the original README's
//! NetworkAttachmentDefinition and pod (unchanged), shows what a user wants to see, sends a frame through the
//! pods' taps, and tears everything down (or, with --keep, stays up until Ctrl-C and prints a kubeconfig).
//! With --vm it also starts a VM pod (config/vm/: QEMU guest on the pod's tap, `images/build.sh vm`) and a peer
//! pod, and shows the guest coming up on the macvtap network, pinging and pinged.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use macvtap_e2e::cluster::pods::RunningPod;
use macvtap_e2e::cluster::resources::{pool_ready, resource_name};
use macvtap_e2e::cluster::{Cluster, ClusterOptions};
use macvtap_e2e::tap::{Tap, parse_mac};
use macvtap_e2e::vm_pod::{VmPod, dataplane_ips, ping_from, push_vm_image, wait_log_line};
use macvtap_e2e::workspace::config_file;

/// How long the teardown waits for pods to be deleted through their kubelets before it removes everything.
const TEARDOWN_GRACE: Duration = Duration::from_secs(40);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: sandbox [--keep] [--nodes N] [--vm]   (run as root; see README.md)");
        return Ok(());
    }
    let keep = args.iter().any(|a| a == "--keep");
    let vm = args.iter().any(|a| a == "--vm");
    let nodes = match args.iter().position(|a| a == "--nodes") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .context("--nodes takes a number")?,
        None => 2,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the sandbox runs kubelets, containerd and network namespaces: run it as root");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(keep, nodes, vm));
    // Everything is torn down by now; a blocking task still reading a log or a socket of the cluster is not waited
    // for (a runtime's drop would).
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn run(keep: bool, nodes: usize, vm: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    step(&format!(
        "starting the cluster: control plane, image registry, {nodes} nodes (containerd + runc + kubelet + kube-proxy)"
    ));
    let mut cluster = Cluster::start(ClusterOptions::with_nodes(nodes)).await?;
    println!(
        "   API server {}  registry {}",
        cluster.control_plane.server_url(),
        cluster.registry.host()
    );

    step("helm install macvtap-operator charts/macvtap-operator (images pulled from the registry)");
    cluster.install_chart(&[]).await?;
    print!(
        "{}",
        cluster.kubectl_out(&["get", "nodes,pods", "-A", "-o", "wide"])?
    );

    step("MacvtapPool dataplane (config/pools/dataplane.yaml: lower device eth0 of every node)");
    cluster
        .apply_file(&config_file("pools/dataplane.yaml"))
        .await?;
    cluster
        .wait_pool("dataplane", Duration::from_secs(90), pool_ready)
        .await?;
    print!(
        "{}",
        cluster.kubectl_out(&["get", "macvtappools", "-o", "wide"])?
    );
    let resource = resource_name("dataplane");
    for node in &cluster.nodes {
        let (cap, alloc) = cluster
            .wait_node_resource(node.name(), &resource, Duration::from_secs(60), |c, a| {
                c > 0 && a > 0
            })
            .await?;
        println!(
            "   Node {}: {resource} capacity {cap}, allocatable {alloc}",
            node.name()
        );
    }

    step("the original README's NetworkAttachmentDefinition and pod, unchanged (config/original/)");
    cluster
        .apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    let pod_yaml = std::fs::read_to_string(config_file("original/pod.yaml"))?;
    let pod = cluster
        .run_pod_yaml(&pod_yaml, Duration::from_secs(120))
        .await?;
    show_pod(&cluster, &pod)?;

    step(
        "the same pod without its resource limits: the operator's injector adds macvtap.network.kubevirt.io/dataplane",
    );
    let no_limits = cluster
        .run_pod_yaml(
            &without_limits(&pod_yaml).replace("name: pod\n", "name: pod-no-limits\n"),
            Duration::from_secs(120),
        )
        .await?;
    let limits = no_limits
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].resources.clone());
    println!(
        "   pod-no-limits: resources set at admission {}",
        serde_json::to_string(&limits)?
    );
    show_pod(&cluster, &no_limits)?;

    step("data path: a frame written to one pod's tap arrives at another pod's tap (bridge mode)");
    let peer = cluster
        .run_pod_yaml(
            &pod_yaml.replace("name: pod\n", "name: pod-peer\n"),
            Duration::from_secs(120),
        )
        .await?;
    // The taps are closed before the teardown: closing a macvtap's tap takes the kernel's RTNL lock, which the
    // kernel's clean-up of the deleted network namespaces holds for many seconds.
    {
        let (mac_a, tap_a) = tap_of(&pod)?;
        let (mac_b, tap_b) = tap_of(&peer)?;
        let mut a = Tap::open(&tap_a)?;
        let mut b = Tap::open(&tap_b)?;
        a.send(mac_b, mac_a, b"hello from the sandbox")?;
        match b.receive(b"hello from the sandbox", Duration::from_secs(5))? {
            Some(src) if src == mac_a => println!(
                "   {} ({}) -> {} ({}): received",
                pod.name,
                tap_a.display(),
                peer.name,
                tap_b.display()
            ),
            other => bail!("frame not received through the taps (got {other:?})"),
        }
    }
    step(
        "kube-ovn as IPAM (config/kube-ovn/, as written): its controller and daemons, the Subnet p4p1, a pod with a fixed address",
    );
    let started = cluster.kube_ovn_examples_network().await?;
    println!(
        "   kube-ovn-controller, OVN databases, every node's Open vSwitch + ovn-controller + daemon: serving in {started:.1?}"
    );
    print!(
        "{}",
        cluster.kubectl_out(&["get", "subnets.kubeovn.io", "p4p1"])?
    );
    let ovn_pod = cluster
        .run_pod_yaml(
            &std::fs::read_to_string(config_file("kube-ovn/pod-fixed-ip.yaml"))?,
            Duration::from_secs(120),
        )
        .await?;
    show_pod(&cluster, &ovn_pod)?;
    println!(
        "   {}",
        cluster
            .kubectl_out(&["get", "ips.kubeovn.io", "-o", "custom-columns=IP OBJECT:.metadata.name,ADDRESS:.spec.ipAddress,POD:.spec.podName,SUBNET:.spec.subnet"])?
            .trim_end()
            .replace('\n', "\n   ")
    );
    let vm_pods = if vm { run_vm(&cluster).await? } else { vec![] };
    println!("   ready in {:.0?}", t0.elapsed());

    if keep {
        step("the cluster stays up; Ctrl-C tears it down");
        println!(
            "   export KUBECONFIG={}",
            cluster.control_plane.kubeconfig_path().display()
        );
        println!(
            "   kubectl: {}",
            macvtap_e2e::tools::bin_dir().join("kubectl").display()
        );
        println!(
            "   try: kubectl get nodes,pods -A; kubectl get mvp,mvns; kubectl logs -n macvtap-system ds/macvtap-operator-agent"
        );
        println!(
            "   a node's shell: nsenter --mount={} --net={} sh",
            cluster.nodes[0].mount_ns.display(),
            cluster.nodes[0].netns.path().display()
        );
        if vm {
            println!(
                "   the guest's console: kubectl logs -f vm; kubectl exec vm-peer -- ping 10.200.0.10"
            );
        }
        tokio::signal::ctrl_c().await?;
    }
    step(
        "tearing down (pods deleted through the kubelet, then everything else; Ctrl-C again skips the first part)",
    );
    let delete_pods = async {
        for p in [&pod, &no_limits, &peer, &ovn_pod]
            .into_iter()
            .chain(&vm_pods)
        {
            cluster
                .delete_pod(&p.namespace, &p.name, Duration::from_secs(30))
                .await?;
        }
        anyhow::Ok(())
    };
    // Bounded: the teardown script removes whatever a slow or failed deletion leaves.
    let t = std::time::Instant::now();
    tokio::select! {
        r = tokio::time::timeout(TEARDOWN_GRACE, delete_pods) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => println!("   deleting the pods failed ({e:#}); the teardown removes them"),
            Err(_) => println!("   pods not deleted within {TEARDOWN_GRACE:?}; the teardown removes them"),
        },
        _ = tokio::signal::ctrl_c(), if keep => println!("   skipped"),
    }
    println!("   pods deleted in {:.1?}", t.elapsed());
    let t = std::time::Instant::now();
    cluster.stop();
    println!("   done: everything else removed in {:.1?}", t.elapsed());
    Ok(())
}

/// The original README's pod YAML without its `resources` block (the last lines of config/original/pod.yaml).
fn without_limits(pod_yaml: &str) -> String {
    pod_yaml
        .split("    resources:")
        .next()
        .unwrap_or(pod_yaml)
        .to_string()
}

/// A VM pod and its peer (config/vm/), the guest's report from the pod's log, and a ping back from the peer.
async fn run_vm(cluster: &Cluster) -> Result<Vec<RunningPod>> {
    step(
        "a VM on the tap: QEMU in a pod (images/vm), its virtio-net NIC on the pod's /dev/tapN (config/vm/)",
    );
    let image = push_vm_image(cluster)?;
    cluster
        .apply_file(&config_file("vm/nad-dataplane-ips.yaml"))
        .await?;
    let peer_yaml = std::fs::read_to_string(config_file("vm/pod-peer.yaml"))?;
    let peer = cluster
        .run_pod_yaml(&peer_yaml, Duration::from_secs(120))
        .await?;
    println!("   pod {} on {}: net1 10.200.0.20/24", peer.name, peer.node);
    let spec = VmPod {
        name: "vm",
        image: &image,
        networks: dataplane_ips("02:00:0a:c8:00:0a", "10.200.0.10"),
        queues: 1,
        ping: Some("10.200.0.20"),
        node: None,
    };
    let t = std::time::Instant::now();
    let vm = cluster
        .run_pod(spec.pod()?, Duration::from_secs(300))
        .await?;
    println!(
        "   pod vm Running on {} after {:.1?}; the guest boots (TCG: no usable KVM here)",
        vm.node,
        t.elapsed()
    );
    let log = wait_log_line(
        cluster,
        "default",
        "vm",
        "GUEST: ping 10.200.0.20 ok",
        Duration::from_secs(420),
    )
    .await?;
    println!(
        "   kubectl logs vm (the launcher, then the guest's serial console), {:.1?} after create:",
        t.elapsed()
    );
    for l in log
        .lines()
        .filter(|l| l.starts_with("vm-launcher: ") || l.starts_with("GUEST: "))
    {
        println!("     {l}");
    }
    ping_from(
        cluster,
        "default",
        "vm-peer",
        "10.200.0.10",
        Duration::from_secs(60),
    )
    .await?;
    println!("   kubectl exec vm-peer -- ping 10.200.0.10: the guest answers");
    Ok(vec![vm, peer])
}

fn show_pod(cluster: &Cluster, pod: &RunningPod) -> Result<()> {
    println!(
        "   pod {}/{} Running on {}",
        pod.namespace, pod.name, pod.node
    );
    let link = pod.link("net1")?.context("the pod has no net1")?;
    println!(
        "   net1: {} mode {}, mtu {}, mac {}, state {}",
        link["linkinfo"]["info_kind"].as_str().unwrap_or("?"),
        link["linkinfo"]["info_data"]["mode"]
            .as_str()
            .unwrap_or("?"),
        link["mtu"],
        link["address"].as_str().unwrap_or("?"),
        link["operstate"].as_str().unwrap_or("?"),
    );
    for t in pod.tap_devices() {
        println!(
            "   /dev/{} in the container (owner {}:{})",
            t.name, t.uid, t.gid
        );
    }
    print!(
        "   kubectl exec {} -- ip addr show net1:\n{}",
        pod.name,
        cluster.kubectl_out(&["exec", &pod.name, "--", "ip", "addr", "show", "net1"])?
    );
    Ok(())
}

/// The pod's net1 MAC and its tap (the machine's `/dev/tapN` named like the container's).
fn tap_of(pod: &RunningPod) -> Result<([u8; 6], std::path::PathBuf)> {
    let link = pod.link("net1")?.context("no net1")?;
    let mac = parse_mac(link["address"].as_str().unwrap_or_default()).context("net1 MAC")?;
    let tap = pod
        .tap_devices()
        .into_iter()
        .next()
        .context("no /dev/tapN in the container")?;
    Ok((mac, tap.host_path()))
}

fn step(what: &str) {
    println!("\n== {what}");
}
