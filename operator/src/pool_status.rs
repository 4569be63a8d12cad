//! A pool's status, aggregated from the nodes it selects and what their agents report in
//! `MacvtapNodeState.status`. Pure: the reconciler hands in snapshots of its caches and which agents are stale.
//!
//! A selected node serves the pool (counts in `nodesReady`) when its agent reports fresh status (written within
//! the operator's `--agent-stale-after-seconds`) for the node state's current spec (`observedGeneration` equals
//! its `metadata.generation`), and at least one of the pool's resources there has its lower device present and up,
//! is registered with the kubelet and has healthy devices. `Ready` is true when every selected node serves it;
//! otherwise `Degraded` is true and both name the nodes and why, grouped by problem.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use macvtap_api::{MacvtapNodeState, MacvtapPool, MacvtapPoolStatus, NodeResourceStatus};

use crate::selection::{Conflict, Labels, plan_node, selector_matches};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const CONFLICT: &str = "Conflict";

/// How many node names a condition message lists before summarising the rest.
const MAX_LISTED_NODES: usize = 5;

/// One node as the status computation sees it.
pub struct NodeView<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub state: Option<&'a MacvtapNodeState>,
    /// The agent's status has not been updated for longer than the staleness threshold.
    pub stale: bool,
}

/// Why a selected node does not serve the pool, in the order messages list them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
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
    fn reason(&self) -> &'static str {
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

    fn describe(&self) -> String {
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

/// The outcome of one status computation: the status to write and the conflicts behind its Conflict condition
/// (winner pool -> nodes), for the Event.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReport {
    pub status: MacvtapPoolStatus,
    pub conflicts: Vec<(Conflict, Vec<String>)>,
}

fn list_nodes(nodes: &[String]) -> String {
    let mut s = nodes
        .iter()
        .take(MAX_LISTED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.len() > MAX_LISTED_NODES {
        s.push_str(&format!(" and {} more", nodes.len() - MAX_LISTED_NODES));
    }
    let noun = if nodes.len() == 1 { "node" } else { "nodes" };
    format!("{noun} {s}")
}

/// A condition, keeping the previous lastTransitionTime when the status did not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The entries of a node's agent status that belong to this pool.
fn pool_entries<'a>(
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

/// Computes a pool's status from every pool (for conflicts) and every node.
pub fn compute<'a>(
    pool: &MacvtapPool,
    all_pools: &[&MacvtapPool],
    nodes: impl IntoIterator<Item = NodeView<'a>>,
    now: &Time,
) -> PoolReport {
    let generation = pool.metadata.generation;
    let previous = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let name = pool.name_any();
    let resource_name = pool.resource_name();
    let cond =
        |t: &str, s: bool, r: &str, m: String| condition(previous, t, s, r, m, generation, now);
    let mut status = MacvtapPoolStatus {
        observed_generation: generation,
        ..Default::default()
    };

    if let Err(e) = selector_matches(pool.spec.node_selector.as_ref(), &Labels::new()) {
        status.conditions = vec![
            cond(
                READY,
                false,
                "InvalidNodeSelector",
                format!("spec.nodeSelector: {e}"),
            ),
            cond(
                DEGRADED,
                false,
                "InvalidNodeSelector",
                "the pool selects no nodes".into(),
            ),
            cond(
                CONFLICT,
                false,
                "NoConflict",
                "no other pool claims the same resources".into(),
            ),
        ];
        return PoolReport {
            status,
            conflicts: Vec::new(),
        };
    }

    let mut problems: BTreeMap<Problem, Vec<String>> = BTreeMap::new();
    let mut conflicts: BTreeMap<(String, String), (Conflict, Vec<String>)> = BTreeMap::new();
    for node in nodes {
        if !crate::selection::pool_selects(pool, node.labels) {
            continue;
        }
        status.nodes_matched += 1;
        let plan = plan_node(all_pools.iter().copied(), node.labels);
        if let Some(c) = plan.lost_by(&name) {
            let key = (c.winner.clone(), c.kind.reason().to_string());
            conflicts
                .entry(key)
                .or_insert_with(|| (c.clone(), Vec::new()))
                .1
                .push(node.name.to_string());
            problems
                .entry(Problem::Conflict)
                .or_default()
                .push(node.name.to_string());
            continue;
        }
        let entries = node
            .state
            .map(|s| pool_entries(pool, resource_name.as_deref(), s))
            .unwrap_or_default();
        let problem = if node.stale && !entries.is_empty() {
            Some(Problem::AgentStale)
        } else if entries.is_empty() {
            Some(Problem::AgentNotReporting)
        } else if !node.state.is_some_and(observed_current) {
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
        };
        for e in &entries {
            status.capacity += e.capacity;
            // What the kubelet can hand out: healthy devices of registered plugins of agents still reporting.
            if e.registered && !node.stale {
                status.allocatable += e.healthy;
            }
            status.allocated += e.allocated;
        }
        match problem {
            None => status.nodes_ready += 1,
            Some(p) => problems.entry(p).or_default().push(node.name.to_string()),
        }
    }

    let conflict_list: Vec<(Conflict, Vec<String>)> = conflicts.into_values().collect();
    let conflict_cond = if conflict_list.is_empty() {
        cond(
            CONFLICT,
            false,
            "NoConflict",
            "no other pool claims the same resources".into(),
        )
    } else {
        let message = conflict_list
            .iter()
            .map(|(c, nodes)| format!("{} on {}", c.kind.describe(&c.winner), list_nodes(nodes)))
            .collect::<Vec<_>>()
            .join("; ");
        cond(CONFLICT, true, conflict_list[0].0.kind.reason(), message)
    };

    let problem_message = || {
        problems
            .iter()
            .map(|(p, nodes)| format!("{} on {}", p.describe(), list_nodes(nodes)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // The reason names the problem on most nodes; ties go to the one listed first.
    let main_reason = problems
        .iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
        .map(|(p, _)| p.reason())
        .unwrap_or("AllNodesReady");
    let (ready, degraded) = if status.nodes_matched == 0 {
        let m = "the node selector matches no nodes".to_string();
        (
            cond(READY, false, "NoMatchingNodes", m.clone()),
            cond(DEGRADED, false, "NoMatchingNodes", m),
        )
    } else if problems.is_empty() {
        let m = format!(
            "{} of {} nodes serve the pool",
            status.nodes_ready, status.nodes_matched
        );
        (
            cond(READY, true, "AllNodesReady", m.clone()),
            cond(DEGRADED, false, "AllNodesReady", m),
        )
    } else {
        let m = format!(
            "{} of {} nodes serve the pool: {}",
            status.nodes_ready,
            status.nodes_matched,
            problem_message()
        );
        (
            cond(READY, false, main_reason, m.clone()),
            cond(DEGRADED, true, main_reason, m),
        )
    };
    status.conditions = vec![ready, degraded, conflict_cond];
    PoolReport {
        status,
        conflicts: conflict_list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use macvtap_api::{MacvtapMode, MacvtapNodeStateStatus, MacvtapPoolSpec};

    fn pool(name: &str, created: i64, resource_name: Option<&str>) -> MacvtapPool {
        let mut p = MacvtapPool::new(
            name,
            MacvtapPoolSpec {
                lower_device: Some("eth1".into()),
                discovery: None,
                mode: MacvtapMode::Bridge,
                capacity: 10,
                resource_name: resource_name.map(String::from),
                node_selector: None,
                lower_device_overrides: None,
            },
        );
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p.metadata.generation = Some(3);
        p
    }

    fn state(node: &str, entries: Vec<NodeResourceStatus>) -> MacvtapNodeState {
        let mut s = MacvtapNodeState::new(node, Default::default());
        s.metadata.generation = Some(2);
        s.status = Some(MacvtapNodeStateStatus {
            observed_generation: Some(2),
            resources: entries,
            ..Default::default()
        });
        s
    }

    fn entry(
        name: &str,
        present: bool,
        up: bool,
        healthy: u32,
        allocated: u32,
    ) -> NodeResourceStatus {
        NodeResourceStatus {
            name: name.into(),
            pool: Some(name.into()),
            lower_device: "eth1".into(),
            lower_device_present: present,
            lower_device_up: up,
            capacity: 10,
            healthy,
            allocated,
            registered: true,
            last_error: None,
        }
    }

    fn now(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn get<'a>(st: &'a MacvtapPoolStatus, t: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn no_matching_nodes() {
        let p = pool("p", 1, None);
        let r = compute(&p, &[&p], [], &now(100));
        assert_eq!(r.status.nodes_matched, 0);
        assert_eq!(r.status.observed_generation, Some(3));
        let ready = get(&r.status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoMatchingNodes")
        );
        assert_eq!(get(&r.status, DEGRADED).status, "False");
    }

    #[test]
    fn aggregates_agent_reports_and_names_problem_nodes() {
        let p = pool("p", 1, None);
        let l = Labels::new();
        let a = state("a", vec![entry("p", true, true, 10, 4)]);
        let b = state("b", vec![entry("p", false, false, 0, 0)]);
        let nodes = vec![
            NodeView {
                name: "a",
                labels: &l,
                state: Some(&a),
                stale: false,
            },
            NodeView {
                name: "b",
                labels: &l,
                state: Some(&b),
                stale: false,
            },
            NodeView {
                name: "c",
                labels: &l,
                state: None,
                stale: false,
            },
        ];
        let r = compute(&p, &[&p], nodes, &now(100));
        let s = &r.status;
        assert_eq!((s.nodes_matched, s.nodes_ready), (3, 1));
        assert_eq!((s.capacity, s.allocatable, s.allocated), (20, 10, 4));
        let ready = get(s, READY);
        assert_eq!(ready.status, "False");
        assert!(
            ready
                .message
                .contains("lower device eth1 missing on node b"),
            "{}",
            ready.message
        );
        assert!(
            ready.message.contains("agent not reporting on node c"),
            "{}",
            ready.message
        );
        let degraded = get(s, DEGRADED);
        assert_eq!(degraded.status, "True");
        // Tie (one node each): the problem listed first names the reason.
        assert_eq!(degraded.reason, "LowerDeviceMissing");
    }

    #[test]
    fn all_ready_and_transition_time_kept() {
        let mut p = pool("p", 1, None);
        let l = Labels::new();
        let a = state("a", vec![entry("p", true, true, 10, 0)]);
        let view = || {
            vec![NodeView {
                name: "a",
                labels: &l,
                state: Some(&a),
                stale: false,
            }]
        };
        let first = compute(&p, &[&p], view(), &now(100));
        assert_eq!(get(&first.status, READY).status, "True");
        p.status = Some(first.status.clone());
        let second = compute(&p, &[&p], view(), &now(200));
        assert_eq!(
            second.status, first.status,
            "unchanged input gives an equal status: no write"
        );
    }

    #[test]
    fn ready_needs_registration_health_the_current_spec_and_a_fresh_agent() {
        let p = pool("p", 1, None);
        let l = Labels::new();
        let fine = state("fine", vec![entry("p", true, true, 10, 1)]);
        let mut unregistered = state("unreg", vec![entry("p", true, true, 10, 0)]);
        unregistered.status.as_mut().unwrap().resources[0].registered = false;
        let no_healthy = state("sick", vec![entry("p", true, true, 0, 0)]);
        let mut outdated = state("behind", vec![entry("p", true, true, 10, 0)]);
        outdated.metadata.generation = Some(3);
        let old_news = state("gone", vec![entry("p", true, true, 10, 2)]);
        let views = [
            ("fine", &fine, false),
            ("unreg", &unregistered, false),
            ("sick", &no_healthy, false),
            ("behind", &outdated, false),
            ("gone", &old_news, true),
        ];
        let r = compute(
            &p,
            &[&p],
            views.iter().map(|(name, state, stale)| NodeView {
                name,
                labels: &l,
                state: Some(state),
                stale: *stale,
            }),
            &now(100),
        );
        let s = &r.status;
        assert_eq!((s.nodes_matched, s.nodes_ready), (5, 1));
        // The stale agent's and the unregistered plugin's healthy devices are not allocatable.
        assert_eq!((s.capacity, s.allocatable, s.allocated), (50, 20, 3));
        let ready = get(s, READY);
        assert_eq!(ready.status, "False");
        for part in [
            "1 of 5 nodes serve the pool",
            "device plugin not registered with the kubelet on node unreg",
            "no healthy devices on node sick",
            "agent has not applied the latest node state spec on node behind",
            "agent not reporting (status not updated recently) on node gone",
        ] {
            assert!(ready.message.contains(part), "{part}: {}", ready.message);
        }
        let degraded = get(s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.message.as_str()),
            ("True", ready.message.as_str())
        );
        // One node each: the first problem in message order names the reason.
        assert_eq!(degraded.reason, "NotRegistered");

        // Discovery-like: a node serves when any of its entries does.
        let mixed = state(
            "mixed",
            vec![
                entry("p", false, false, 0, 0),
                entry("p", true, true, 10, 0),
            ],
        );
        let r = compute(
            &p,
            &[&p],
            [NodeView {
                name: "mixed",
                labels: &l,
                state: Some(&mixed),
                stale: false,
            }],
            &now(100),
        );
        assert_eq!(get(&r.status, READY).status, "True");
    }

    #[test]
    fn loser_gets_conflict_naming_winner_and_nodes() {
        let old = pool("old", 1, Some("shared"));
        let young = pool("young", 2, Some("shared"));
        let l = Labels::new();
        let names: Vec<String> = (0..7).map(|i| format!("n{i}")).collect();
        let views = || {
            names.iter().map(|n| NodeView {
                name: n,
                labels: &l,
                state: None,
                stale: false,
            })
        };
        let r = compute(&young, &[&old, &young], views(), &now(5));
        let c = get(&r.status, CONFLICT);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ResourceNameConflict")
        );
        assert!(c.message.contains("\"old\""), "{}", c.message);
        assert!(
            c.message.contains("nodes n0, n1, n2, n3, n4 and 2 more"),
            "{}",
            c.message
        );
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].1.len(), 7);
        assert_eq!(get(&r.status, READY).reason, "Conflict");

        let w = compute(&old, &[&old, &young], views(), &now(5));
        assert_eq!(get(&w.status, CONFLICT).status, "False");
    }
}
