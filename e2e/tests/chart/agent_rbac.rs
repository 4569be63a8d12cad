//! What the agent's ServiceAccount may and may not do: RBAC and the ValidatingAdmissionPolicy on node states.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn agent_service_account_writes_only_its_own_nodes_status() {
    let (release, namespace) = ("chart-ag", "chart-ag");
    install(release, namespace, &[]);
    let objs = release_objects(release, namespace);
    let sa = find_by_component(&objs, "ServiceAccount", "agent")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let image =
        find_by_component(&objs, "DaemonSet", "agent")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .to_string();
    let admin = cp().admin_client();
    let (mine, other) = ("chart-ag-node-a", "chart-ag-node-b");
    for n in [mine, other] {
        create_node(&admin, n).await;
        create_node_state(&admin, n).await;
    }
    // What the DaemonSet controller would create on node a (no controller-manager here), and its token.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-on-a", "namespace": namespace},
        "spec": {"nodeName": mine, "serviceAccountName": sa, "containers": [{"name": "agent", "image": image}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let token = cp()
        .pod_bound_token(namespace, &sa, &pod)
        .await
        .expect("TokenRequest bound to a pod");
    let agent = cp().client_with_token(token);

    // The agent's calls: watch its own state (list + watch by field selector), apply its status.
    let states: Api<MacvtapNodeState> = Api::all(agent.clone());
    assert_forbidden("get own state (unused)", states.get(mine).await);
    assert_allowed(
        "list states",
        states
            .list(&ListParams::default().fields(&format!("metadata.name={mine}")))
            .await,
    );
    assert_allowed("watch states", watch_allowed(&states).await);
    assert_allowed(
        "apply own status",
        states
            .patch_status(
                mine,
                &PatchParams::apply("macvtap-agent").force(),
                &Patch::Apply(json!({
                    "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
                    "status": {"agentVersion": "0.0.1"}
                })),
            )
            .await,
    );
    let status = |v: &str| json!({"status": {"agentVersion": v}});
    let done = assert_allowed(
        "own status",
        states
            .patch_status(
                mine,
                &PatchParams::default(),
                &Patch::Merge(status("0.1.0")),
            )
            .await,
    );
    assert_eq!(done.status.unwrap().agent_version.as_deref(), Some("0.1.0"));
    let current = Api::<MacvtapNodeState>::all(admin.clone())
        .get(mine)
        .await
        .unwrap();
    assert_forbidden(
        "replace own status (unused)",
        states
            .replace_status(mine, &PostParams::default(), &current)
            .await,
    );

    // Another node's state: RBAC allows status writes, the admission policy must refuse them.
    let msg = wait::eventually(
        "policy refuses another node's status",
        POLICY_SYNC,
        || async {
            let r = states
                .patch_status(
                    other,
                    &PatchParams::default(),
                    &Patch::Merge(status("evil")),
                )
                .await;
            let answer = format!("{r:?}");
            if status_code(&r) == Some(403) {
                Ok(answer)
            } else {
                Err(answer)
            }
        },
    )
    .await;
    assert!(
        msg.contains(&format!(
            "may write only MacvtapNodeState {mine}, not {other}"
        )),
        "{msg}"
    );
    let theirs = Api::<MacvtapNodeState>::all(admin.clone())
        .get(other)
        .await
        .unwrap();
    assert_forbidden(
        "replace another node's status",
        states
            .replace_status(other, &PostParams::default(), &theirs)
            .await,
    );

    // Spec, create, delete: RBAC.
    let spec_patch =
        Patch::Merge(json!({"spec": {"resources": []}, "metadata": {"labels": {"x": "y"}}}));
    assert_forbidden(
        "own spec",
        states
            .patch(mine, &PatchParams::default(), &spec_patch)
            .await,
    );
    assert_forbidden(
        "delete own state",
        states.delete(mine, &DeleteParams::default()).await,
    );
    let new_state: MacvtapNodeState = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
        "metadata": {"name": "chart-ag-node-c"}, "spec": {"resources": []}
    }))
    .unwrap();
    assert_forbidden(
        "create a state",
        states.create(&PostParams::default(), &new_state).await,
    );

    // Nodes: nothing. Nothing else.
    let nodes: Api<Node> = Api::all(agent.clone());
    assert_forbidden("get own node (unused)", nodes.get(mine).await);
    assert_forbidden("list nodes", nodes.list(&ListParams::default()).await);
    assert_forbidden(
        "node status",
        nodes
            .patch_status(mine, &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
    );
    assert_forbidden(
        "pools",
        Api::<MacvtapPool>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_no_secrets_or_pods(&agent, namespace).await;

    // A token not bound to a pod names no node: refused even for "its own" object.
    let unbound = cp()
        .client_as_service_account(namespace, &sa)
        .await
        .unwrap();
    let msg = assert_forbidden(
        "unbound token",
        Api::<MacvtapNodeState>::all(unbound)
            .patch_status(mine, &PatchParams::default(), &Patch::Merge(status("x")))
            .await,
    );
    assert!(msg.contains("pod-bound ServiceAccount token"), "{msg}");

    // The operator is not subject to the agent policy.
    let op_sa = find_by_component(&objs, "ServiceAccount", "operator")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let op = cp()
        .client_as_service_account(namespace, &op_sa)
        .await
        .unwrap();
    assert_allowed(
        "operator writes any node state",
        Api::<MacvtapNodeState>::all(op)
            .patch(
                other,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await,
    );

    // Without the policy, RBAC alone would let the agent write other nodes' status: the policy is what refuses.
    upgrade(
        release,
        namespace,
        &["--set", "agent.nodeStatePolicy.enabled=false"],
    );
    wait::eventually(
        "another node's status accepted once the policy is gone",
        POLICY_SYNC,
        || async {
            states
                .patch_status(
                    other,
                    &PatchParams::default(),
                    &Patch::Merge(status("evil")),
                )
                .await
        },
    )
    .await;

    helm(
        &["uninstall", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), namespace)
        .delete("agent-on-a", &DeleteParams::default())
        .await
        .unwrap();
    for n in [mine, other] {
        Api::<MacvtapNodeState>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
        Api::<Node>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}
