//! The repository's CRDs on the API server: applied server-side, then waited for until `Established`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tracing::debug;

use super::{ControlPlane, Error, FIELD_MANAGER, Result};

const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

impl ControlPlane {
    /// Applies every `*.yaml` file of the repo's `crds/yaml/` (server-side apply) and waits until each CRD is
    /// `Established`. Returns the CRD names.
    pub async fn apply_crds(&self) -> Result<Vec<String>> {
        let dir = crd_yaml_dir();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| Error::CrdFile {
                path: dir.clone(),
                reason: format!("{e} (generate them with `cargo run -p macvtap-api --bin crdgen`)"),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::CrdFile {
                path: dir,
                reason: "no *.yaml files".into(),
            });
        }
        let mut crds = Vec::new();
        for path in &files {
            let text = fs::read_to_string(path).map_err(|e| Error::CrdFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            crds.extend(parse_crds(&text).map_err(|reason| Error::CrdFile {
                path: path.clone(),
                reason,
            })?);
        }
        apply_crd_objects(self.admin_client(), crds).await
    }

    /// Applies the CRDs of a (multi-document) YAML text and waits until they are `Established`.
    pub async fn apply_crd_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let crds = parse_crds(yaml).map_err(|reason| Error::CrdFile {
            path: "<inline>".into(),
            reason,
        })?;
        apply_crd_objects(self.admin_client(), crds).await
    }
}

/// `crds/yaml/` of this repository.
pub fn crd_yaml_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml")
}

fn parse_crds(yaml: &str) -> std::result::Result<Vec<CustomResourceDefinition>, String> {
    let docs: Vec<Option<CustomResourceDefinition>> =
        serde_saphyr::from_str_multiple(yaml).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().flatten().collect())
}

async fn apply_crd_objects(
    client: Client,
    crds: Vec<CustomResourceDefinition>,
) -> Result<Vec<String>> {
    let api = Api::<CustomResourceDefinition>::all(client);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd)).await?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
            Ok(Ok(_)) => debug!(crd = %name, "established"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(Error::CrdNotEstablished {
                    name: name.clone(),
                    timeout: CRD_ESTABLISHED_TIMEOUT,
                });
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_crd_yaml_with_comments_and_empty_documents() {
        let yaml = r#"# generated
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: as.example.com
spec:
  group: example.com
  names: {kind: A, plural: as}
  scope: Cluster
  versions: []
---
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: bs.example.com
spec:
  group: example.com
  names: {kind: B, plural: bs}
  scope: Namespaced
  versions: []
"#;
        let names: Vec<_> = parse_crds(yaml)
            .unwrap()
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["as.example.com", "bs.example.com"]);
    }
}
