//! End to end, as a user's cluster runs it (see `macvtap_e2e::sandbox`): the chart installed with helm, the
//! operator and an agent per netns node as the chart's ServiceAccounts, a kubelet stand-in per node, and the real
//! Multus calling our `macvtap` CNI with NADs from the API server. The scenarios of README and config/.
//!
//! One sandbox runs every scenario in turn (bringing one up costs a control plane and two agents); each scenario
//! reports on its own and the test fails listing every scenario that failed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use macvtap_api::MacvtapPool;
use macvtap_e2e::kube_ovn::KubeOvnDaemon;
use macvtap_e2e::sandbox::{Sandbox, SandboxOptions, SandboxPod};
use macvtap_e2e::tap::{Tap, parse_mac};
use macvtap_e2e::workspace::config_file;

type Scenario = for<'a> fn(&'a Sandbox) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

fn link(pod: &SandboxPod, name: &str) -> Result<serde_json::Value> {
    let out = pod
        .netns
        .ip(&["-d", "-j", "link", "show", name])
        .with_context(|| format!("{name} in pod {}", pod.name))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}

fn pool_ready(p: &MacvtapPool) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.nodes_ready == s.nodes_matched
            && s.nodes_matched > 0
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn dataplane(sb: &Sandbox) -> Result<()> {
    sb.apply_file(&config_file("pools/dataplane.yaml")).await?;
    let pool = sb
        .wait_pool("dataplane", Duration::from_secs(60), pool_ready)
        .await?;
    let st = pool.status.unwrap();
    ensure!(st.nodes_matched == 2 && st.capacity == 100, "status {st:?}");
    for node in &sb.nodes {
        node.kubelet
            .wait_for_resource(
                "macvtap.network.kubevirt.io/dataplane",
                Duration::from_secs(20),
                |devs| devs.len() == 50 && devs.iter().all(|d| d.health == "Healthy"),
            )
            .await
            .with_context(|| format!("kubelet stand-in of {}", node.name))?;
    }
    sb.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    let pod = sb
        .run_pod(0, &config_file("original/pod.yaml"), |_| {})
        .await?;
    let net1 = link(&pod, "net1")?;
    ensure!(
        net1["linkinfo"]["info_kind"] == "macvtap",
        "net1 is not a macvtap: {net1}"
    );
    ensure!(
        net1["linkinfo"]["info_data"]["mode"] == "bridge",
        "mode: {net1}"
    );
    ensure!(net1["mtu"] == 1500, "mtu: {net1}");
    ensure!(net1["operstate"] != "DOWN", "net1 is down: {net1}");
    ensure!(
        pod.tap_devices.len() == 1,
        "tap devices {:?}",
        pod.tap_devices
    );
    let ifindex = net1["ifindex"].as_u64().unwrap();
    ensure!(
        pod.tap_devices[0] == std::path::Path::new(&format!("/dev/tap{ifindex}")),
        "tap {:?} vs ifindex {ifindex}",
        pod.tap_devices
    );
    // Allocated count reaches the pool status.
    sb.wait_pool("dataplane", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 1)
    })
    .await?;

    // Deletion: CNI DEL removes the link, the device slot is free again.
    sb.delete_pod(pod).await?;
    sb.wait_pool("dataplane", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.allocated == 0)
    })
    .await?;
    let again = sb
        .run_pod(0, &config_file("original/pod.yaml"), |_| {})
        .await?;
    link(&again, "net1")?;
    sb.delete_pod(again).await?;
    Ok(())
}

async fn pod_with_mac(sb: &Sandbox) -> Result<()> {
    let pod = sb
        .run_pod(1, &config_file("original/pod-with-mac.yaml"), |_| {})
        .await?;
    let net1 = link(&pod, "net1")?;
    ensure!(
        net1["address"] == "02:23:45:67:89:01",
        "MAC from the selection annotation: {net1}"
    );
    sb.delete_pod(pod).await
}

async fn device_plugin_only(sb: &Sandbox) -> Result<()> {
    let pod = sb
        .run_pod(
            0,
            &config_file("original/pod-device-plugin-only.yaml"),
            |_| {},
        )
        .await?;
    ensure!(
        pod.tap_devices.len() == 1,
        "tap device given: {:?}",
        pod.tap_devices
    );
    let names = pod.netns.link_names()?;
    ensure!(
        !names.iter().any(|n| n == "net1"),
        "no CNI interface expected, found {names:?}"
    );
    // The link was created on the node by Allocate: the tap node exists.
    ensure!(
        pod.tap_devices[0].exists(),
        "{} missing",
        pod.tap_devices[0].display()
    );
    sb.delete_pod(pod).await
}

async fn data_path(sb: &Sandbox) -> Result<()> {
    let a = sb
        .run_pod(0, &config_file("original/pod.yaml"), |p| {
            p.metadata.name = Some("dp-a".into())
        })
        .await?;
    let b = sb
        .run_pod(0, &config_file("original/pod.yaml"), |p| {
            p.metadata.name = Some("dp-b".into())
        })
        .await?;
    let c = sb
        .run_pod(1, &config_file("original/pod.yaml"), |p| {
            p.metadata.name = Some("dp-c".into())
        })
        .await?;
    let mac = |p: &SandboxPod| -> Result<[u8; 6]> {
        parse_mac(link(p, "net1")?["address"].as_str().unwrap_or_default()).context("MAC")
    };
    let (ma, mb, mc) = (mac(&a)?, mac(&b)?, mac(&c)?);
    let mut ta = Tap::open(&a.tap_devices[0])?;
    let mut tb = Tap::open(&b.tap_devices[0])?;
    let mut tc = Tap::open(&c.tap_devices[0])?;
    ta.send(mb, ma, b"same node")?;
    ensure!(
        tb.receive(b"same node", Duration::from_secs(5))? == Some(ma),
        "same-node frame not received"
    );
    ta.send(mc, ma, b"across nodes")?;
    ensure!(
        tc.receive(b"across nodes", Duration::from_secs(5))? == Some(ma),
        "cross-node frame not received"
    );
    tc.send(ma, mc, b"and back")?;
    ensure!(
        ta.receive(b"and back", Duration::from_secs(5))? == Some(mc),
        "reply not received"
    );
    for p in [a, b, c] {
        sb.delete_pod(p).await?;
    }
    Ok(())
}

async fn capacity_edit(sb: &Sandbox) -> Result<()> {
    let api = Api::<MacvtapPool>::all(sb.client());
    api.patch(
        "dataplane",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"capacity": 7}})),
    )
    .await?;
    for node in &sb.nodes {
        node.kubelet
            .wait_for_resource(
                "macvtap.network.kubevirt.io/dataplane",
                Duration::from_secs(20),
                |d| d.len() == 7,
            )
            .await
            .with_context(|| format!("capacity 7 on {}", node.name))?;
    }
    sb.wait_pool("dataplane", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.capacity == 14)
    })
    .await?;
    api.patch(
        "dataplane",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"capacity": 50}})),
    )
    .await?;
    Ok(())
}

async fn lower_device_down(sb: &Sandbox) -> Result<()> {
    let node = &sb.nodes[1];
    node.netns.ip(&["link", "set", "eth0", "down"])?;
    let pool = sb
        .wait_pool("dataplane", Duration::from_secs(30), |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.status == "True")
            })
        })
        .await;
    node.kubelet
        .wait_for_resource(
            "macvtap.network.kubevirt.io/dataplane",
            Duration::from_secs(10),
            |d| !d.is_empty() && d.iter().all(|d| d.health == "Unhealthy"),
        )
        .await
        .context("devices Unhealthy while eth0 is down")?;
    node.netns.ip(&["link", "set", "eth0", "up"])?;
    let pool = pool?;
    let degraded = pool
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    ensure!(
        degraded.message.contains(&node.name),
        "Degraded names the node: {degraded:?}"
    );
    sb.wait_pool("dataplane", Duration::from_secs(30), pool_ready)
        .await?;
    Ok(())
}

/// kube-ovn as IPAM: its real CNI binary, against a stand-in daemon that answers from the pod's annotations as
/// kube-ovn-controller would have written them (subnet of config/kube-ovn/subnet-p4p1.yaml).
async fn kube_ovn(sb: &Sandbox) -> Result<()> {
    if macvtap_e2e::tools::tool("kube-ovn").is_err() {
        bail!("the kube-ovn CNI binary is not built: run e2e/tools/build-tools.sh");
    }
    sb.apply_file(&config_file("pools/p4p1.yaml")).await?;
    sb.wait_pool("p4p1", Duration::from_secs(60), pool_ready)
        .await?;
    sb.apply_file(&config_file("kube-ovn/nad-p4p1.yaml"))
        .await?;
    let daemon = KubeOvnDaemon::start(sb.kube_ovn_socket())?;
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
        let manifest: k8s_openapi::api::core::v1::Pod =
            serde_saphyr::from_str(&std::fs::read_to_string(config_file(file))?)?;
        let name = manifest.name_any();
        // What kube-ovn-controller would have annotated: the requested IP/MAC or ones it picked.
        let want_ip = ip
            .map(str::to_string)
            .unwrap_or_else(|| format!("172.17.100.{}", 50 + i));
        let want_mac = mac
            .map(str::to_string)
            .unwrap_or_else(|| format!("02:00:ac:11:64:{:02x}", 0x50 + i));
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
        let pod = sb
            .run_pod(0, &config_file(file), |_| {})
            .await
            .with_context(|| file.to_string())?;
        let l = link(&pod, ifname)?;
        ensure!(
            l["linkinfo"]["info_kind"] == "macvtap",
            "{file}: {ifname} is not macvtap: {l}"
        );
        ensure!(
            l["address"] == want_mac.as_str(),
            "{file}: MAC {} != {want_mac}",
            l["address"]
        );
        let addrs = pod.netns.addresses(ifname)?;
        ensure!(
            addrs.iter().any(|a| a == &format!("{want_ip}/24")),
            "{file}: addresses {addrs:?}, want {want_ip}/24"
        );
        let routes = pod.netns.ip(&["route", "show", "default"])?;
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
        sb.delete_pod(pod).await?;
    }
    Ok(())
}

#[test]
fn end_to_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sb = Sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox starts");
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("dataplane pool + NAD + pod, delete, reuse", |s| {
                Box::pin(dataplane(s))
            }),
            ("pod with MAC in the selection annotation", |s| {
                Box::pin(pod_with_mac(s))
            }),
            ("device-plugin-only pod", |s| {
                Box::pin(device_plugin_only(s))
            }),
            (
                "data path through /dev/tapN, same node and across nodes",
                |s| Box::pin(data_path(s)),
            ),
            ("pool capacity edit reaches the kubelet", |s| {
                Box::pin(capacity_edit(s))
            }),
            ("lower device down -> Degraded, up -> Ready", |s| {
                Box::pin(lower_device_down(s))
            }),
            (
                "kube-ovn IPAM: fixed IP, fixed MAC, both, default network",
                |s| Box::pin(kube_ovn(s)),
            ),
        ];
        let mut failed = Vec::new();
        for (name, scenario) in scenarios {
            eprintln!("--- scenario: {name}");
            match tokio::time::timeout(Duration::from_secs(180), scenario(&sb)).await {
                Ok(Ok(())) => eprintln!("--- ok: {name}"),
                Ok(Err(e)) => {
                    eprintln!("--- FAILED: {name}: {e:#}");
                    failed.push(format!("{name}: {e:#}"));
                }
                Err(_) => failed.push(format!("{name}: timed out")),
            }
        }
        assert!(
            failed.is_empty(),
            "{} scenario(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    });
}
