//! What the operator's ServiceAccount may and may not do.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn operator_service_account_can_do_its_job_and_nothing_more() {
    let (release, namespace) = ("chart-op", "chart-op");
    install(release, namespace, &[]);
    let objs = release_objects(release, namespace);
    let sa = find_by_component(&objs, "ServiceAccount", "operator")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let lease_name = find_by_component(&objs, "Deployment", "operator")["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| {
            a.as_str()
                .unwrap()
                .strip_prefix("--leader-election-id=")
                .map(String::from)
        })
        .unwrap();
    let admin = cp().admin_client();
    let op = cp()
        .client_as_service_account(namespace, &sa)
        .await
        .unwrap();

    let pool_name = "chart-op-pool";
    let admin_pools: Api<MacvtapPool> = Api::all(admin.clone());
    let pool: MacvtapPool = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": pool_name}, "spec": {"lowerDevice": "eth1"}
    }))
    .unwrap();
    let _ = admin_pools.create(&PostParams::default(), &pool).await;
    let node = create_node(&admin, "chart-op-node").await;

    // Pools: watched (list + watch) and their status applied; nothing else.
    let pools: Api<MacvtapPool> = Api::all(op.clone());
    assert_allowed("list pools", pools.list(&ListParams::default()).await);
    assert_allowed("watch pools", watch_allowed(&pools).await);
    assert_forbidden("get pool (unused)", pools.get(pool_name).await);
    let pp = PatchParams::apply("macvtap-operator");
    let status = json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": pool_name},
        "status": {"observedGeneration": 1, "nodesMatched": 1}
    });
    let patched = assert_allowed(
        "apply pool status",
        pools
            .patch_status(pool_name, &pp, &Patch::Apply(&status))
            .await,
    );
    assert_eq!(patched.status.unwrap().nodes_matched, 1);
    assert_forbidden(
        "create pool",
        pools.create(&PostParams::default(), &pool).await,
    );
    assert_forbidden(
        "edit pool spec",
        pools
            .patch(
                pool_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"capacity": 5}})),
            )
            .await,
    );
    assert_forbidden(
        "delete pool",
        pools.delete(pool_name, &DeleteParams::default()).await,
    );

    // Node states: full lifecycle of the spec, never the status.
    let states: Api<MacvtapNodeState> = Api::all(op.clone());
    let state = json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
        "metadata": {"name": "chart-op-node"}, "spec": {"resources": []}
    });
    assert_allowed(
        "apply node state",
        states
            .patch("chart-op-node", &pp, &Patch::Apply(&state))
            .await,
    );
    let listed = assert_allowed(
        "list node states",
        states.list(&ListParams::default()).await,
    );
    assert_allowed("watch node states", watch_allowed(&states).await);
    assert_allowed(
        "merge-patch node state spec",
        states
            .patch(
                "chart-op-node",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"resources": []}})),
            )
            .await,
    );
    assert_forbidden("get node state (unused)", states.get("chart-op-node").await);
    let current = listed
        .items
        .into_iter()
        .find(|s| s.name_any() == "chart-op-node")
        .unwrap();
    assert_forbidden(
        "replace node state (unused)",
        states
            .replace("chart-op-node", &PostParams::default(), &current)
            .await,
    );
    assert_forbidden(
        "node state status",
        states
            .patch_status(
                "chart-op-node",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"agentVersion": "x"}})),
            )
            .await,
    );
    assert_allowed(
        "delete node state",
        states
            .delete("chart-op-node", &DeleteParams::default())
            .await,
    );

    // Nodes: watched (nodes/status only with cleanStaleNodeResources, below).
    let nodes: Api<Node> = Api::all(op.clone());
    assert_allowed("list nodes", nodes.list(&ListParams::default()).await);
    assert_allowed("watch nodes", watch_allowed(&nodes).await);
    assert_forbidden("get node (unused)", nodes.get(&node.name_any()).await);
    assert_forbidden(
        "label node",
        nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
    );
    let stale = json!({"status": {"capacity": {"macvtap.network.kubevirt.io/gone": null}}});
    assert_forbidden(
        "node status without cleanStaleNodeResources",
        nodes
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&stale),
            )
            .await,
    );

    // Events about cluster-scoped pools go to "default", through events.k8s.io (kube's Recorder: create, then
    // patch for a series); the core Event API is not used.
    let now = "2026-01-01T00:00:00.000000Z";
    let core_event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "chart-op-pool.1", "namespace": "default"},
        "involvedObject": {"apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool", "name": pool_name},
        "reason": "Test", "message": "m", "type": "Normal", "source": {"component": "macvtap-operator"}
    }))
    .unwrap();
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(op.clone(), "default");
    assert_forbidden(
        "core event (unused)",
        core_events
            .create(&PostParams::default(), &core_event)
            .await,
    );
    let new_event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "chart-op-pool.2", "namespace": "default"},
        "eventTime": now, "reportingController": "macvtap.network.kubevirt.io/operator",
        "reportingInstance": "test", "action": "Reconcile", "reason": "Test", "type": "Normal",
        "regarding": {"apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool", "name": pool_name}
    }))
    .unwrap();
    let new_events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(op.clone(), "default");
    assert_allowed(
        "events.k8s.io event",
        new_events.create(&PostParams::default(), &new_event).await,
    );
    assert_allowed(
        "events.k8s.io event series",
        new_events
            .patch(
                "chart-op-pool.2",
                &PatchParams::default(),
                &Patch::Merge(json!({"series": {"count": 2, "lastObservedTime": now}})),
            )
            .await,
    );
    // (Granted by the ClusterRole: "default" is not the release namespace, so a Role there could not do this.)

    // Leader election: its own Lease in its namespace only.
    let leases: Api<Lease> = Api::namespaced(op.clone(), namespace);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease_name}, "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    assert_allowed(
        "create lease",
        leases.create(&PostParams::default(), &lease).await,
    );
    let got = assert_allowed("get lease", leases.get(&lease_name).await);
    assert_forbidden(
        "replace lease (unused)",
        leases
            .replace(&lease_name, &PostParams::default(), &got)
            .await,
    );
    assert_forbidden("watch lease (unused)", watch_allowed(&leases).await);
    assert_allowed(
        "patch lease",
        leases
            .patch(
                &lease_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "pod-b"}})),
            )
            .await,
    );
    assert_forbidden(
        "get another lease",
        leases.get("kube-controller-manager").await,
    );
    assert_forbidden("list leases", leases.list(&ListParams::default()).await);
    let other_ns: Api<Lease> = Api::namespaced(op.clone(), "default");
    assert_forbidden(
        "lease in another namespace",
        other_ns.create(&PostParams::default(), &lease).await,
    );
    assert_forbidden(
        "delete lease (unused)",
        leases.delete(&lease_name, &DeleteParams::default()).await,
    );
    // The lease manager's own calls: a server-side apply patch of the named Lease.
    assert_allowed(
        "apply lease",
        leases
            .patch(
                &lease_name,
                &PatchParams::apply("macvtap-operator-test").force(),
                &Patch::Apply(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "spec": {"holderIdentity": "pod-c"}
                })),
            )
            .await,
    );
    Api::<Lease>::namespaced(cp().admin_client(), namespace)
        .delete(&lease_name, &DeleteParams::default())
        .await
        .unwrap();

    // The injector: its own webhook Secret (create, get, update by name), the CA bundle of its own webhook
    // configurations (get, patch), NADs read from a watched cache; nothing else of either.
    let secrets: Api<Secret> = Api::namespaced(op.clone(), namespace);
    let secret_name = format!("{release}-macvtap-operator-webhook-tls");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret_name}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "x", "tls.key": "y"}
    }))
    .unwrap();
    assert_allowed(
        "create the webhook secret",
        secrets.create(&PostParams::default(), &secret).await,
    );
    let got = assert_allowed("get the webhook secret", secrets.get(&secret_name).await);
    assert_allowed(
        "update the webhook secret",
        secrets
            .replace(&secret_name, &PostParams::default(), &got)
            .await,
    );
    assert_forbidden(
        "delete the webhook secret (unused)",
        secrets.delete(&secret_name, &DeleteParams::default()).await,
    );
    assert_forbidden("watch secrets (unused)", watch_allowed(&secrets).await);
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(op.clone());
    let mwc = format!("{release}-macvtap-operator-injector");
    assert_allowed(
        "get its mutating webhook configuration",
        mwcs.get(&mwc).await,
    );
    let no_op = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    assert_allowed(
        "patch its mutating webhook configuration",
        mwcs.patch(&mwc, &PatchParams::default(), &no_op).await,
    );
    assert_forbidden(
        "list mutating webhook configurations",
        mwcs.list(&ListParams::default()).await,
    );
    assert_forbidden(
        "delete its mutating webhook configuration",
        mwcs.delete(&mwc, &DeleteParams::default()).await,
    );
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(op.clone());
    let vwc = format!("{release}-macvtap-operator-nad-warnings");
    assert_allowed(
        "patch its validating webhook configuration",
        vwcs.patch(&vwc, &PatchParams::default(), &no_op).await,
    );
    assert_forbidden(
        "list validating webhook configurations",
        vwcs.list(&ListParams::default()).await,
    );
    let nad_crd = std::fs::read_to_string(
        workspace::root().join("e2e/manifests/network-attachment-definition-crd.yaml"),
    )
    .unwrap();
    macvtap_e2e::apply::apply_objects(
        &cp().admin_client(),
        &macvtap_e2e::apply::parse_objects(&nad_crd).unwrap(),
        "default",
    )
    .await
    .unwrap();
    let nad_gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    let nad_ar =
        kube::api::ApiResource::from_gvk_with_plural(&nad_gvk, "network-attachment-definitions");
    let nads: Api<DynamicObject> = Api::all_with(op.clone(), &nad_ar);
    wait::until("NAD CRD established", Duration::from_secs(30), || async {
        Ok(nads.list(&ListParams::default()).await.is_ok())
    })
    .await
    .unwrap();
    assert_allowed("watch NADs", watch_allowed(&nads).await);
    let nad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "x", "namespace": "default"}, "spec": {"config": "{}"}
    }))
    .unwrap();
    assert_forbidden(
        "create a NAD",
        Api::<DynamicObject>::namespaced_with(op.clone(), "default", &nad_ar)
            .create(&PostParams::default(), &nad)
            .await,
    );

    // Never other secrets, nor anything else.
    assert_forbidden(
        "get a secret",
        Api::<Secret>::namespaced(op.clone(), namespace)
            .get("x")
            .await,
    );
    assert_forbidden(
        "configmaps",
        Api::<ConfigMap>::namespaced(op.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    assert_no_secrets_or_pods(&op, namespace).await;

    // The value that grants nodes/status really does.
    upgrade(
        release,
        namespace,
        &["--set", "operator.cleanStaleNodeResources=true"],
    );
    assert_allowed(
        "node status with cleanStaleNodeResources",
        nodes
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&stale),
            )
            .await,
    );

    helm(
        &["uninstall", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap();
    admin_pools
        .delete(pool_name, &DeleteParams::default())
        .await
        .unwrap();
}
