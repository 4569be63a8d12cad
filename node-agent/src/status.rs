//! `MacvtapNodeState.status`, written by this node's agent through the status subresource with server-side apply
//! (field manager `macvtap-agent`): at most once per `min_interval` when something changed, and at least once per
//! `heartbeat` (a fresh `lastUpdateTime`) so the operator can tell a running agent from a gone one.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use macvtap_api::{
    MacvtapNodeState, MacvtapNodeStateStatus, NodeCleanupStatus, NodeResourceStatus,
};
use macvtap_core::ResourceConfig;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cleanup::CleanupReport;
use crate::config::ConfigState;
use crate::resource_state::ResourceStateMap;

pub const FIELD_MANAGER: &str = "macvtap-agent";

/// Builds the status from what the agent serves and observes (pure, without the timestamp).
pub fn build(
    resources: &BTreeMap<String, ResourceConfig>,
    runtime: &ResourceStateMap,
    cleanup: &CleanupReport,
    config: &ConfigState,
) -> MacvtapNodeStateStatus {
    let config_error = config.error.clone();
    let held = cleanup.held.as_ref();
    MacvtapNodeStateStatus {
        observed_generation: config.generation,
        agent_version: Some(crate::VERSION.to_string()),
        resources: resources
            .values()
            .map(|r| {
                let rt = runtime.get(&r.name).cloned().unwrap_or_default();
                NodeResourceStatus {
                    name: r.name.clone(),
                    pool: r.pool.clone(),
                    lower_device: r.lower_device.clone(),
                    lower_device_present: rt.lower_present,
                    lower_device_up: rt.lower_up,
                    capacity: r.capacity,
                    healthy: rt.healthy,
                    allocated: held
                        .and_then(|h| h.get(&r.name))
                        .map(|s| s.len() as u32)
                        .unwrap_or(0),
                    registered: rt.registered,
                    last_error: rt.last_error.or_else(|| config_error.clone()),
                }
            })
            .collect(),
        cleanup: Some(NodeCleanupStatus {
            skipped: cleanup.skipped.is_some(),
            message: cleanup.skipped.clone(),
        }),
        last_update_time: None,
    }
}

pub struct StatusWriter {
    pub client: kube::Client,
    pub node: String,
    pub states: watch::Receiver<ResourceStateMap>,
    pub resources: watch::Receiver<BTreeMap<String, ResourceConfig>>,
    pub config: watch::Receiver<ConfigState>,
    pub cleanup: watch::Receiver<CleanupReport>,
    pub min_interval: Duration,
    pub heartbeat: Duration,
}

impl StatusWriter {
    pub async fn run(mut self, cancel: CancellationToken) {
        let api = Api::<MacvtapNodeState>::all(self.client.clone());
        let mut last_written: Option<MacvtapNodeStateStatus> = None;
        // When the status must be written even if unchanged: the heartbeat, or a retry after a failed write.
        let mut due = Instant::now();
        loop {
            let status = build(
                &self.resources.borrow_and_update(),
                &self.states.borrow_and_update(),
                &self.cleanup.borrow_and_update(),
                &self.config.borrow_and_update(),
            );
            if last_written.as_ref() != Some(&status) || Instant::now() >= due {
                let mut body = status.clone();
                body.last_update_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
                let patch = serde_json::json!({
                    "apiVersion": MacvtapNodeState::api_version(&()),
                    "kind": MacvtapNodeState::kind(&()),
                    "status": body,
                });
                match api
                    .patch_status(
                        &self.node,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        last_written = Some(status);
                        due = Instant::now() + self.heartbeat;
                    }
                    Err(e) => {
                        match e {
                            kube::Error::Api(e) if e.code == 404 => {
                                tracing::debug!(node = %self.node, "no MacvtapNodeState yet; status not written")
                            }
                            e => {
                                tracing::warn!(node = %self.node, "writing MacvtapNodeState status: {e}")
                            }
                        }
                        // Retried soon, whether or not anything changes.
                        last_written = None;
                        due = Instant::now() + self.heartbeat.min(Duration::from_secs(5));
                    }
                }
            }
            // Rate limit: wait for a change or the due time, then let a burst settle.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.states.changed() => {}
                _ = self.resources.changed() => {}
                _ = self.config.changed() => {}
                _ = self.cleanup.changed() => {}
                _ = tokio::time::sleep_until(due) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.min_interval.min(self.heartbeat)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource_state::ResourceState;
    use macvtap_core::MacvtapMode;

    #[test]
    fn status_combines_config_runtime_and_pod_resources() {
        let resources: BTreeMap<_, _> = [("dp", Some("pool-a")), ("eth1", None)]
            .into_iter()
            .map(|(n, pool)| {
                (
                    n.to_string(),
                    ResourceConfig {
                        name: n.into(),
                        lower_device: "eth1".into(),
                        mode: MacvtapMode::Bridge,
                        capacity: 4,
                        pool: pool.map(Into::into),
                    },
                )
            })
            .collect();
        let runtime: BTreeMap<_, _> = [(
            "dp".to_string(),
            ResourceState {
                serving: true,
                registered: true,
                healthy: 4,
                lower_present: true,
                lower_up: true,
                last_error: None,
            },
        )]
        .into();
        let cleanup = CleanupReport {
            held: Some(
                [(
                    "dp".to_string(),
                    ["dpMvp0".to_string(), "dpMvp3".to_string()].into(),
                )]
                .into(),
            ),
            skipped: Some("PodResources unreachable".into()),
        };
        let config = ConfigState {
            config: None,
            generation: Some(7),
            error: Some("bad update".into()),
        };
        let s = build(&resources, &runtime, &cleanup, &config);
        assert_eq!(s.observed_generation, Some(7));
        assert_eq!(s.agent_version.as_deref(), Some(crate::VERSION));
        let dp = &s.resources[0];
        assert_eq!(
            (
                dp.name.as_str(),
                dp.pool.as_deref(),
                dp.capacity,
                dp.healthy,
                dp.allocated
            ),
            ("dp", Some("pool-a"), 4, 4, 2)
        );
        assert!(dp.registered && dp.lower_device_present && dp.lower_device_up);
        // A rejected configuration update shows on every resource until a good one arrives.
        assert_eq!(dp.last_error.as_deref(), Some("bad update"));
        let other = &s.resources[1];
        assert!(!other.registered && other.healthy == 0 && other.allocated == 0);
        // Skipped cleanup is visible, with the reason.
        let c = s.cleanup.as_ref().unwrap();
        assert!(c.skipped);
        assert_eq!(c.message.as_deref(), Some("PodResources unreachable"));
    }
}
