//! Server-side apply of arbitrary YAML (the files in config/, test manifests) through API discovery.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "macvtap-e2e";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("parsing YAML: {0}")]
    Yaml(String),
    #[error("document {0} has no apiVersion/kind")]
    NoKind(usize),
    #[error("{kind} {name}: {source}")]
    Kube {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Parses a multi-document YAML text into objects.
pub fn parse_objects(yaml: &str) -> Result<Vec<DynamicObject>, ApplyError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ApplyError::Yaml(e.to_string()))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).map_err(|e| ApplyError::Yaml(e.to_string())))
        .collect()
}

/// Applies each object (namespaced ones into their namespace, or `default_namespace`), forcing ownership.
pub async fn apply_objects(
    client: &Client,
    objects: &[DynamicObject],
    default_namespace: &str,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let mut applied = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        let types = obj.types.as_ref().ok_or(ApplyError::NoKind(i))?;
        let gvk = GroupVersionKind::try_from(types).map_err(|_| ApplyError::NoKind(i))?;
        let name = obj.name_any();
        let err = |source| ApplyError::Kube {
            kind: gvk.kind.clone(),
            name: name.clone(),
            source,
        };
        let (ar, caps) = pinned_kind(client, &gvk).await.map_err(err)?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => {
                let ns = obj
                    .namespace()
                    .unwrap_or_else(|| default_namespace.to_string());
                Api::namespaced_with(client.clone(), &ns, &ar)
            }
        };
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        applied.push(
            api.patch(&name, &pp, &Patch::Apply(obj))
                .await
                .map_err(err)?,
        );
    }
    Ok(applied)
}

/// Reads and applies a YAML file.
pub async fn apply_file(
    client: &Client,
    path: &std::path::Path,
    default_namespace: &str,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApplyError::Yaml(format!("{}: {e}", path.display())))?;
    apply_objects(client, &parse_objects(&text)?, default_namespace).await
}
