//! Whether one selected node serves a pool, and if not, why: from the node state's agent status.

use kube::ResourceExt;
use macvtap_api::{MacvtapNodeState, MacvtapPool, NodeResourceStatus};

/// Why a selected node does not serve the pool, in the order messages list them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Problem {
    /// An older pool claims the resource name or lower device here.
    Conflict,
    /// The agent reports the lower device absent.
    LowerDeviceMissing(String),
    /// The lower device exists but is down.
    LowerDeviceDown(String),
    /// The device plugin is not registered with the kubelet.
    NotRegistered,
    /// Registered, lower device up, yet no device is healthy.
    NoHealthyDevices,
    /// The agent reports on an older spec of the node state than the current one (not caught up yet).
    AgentOutdated,
    /// The agent's status has not been updated within the staleness threshold (agent gone, or cut off from the API
    /// server): what it last said no longer counts.
    AgentStale,
    /// No status from the agent for this pool's resource (agent not running, or not caught up yet).
    AgentNotReporting,
}

impl Problem {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::Conflict => "Conflict",
            Self::LowerDeviceMissing(_) => "LowerDeviceMissing",
            Self::LowerDeviceDown(_) => "LowerDeviceDown",
            Self::NotRegistered => "NotRegistered",
            Self::NoHealthyDevices => "NoHealthyDevices",
            Self::AgentOutdated => "AgentOutdated",
            Self::AgentStale | Self::AgentNotReporting => "AgentNotReporting",
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::Conflict => "another pool takes precedence".into(),
            Self::LowerDeviceMissing(d) => format!("lower device {d} missing"),
            Self::LowerDeviceDown(d) => format!("lower device {d} down"),
            Self::NotRegistered => "device plugin not registered with the kubelet".into(),
            Self::NoHealthyDevices => "no healthy devices".into(),
            Self::AgentOutdated => "agent has not applied the latest node state spec".into(),
            Self::AgentStale => "agent not reporting (status not updated recently)".into(),
            Self::AgentNotReporting => "agent not reporting".into(),
        }
    }
}

/// Why one of the agent's entries for the pool does not serve it; `None` when it does.
fn entry_problem(e: &NodeResourceStatus) -> Option<Problem> {
    if !e.lower_device_present {
        Some(Problem::LowerDeviceMissing(e.lower_device.clone()))
    } else if !e.lower_device_up {
        Some(Problem::LowerDeviceDown(e.lower_device.clone()))
    } else if !e.registered {
        Some(Problem::NotRegistered)
    } else if e.healthy == 0 {
        Some(Problem::NoHealthyDevices)
    } else {
        None
    }
}

/// The agent's status describes the node state's current spec.
fn observed_current(state: &MacvtapNodeState) -> bool {
    state
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == state.metadata.generation)
}

/// The entries of a node's agent status that belong to this pool.
pub(super) fn pool_entries<'a>(
    pool: &MacvtapPool,
    resource_name: Option<&str>,
    state: &'a MacvtapNodeState,
) -> Vec<&'a NodeResourceStatus> {
    let pool_name = pool.name_any();
    let Some(status) = &state.status else {
        return Vec::new();
    };
    status
        .resources
        .iter()
        .filter(|r| match resource_name {
            // An explicit resource: its name, from this pool (agents that do not say which pool are trusted).
            Some(name) => r.name == name && r.pool.as_deref().is_none_or(|p| p == pool_name),
            // Discovery: every link the agent found for this pool.
            None => r.pool.as_deref() == Some(pool_name.as_str()),
        })
        .collect()
}

/// Why a selected node that does not lose a conflict does not serve the pool, from its agent's `entries` for the
/// pool; `None` when it serves it.
pub(super) fn node_problem(
    state: Option<&MacvtapNodeState>,
    entries: &[&NodeResourceStatus],
    stale: bool,
) -> Option<Problem> {
    if stale && !entries.is_empty() {
        Some(Problem::AgentStale)
    } else if entries.is_empty() {
        Some(Problem::AgentNotReporting)
    } else if !state.is_some_and(observed_current) {
        Some(Problem::AgentOutdated)
    } else {
        // The node serves the pool if any of its entries does (discovery: any discovered link); otherwise the
        // first problem in message order names it.
        let problems: Vec<Option<Problem>> = entries.iter().map(|e| entry_problem(e)).collect();
        if problems.iter().any(Option::is_none) {
            None
        } else {
            problems.into_iter().flatten().min()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{node_state, resource_status};

    fn entry(present: bool, up: bool, registered: bool, healthy: u32) -> NodeResourceStatus {
        NodeResourceStatus {
            registered,
            ..resource_status("p", present, up, healthy, 0)
        }
    }

    #[test]
    fn one_nodes_verdict() {
        let current = node_state("n", Vec::new());
        let mut behind = current.clone();
        behind.metadata.generation = Some(3);
        let fine = entry(true, true, true, 3);
        let verdict =
            |entries: &[&NodeResourceStatus], stale| node_problem(Some(&current), entries, stale);
        assert_eq!(verdict(&[&fine], false), None);
        assert_eq!(verdict(&[&fine], true), Some(Problem::AgentStale));
        assert_eq!(
            verdict(&[], true),
            Some(Problem::AgentNotReporting),
            "nothing said at all"
        );
        assert_eq!(
            node_problem(None, &[], false),
            Some(Problem::AgentNotReporting)
        );
        assert_eq!(
            node_problem(Some(&behind), &[&fine], false),
            Some(Problem::AgentOutdated)
        );
        assert_eq!(
            node_problem(None, &[&fine], false),
            Some(Problem::AgentOutdated)
        );

        let eth1 = || "eth1".to_string();
        let missing = entry(false, false, false, 0);
        let down = entry(true, false, false, 0);
        let unregistered = entry(true, true, false, 3);
        let sick = entry(true, true, true, 0);
        assert_eq!(
            verdict(&[&missing], false),
            Some(Problem::LowerDeviceMissing(eth1()))
        );
        assert_eq!(
            verdict(&[&down], false),
            Some(Problem::LowerDeviceDown(eth1()))
        );
        assert_eq!(
            verdict(&[&unregistered], false),
            Some(Problem::NotRegistered)
        );
        assert_eq!(verdict(&[&sick], false), Some(Problem::NoHealthyDevices));
        assert_eq!(
            verdict(&[&sick, &down], false),
            Some(Problem::LowerDeviceDown(eth1())),
            "the first in message order"
        );
        assert_eq!(
            verdict(&[&sick, &fine], false),
            None,
            "any serving entry serves"
        );
    }
}
