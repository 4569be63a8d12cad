//! What `/healthz` and `/readyz` say, computed from the agent's live state.
//!
//! - Live (`/healthz`): the agent can do its job: the netlink link monitor is subscribed (else health and
//!   discovery go stale), and every resource it should serve has its device plugin server up. A failing liveness
//!   probe restarts the agent, which is what fixes a stuck socket or a lost subscription the agent could not
//!   recover from by itself (it tries first: resubscribing, serving again).
//! - Ready (`/readyz`): live, a configuration is loaded, and every resource it should serve is registered with the
//!   kubelet. A kubelet that is down makes the agent unready, not unhealthy.

use std::collections::BTreeMap;

use macvtap_core::ResourceConfig;
use macvtap_telemetry::admin::{Probes, from_problems};
use tokio::sync::watch;

use crate::resource_state::{ResourceState, ResourceStateMap};

/// Why the agent is not live: one line per problem; empty when it is.
pub fn liveness_problems(
    netlink_subscribed: bool,
    wanted: &BTreeMap<String, ResourceConfig>,
    runtime: &ResourceStateMap,
) -> Vec<String> {
    let mut out = Vec::new();
    if !netlink_subscribed {
        out.push("netlink link monitor: not subscribed to link events (resubscribing)".to_string());
    }
    out.extend(resources_short_of(
        wanted,
        runtime,
        |r| r.serving,
        "device plugin server not serving",
        "not started yet",
    ));
    out
}

/// One line per wanted resource whose state lacks `met`, with its last error (or `before`, when it has none yet).
fn resources_short_of(
    wanted: &BTreeMap<String, ResourceConfig>,
    runtime: &ResourceStateMap,
    met: impl Fn(&ResourceState) -> bool,
    what: &str,
    before: &str,
) -> Vec<String> {
    wanted
        .keys()
        .filter_map(|name| {
            let rt = runtime.get(name);
            (!rt.is_some_and(&met)).then(|| {
                let why = rt
                    .and_then(|r| r.last_error.clone())
                    .unwrap_or_else(|| before.into());
                format!("resource {name}: {what}: {why}")
            })
        })
        .collect()
}

/// Why the agent is not ready: liveness problems, no configuration yet, resources not registered with the kubelet.
pub fn readiness_problems(
    config_loaded: bool,
    netlink_subscribed: bool,
    wanted: &BTreeMap<String, ResourceConfig>,
    runtime: &ResourceStateMap,
) -> Vec<String> {
    let mut out = liveness_problems(netlink_subscribed, wanted, runtime);
    if !config_loaded {
        out.push("no configuration loaded yet".to_string());
    }
    out.extend(resources_short_of(
        wanted,
        runtime,
        |r| r.registered,
        "not registered with the kubelet",
        "waiting for the kubelet",
    ));
    out
}

/// The live inputs of the probes.
#[derive(Clone)]
pub struct Health {
    /// Every served resource's state.
    pub states: watch::Receiver<ResourceStateMap>,
    pub netlink_subscribed: watch::Receiver<bool>,
    /// The resources the agent should serve.
    pub wanted: watch::Receiver<BTreeMap<String, ResourceConfig>>,
    /// A configuration has been loaded and applied.
    pub config_loaded: watch::Receiver<bool>,
}

impl Health {
    pub fn liveness(&self) -> Vec<String> {
        liveness_problems(
            *self.netlink_subscribed.borrow(),
            &self.wanted.borrow(),
            &self.states.borrow(),
        )
    }

    pub fn readiness(&self) -> Vec<String> {
        readiness_problems(
            *self.config_loaded.borrow(),
            *self.netlink_subscribed.borrow(),
            &self.wanted.borrow(),
            &self.states.borrow(),
        )
    }
}

/// `/healthz` and `/readyz`: 200 "ok", or 503 with one line per problem.
impl Probes for Health {
    fn live(&self) -> Result<(), String> {
        from_problems(self.liveness())
    }

    fn ready(&self) -> Result<(), String> {
        from_problems(self.readiness())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource_state::ResourceState;

    fn res(name: &str) -> (String, ResourceConfig) {
        (
            name.to_string(),
            ResourceConfig {
                name: name.into(),
                lower_device: "eth1".into(),
                mode: Default::default(),
                capacity: 1,
                pool: None,
            },
        )
    }

    fn rt(serving: bool, registered: bool, err: Option<&str>) -> ResourceState {
        ResourceState {
            serving,
            registered,
            last_error: err.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn probes_name_every_problem() {
        let wanted: BTreeMap<_, _> = [res("a"), res("b")].into();
        let mut runtime: BTreeMap<String, ResourceState> =
            [("a".to_string(), rt(true, true, None))].into();
        // b has not started: not live, not ready.
        let live = liveness_problems(true, &wanted, &runtime);
        assert_eq!(
            live,
            ["resource b: device plugin server not serving: not started yet"]
        );
        runtime.insert(
            "b".into(),
            rt(true, false, Some("dialing kubelet.sock: refused")),
        );
        assert!(liveness_problems(true, &wanted, &runtime).is_empty());
        assert_eq!(
            readiness_problems(true, true, &wanted, &runtime),
            ["resource b: not registered with the kubelet: dialing kubelet.sock: refused"]
        );
        runtime.insert("b".into(), rt(true, true, None));
        assert!(readiness_problems(true, true, &wanted, &runtime).is_empty());
        // A lost netlink subscription: neither live nor ready.
        assert_eq!(liveness_problems(false, &wanted, &runtime).len(), 1);
        assert_eq!(readiness_problems(true, false, &wanted, &runtime).len(), 1);
        // Nothing loaded yet: live, not ready; nothing to serve: ready.
        let none = BTreeMap::new();
        assert!(liveness_problems(true, &none, &runtime).is_empty());
        assert_eq!(
            readiness_problems(false, true, &none, &runtime),
            ["no configuration loaded yet"]
        );
        assert!(readiness_problems(true, true, &none, &runtime).is_empty());
    }
}
