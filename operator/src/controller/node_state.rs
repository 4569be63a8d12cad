//! The `nodestate` reconciler: per Node, the desired `MacvtapNodeState.spec` (its pools, from
//! [`crate::selection::plan_node`]), written when the cached object differs. Triggered by node label changes, pool
//! spec changes (only the nodes the old or new pool selects, or whose state names the pool) and spec changes of
//! node states made by others; see [`super::triggers`].

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapNodeStateSpec};
use serde_json::json;
use tracing::debug;

use super::{Context, Error, FIELD_MANAGER, MANAGED_BY_LABEL, NodeMeta, node_labels};
use crate::metrics::{Metrics, NODE_STATE};
use crate::selection::plan_node;

/// Resource label of node state writes in metrics.
const NODE_STATES: &str = "macvtapnodestates";

pub(super) async fn reconcile(node: Arc<NodeMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(_timer) = ctx.begin(NODE_STATE, node.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let name = node.name_any();
    let pools = ctx.pools.state();
    let plan = plan_node(pools.iter().map(|p| p.as_ref()), &node_labels(&node));
    let owner = owner_reference(&node);
    let current = ctx.states.get(&ObjectRef::new(&name));
    let up_to_date = current.as_ref().is_some_and(|s| {
        s.metadata.deletion_timestamp.is_none()
            && s.spec == plan.spec
            && s.owner_references().iter().any(|o| o == &owner)
    });
    if !up_to_date {
        let api = Api::<MacvtapNodeState>::all(ctx.client.clone());
        write_spec(
            &api,
            &ctx.metrics,
            &name,
            &owner,
            &plan.spec,
            current.is_some(),
        )
        .await
        .map_err(|source| Error::WriteNodeState {
            name: name.clone(),
            source,
        })?;
        debug!(node = %name, resources = ?plan.spec.resources, "node state written");
    }
    ctx.failures.succeeded(NODE_STATE, &name);
    Ok(Action::requeue(ctx.settings.resync))
}

fn owner_reference(node: &NodeMeta) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name_any(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        // blockOwnerDeletion would need update on nodes/finalizers; the Node must never wait for us.
        block_owner_deletion: None,
    }
}

/// The one write path of a node state's spec (with its owner reference and label). Counted in metrics as `apply`
/// (server-side apply) and `merge-patch`.
///
/// Server-side apply first: it creates the object and keeps the write minimal. It cannot always make the spec
/// exactly ours, so a merge patch, which replaces the lists whole, follows when
/// - the apply left items another field manager added (apply keeps another manager's list items), or
/// - the object exists and the spec must become empty: apply would remove all of our items and leave `spec`
///   empty, which the API server prunes and then rejects as missing. The apply is skipped then.
async fn write_spec(
    api: &Api<MacvtapNodeState>,
    metrics: &Metrics,
    name: &str,
    owner: &OwnerReference,
    spec: &MacvtapNodeStateSpec,
    exists: bool,
) -> Result<(), kube::Error> {
    let metadata = json!({
        "name": name,
        "labels": { MANAGED_BY_LABEL: FIELD_MANAGER },
        "ownerReferences": [owner],
    });
    let empty = spec.resources.is_empty() && spec.discovery.is_none();
    if !(empty && exists) {
        let body = json!({
            "apiVersion": MacvtapNodeState::api_version(&()),
            "kind": MacvtapNodeState::kind(&()),
            "metadata": metadata,
            "spec": spec,
        });
        let applied = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        metrics.wrote(NODE_STATES, "apply");
        if applied.spec == *spec {
            return Ok(());
        }
    }
    let body = json!({
        "metadata": metadata,
        "spec": { "resources": spec.resources, "discovery": spec.discovery },
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&body)).await?;
    metrics.wrote(NODE_STATES, "merge-patch");
    Ok(())
}
