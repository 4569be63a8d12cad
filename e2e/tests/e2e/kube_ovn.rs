//! kube-ovn as IPAM behind our CNI: the real kube-ovn-controller and daemons (see `macvtap_e2e::kube_ovn`), the
//! kube-ovn examples of config/ as written.

use super::*;

const PROVIDER: &str = "p4p1.default";
const SUBNET: &str = "172.17.100.0/24";

/// What one example must get from the real kube-ovn.
struct Case {
    file: &'static str,
    ifname: &'static str,
    /// The address asked by annotation (`None`: one the controller picks from the Subnet).
    fixed_ip: Option<&'static str>,
    /// The MAC the interface must carry (`None`: the link's own; kube-ovn gives none for a non-OVN provider).
    mac: Option<&'static str>,
}

const CASES: [Case; 5] = [
    Case {
        file: "kube-ovn/pod-fixed-ip.yaml",
        ifname: "net1",
        fixed_ip: Some("172.17.100.20"),
        mac: None,
    },
    // The MAC annotation of the original README's example: the real controller allocates no MAC for a non-OVN
    // provider and removes the annotation (the README says so), so the link keeps its own.
    Case {
        file: "kube-ovn/pod-fixed-mac.yaml",
        ifname: "net1",
        fixed_ip: None,
        mac: None,
    },
    Case {
        file: "kube-ovn/pod-fixed-ip-and-mac.yaml",
        ifname: "net1",
        fixed_ip: Some("172.17.100.22"),
        mac: None,
    },
    // The way that does fix the MAC: the network selection's `mac` key, which Multus hands to our CNI.
    Case {
        file: "kube-ovn/pod-mac-by-selection.yaml",
        ifname: "net1",
        fixed_ip: None,
        mac: Some("02:00:ac:11:64:15"),
    },
    Case {
        file: "kube-ovn/pod-default-network.yaml",
        ifname: "eth0",
        fixed_ip: Some("172.17.100.23"),
        mac: None,
    },
];

/// kube-ovn as IPAM: the examples, then nothing leaked (released on delete and after a failed ADD, reused).
pub async fn kube_ovn(c: &mut Cluster) -> Result<()> {
    kube_ovn_cases(c, false).await?;
    released_and_reused(c).await?;
    failed_add_leaks_nothing(c).await
}

/// The kube-ovn examples' network (see `Cluster::kube_ovn_examples_network`), with kube-ovn's start-up figures.
pub async fn kube_ovn_setup(c: &mut Cluster) -> Result<()> {
    let started = c.kube_ovn_examples_network().await?;
    if !started.is_zero() {
        let rss = c.kube_ovn().context("kube-ovn")?.rss_mib();
        println!(
            "FIGURE kube-ovn start (CRDs, databases, controller, {} nodes' OVS + ovn-controller + daemon) → every \
             daemon serving: {:.1} s; RSS of its {} processes: {:.0} MiB",
            c.nodes.len(),
            started.as_secs_f64(),
            rss.0,
            rss.1
        );
    }
    Ok(())
}

/// The kube-ovn examples; `without_limits`: with their `resources` removed, so the injector must add them.
pub async fn kube_ovn_cases(c: &mut Cluster, without_limits: bool) -> Result<()> {
    kube_ovn_setup(c).await?;
    for case in &CASES {
        let file = case.file;
        let mut manifest = example(file, None, None)?;
        if without_limits {
            manifest = without_resources(manifest);
        }
        let asked_mac = manifest
            .annotations()
            .get(&format!("{PROVIDER}.kubernetes.io/mac_address"))
            .cloned();
        let pod = c
            .run_pod(manifest, RUN)
            .await
            .with_context(|| file.to_string())?;
        if without_limits {
            ensure_injected(c, &pod.namespace, &pod.name, "p4p1", 1).await?;
        }
        let ip = allocated_ip(c, &pod.name)
            .await
            .with_context(|| file.to_string())?;
        if let Some(fixed) = case.fixed_ip {
            ensure!(
                ip == fixed,
                "{file}: kube-ovn allocated {ip}, the annotation asked {fixed}"
            );
        } else {
            let last: u8 = ip.rsplit('.').next().unwrap_or_default().parse()?;
            ensure!(
                ip.starts_with("172.17.100.") && last > 10,
                "{file}: {ip} is not a free address of {SUBNET} outside excludeIps (.1-.10)"
            );
        }
        let l = pod
            .link(case.ifname)?
            .with_context(|| format!("{file}: no {}", case.ifname))?;
        ensure!(
            l["linkinfo"]["info_kind"] == "macvtap",
            "{file}: {} is not macvtap: {l}",
            case.ifname
        );
        let mac = l["address"].as_str().unwrap_or_default();
        match (case.mac, &asked_mac) {
            (Some(want), _) => ensure!(mac == want, "{file}: MAC {mac}, want {want}"),
            (None, Some(asked)) => ensure!(
                mac != asked.as_str(),
                "{file}: the MAC annotation was honoured ({mac}); kube-ovn's behaviour changed: update the README"
            ),
            (None, None) => {}
        }
        let addrs = pod.ip(&["-o", "-4", "addr", "show", "dev", case.ifname])?;
        ensure!(
            addrs.contains(&format!("{ip}/24")),
            "{file}: addresses {addrs}, want {ip}/24"
        );
        let routes = pod.ip(&["route", "show", "default"])?;
        if case.ifname == "eth0" {
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
        ip_released(c, &pod.name)
            .await
            .with_context(|| file.to_string())?;
    }
    Ok(())
}

/// A fixed address is given again once its pod is gone: released by the controller, not only by our DEL.
async fn released_and_reused(c: &mut Cluster) -> Result<()> {
    for round in 0..2 {
        let pod = c
            .run_pod(example("kube-ovn/pod-fixed-ip.yaml", None, None)?, RUN)
            .await
            .with_context(|| format!("round {round}"))?;
        ensure!(allocated_ip(c, &pod.name).await? == "172.17.100.20");
        c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
        ip_released(c, &pod.name).await?;
    }
    Ok(())
}

/// An ADD that fails after kube-ovn answered (the pod's MAC is already taken on that lower device, so the kernel
/// refuses the macvtap): our CNI gives the address back through kube-ovn's DEL, no link is left, and once the pod is
/// deleted its address is released and given to the next pod asking for it.
async fn failed_add_leaks_nothing(c: &mut Cluster) -> Result<()> {
    let mut first = example(
        "kube-ovn/pod-mac-by-selection.yaml",
        Some("mac-owner"),
        Some("node-a"),
    )?;
    first.annotations_mut().insert(
        "k8s.v1.cni.cncf.io/networks".into(),
        mac_selection("02:00:ac:11:64:30"),
    );
    let owner = c.run_pod(first, RUN).await?;
    let mut second = example(
        "kube-ovn/pod-fixed-ip.yaml",
        Some("mac-clash"),
        Some("node-a"),
    )?;
    second.annotations_mut().insert(
        "k8s.v1.cni.cncf.io/networks".into(),
        mac_selection("02:00:ac:11:64:30"),
    );
    second.annotations_mut().insert(
        format!("{PROVIDER}.kubernetes.io/ip_address"),
        "172.17.100.30".into(),
    );
    Api::<Pod>::namespaced(c.client(), "default")
        .create(&PostParams::default(), &second)
        .await?;
    wait::until(
        "the clashing pod's ADD failed",
        Duration::from_secs(90),
        || async {
            Ok(c.events_of("default", "mac-clash")
                .contains("FailedCreatePodSandBox"))
        },
    )
    .await?;
    ensure!(
        allocated_ip(c, "mac-clash").await? == "172.17.100.30",
        "the clashing pod holds its address while it exists"
    );
    let macvtaps = c
        .node("node-a")
        .netns
        .ip(&["-o", "link", "show", "type", "macvtap"])?;
    ensure!(
        !macvtaps.contains("02:00:ac:11:64:30"),
        "a failed ADD left a link on the node: {macvtaps}"
    );
    c.delete_pod("default", "mac-clash", GONE).await?;
    ip_released(c, "mac-clash").await?;
    c.delete_pod(&owner.namespace, &owner.name, GONE).await?;
    // The address comes back to the next pod that asks for it.
    let mut next = example("kube-ovn/pod-fixed-ip.yaml", Some("after-clash"), None)?;
    next.annotations_mut().insert(
        format!("{PROVIDER}.kubernetes.io/ip_address"),
        "172.17.100.30".into(),
    );
    let next = c.run_pod(next, RUN).await?;
    ensure!(allocated_ip(c, &next.name).await? == "172.17.100.30");
    c.delete_pod(&next.namespace, &next.name, GONE).await?;
    ip_released(c, &next.name).await
}

fn mac_selection(mac: &str) -> String {
    format!(r#"[{{"name": "p4p1", "namespace": "default", "mac": "{mac}"}}]"#)
}

/// The address kube-ovn's controller allocated to `pod` (its annotation), checked against its IP object.
async fn allocated_ip(c: &Cluster, pod: &str) -> Result<String> {
    let p = Api::<Pod>::namespaced(c.client(), "default")
        .get(pod)
        .await?;
    let a = p.annotations();
    ensure!(
        a.get(&format!("{PROVIDER}.kubernetes.io/allocated"))
            .map(String::as_str)
            == Some("true"),
        "{pod}: not allocated by kube-ovn: {a:?}"
    );
    let ip = a
        .get(&format!("{PROVIDER}.kubernetes.io/ip_address"))
        .cloned()
        .with_context(|| format!("{pod}: no address annotation: {a:?}"))?;
    let objects = ip_objects(c, pod)?;
    ensure!(
        objects
            .iter()
            .any(|o| o["spec"]["ipAddress"] == ip.as_str()
                || o["spec"]["v4IpAddress"] == ip.as_str()),
        "{pod}: no IP object for {ip}: {objects:?}"
    );
    Ok(ip)
}

/// Waits until `pod` has no IP object left.
async fn ip_released(c: &Cluster, pod: &str) -> Result<()> {
    wait::until(
        &format!("the address of {pod} released"),
        Duration::from_secs(30),
        || async { Ok(ip_objects(c, pod)?.is_empty()) },
    )
    .await
}

/// kube-ovn's IP objects of a pod of `default`.
fn ip_objects(c: &Cluster, pod: &str) -> Result<Vec<serde_json::Value>> {
    let list: serde_json::Value =
        serde_json::from_str(&c.kubectl_out(&["get", "ips.kubeovn.io", "-o", "json"])?)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["spec"]["podName"] == pod && o["spec"]["namespace"] == "default")
        .cloned()
        .collect())
}
