//! The `nodestate-gc` reconciler: deletes a MacvtapNodeState whose Node is gone. Without kube-controller-manager
//! there is no owner-reference garbage collection, and a Node delete must not wait for one.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use macvtap_api::MacvtapNodeState;
use tracing::info;

use super::{Context, Error};
use crate::metrics::NODE_STATE_GC;

pub(super) async fn reconcile(
    state: Arc<MacvtapNodeState>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = state.name_any();
    let _timer = ctx.metrics.reconcile_started(NODE_STATE_GC, &name);
    ctx.wait_synced().await?;
    if ctx.nodes.get(&ObjectRef::new(&name)).is_some() {
        return Ok(Action::await_change());
    }
    let dp = DeleteParams {
        // Only the object we looked at: a state recreated for a new Node of the same name stays.
        preconditions: Some(Preconditions {
            uid: state.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match Api::<MacvtapNodeState>::all(ctx.client.clone())
        .delete(&name, &dp)
        .await
    {
        Ok(_) => {
            ctx.metrics.wrote("macvtapnodestates", "delete");
            info!(node = %name, "node gone; node state deleted");
        }
        // Already gone, or replaced by a newer object: nothing of ours left to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(source) => return Err(Error::DeleteNodeState { name, source }),
    }
    ctx.failures.succeeded(NODE_STATE_GC, &name);
    Ok(Action::await_change())
}
