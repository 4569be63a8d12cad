//! A pool's status, aggregated from the nodes it selects and what their agents report in
//! `MacvtapNodeState.status`. Pure: the reconciler hands in snapshots of its caches and which agents are stale.
//!
//! A selected node serves the pool (counts in `nodesReady`) when its agent reports fresh status (written within
//! the operator's `--agent-stale-after-seconds`) for the node state's current spec (`observedGeneration` equals
//! its `metadata.generation`), and at least one of the pool's resources there has its lower device present and up,
//! is registered with the kubelet and has healthy devices. `Ready` is true when every selected node serves it;
//! otherwise `Degraded` is true and both name the nodes and why, grouped by problem.
//!
//! Here: the walk over the nodes and the counts; [`serving`]: one node's verdict; [`conditions`]: the conditions.

mod conditions;
mod serving;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use macvtap_api::{MacvtapNodeState, MacvtapPool, MacvtapPoolStatus};

use crate::selection::{Conflict, Labels, plan_node, pool_selects, selector_matches};
use conditions::Conditions;
use serving::{Problem, node_problem, pool_entries};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const CONFLICT: &str = "Conflict";

/// One node as the status computation sees it.
pub struct NodeView<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub state: Option<&'a MacvtapNodeState>,
    /// The agent's status has not been updated for longer than the staleness threshold.
    pub stale: bool,
}

/// The outcome of one status computation: the status to write and the conflicts behind its Conflict condition
/// (winner pool -> nodes), for the Event.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReport {
    pub status: MacvtapPoolStatus,
    pub conflicts: Vec<(Conflict, Vec<String>)>,
}

/// Computes a pool's status from every pool (for conflicts) and every node.
pub fn compute<'a>(
    pool: &MacvtapPool,
    all_pools: &[&MacvtapPool],
    nodes: impl IntoIterator<Item = NodeView<'a>>,
    now: &Time,
) -> PoolReport {
    let generation = pool.metadata.generation;
    let conditions = Conditions {
        previous: pool
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default(),
        generation,
        now,
    };
    let name = pool.name_any();
    let resource_name = pool.resource_name();
    let mut status = MacvtapPoolStatus {
        observed_generation: generation,
        ..Default::default()
    };

    if let Err(e) = selector_matches(pool.spec.node_selector.as_ref(), &Labels::new()) {
        status.conditions = conditions.invalid_selector(&e);
        return PoolReport {
            status,
            conflicts: Vec::new(),
        };
    }

    let mut problems: BTreeMap<Problem, Vec<String>> = BTreeMap::new();
    let mut conflicts: BTreeMap<(String, String), (Conflict, Vec<String>)> = BTreeMap::new();
    for node in nodes {
        if !pool_selects(pool, node.labels) {
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
        for e in &entries {
            status.capacity += e.capacity;
            // What the kubelet can hand out: healthy devices of registered plugins of agents still reporting.
            if e.registered && !node.stale {
                status.allocatable += e.healthy;
            }
            status.allocated += e.allocated;
        }
        match node_problem(node.state, &entries, node.stale) {
            None => status.nodes_ready += 1,
            Some(p) => problems.entry(p).or_default().push(node.name.to_string()),
        }
    }

    let conflicts: Vec<(Conflict, Vec<String>)> = conflicts.into_values().collect();
    let [ready, degraded] =
        conditions.ready_and_degraded(status.nodes_matched, status.nodes_ready, &problems);
    status.conditions = vec![ready, degraded, conditions.conflict(&conflicts)];
    PoolReport { status, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{self, at, node_state as state, pool_spec, resource_status as entry};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn pool(name: &str, created: i64, resource_name: Option<&str>) -> MacvtapPool {
        let mut spec = pool_spec("eth1");
        spec.resource_name = resource_name.map(String::from);
        let mut p = test_objects::pool(name, created, spec);
        p.metadata.generation = Some(3);
        p
    }

    fn now(s: i64) -> Time {
        at(s)
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
