//! Which reconciles a watch event asks for. Pure functions over plain data (the changed objects and snapshots of
//! the caches), so every decision is unit-tested without an API server; the watches in [`super::watches`] only
//! deliver the result.
//!
//! Over 400 lines only by its tests, which pin every branch.
//!
//! Pool status is one throttled pass over every pool ([`Triggered::pool_statuses`]), so events ask for "all pool
//! statuses", never for single pools.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::watcher::Event;
use macvtap_api::{MacvtapNodeState, MacvtapPool};

use super::memory::PoolChange;
use super::{NodeMeta, node_labels};
use crate::selection::pool_selects;

/// The reconciles one change asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Triggered {
    /// Nodes whose desired `MacvtapNodeState.spec` may have changed.
    pub node_states: BTreeSet<String>,
    /// Node states to delete if their Node is gone.
    pub orphan_checks: BTreeSet<String>,
    /// Check every node state for a missing Node (after a relist).
    pub all_orphan_checks: bool,
    /// Recompute the status of every pool.
    pub pool_statuses: bool,
    /// A pool that is gone; the nodes that served it are in `node_states` (for the Node status clean-up).
    pub removed_pool: Option<Arc<MacvtapPool>>,
}

fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(String::from).collect()
}

/// A Node watch event other than a label change (those pass [`node_labels_changed`]): a deleted Node orphans its
/// node state; a relist may have missed deletions. Both change what pools count.
pub(super) fn node_event(event: &Event<NodeMeta>) -> Triggered {
    match event {
        Event::Delete(node) => Triggered {
            orphan_checks: names([node.name_any().as_str()]),
            pool_statuses: true,
            ..Default::default()
        },
        Event::InitDone => Triggered {
            all_orphan_checks: true,
            pool_statuses: true,
            ..Default::default()
        },
        Event::Apply(_) | Event::InitApply(_) | Event::Init => Triggered::default(),
    }
}

/// A Node seen for the first time or with new labels (kubelet heartbeats on its status never get here): its
/// pools may change, and so may every pool's node counts.
pub(super) fn node_labels_changed(node: &str) -> Triggered {
    Triggered {
        node_states: names([node]),
        pool_statuses: true,
        ..Default::default()
    }
}

/// A pool appeared, changed its spec, or went away.
pub(super) fn pool_change(
    change: &PoolChange,
    nodes: &[Arc<NodeMeta>],
    states: &[Arc<MacvtapNodeState>],
) -> Triggered {
    let (node_states, removed_pool) = match change {
        PoolChange::Changed { old, new } => (
            nodes_of_pool(old.as_deref(), Some(new), nodes, states),
            None,
        ),
        // The delete event's version counts as "new": it still names the pool and the nodes it selected.
        PoolChange::Deleted { old, last } => (
            nodes_of_pool(old.as_deref(), Some(last), nodes, states),
            Some(last.clone()),
        ),
        PoolChange::Vanished { old } => (
            nodes_of_pool(Some(old), None, nodes, states),
            Some(old.clone()),
        ),
        PoolChange::Relisted => (BTreeSet::new(), None),
    };
    Triggered {
        node_states,
        pool_statuses: true,
        removed_pool,
        ..Default::default()
    }
}

/// The nodes whose desired state may change when a pool goes from `old` to `new`: those either version selects,
/// and those whose written node state names the pool (in case the node cache moved on since).
pub(super) fn nodes_of_pool(
    old: Option<&MacvtapPool>,
    new: Option<&MacvtapPool>,
    nodes: &[Arc<NodeMeta>],
    states: &[Arc<MacvtapNodeState>],
) -> BTreeSet<String> {
    let mut affected = BTreeSet::new();
    for node in nodes {
        let labels = node_labels(node);
        if old.is_some_and(|p| pool_selects(p, &labels))
            || new.is_some_and(|p| pool_selects(p, &labels))
        {
            affected.insert(node.name_any());
        }
    }
    let pool_name = old.or(new).map(|p| p.name_any()).unwrap_or_default();
    for state in states {
        let spec = &state.spec;
        if spec.resources.iter().any(|r| r.pool == pool_name)
            || spec.discovery.as_ref().is_some_and(|d| d.pool == pool_name)
        {
            affected.insert(state.name_any());
        }
    }
    affected
}

/// A node state was written. Each write may be the first sight of an orphan; a spec write (new generation) may be
/// someone else's edit, to revert; its status feeds pool status.
pub(super) fn node_state_written(name: &str, spec_written: bool) -> Triggered {
    Triggered {
        orphan_checks: names([name]),
        node_states: if spec_written {
            names([name])
        } else {
            BTreeSet::new()
        },
        pool_statuses: true,
        ..Default::default()
    }
}

/// A node state was deleted: recreated if its Node still exists.
pub(super) fn node_state_deleted(name: &str) -> Triggered {
    Triggered {
        node_states: names([name]),
        pool_statuses: true,
        ..Default::default()
    }
}

/// The node state watch relisted: orphans may have appeared while it was down.
pub(super) fn node_states_relisted() -> Triggered {
    Triggered {
        all_orphan_checks: true,
        pool_statuses: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{labels, match_labels, pool, pool_spec};
    use k8s_openapi::api::core::v1::Node;
    use kube::api::ObjectMeta;
    use kube::core::PartialObjectMetaExt;
    use macvtap_api::{MacvtapMode, MacvtapNodeStateSpec, NodeDiscovery, NodeResource};

    fn node(name: &str, pairs: &[(&str, &str)]) -> Arc<NodeMeta> {
        Arc::new(
            ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(pairs)),
                ..Default::default()
            }
            .into_response_partial::<Node>(),
        )
    }

    /// A pool selecting `role=<role>`.
    fn pool_for(name: &str, role: &str) -> MacvtapPool {
        let mut spec = pool_spec("eth1");
        spec.node_selector = match_labels(&[("role", role)]);
        pool(name, 1, spec)
    }

    fn state(
        node: &str,
        resource_pools: &[&str],
        discovery_pool: Option<&str>,
    ) -> Arc<MacvtapNodeState> {
        let spec = MacvtapNodeStateSpec {
            resources: resource_pools
                .iter()
                .map(|p| NodeResource {
                    name: p.to_string(),
                    pool: p.to_string(),
                    lower_device: "eth1".into(),
                    mode: MacvtapMode::Bridge,
                    capacity: 10,
                })
                .collect(),
            discovery: discovery_pool.map(|p| NodeDiscovery {
                pool: p.into(),
                mode: MacvtapMode::Bridge,
                capacity: 10,
            }),
        };
        Arc::new(MacvtapNodeState::new(node, spec))
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        names(items.iter().copied())
    }

    fn cluster() -> Vec<Arc<NodeMeta>> {
        vec![
            node("w1", &[("role", "worker")]),
            node("w2", &[("role", "worker")]),
            node("i1", &[("role", "infra")]),
            node("bare", &[]),
        ]
    }

    #[test]
    fn a_pool_affects_the_nodes_its_old_or_new_selector_matches() {
        let nodes = cluster();
        let workers = pool_for("p", "worker");
        let infra = pool_for("p", "infra");
        assert_eq!(
            nodes_of_pool(None, Some(&workers), &nodes, &[]),
            set(&["w1", "w2"]),
            "a new pool: its nodes"
        );
        assert_eq!(
            nodes_of_pool(Some(&workers), Some(&infra), &nodes, &[]),
            set(&["i1", "w1", "w2"]),
            "selector moved: nodes it leaves and nodes it joins"
        );
        assert_eq!(
            nodes_of_pool(Some(&infra), None, &nodes, &[]),
            set(&["i1"]),
            "a pool gone: the nodes it selected"
        );
        let everywhere = pool("all", 1, pool_spec("eth1"));
        assert_eq!(
            nodes_of_pool(None, Some(&everywhere), &nodes, &[]),
            set(&["bare", "i1", "w1", "w2"]),
            "no selector: every node"
        );
        assert_eq!(nodes_of_pool(None, None, &nodes, &[]), set(&[]));
    }

    #[test]
    fn a_pool_with_an_unusable_selector_affects_only_nodes_whose_state_names_it() {
        let mut spec = pool_spec("eth1");
        spec.node_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "role".into(),
                        operator: "Near".into(),
                        values: None,
                    },
                ]),
            },
        );
        let broken = pool("p", 1, spec);
        let states = [state("w1", &["p"], None)];
        assert_eq!(
            nodes_of_pool(
                Some(&pool_for("p", "worker")),
                Some(&broken),
                &cluster(),
                &states
            ),
            set(&["w1", "w2"]),
        );
        assert_eq!(
            nodes_of_pool(None, Some(&broken), &cluster(), &states),
            set(&["w1"])
        );
    }

    #[test]
    fn node_states_that_name_the_pool_are_affected_even_when_the_node_cache_disagrees() {
        // w1 lost the label (cache moved on), "gone" is not in the node cache at all: both still serve `p`.
        let nodes = vec![node("w1", &[]), node("w2", &[("role", "worker")])];
        let states = [
            state("w1", &["p"], None),
            state("gone", &["other", "p"], None),
            state("d", &[], Some("p")),
            state("unrelated", &["other"], Some("other")),
        ];
        assert_eq!(
            nodes_of_pool(None, Some(&pool_for("p", "worker")), &nodes, &states),
            set(&["d", "gone", "w1", "w2"]),
        );
        // The pool is matched by name of the old version when both are given.
        let renamed_new = pool_for("q", "nothing");
        assert_eq!(
            nodes_of_pool(
                Some(&pool_for("p", "nothing")),
                Some(&renamed_new),
                &nodes,
                &states
            ),
            set(&["d", "gone", "w1"]),
        );
    }

    #[test]
    fn pool_changes() {
        let nodes = cluster();
        let states = [state("i1", &["p"], None)];
        let workers = Arc::new(pool_for("p", "worker"));

        let t = pool_change(
            &PoolChange::Changed {
                old: None,
                new: workers.clone(),
            },
            &nodes,
            &states,
        );
        assert_eq!(
            t,
            Triggered {
                node_states: set(&["i1", "w1", "w2"]),
                pool_statuses: true,
                ..Default::default()
            }
        );

        let deleted = pool_change(
            &PoolChange::Deleted {
                old: None,
                last: workers.clone(),
            },
            &nodes,
            &states,
        );
        assert_eq!(
            deleted,
            Triggered {
                node_states: set(&["i1", "w1", "w2"]),
                pool_statuses: true,
                removed_pool: Some(workers.clone()),
                ..Default::default()
            },
            "a deleted pool: its nodes again (now without it), and the clean-up of those nodes"
        );

        let infra = Arc::new(pool_for("p", "infra"));
        let vanished = pool_change(&PoolChange::Vanished { old: infra.clone() }, &nodes, &[]);
        assert_eq!(
            vanished,
            Triggered {
                node_states: set(&["i1"]),
                pool_statuses: true,
                removed_pool: Some(infra),
                ..Default::default()
            }
        );

        assert_eq!(
            pool_change(&PoolChange::Relisted, &nodes, &states),
            Triggered {
                pool_statuses: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn node_events() {
        let n = node("w1", &[("role", "worker")]);
        assert_eq!(
            node_event(&Event::Delete((*n).clone())),
            Triggered {
                orphan_checks: set(&["w1"]),
                pool_statuses: true,
                ..Default::default()
            }
        );
        assert_eq!(
            node_event(&Event::InitDone),
            Triggered {
                all_orphan_checks: true,
                pool_statuses: true,
                ..Default::default()
            }
        );
        for quiet in [
            Event::Apply((*n).clone()),
            Event::InitApply((*n).clone()),
            Event::Init,
        ] {
            assert_eq!(node_event(&quiet), Triggered::default(), "{quiet:?}");
        }
        assert_eq!(
            node_labels_changed("w1"),
            Triggered {
                node_states: set(&["w1"]),
                pool_statuses: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn node_state_events() {
        assert_eq!(
            node_state_written("n", false),
            Triggered {
                orphan_checks: set(&["n"]),
                pool_statuses: true,
                ..Default::default()
            },
            "a status write"
        );
        assert_eq!(
            node_state_written("n", true),
            Triggered {
                orphan_checks: set(&["n"]),
                node_states: set(&["n"]),
                pool_statuses: true,
                ..Default::default()
            },
            "a spec write, maybe by someone else"
        );
        assert_eq!(
            node_state_deleted("n"),
            Triggered {
                node_states: set(&["n"]),
                pool_statuses: true,
                ..Default::default()
            }
        );
        assert_eq!(
            node_states_relisted(),
            Triggered {
                all_orphan_checks: true,
                pool_statuses: true,
                ..Default::default()
            }
        );
    }
}
