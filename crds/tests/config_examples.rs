//! Every file in config/ parses, and each kind of example means what it says.

use std::path::{Path, PathBuf};

use macvtap_api::{MacvtapMode, MacvtapPool, legacy};
use serde_json::Value;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

fn documents() -> Vec<(PathBuf, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("config");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    assert!(files.len() >= 16, "config/ lost examples: {files:?}");
    files
        .into_iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            docs.into_iter().map(move |d| (f.clone(), d))
        })
        .collect()
}

fn pod_limits(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["resources"]["limits"]
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| k)
        })
        .collect()
}

#[test]
fn every_example_parses_and_is_meaningful() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (file, doc) in documents() {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", file.display()))
            .to_string();
        assert!(
            doc["apiVersion"].is_string(),
            "{}: no apiVersion",
            file.display()
        );
        assert!(
            doc["metadata"]["name"].is_string(),
            "{}: no name",
            file.display()
        );
        *kinds.entry(kind.clone()).or_default() += 1;
        match kind.as_str() {
            "ConfigMap" => {
                let conf = doc["data"][legacy::ENV_VAR].as_str().unwrap();
                legacy::parse(conf).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
            "MacvtapPool" => {
                let pool: MacvtapPool = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                kube::core::cel::validate_cel(&pool)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
            "NetworkAttachmentDefinition" => {
                let config: Value = serde_json::from_str(doc["spec"]["config"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{}: spec.config: {e}", file.display()));
                assert_eq!(config["type"], "macvtap", "{}", file.display());
                let resource = doc["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"]
                    .as_str()
                    .unwrap();
                assert!(
                    resource.starts_with("macvtap.network.kubevirt.io/"),
                    "{}",
                    file.display()
                );
                if config["ipam"]["type"] == "kube-ovn" {
                    let provider = config["ipam"]["provider"].as_str().unwrap();
                    let ns = doc["metadata"]["namespace"].as_str().unwrap();
                    assert_eq!(
                        provider,
                        format!("{}.{ns}", doc["metadata"]["name"].as_str().unwrap())
                    );
                }
            }
            "Pod" => {
                let limits = pod_limits(&doc);
                assert!(
                    limits
                        .iter()
                        .any(|l| l.starts_with("macvtap.network.kubevirt.io/")),
                    "{}: pod asks for no macvtap resource",
                    file.display()
                );
            }
            "Subnet" => assert_eq!(doc["spec"]["provider"], "p4p1.default"),
            other => panic!("{}: unexpected kind {other}", file.display()),
        }
    }
    for k in [
        "ConfigMap",
        "MacvtapPool",
        "NetworkAttachmentDefinition",
        "Pod",
        "Subnet",
    ] {
        assert!(kinds.contains_key(k), "no {k} example: {kinds:?}");
    }
}

#[test]
fn pools_match_the_original_config_maps() {
    let docs = documents();
    let find = |suffix: &str| {
        docs.iter()
            .find(|(f, _)| f.ends_with(suffix))
            .unwrap()
            .1
            .clone()
    };
    let explicit = legacy::parse(
        find("original/deviceplugin-configmap.yaml")["data"][legacy::ENV_VAR]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let pool: MacvtapPool = serde_json::from_value(find("pools/dataplane.yaml")).unwrap();
    let r = &explicit.resources[0];
    assert_eq!(pool.resource_name().as_deref(), Some(r.name.as_str()));
    assert_eq!(
        pool.spec.lower_device.as_deref(),
        Some(r.lower_device.as_str())
    );
    assert_eq!((pool.spec.mode, pool.spec.capacity), (r.mode, r.capacity));

    let discovery = legacy::parse(
        find("original/deviceplugin-configmap-discovery.yaml")["data"][legacy::ENV_VAR]
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .discovery
    .unwrap();
    let pool: MacvtapPool = serde_json::from_value(find("pools/discovery.yaml")).unwrap();
    assert!(pool.spec.discovery.is_some());
    assert_eq!(
        (pool.spec.mode, pool.spec.capacity),
        (discovery.mode, discovery.capacity)
    );
    assert_eq!(discovery.mode, MacvtapMode::Bridge);
}

#[test]
fn pod_with_mac_selects_the_dataplane_network() {
    let docs = documents();
    let pod = &docs
        .iter()
        .find(|(f, _)| f.ends_with("original/pod-with-mac.yaml"))
        .unwrap()
        .1;
    let sel: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sel[0]["name"], "dataplane");
    assert_eq!(sel[0]["mac"], "02:23:45:67:89:01");
}
