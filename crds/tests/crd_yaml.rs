//! The committed CRD YAML (crds/yaml and the chart's crds/) is exactly what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crd_yaml_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let generated = macvtap_api::crd_yaml_files();
    assert_eq!(generated.len(), 2);
    for dir in macvtap_api::CRD_OUTPUT_DIRS {
        for (name, body) in &generated {
            let path = root.join(dir).join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -p macvtap-api --bin crdgen`",
                    path.display()
                )
            });
            assert!(
                committed == *body,
                "{} is stale: run `cargo run -p macvtap-api --bin crdgen` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn generated_yaml_parses_back_into_the_crds() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    for ((_, body), crd) in macvtap_api::crd_yaml_files()
        .iter()
        .zip(macvtap_api::crds())
    {
        let parsed: CustomResourceDefinition = serde_saphyr::from_str(body).unwrap();
        assert_eq!(parsed, crd);
        assert_eq!(parsed.spec.scope, "Cluster");
        assert_eq!(parsed.spec.group, macvtap_api::GROUP);
        let version = &parsed.spec.versions[0];
        assert_eq!(version.name, macvtap_api::VERSION);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "status subresource"
        );
    }
}
