//! What the injector does to pods and NADs as users write them.

use super::*;

/// The original README's pods and the kube-ovn variants, their `resources` removed: the injector adds the device.
pub async fn injector_original_pods(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    for file in ["original/pod.yaml", "original/pod-with-mac.yaml"] {
        let name = format!(
            "inj-{}",
            file.trim_start_matches("original/")
                .trim_end_matches(".yaml")
        );
        let pod = without_resources(example(file, Some(&name), Some("node-a"))?);
        let pod = c
            .run_pod(pod, RUN)
            .await
            .with_context(|| file.to_string())?;
        ensure_injected(c, "default", &name, "dataplane", 1).await?;
        let l = pod.net1()?;
        ensure!(l["linkinfo"]["info_kind"] == "macvtap", "{file}: net1 {l}");
        check_tap(&pod)?;
        c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    }
    kube_ovn_cases(c, true).await
}

/// One NAD twice, a NAD in another namespace, a limit the user already set, a NAD that does not exist.
pub async fn injector_attachments(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    // Two attachments of one NAD: two devices, net1 and net2 both macvtaps.
    let pod = c
        .run_pod(
            busybox("inj-two", Some("dataplane,dataplane"), None, Some("node-a")),
            RUN,
        )
        .await?;
    ensure_injected(c, "default", "inj-two", "dataplane", 2).await?;
    for ifname in ["net1", "net2"] {
        let l = pod.link(ifname)?.with_context(|| format!("no {ifname}"))?;
        ensure!(l["linkinfo"]["info_kind"] == "macvtap", "{ifname}: {l}");
    }
    ensure!(pod.tap_devices().len() == 2, "taps {:?}", pod.tap_devices());
    c.delete_pod("default", "inj-two", GONE).await?;

    // A NAD in another namespace (namespace/name in the annotation).
    c.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: inj-other\n")
        .await?;
    let nad = std::fs::read_to_string(config_file("original/nad-dataplane.yaml"))?.replace(
        "  name: dataplane\n",
        "  name: dataplane\n  namespace: inj-other\n",
    );
    c.apply_yaml(&nad).await?;
    let pod = c
        .run_pod(
            busybox(
                "inj-other-ns",
                Some("inj-other/dataplane"),
                None,
                Some("node-b"),
            ),
            RUN,
        )
        .await?;
    ensure_injected(c, "default", "inj-other-ns", "dataplane", 1).await?;
    check_tap(&pod)?;
    c.delete_pod("default", "inj-other-ns", GONE).await?;

    // A limit the user set is kept: the original pod (1) unchanged; 2 for one attachment stays 2.
    let pod = original_pod(c, "inj-kept", "node-a").await?;
    ensure_injected(c, "default", "inj-kept", "dataplane", 1).await?;
    c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    let mut two = busybox(
        "inj-higher",
        Some("dataplane"),
        Some("dataplane"),
        Some("node-a"),
    );
    two.spec.as_mut().unwrap().containers[0]
        .resources
        .as_mut()
        .unwrap()
        .limits
        .as_mut()
        .unwrap()
        .insert(
            resource_name("dataplane"),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        );
    c.run_pod(two, RUN).await?;
    ensure_injected(c, "default", "inj-higher", "dataplane", 2).await?;
    c.delete_pod("default", "inj-higher", GONE).await?;

    // A NAD that does not exist: admitted unchanged, with a warning naming it.
    let (ok, out) = kubectl_apply(
        c,
        &pod_manifest("inj-missing", "default", Some("nope"), None),
    )?;
    eprintln!("   a pod naming a missing NAD, kubectl says:\n{out}");
    ensure!(ok, "refused: {out}");
    ensure!(
        out.contains(
            "Warning: macvtap injector: NetworkAttachmentDefinition default/nope not found"
        ),
        "{out}"
    );
    ensure!(
        unmutated(c, "default", "inj-missing").await?,
        "a pod naming a missing NAD got limits"
    );
    c.delete_pod("default", "inj-missing", GONE).await?;
    c.kubectl_out(&["delete", "namespace", "inj-other", "--wait=false"])?;
    Ok(())
}

/// Pods without the annotations (and pods of kube-system and the operator's namespace) never reach the webhook:
/// its own request counter does not move; a pod with one moves it by exactly one.
pub async fn injector_not_sent(c: &mut Cluster) -> Result<()> {
    let before = pod_requests(c).await?;
    let plain = c
        .run_pod(busybox("inj-plain", None, None, None), RUN)
        .await?;
    for ns in ["kube-system", NAMESPACE] {
        let (ok, out) = kubectl_apply(
            c,
            &pod_manifest("inj-excluded", ns, Some("dataplane"), Some("nowhere")),
        )?;
        ensure!(ok, "{ns}: {out}");
        ensure!(!out.contains("Warning"), "{ns}: {out}");
        ensure!(
            unmutated(c, ns, "inj-excluded").await?,
            "{ns}: the pod was mutated"
        );
        c.delete_pod(ns, "inj-excluded", GONE).await?;
    }
    let after = pod_requests(c).await?;
    ensure!(
        after == before,
        "webhook requests {before} -> {after} for pods that must not be sent"
    );
    // The counter does count: one pod naming a network, one request.
    let (ok, out) = kubectl_apply(
        c,
        &pod_manifest("inj-counted", "default", Some("dataplane"), Some("nowhere")),
    )?;
    ensure!(ok, "{out}");
    let counted = pod_requests(c).await?;
    ensure!(
        counted == before + 1,
        "webhook requests {before} -> {counted} for one pod"
    );
    eprintln!(
        "   webhook pod requests: {before} before, {after} after 3 pods not sent, {counted} after one sent"
    );
    c.delete_pod("default", "inj-counted", GONE).await?;
    c.delete_pod(&plain.namespace, &plain.name, GONE).await?;
    Ok(())
}

/// `kubectl apply` of macvtap NADs prints our warnings, and applies them all the same.
pub async fn injector_nad_warnings(c: &mut Cluster) -> Result<()> {
    let nad = |name: &str, resource: Option<&str>, config: serde_json::Value| {
        let mut n = json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default", "annotations": {}},
            "spec": {"config": config.to_string()}
        });
        if let Some(r) = resource {
            n["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] = r.into();
        }
        n
    };
    let (ok, out) = kubectl_apply(
        c,
        &nad(
            "inj-bad",
            None,
            json!({"cniVersion": "0.3.1", "type": "macvtap", "mtu": 40, "mode": "bridged", "deviceID": "dataplaneMvp0"}),
        ),
    )?;
    eprintln!("   kubectl apply of a bad macvtap NAD:\n{out}");
    ensure!(ok, "a NAD was refused: {out}");
    for w in [
        "without the k8s.v1.cni.cncf.io/resourceName",
        "mtu 40",
        "mode \"bridged\"",
        "deviceID \"dataplaneMvp0\"",
    ] {
        ensure!(
            out.contains(&format!("Warning: {w}")) || out.contains(w),
            "no warning {w:?}: {out}"
        );
    }
    let (ok, out) = kubectl_apply(
        c,
        &nad(
            "inj-unserved",
            Some("macvtap.network.kubevirt.io/nope"),
            json!({"cniVersion": "0.3.1", "type": "macvtap"}),
        ),
    )?;
    ensure!(ok && out.contains("no MacvtapPool serves"), "{out}");
    let original = std::fs::read_to_string(config_file("original/nad-dataplane.yaml"))?;
    // Created afresh under another name: kubectl warns about objects it did not create itself.
    let mut original = serde_saphyr::from_str::<serde_json::Value>(&original)?;
    original["metadata"]["name"] = "inj-original".into();
    let (ok, out) = kubectl_apply(c, &original)?;
    ensure!(ok && !out.contains("Warning"), "the original NAD: {out}");
    c.kubectl_out(&[
        "delete",
        "network-attachment-definitions",
        "inj-bad",
        "inj-unserved",
        "inj-original",
    ])?;
    Ok(())
}
