//! Refusals made by a real kubelet's answer (issue 20): the CNI asks the node's kubelet (PodResources) whether the
//! pod holds the device its NetworkAttachmentDefinition names, and what the user sees is the kubelet's
//! `FailedCreatePodSandBox` event with our message; the victim's link and traffic stay as they were.

use super::*;

/// Waits until `ns/name` has an event containing `what` (the kubelet retries the sandbox meanwhile); the pod
/// never runs.
async fn sandbox_refused(c: &Cluster, ns: &str, name: &str, what: &str) -> Result<String> {
    let mut events = String::new();
    wait::until(
        &format!("pod {ns}/{name} refused with {what:?}"),
        Duration::from_secs(90),
        || {
            events = c.events_of(ns, name);
            let found = events.contains("FailedCreatePodSandBox") && events.contains(what);
            async move { Ok(found) }
        },
    )
    .await
    .with_context(|| format!("events of {ns}/{name}:\n{}", c.events_of(ns, name)))?;
    let pod = Api::<Pod>::namespaced(c.client(), ns).get(name).await?;
    let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
    ensure!(phase != "Running", "{ns}/{name} runs although refused");
    Ok(events)
}

/// A busybox pod in `ns` on node-a, on `network`, optionally holding one device of `resource`.
fn tenant_pod(ns: &str, name: &str, network: &str, resource: Option<&str>) -> Pod {
    let mut pod = busybox(name, Some(network), resource, Some("node-a"));
    pod.metadata.namespace = Some(ns.into());
    pod
}

/// The victim is as before: same net1 (index, MAC, up), its tap is still its own, and a frame still reaches it.
async fn victim_untouched(
    c: &Cluster,
    victim: &RunningPod,
    before: &serde_json::Value,
    witness: &RunningPod,
) -> Result<()> {
    let now = victim.net1()?;
    for key in ["ifindex", "address", "operstate"] {
        ensure!(
            now[key] == before[key],
            "victim's net1 {key}: {before} -> {now}"
        );
    }
    let mut from = Tap::open(&check_tap(witness)?)?;
    let mut to = Tap::open(&check_tap(victim)?)?;
    from.send(net1_mac(victim)?, net1_mac(witness)?, b"still yours")?;
    ensure!(
        to.receive(b"still yours", Duration::from_secs(5))? == Some(net1_mac(witness)?),
        "a frame to the victim's tap was lost"
    );
    c.wait_running(&victim.namespace, &victim.name, RUN).await?;
    Ok(())
}

pub async fn refusals_by_the_kubelet(c: &mut Cluster) -> Result<()> {
    let victim = original_pod(c, "victim", "node-a").await?;
    let witness = original_pod(c, "witness", "node-a").await?;
    let before = victim.net1()?;
    let index = before["ifindex"].as_u64().context("ifindex")? as u32;
    let victim_device = c
        .allocation_records("node-a")?
        .into_iter()
        .find(|(_, r)| r.tap_index == index)
        .map(|(id, _)| id)
        .context("the victim's allocation record")?;
    let links_before = c.node_macvtaps("node-a")?;

    // A tenant names the victim's device literally, in a namespace of its own.
    c.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tenant\n")
        .await?;
    c.apply_yaml(&format!(
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: steal
  namespace: tenant
spec:
  config: '{{"cniVersion": "0.3.1", "name": "steal", "type": "macvtap", "deviceID": "{victim_device}"}}'
"#
    ))
    .await?;
    let pods = Api::<Pod>::namespaced(c.client(), "tenant");
    pods.create(
        &PostParams::default(),
        &tenant_pod("tenant", "thief", "steal", None),
    )
    .await?;
    let events =
        sandbox_refused(c, "tenant", "thief", "is not allocated to pod tenant/thief").await?;
    ensure!(
        events.contains(&victim_device),
        "the refusal names the device: {events}"
    );

    // The same with a device of another resource held: still not the victim's.
    c.apply_yaml(
        "apiVersion: macvtap.network.kubevirt.io/v1alpha1\nkind: MacvtapPool\nmetadata:\n  name: other\nspec:\n  lowerDevice: p4p1\n  capacity: 2\n",
    )
    .await?;
    c.wait_node_resource("node-a", &resource_name("other"), RUN, |cap, a| {
        cap == 2 && a == 2
    })
    .await?;
    pods.create(
        &PostParams::default(),
        &tenant_pod("tenant", "holder-of-other", "steal", Some("other")),
    )
    .await?;
    let events = sandbox_refused(
        c,
        "tenant",
        "holder-of-other",
        "is not allocated to pod tenant/holder-of-other",
    )
    .await?;
    ensure!(
        events.contains("macvtap.network.kubevirt.io/other="),
        "the refusal lists what the pod does hold: {events}"
    );

    // A pod on the pool's own network without asking for a device: Multus has no device ID to give. The injector
    // would add the request, so the pod is in kube-system, a namespace the injector never sees (as with the
    // injector turned off, or down under failurePolicy Ignore).
    let mut no_request = busybox(
        "no-request",
        Some("default/dataplane"),
        None,
        Some("node-a"),
    );
    no_request.metadata.namespace = Some("kube-system".into());
    Api::<Pod>::namespaced(c.client(), "kube-system")
        .create(&PostParams::default(), &no_request)
        .await?;
    sandbox_refused(c, "kube-system", "no-request", "deviceID is required").await?;
    let api = Api::<Pod>::namespaced(c.client(), "default");

    // The node file points at a PodResources socket nobody answers on: 11, nothing created, and the kubelet's
    // retry attaches the pod once the node file is right again.
    let node_file = c.node("node-a").dir.join("cni-bin/macvtap-node.json");
    let good = std::fs::read_to_string(&node_file)?;
    let dead = c
        .node("node-a")
        .dir
        .join("kubelet/pod-resources/nobody.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead)?);
    let mut bad: serde_json::Value = serde_json::from_str(&good)?;
    bad["podResourcesSocket"] = "/var/lib/kubelet/pod-resources/nobody.sock".into();
    std::fs::write(&node_file, serde_json::to_vec(&bad)?)?;
    api.create(
        &PostParams::default(),
        &example("original/pod.yaml", Some("unasked"), Some("node-a"))?,
    )
    .await?;
    let refused = sandbox_refused(c, "default", "unasked", "cannot ask the kubelet").await;
    let links_during = c.node_macvtaps("node-a")?;
    std::fs::write(&node_file, &good)?;
    let _ = std::fs::remove_file(&dead);
    refused?;
    ensure!(
        links_during == links_before,
        "a refused ADD created or removed a host link: {links_before:?} -> {links_during:?}"
    );
    let unasked = c.wait_running("default", "unasked", RUN).await?;
    check_tap(&unasked)?;

    victim_untouched(c, &victim, &before, &witness).await?;
    ensure!(
        c.node_macvtaps("node-a")? == links_before,
        "host links changed"
    );
    for (ns, name) in [
        ("tenant", "thief"),
        ("tenant", "holder-of-other"),
        ("kube-system", "no-request"),
        ("default", "unasked"),
        ("default", "victim"),
        ("default", "witness"),
    ] {
        c.delete_pod(ns, name, GONE).await?;
    }
    Api::<MacvtapPool>::all(c.client())
        .delete("other", &DeleteParams::default())
        .await?;
    Ok(())
}
