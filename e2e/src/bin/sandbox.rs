//! The README's main job: a local sandbox cluster that attaches a real macvtap interface to a pod.
//!
//!   cargo run -p macvtap-e2e --bin sandbox [-- --keep]
//!
//! Brings up the control plane, installs the chart, starts the operator and an agent per netns node, creates the
//! `dataplane` pool and NetworkAttachmentDefinition of config/, starts the original README's pod through Multus
//! and the macvtap CNI, shows what a user wants to see, checks the data path through the pods' /dev/tapN, and
//! tears everything down (or, with --keep, stays up until Ctrl-C and prints a kubeconfig).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::Api;
use macvtap_e2e::sandbox::{Sandbox, SandboxOptions};
use macvtap_e2e::tap::{Tap, parse_mac};
use macvtap_e2e::workspace::config_file;

fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: sandbox [--keep]   (run as root; see README.md)");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the sandbox creates network namespaces and macvtap links: run it as root");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(keep))
}

async fn run(keep: bool) -> Result<()> {
    step(
        "starting the control plane, installing the chart, starting the operator and 2 node agents",
    );
    let sandbox = Sandbox::start(SandboxOptions::default()).await?;
    println!(
        "   API server {}  (kubeconfig {})",
        sandbox.control_plane.server_url(),
        sandbox.control_plane.kubeconfig_path().display()
    );

    step(
        "creating MacvtapPool dataplane (config/pools/dataplane.yaml, lower device eth0 of every node)",
    );
    sandbox
        .apply_file(&config_file("pools/dataplane.yaml"))
        .await?;
    let pool = sandbox
        .wait_pool("dataplane", Duration::from_secs(60), |p| {
            let s = p.status.as_ref();
            s.is_some_and(|s| {
                s.nodes_ready == 2
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .await?;
    let st = pool.status.clone().unwrap_or_default();
    println!(
        "   NAME        LOWER  MODE    CAPACITY  NODES  ALLOCATABLE  ALLOCATED  READY\n   {:<11} {:<6} {:<7} {:<9} {}/{}    {:<12} {:<10} {}",
        pool.name_any(),
        pool.spec.lower_device.clone().unwrap_or_default(),
        pool.spec.mode,
        pool.spec.capacity,
        st.nodes_ready,
        st.nodes_matched,
        st.allocatable,
        st.allocated,
        st.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str())
            .unwrap_or("-")
    );

    step("node resources (what the kubelet advertises)");
    sandbox.publish_node_resources().await?;
    for node in Api::<Node>::all(sandbox.client())
        .list(&Default::default())
        .await?
    {
        let alloc = node.status.and_then(|s| s.allocatable).unwrap_or_default();
        for (k, v) in alloc
            .iter()
            .filter(|(k, _)| k.starts_with(macvtap_api::GROUP))
        {
            println!(
                "   {:<8} {k}: {}",
                node.metadata.name.clone().unwrap_or_default(),
                v.0
            );
        }
    }

    step(
        "creating the NetworkAttachmentDefinition dataplane and the original README's pod on node-a",
    );
    sandbox
        .apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    let pod = sandbox
        .run_pod(0, &config_file("original/pod.yaml"), |_| {})
        .await?;
    let link = pod_link(&pod.netns, "net1")?;
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    println!(
        "   pod {}/{} on {}: interface net1",
        pod.namespace, pod.name, sandbox.nodes[0].name
    );
    println!(
        "     kind   {}",
        link["linkinfo"]["info_kind"].as_str().unwrap_or("?")
    );
    println!(
        "     mode   {}",
        link["linkinfo"]["info_data"]["mode"]
            .as_str()
            .unwrap_or("?")
    );
    println!("     mtu    {}", link["mtu"]);
    println!("     mac    {mac}");
    println!("     state  {}", link["operstate"].as_str().unwrap_or("?"));
    println!(
        "     ips    {:?}",
        pod.netns.addresses("net1").unwrap_or_default()
    );
    for tap in &pod.tap_devices {
        println!(
            "     tap    {} (given to the container by the device plugin)",
            tap.display()
        );
    }

    step("data path: a frame written to one pod's tap arrives at another pod's tap (bridge mode)");
    let pod2 = sandbox
        .run_pod(0, &config_file("original/pod.yaml"), |p| {
            p.metadata.name = Some("pod-2".into())
        })
        .await?;
    let mac2 = pod_link(&pod2.netns, "net1")?["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut tap1 = Tap::open(&pod.tap_devices[0]).context("open tap of pod")?;
    let mut tap2 = Tap::open(&pod2.tap_devices[0]).context("open tap of pod-2")?;
    let (m1, m2) = (
        parse_mac(&mac).context("pod MAC")?,
        parse_mac(&mac2).context("pod-2 MAC")?,
    );
    tap1.send(m2, m1, b"hello from pod")?;
    match tap2.receive(b"hello from pod", Duration::from_secs(5))? {
        Some(src) if src == m1 => println!(
            "   pod-2 read the frame from {mac} on {}",
            pod2.tap_devices[0].display()
        ),
        other => bail!("pod-2 did not receive the frame (got {other:?})"),
    }

    if keep {
        step("the sandbox stays up; Ctrl-C tears it down");
        println!(
            "   export KUBECONFIG={}",
            sandbox.control_plane.kubeconfig_path().display()
        );
        println!(
            "   kubectl: {}",
            macvtap_e2e::tools::bin_dir().join("kubectl").display()
        );
        println!("   try: kubectl get macvtappools,macvtapnodestates; ip netns list");
        tokio::signal::ctrl_c().await?;
        // Ctrl-C reached the whole process group, the API server included: nothing is left to ask, so tear down
        // locally (pod namespaces, and with them their links; processes; node namespaces; files).
        step("tearing down");
        drop((pod2, pod, sandbox));
        println!("   done");
        return Ok(());
    }
    step("tearing down (CNI DEL through Multus, then everything else)");
    sandbox.delete_pod(pod2).await?;
    sandbox.delete_pod(pod).await?;
    drop(sandbox);
    println!("   done");
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn pod_link(netns: &macvtap_e2e::netns::Netns, name: &str) -> Result<serde_json::Value> {
    let out = netns.ip(&["-d", "-j", "link", "show", name])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}
