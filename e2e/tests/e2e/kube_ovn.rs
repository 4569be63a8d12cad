//! kube-ovn as IPAM behind our CNI.

use super::*;

/// kube-ovn as IPAM: its real CNI binary, against a stand-in daemon per node that answers from the pod's
/// annotations as kube-ovn-controller would have written them (subnet of config/kube-ovn/subnet-p4p1.yaml).
pub async fn kube_ovn(c: &mut Cluster) -> Result<()> {
    kube_ovn_cases(c, false).await
}

/// The four kube-ovn examples; `without_limits`: with their `resources` removed, so the injector must add them.
pub async fn kube_ovn_cases(c: &mut Cluster, without_limits: bool) -> Result<()> {
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
        let mut manifest = example(file, None, None)?;
        if without_limits {
            manifest = without_resources(manifest);
        }
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
        if without_limits {
            ensure_injected(c, &pod.namespace, &pod.name, "p4p1", 1).await?;
        }
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
