//! Which pools a node serves: node selectors, per-node lower device overrides, discovery, and the deterministic
//! conflict rule. Pure functions over API objects, shared by the node-state and pool-status reconcilers so both
//! always agree on who won.
//!
//! Kept whole: one rule (plan_node and the selector and precedence helpers it is made of); over 400 lines only by
//! its tests.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use macvtap_api::{MacvtapMode, MacvtapNodeStateSpec, MacvtapPool, NodeDiscovery, NodeResource};

/// Labels of a node (empty when it has none).
pub type Labels = BTreeMap<String, String>;

/// A label selector the API server accepted but that cannot be evaluated (e.g. an unknown operator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector: {0}")]
pub struct InvalidSelector(pub String);

/// Whether `selector` selects `labels`. `None` and the empty selector select everything.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &Labels,
) -> Result<bool, InvalidSelector> {
    let Some(selector) = selector else {
        return Ok(true);
    };
    let parsed =
        Selector::try_from(selector.clone()).map_err(|e| InvalidSelector(e.to_string()))?;
    Ok(parsed.matches(labels))
}

/// Whether the pool selects a node with these labels. A pool whose selector cannot be evaluated selects nothing;
/// its status says why.
pub fn pool_selects(pool: &MacvtapPool, labels: &Labels) -> bool {
    selector_matches(pool.spec.node_selector.as_ref(), labels).unwrap_or(false)
}

/// The lower device a (non-discovery) pool uses on a node: the first matching override, else `spec.lowerDevice`.
pub fn lower_device_for(pool: &MacvtapPool, labels: &Labels) -> Option<String> {
    for o in pool.spec.lower_device_overrides.iter().flatten() {
        if selector_matches(Some(&o.node_selector), labels).unwrap_or(false) {
            return Some(o.lower_device.clone());
        }
    }
    pool.spec.lower_device.clone()
}

/// Order in which pools win conflicts: oldest first (creationTimestamp), then by name. Every replica and every
/// reconcile sees the same order, so the winner never flaps.
pub fn precedence_key(pool: &MacvtapPool) -> (bool, Option<i128>, String) {
    let created = pool
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_nanosecond());
    (created.is_none(), created, pool.name_any())
}

/// What two pools fight over on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    /// Both would be served as `macvtap.network.kubevirt.io/<name>`.
    ResourceName(String),
    /// Both use this lower device with different modes (or one of them is passthru, which takes it whole).
    LowerDevice {
        device: String,
        mode: MacvtapMode,
        winner_mode: MacvtapMode,
    },
    /// Both ask for discovery; a node serves one discovery pool.
    Discovery,
}

impl ConflictKind {
    /// Condition reason for this kind of conflict.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ResourceName(_) => "ResourceNameConflict",
            Self::LowerDevice { .. } => "LowerDeviceConflict",
            Self::Discovery => "DiscoveryConflict",
        }
    }

    /// What is contested, for humans, from the losing pool's point of view.
    pub fn describe(&self, winner: &str) -> String {
        match self {
            Self::ResourceName(name) => {
                format!(
                    "resource name {name:?} is also claimed by pool {winner:?}, which takes precedence"
                )
            }
            Self::LowerDevice {
                device,
                mode,
                winner_mode,
            } => format!(
                "lower device {device:?} is used by pool {winner:?} in mode {winner_mode}, incompatible with mode \
                 {mode}; pool {winner:?} takes precedence"
            ),
            Self::Discovery => {
                format!("pool {winner:?} already asks for discovery and takes precedence")
            }
        }
    }
}

/// A pool left out of a node because an older pool claims the same thing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The pool left out.
    pub loser: String,
    /// The pool that keeps the claim.
    pub winner: String,
    pub kind: ConflictKind,
}

/// The desired state of one node and the conflicts resolved to get it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePlan {
    pub spec: MacvtapNodeStateSpec,
    /// Pools that select the node (winners and losers).
    pub selected: BTreeSet<String>,
    pub conflicts: Vec<Conflict>,
}

impl NodePlan {
    /// The conflict that kept `pool` off this node, if any.
    pub fn lost_by(&self, pool: &str) -> Option<&Conflict> {
        self.conflicts.iter().find(|c| c.loser == pool)
    }
}

/// Computes a node's desired `MacvtapNodeState.spec` from all pools. Pools are taken in precedence order, so the
/// result does not depend on the order of `pools`; resources are sorted by name so equal plans compare equal.
pub fn plan_node<'a>(
    pools: impl IntoIterator<Item = &'a MacvtapPool>,
    labels: &Labels,
) -> NodePlan {
    let mut selecting: Vec<&MacvtapPool> = pools
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pool_selects(p, labels))
        .collect();
    selecting.sort_by_cached_key(|p| precedence_key(p));

    let mut plan = NodePlan::default();
    let mut by_name: BTreeMap<String, NodeResource> = BTreeMap::new();
    // lower device -> (mode, pool) of the first pool that took it
    let mut devices: BTreeMap<String, (MacvtapMode, String)> = BTreeMap::new();

    for pool in selecting {
        let name = pool.name_any();
        plan.selected.insert(name.clone());
        let mode = pool.spec.mode;
        let Some(resource_name) = pool.resource_name() else {
            match &plan.spec.discovery {
                Some(d) => plan.conflicts.push(Conflict {
                    loser: name,
                    winner: d.pool.clone(),
                    kind: ConflictKind::Discovery,
                }),
                None => {
                    plan.spec.discovery = Some(NodeDiscovery {
                        pool: name,
                        mode,
                        capacity: pool.spec.capacity,
                    })
                }
            }
            continue;
        };
        if let Some(existing) = by_name.get(&resource_name) {
            plan.conflicts.push(Conflict {
                loser: name,
                winner: existing.pool.clone(),
                kind: ConflictKind::ResourceName(resource_name),
            });
            continue;
        }
        let Some(device) = lower_device_for(pool, labels) else {
            // The schema requires lowerDevice or discovery; an object predating that rule is skipped.
            continue;
        };
        if let Some((winner_mode, winner)) = devices.get(&device)
            && !winner_mode.can_share_lower_device(mode)
        {
            plan.conflicts.push(Conflict {
                loser: name,
                winner: winner.clone(),
                kind: ConflictKind::LowerDevice {
                    device,
                    mode,
                    winner_mode: *winner_mode,
                },
            });
            continue;
        }
        devices
            .entry(device.clone())
            .or_insert((mode, name.clone()));
        by_name.insert(
            resource_name.clone(),
            NodeResource {
                name: resource_name,
                pool: name,
                lower_device: device,
                mode,
                capacity: pool.spec.capacity,
            },
        );
    }
    plan.spec.resources = by_name.into_values().collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{at, labels, match_labels, pool, pool_spec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use macvtap_api::{LowerDeviceOverride, MacvtapPoolSpec, PoolDiscovery};

    #[test]
    fn selector_forms() {
        let l = labels(&[("role", "worker"), ("zone", "a")]);
        assert!(selector_matches(None, &l).unwrap());
        assert!(selector_matches(Some(&LabelSelector::default()), &l).unwrap());
        assert!(selector_matches(match_labels(&[("role", "worker")]).as_ref(), &l).unwrap());
        assert!(!selector_matches(match_labels(&[("role", "infra")]).as_ref(), &l).unwrap());
        let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
        };
        assert!(selector_matches(Some(&expr("In", Some(vec!["a", "b"]))), &l).unwrap());
        assert!(!selector_matches(Some(&expr("NotIn", Some(vec!["a"]))), &l).unwrap());
        assert!(selector_matches(Some(&expr("Exists", None)), &l).unwrap());
        assert!(!selector_matches(Some(&expr("DoesNotExist", None)), &l).unwrap());
        let bad = expr("Near", Some(vec!["a"]));
        assert!(selector_matches(Some(&bad), &l).is_err());
        // A pool with such a selector selects nothing instead of failing every reconcile.
        let mut s = pool_spec("eth0");
        s.node_selector = Some(bad);
        assert!(!pool_selects(&pool("p", 1, s), &l));
    }

    #[test]
    fn plan_applies_selectors_and_overrides() {
        let mut a = pool_spec("eth1");
        a.node_selector = match_labels(&[("role", "worker")]);
        a.lower_device_overrides = Some(vec![LowerDeviceOverride {
            node_selector: match_labels(&[("nic", "mlx")]).unwrap(),
            lower_device: "ens5f0".into(),
        }]);
        let mut b = pool_spec("eth2");
        b.resource_name = Some("storage".into());
        b.capacity = 3;
        let pools = [pool("a", 1, a), pool("b", 2, b)];

        let plan = plan_node(&pools, &labels(&[("role", "worker"), ("nic", "mlx")]));
        assert!(plan.conflicts.is_empty());
        let got: Vec<_> = plan
            .spec
            .resources
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.pool.as_str(),
                    r.lower_device.as_str(),
                    r.capacity,
                )
            })
            .collect();
        assert_eq!(got, [("a", "a", "ens5f0", 10), ("storage", "b", "eth2", 3)]);

        let plan = plan_node(&pools, &labels(&[("role", "worker")]));
        assert_eq!(plan.spec.resources[0].lower_device, "eth1");

        let plan = plan_node(&pools, &labels(&[]));
        assert_eq!(plan.spec.resources.len(), 1);
        assert_eq!(plan.spec.resources[0].pool, "b");
        assert_eq!(plan.selected, BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn resource_name_conflict_oldest_wins_whatever_the_input_order() {
        let mut newer = pool_spec("eth2");
        newer.resource_name = Some("old".into());
        let pools = [pool("young", 20, newer), pool("old", 10, pool_spec("eth1"))];
        for order in [[0, 1], [1, 0]] {
            let plan = plan_node(order.iter().map(|&i| &pools[i]), &labels(&[]));
            assert_eq!(plan.spec.resources.len(), 1);
            assert_eq!(plan.spec.resources[0].pool, "old");
            assert_eq!(
                plan.conflicts,
                [Conflict {
                    loser: "young".into(),
                    winner: "old".into(),
                    kind: ConflictKind::ResourceName("old".into())
                }]
            );
            assert_eq!(plan.lost_by("young").unwrap().winner, "old");
            assert!(plan.lost_by("old").is_none());
        }
    }

    #[test]
    fn same_timestamp_breaks_ties_by_name() {
        let mut b = pool_spec("eth2");
        b.resource_name = Some("shared".into());
        let mut a = pool_spec("eth1");
        a.resource_name = Some("shared".into());
        let pools = [pool("b", 5, b), pool("a", 5, a)];
        let plan = plan_node(&pools, &labels(&[]));
        assert_eq!(plan.spec.resources[0].pool, "a");
        assert_eq!(plan.conflicts[0].loser, "b");
    }

    #[test]
    fn lower_device_modes() {
        let mut vepa = pool_spec("eth1");
        vepa.mode = MacvtapMode::Vepa;
        let pools = [
            pool("bridge1", 1, pool_spec("eth1")),
            pool("bridge2", 2, pool_spec("eth1")),
            pool("vepa", 3, vepa),
        ];
        let plan = plan_node(&pools, &labels(&[]));
        let names: Vec<_> = plan
            .spec
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["bridge1", "bridge2"], "same mode shares the device");
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].loser, "vepa");
        assert_eq!(
            plan.conflicts[0].kind,
            ConflictKind::LowerDevice {
                device: "eth1".into(),
                mode: MacvtapMode::Vepa,
                winner_mode: MacvtapMode::Bridge
            }
        );
        assert!(plan.conflicts[0].kind.describe("bridge1").contains("eth1"));

        let mut p1 = pool_spec("eth3");
        p1.mode = MacvtapMode::Passthru;
        p1.capacity = 1;
        let p2 = p1.clone();
        let plan = plan_node(&[pool("pt1", 1, p1), pool("pt2", 2, p2)], &labels(&[]));
        assert_eq!(
            plan.spec.resources.len(),
            1,
            "passthru takes the device whole"
        );
        assert_eq!(plan.conflicts[0].loser, "pt2");
    }

    #[test]
    fn discovery_one_per_node() {
        let disc = || MacvtapPoolSpec {
            lower_device: None,
            discovery: Some(PoolDiscovery {}),
            ..pool_spec("x")
        };
        let plan = plan_node(
            &[
                pool("d2", 2, disc()),
                pool("d1", 1, disc()),
                pool("e", 3, pool_spec("eth0")),
            ],
            &labels(&[]),
        );
        assert_eq!(plan.spec.discovery.as_ref().unwrap().pool, "d1");
        assert_eq!(plan.spec.resources.len(), 1);
        assert_eq!(plan.conflicts[0].kind, ConflictKind::Discovery);
        assert_eq!(plan.conflicts[0].loser, "d2");
    }

    #[test]
    fn deleting_pools_are_left_out() {
        let mut p = pool("gone", 1, pool_spec("eth0"));
        p.metadata.deletion_timestamp = Some(at(9));
        let mut q = pool_spec("eth1");
        q.resource_name = Some("gone".into());
        let plan = plan_node(&[p, pool("q", 2, q)], &labels(&[]));
        assert_eq!(plan.spec.resources[0].pool, "q");
        assert!(plan.conflicts.is_empty());
    }
}
