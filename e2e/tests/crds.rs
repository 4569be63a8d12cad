//! The committed CRDs (crds/yaml) against the real API server: they apply and are Established, the server fills
//! in defaults, rejects invalid pools (schema and CEL) naming the field, and `kubectl explain` reads well.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Client, CustomResourceExt, Resource};
use macvtap_api::{MacvtapMode, MacvtapNodeState, MacvtapPool};
use macvtap_e2e::control_plane::ControlPlane;
use serde_json::{Value, json};

async fn setup() -> (&'static ControlPlane, Client) {
    let cp = ControlPlane::shared();
    cp.apply_crds()
        .await
        .expect("CRDs apply and become Established");
    (cp, cp.admin_client())
}

/// Pools sent as raw JSON, so what the server fills in is not mistaken for client-side serde defaults.
fn raw_pools(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &ApiResource::erase::<MacvtapPool>(&()))
}

fn raw_pool(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": MacvtapPool::api_version(&()),
        "kind": MacvtapPool::kind(&()),
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn crds_apply_and_are_established() {
    let cp = ControlPlane::shared();
    let mut names = cp.apply_crds().await.unwrap();
    names.sort();
    let mut expected = vec![
        MacvtapPool::crd_name().to_string(),
        MacvtapNodeState::crd_name().to_string(),
    ];
    expected.sort();
    assert_eq!(names, expected);
    let crds = Api::<CustomResourceDefinition>::all(cp.admin_client());
    for name in &names {
        let crd = crds.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} not True in {conditions:?}"
            );
        }
    }
}

#[tokio::test]
async fn valid_pool_is_accepted_with_defaults_filled_in() {
    let (_, client) = setup().await;
    let api = raw_pools(client.clone());
    let created = api
        .create(
            &PostParams::default(),
            &raw_pool("defaults", json!({"lowerDevice": "eth0"})),
        )
        .await
        .expect("a pool naming only its lower device is valid");
    assert_eq!(
        created.data["spec"]["mode"],
        json!("bridge"),
        "{:?}",
        created.data
    );
    assert_eq!(
        created.data["spec"]["capacity"],
        json!(100),
        "{:?}",
        created.data
    );

    // The typed API reads what the server stored.
    let typed = Api::<MacvtapPool>::all(client)
        .get("defaults")
        .await
        .unwrap();
    assert_eq!(typed.spec.lower_device.as_deref(), Some("eth0"));
    assert_eq!(typed.spec.mode, MacvtapMode::Bridge);
    assert_eq!(typed.spec.capacity, 100);
    api.delete("defaults", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn typed_pools_round_trip_through_the_server() {
    let (_, client) = setup().await;
    let api = Api::<MacvtapPool>::all(client);
    let pools = [
        (
            "typed-explicit",
            json!({"lowerDevice": "bond0", "mode": "vepa", "capacity": 4096, "resourceName": "Legacy_Name.1",
                   "nodeSelector": {"matchLabels": {"macvtap": "yes"}},
                   "lowerDeviceOverrides": [{"nodeSelector": {"matchLabels": {"nic": "ens"}}, "lowerDevice": "ens3"}]}),
        ),
        (
            "typed-discovery",
            json!({"discovery": {}, "mode": "private"}),
        ),
        (
            "typed-passthru",
            json!({"lowerDevice": "eth1", "mode": "passthru", "capacity": 1}),
        ),
        (
            "typed-source",
            json!({"lowerDevice": "eth1", "mode": "source", "capacity": 1}),
        ),
    ];
    for (name, spec) in pools {
        let pool = MacvtapPool::new(name, serde_json::from_value(spec).unwrap());
        let created = api
            .create(&PostParams::default(), &pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(created.spec, pool.spec, "{name}");
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

/// Each invalid pool is refused with 422 and a message naming the offending field.
#[tokio::test]
async fn invalid_pools_are_rejected_naming_the_field() {
    let (_, client) = setup().await;
    let api = raw_pools(client);
    let long_name = "p".repeat(64);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "bad mode",
            "bad-mode",
            json!({"lowerDevice": "eth0", "mode": "bogus"}),
            "spec.mode",
        ),
        (
            "capacity 0",
            "cap-zero",
            json!({"lowerDevice": "eth0", "capacity": 0}),
            "spec.capacity",
        ),
        (
            "capacity too high",
            "cap-high",
            json!({"lowerDevice": "eth0", "capacity": 4097}),
            "spec.capacity",
        ),
        (
            "capacity not a number",
            "cap-str",
            json!({"lowerDevice": "eth0", "capacity": "ten"}),
            "spec.capacity",
        ),
        (
            "lower device longer than IFNAMSIZ",
            "long-dev",
            json!({"lowerDevice": "a-very-long-nic0"}),
            "spec.lowerDevice",
        ),
        (
            "lower device with a slash",
            "slash-dev",
            json!({"lowerDevice": "eth/0"}),
            "spec.lowerDevice",
        ),
        (
            "lower device with a space",
            "space-dev",
            json!({"lowerDevice": "eth 0"}),
            "spec.lowerDevice",
        ),
        (
            "lower device '..'",
            "dotdot-dev",
            json!({"lowerDevice": ".."}),
            "spec.lowerDevice",
        ),
        (
            "empty lower device",
            "empty-dev",
            json!({"lowerDevice": ""}),
            "spec.lowerDevice",
        ),
        (
            "override with a bad device",
            "bad-override",
            json!({"lowerDevice": "eth0", "lowerDeviceOverrides": [{"nodeSelector": {}, "lowerDevice": "a:b"}]}),
            "spec.lowerDeviceOverrides[0].lowerDevice",
        ),
        (
            "bad resource name",
            "bad-res",
            json!({"lowerDevice": "eth0", "resourceName": "-x"}),
            "spec.resourceName",
        ),
        (
            "neither lower device nor discovery",
            "neither",
            json!({"mode": "bridge"}),
            "spec.lowerDevice or spec.discovery",
        ),
        (
            "both lower device and discovery",
            "both",
            json!({"lowerDevice": "eth0", "discovery": {}}),
            "spec.lowerDevice or spec.discovery",
        ),
        (
            "discovery with a resource name",
            "disc-res",
            json!({"discovery": {}, "resourceName": "x"}),
            "spec.resourceName",
        ),
        (
            "discovery with overrides",
            "disc-ovr",
            json!({"discovery": {}, "lowerDeviceOverrides": [{"nodeSelector": {}, "lowerDevice": "eth1"}]}),
            "spec.lowerDeviceOverrides",
        ),
        (
            "passthru with capacity 2",
            "passthru-2",
            json!({"lowerDevice": "eth0", "mode": "passthru", "capacity": 2}),
            "spec.capacity",
        ),
        (
            "object name not DNS-1123",
            "Bad_Name",
            json!({"lowerDevice": "eth0"}),
            "metadata.name",
        ),
        (
            "name over 63 chars without resourceName",
            &long_name,
            json!({"lowerDevice": "eth0"}),
            "metadata.name",
        ),
    ];
    let mut failures = Vec::new();
    for (what, name, spec, field) in &cases {
        match api
            .create(&PostParams::default(), &raw_pool(name, spec.clone()))
            .await
        {
            Ok(_) => {
                failures.push(format!("{what}: accepted"));
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!("{what}: expected 422 naming {field}, got {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The long-name rule is about the served resource name: with spec.resourceName the same name is fine.
    let ok = raw_pool(
        &long_name,
        json!({"lowerDevice": "eth0", "resourceName": "short"}),
    );
    api.create(&PostParams::default(), &ok).await.unwrap();
    api.delete(&long_name, &DeleteParams::default())
        .await
        .unwrap();
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first words of a description, as kubectl re-wraps the rest.
fn lead(description: &str) -> String {
    collapse(description)
        .split(' ')
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

fn spec_schema() -> JSONSchemaProps {
    let crd = MacvtapPool::crd();
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    schema.properties.unwrap()["spec"].clone()
}

#[tokio::test]
async fn kubectl_explain_prints_the_field_descriptions() {
    let (cp, _) = setup().await;
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["explain", "macvtappool.spec"]);
    // The CRD's OpenAPI is published shortly after it is Established: retry for a while.
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = kubectl.output().unwrap();
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "kubectl explain: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .unwrap();
    let text = collapse(&out);
    assert!(text.contains("KIND: MacvtapPool"), "{out}");
    assert!(text.contains("GROUP: macvtap.network.kubevirt.io"), "{out}");
    assert!(text.contains("VERSION: v1alpha1"), "{out}");
    assert!(text.contains("FIELD: spec <Object>"), "{out}");
    let spec = spec_schema();
    assert!(
        text.contains(&lead(spec.description.as_deref().unwrap())),
        "{out}"
    );
    let fields = spec.properties.unwrap();
    for field in [
        "lowerDevice",
        "discovery",
        "mode",
        "capacity",
        "resourceName",
        "nodeSelector",
    ] {
        let description = fields[field]
            .description
            .as_deref()
            .unwrap_or_else(|| panic!("{field} undocumented"));
        assert!(
            text.contains(&format!("{field} <")),
            "{field} not listed:\n{out}"
        );
        assert!(
            text.contains(&lead(description)),
            "{field}'s description missing:\n{out}"
        );
    }
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let (cp, client) = setup().await;
    let api = raw_pools(client);
    api.create(
        &PostParams::default(),
        &raw_pool("columns", json!({"lowerDevice": "eth3", "mode": "vepa"})),
    )
    .await
    .unwrap();
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["get", "mvp", "columns"]);
    let out = tokio::task::spawn_blocking(move || kubectl.output().unwrap())
        .await
        .unwrap();
    api.delete("columns", &DeleteParams::default())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header = collapse(lines.next().unwrap());
    assert!(
        header.starts_with("NAME LOWER DEVICE MODE CAPACITY"),
        "{stdout}"
    );
    let row = collapse(lines.next().unwrap());
    assert!(row.starts_with("columns eth3 vepa 100"), "{stdout}");
}
