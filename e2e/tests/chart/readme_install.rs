//! The chart README's install, upgrade and uninstall commands, run as written.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn readme_install_upgrade_uninstall_on_a_real_api_server() {
    let cp = cp();
    let kubeconfig = cp.kubeconfig_path();
    let client = cp.admin_client();
    let (release, namespace) = ("macvtap-operator", "macvtap-system");

    // Install exactly as the README says.
    for cmd in readme_commands("install") {
        run_readme_command(&cmd, kubeconfig);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [CRD_POOLS, CRD_NODE_STATES] {
        let crd = crds
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} after install: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} not Established");
    }
    let objs = release_objects(release, namespace);
    assert!(objs.len() >= 15, "{:?}", kind_names(&objs));
    for o in &objs {
        get_object(&client, o, namespace)
            .await
            .unwrap_or_else(|e| panic!("{} {} not stored: {e}", o["kind"], o["metadata"]["name"]));
    }

    // Upgrade as the README says (no change), then with pools and other values.
    for cmd in readme_commands("upgrade") {
        run_readme_command(&cmd, kubeconfig);
    }
    upgrade(
        release,
        namespace,
        &[
            "--set-json",
            r#"pools=[{"name":"chart-e2e-a","spec":{"lowerDevice":"eth1","capacity":10}},{"name":"chart-e2e-b","spec":{"discovery":{},"mode":"vepa"}}]"#,
            "--set",
            "operator.replicas=3",
            "--set-json",
            r#"legacyConfig=[{"name":"dp","lowerDevice":"eth1"}]"#,
        ],
    );
    // Every object of the upgraded release is stored, the legacy-config ConfigMap among them.
    let upgraded = release_objects(release, namespace);
    assert!(
        kind_names(&upgraded)
            .iter()
            .any(|n| n.starts_with("ConfigMap/")),
        "{:?}",
        kind_names(&upgraded)
    );
    for o in &upgraded {
        get_object(&client, o, namespace)
            .await
            .unwrap_or_else(|e| panic!("{} {} not stored: {e}", o["kind"], o["metadata"]["name"]));
    }
    let pools: Api<MacvtapPool> = Api::all(client.clone());
    let a = pools.get("chart-e2e-a").await.expect("pool from values");
    assert_eq!(a.spec.capacity, 10);
    assert_eq!(a.spec.lower_device.as_deref(), Some("eth1"));
    assert!(
        pools
            .get("chart-e2e-b")
            .await
            .expect("pool from values")
            .spec
            .discovery
            .is_some()
    );
    let deploy = find_by_component(
        &release_objects(release, namespace),
        "Deployment",
        "operator",
    )
    .clone();
    let stored = get_object(&client, &deploy, namespace).await.unwrap();
    assert_eq!(stored.data["spec"]["replicas"], 3);

    // The API server validates pool specs from values with the CRD's rules: a bad one fails the upgrade.
    let err = helm(
        &[
            "upgrade",
            release,
            &chart_arg(),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set-json",
            r#"pools=[{"name":"chart-e2e-bad","spec":{"lowerDevice":"eth1","discovery":{}}}]"#,
        ],
        Some(kubeconfig),
    )
    .expect_err("a pool with both lowerDevice and discovery is invalid");
    assert!(
        err.contains("exactly one of spec.lowerDevice or spec.discovery"),
        "{err}"
    );

    // Dropping a pool from the values deletes it; keepPoolsOnUninstall marks the rest to survive uninstall.
    upgrade(
        release,
        namespace,
        &[
            "--set-json",
            r#"pools=[{"name":"chart-e2e-b","spec":{"discovery":{},"mode":"vepa"}}]"#,
            "--set",
            "keepPoolsOnUninstall=true",
        ],
    );
    assert_eq!(
        status_code(&pools.get("chart-e2e-a").await),
        Some(404),
        "dropped pool is deleted"
    );
    assert!(pools.get("chart-e2e-b").await.is_ok());

    // A pool the user created outside helm.
    let user_pool: MacvtapPool = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": "chart-e2e-user"}, "spec": {"lowerDevice": "eth2"}
    }))
    .unwrap();
    pools
        .create(&PostParams::default(), &user_pool)
        .await
        .unwrap();

    let objs = release_objects(release, namespace);
    for cmd in readme_commands("uninstall") {
        run_readme_command(&cmd, kubeconfig);
    }
    for o in objs.iter().filter(|o| o["kind"] != "MacvtapPool") {
        let r = get_object(&client, o, namespace).await;
        assert_eq!(
            status_code(&r),
            Some(404),
            "{} {} left after uninstall",
            o["kind"],
            o["metadata"]["name"]
        );
    }
    // Helm never deletes crds/: the CRDs, the kept pool and the user's pool stay.
    for name in [CRD_POOLS, CRD_NODE_STATES] {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} after uninstall: {e}"));
    }
    assert!(
        pools.get("chart-e2e-b").await.is_ok(),
        "keepPoolsOnUninstall pool removed"
    );
    assert!(
        pools.get("chart-e2e-user").await.is_ok(),
        "user's pool removed"
    );
    for p in ["chart-e2e-b", "chart-e2e-user"] {
        pools.delete(p, &DeleteParams::default()).await.unwrap();
    }
}
