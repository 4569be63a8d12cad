//! After a pool is deleted (`--clean-stale-node-resources`): removes its `macvtap.network.kubevirt.io/<resource>`
//! from the status of the Nodes that served it, when nothing serves it there any more and nothing is allocated.
//! The kubelet keeps advertising 0 of a resource whose plugin went away, forever.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use macvtap_api::MacvtapPool;
use serde_json::json;
use tracing::{debug, info, warn};

use super::{NodeMeta, node_labels};
use crate::metrics::Metrics;
use crate::selection::plan_node;

/// Cleans up after `pool` on `nodes` in the background.
pub(super) fn spawn_clean_up(
    client: &Client,
    metrics: &Metrics,
    pool: &MacvtapPool,
    nodes: BTreeSet<String>,
    caches: (&Store<MacvtapPool>, &Store<NodeMeta>),
) {
    let Some(resource) = pool.resource_name() else {
        return;
    };
    let (client, metrics) = (client.clone(), metrics.clone());
    let (pools, node_cache) = (caches.0.clone(), caches.1.clone());
    tokio::spawn(async move {
        for node in nodes {
            // Another pool may serve the same name there now (e.g. the loser of a conflict takes over).
            let labels = node_cache
                .get(&ObjectRef::new(&node))
                .map(|n| node_labels(&n))
                .unwrap_or_default();
            let still_served = plan_node(pools.state().iter().map(|p| p.as_ref()), &labels)
                .spec
                .resources
                .iter()
                .any(|r| r.name == resource);
            if !still_served {
                remove_from_node_status(client.clone(), node, resource.clone(), metrics.clone())
                    .await;
            }
        }
    });
}

/// A JSON patch that removes the extended resource of `resource` from a Node's status, failing (on its `test`
/// op) unless the kubelet advertises 0 of it.
fn removal_patch(resource: &str) -> Result<json_patch::Patch, serde_json::Error> {
    let key = macvtap_core::extended_resource_name(resource)
        .replace('~', "~0")
        .replace('/', "~1");
    serde_json::from_value(json!([
        {"op": "test", "path": format!("/status/allocatable/{key}"), "value": "0"},
        {"op": "remove", "path": format!("/status/allocatable/{key}")},
        {"op": "remove", "path": format!("/status/capacity/{key}")},
    ]))
}

async fn remove_from_node_status(client: Client, node: String, resource: String, metrics: Metrics) {
    let patch = match removal_patch(&resource) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "building node status patch");
            return;
        }
    };
    match Api::<Node>::all(client)
        .patch_status(&node, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            metrics.wrote("nodes", "patch-status");
            info!(%node, %resource, "removed stale extended resource from node status");
        }
        // Not there, or still advertised/allocated (the test op failed): leave it.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 404 || e.code == 409 => {
            debug!(%node, %resource, reason = %e.message, "node status left alone");
        }
        Err(e) => warn!(%node, %resource, error = %e, "cleaning node status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_patch_escapes_the_resource_name_and_tests_for_zero_first() {
        let patch = serde_json::to_value(removal_patch("data").unwrap()).unwrap();
        let key = "macvtap.network.kubevirt.io~1data";
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": format!("/status/allocatable/{key}"), "value": "0"},
                {"op": "remove", "path": format!("/status/allocatable/{key}")},
                {"op": "remove", "path": format!("/status/capacity/{key}")},
            ])
        );
    }
}
