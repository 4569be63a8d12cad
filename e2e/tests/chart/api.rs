//! Helpers against the real API server: the shared control plane, helm releases, objects, and how a request
//! was answered.

use super::*;

pub fn cp() -> &'static ControlPlane {
    ControlPlane::shared()
}

pub fn install(release: &str, namespace: &str, extra: &[&str]) {
    let chart = chart_arg();
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    args.extend_from_slice(extra);
    helm(&args, Some(cp().kubeconfig_path())).unwrap_or_else(|e| panic!("{e}"));
}

pub fn upgrade(release: &str, namespace: &str, extra: &[&str]) {
    let chart = chart_arg();
    let mut args = vec![
        "upgrade",
        release,
        &chart,
        "--namespace",
        namespace,
        "--reuse-values",
    ];
    args.extend_from_slice(extra);
    helm(&args, Some(cp().kubeconfig_path())).unwrap_or_else(|e| panic!("{e}"));
}

pub fn release_objects(release: &str, namespace: &str) -> Vec<Value> {
    let out = helm(
        &["get", "manifest", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    parse_docs(&out)
}

/// GETs an object as rendered (kind, name, namespace) from the API server.
pub async fn get_object(
    client: &Client,
    obj: &Value,
    default_ns: &str,
) -> Result<DynamicObject, kube::Error> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap());
    let (ar, caps) = pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap_or(default_ns),
            &ar,
        ),
    };
    api.get(obj["metadata"]["name"].as_str().unwrap()).await
}

pub fn status_code<T: Debug>(r: &Result<T, kube::Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(s)) => Some(s.code),
        Err(e) => panic!("not an API status error: {e}"),
    }
}

#[track_caller]
pub fn assert_allowed<T: Debug>(what: &str, r: Result<T, kube::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected to be allowed, got {e}"))
}

/// Asserts the API server refused with 403 and returns its message.
#[track_caller]
pub fn assert_forbidden<T: Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Neither component may read Secrets (here or anywhere) or list Pods.
pub async fn assert_no_secrets_or_pods(client: &Client, namespace: &str) {
    assert_forbidden(
        "secrets here",
        Api::<Secret>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "all secrets",
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "pods",
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await,
    );
}

pub async fn create_node(client: &Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"e2e": "chart"}}}))
            .unwrap();
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await.unwrap(),
        Err(e) => panic!("creating node {name}: {e}"),
    }
}

pub async fn create_node_state(client: &Client, name: &str) {
    let api: Api<MacvtapNodeState> = Api::all(client.clone());
    let ns: MacvtapNodeState = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1",
        "kind": "MacvtapNodeState",
        "metadata": {"name": name},
        "spec": {"resources": []}
    }))
    .unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating node state {name}: {e}"),
    }
}

pub async fn watch_allowed<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
{
    // The request is made (and authorized) before the stream is returned.
    api.watch(&WatchParams::default().timeout(1), "0")
        .await
        .map(|_| ())
}
