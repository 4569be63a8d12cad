//! The `poolstatus` reconciler: per pool, the status computed by [`crate::pool_status`] from the caches, written
//! by server-side apply when it changed, and an Event when a conflict appears or ends.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use serde_json::json;
use tracing::warn;

use super::{Context, Error, FIELD_MANAGER, node_labels};
use crate::metrics::POOL_STATUS;
use crate::pool_status::{self, NodeView};
use crate::selection::Labels;

fn now_seconds() -> Time {
    // The API server keeps seconds; computing with seconds keeps cached and computed conditions comparable.
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

pub(super) async fn reconcile(pool: Arc<MacvtapPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(_timer) = ctx.begin(POOL_STATUS, pool.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let name = pool.name_any();
    let pools = ctx.pools.state();
    let all: Vec<&MacvtapPool> = pools.iter().map(|p| p.as_ref()).collect();
    let nodes = ctx.nodes.state();
    let threshold = ctx.settings.agent_stale_after;
    let mut next_check = ctx.settings.resync;
    let seen: Vec<(String, Labels, Option<Arc<MacvtapNodeState>>, bool)> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let state = ctx.states.get(&ObjectRef::new(&name));
            let age = state
                .as_ref()
                .filter(|s| s.status.is_some())
                .and_then(|_| ctx.heartbeats.age(&name));
            let stale = age.is_some_and(|a| a > threshold);
            if let Some(a) = age.filter(|_| !stale) {
                // Look again right after this agent would turn stale.
                next_check = next_check.min(threshold - a + Duration::from_millis(500));
            }
            (name, node_labels(n), state, stale)
        })
        .collect();
    let views = seen.iter().map(|(name, labels, state, stale)| NodeView {
        name,
        labels,
        state: state.as_deref(),
        stale: *stale,
    });
    let report = pool_status::compute(&pool, &all, views, &now_seconds());

    if pool.status.as_ref() != Some(&report.status) {
        let body = json!({
            "apiVersion": MacvtapPool::api_version(&()),
            "kind": MacvtapPool::kind(&()),
            "status": report.status,
        });
        Api::<MacvtapPool>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|source| Error::PoolStatus {
                name: name.clone(),
                source,
            })?;
        ctx.metrics.wrote("macvtappools", "apply-status");
    }

    let event = ctx
        .published_conflicts
        .next(&name, pool.status.as_ref(), &report.status);
    if let Some(event) = event {
        // An Event is informational: a failure is logged, never retried into a status flap.
        match ctx.recorder.publish(&event, &pool.object_ref(&())).await {
            Ok(()) => ctx.metrics.wrote("events", "create"),
            Err(e) => warn!(pool = %name, error = %e, "publishing event"),
        }
    }
    ctx.failures.succeeded(POOL_STATUS, &name);
    Ok(Action::requeue(next_check))
}
