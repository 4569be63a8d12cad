//! What the watches remember between events: the pools and node-state generations as last seen. A watch event
//! carries only the new version; which nodes a pool edit affects depends on the old one too, and a relist does
//! not say which objects were deleted while the watch was down.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::watcher::Event;
use macvtap_api::{MacvtapNodeState, MacvtapPool};

/// What a pool watch event changed, as far as node states are concerned.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PoolChange {
    /// A new pool, or one whose spec changed; `old` is the version seen before, if any.
    Changed {
        old: Option<Arc<MacvtapPool>>,
        new: Arc<MacvtapPool>,
    },
    /// A pool deleted; `old` is the version seen before (if any), `last` the one in the delete event.
    Deleted {
        old: Option<Arc<MacvtapPool>>,
        last: Arc<MacvtapPool>,
    },
    /// A pool missing from a relist: deleted while the watch was down.
    Vanished { old: Arc<MacvtapPool> },
    /// A relist finished.
    Relisted,
}

/// The pools as last seen by the pool watch.
#[derive(Default)]
pub(super) struct SeenPools {
    pools: HashMap<String, Arc<MacvtapPool>>,
    /// Names seen during a relist, to detect pools deleted while the watch was down.
    relisting: Option<HashSet<String>>,
}

impl SeenPools {
    /// Records `event` and returns what it changed (nothing for a status-only write).
    pub(super) fn observe(&mut self, event: &Event<MacvtapPool>) -> Vec<PoolChange> {
        match event {
            Event::Apply(pool) | Event::InitApply(pool) => {
                let name = pool.name_any();
                if let Some(seen) = self.relisting.as_mut() {
                    seen.insert(name.clone());
                }
                let new = Arc::new(pool.clone());
                let old = self.pools.insert(name, new.clone());
                if old.as_deref().is_some_and(|o| same_spec(o, pool)) {
                    Vec::new()
                } else {
                    vec![PoolChange::Changed { old, new }]
                }
            }
            Event::Delete(pool) => vec![PoolChange::Deleted {
                old: self.pools.remove(&pool.name_any()),
                last: Arc::new(pool.clone()),
            }],
            Event::Init => {
                self.relisting = Some(HashSet::new());
                Vec::new()
            }
            Event::InitDone => {
                let seen = self.relisting.take().unwrap_or_default();
                let mut gone: Vec<String> = self
                    .pools
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                // HashMap order is arbitrary; a fixed order keeps runs reproducible.
                gone.sort();
                let mut changes: Vec<PoolChange> = gone
                    .into_iter()
                    .filter_map(|name| self.pools.remove(&name))
                    .map(|old| PoolChange::Vanished { old })
                    .collect();
                changes.push(PoolChange::Relisted);
                changes
            }
        }
    }
}

/// The spec-relevant identity of a pool version: a status-only write keeps it.
fn same_spec(a: &MacvtapPool, b: &MacvtapPool) -> bool {
    a.metadata.uid == b.metadata.uid
        && a.metadata.generation == b.metadata.generation
        && a.metadata.deletion_timestamp == b.metadata.deletion_timestamp
}

/// The `metadata.generation` of each node state as last seen: a new one means its spec was written (by the
/// operator or by someone else); status writes by the agent keep it.
#[derive(Default)]
pub(super) struct SeenGenerations(HashMap<String, Option<i64>>);

impl SeenGenerations {
    /// Records `state`; true when it is new or its generation differs from the one seen before.
    pub(super) fn spec_written(&mut self, state: &MacvtapNodeState) -> bool {
        let generation = state.metadata.generation;
        self.0.insert(state.name_any(), generation) != Some(generation)
    }

    pub(super) fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{at, pool_spec};
    use macvtap_api::MacvtapPoolStatus;

    fn pool(name: &str, uid: &str, generation: i64) -> MacvtapPool {
        let mut p = crate::test_objects::pool(name, 1, pool_spec("eth0"));
        p.metadata.uid = Some(uid.into());
        p.metadata.generation = Some(generation);
        p
    }

    fn changed(old: Option<&MacvtapPool>, new: &MacvtapPool) -> PoolChange {
        PoolChange::Changed {
            old: old.cloned().map(Arc::new),
            new: Arc::new(new.clone()),
        }
    }

    #[test]
    fn spec_changes_count_status_writes_do_not() {
        let mut seen = SeenPools::default();
        let v1 = pool("p", "u1", 1);
        assert_eq!(
            seen.observe(&Event::Apply(v1.clone())),
            [changed(None, &v1)]
        );

        let mut status_only = v1.clone();
        status_only.status = Some(MacvtapPoolStatus {
            nodes_matched: 3,
            ..Default::default()
        });
        assert_eq!(seen.observe(&Event::Apply(status_only.clone())), []);

        let v2 = pool("p", "u1", 2);
        assert_eq!(
            seen.observe(&Event::Apply(v2.clone())),
            [changed(Some(&status_only), &v2)],
            "a new generation; old is the version seen last"
        );

        let mut deleting = v2.clone();
        deleting.metadata.deletion_timestamp = Some(at(9));
        assert_eq!(
            seen.observe(&Event::Apply(deleting.clone())),
            [changed(Some(&v2), &deleting)],
            "a deletion timestamp"
        );

        let recreated = pool("p", "u2", 2);
        assert_eq!(
            seen.observe(&Event::InitApply(recreated.clone())),
            [changed(Some(&deleting), &recreated)],
            "same name and generation, new uid"
        );
    }

    #[test]
    fn deletes_hand_over_the_version_seen_before() {
        let mut seen = SeenPools::default();
        let v1 = pool("p", "u1", 1);
        seen.observe(&Event::Apply(v1.clone()));
        let last = pool("p", "u1", 2);
        assert_eq!(
            seen.observe(&Event::Delete(last.clone())),
            [PoolChange::Deleted {
                old: Some(Arc::new(v1)),
                last: Arc::new(last.clone())
            }]
        );
        // Never seen (or already gone): no old version.
        assert_eq!(
            seen.observe(&Event::Delete(last.clone())),
            [PoolChange::Deleted {
                old: None,
                last: Arc::new(last)
            }]
        );
    }

    #[test]
    fn a_relist_finds_pools_deleted_while_the_watch_was_down() {
        let mut seen = SeenPools::default();
        let (a, b, c) = (pool("a", "ua", 1), pool("b", "ub", 1), pool("c", "uc", 1));
        for p in [&a, &b, &c] {
            seen.observe(&Event::Apply(p.clone()));
        }
        assert_eq!(seen.observe(&Event::Init), []);
        assert_eq!(seen.observe(&Event::InitApply(b.clone())), [], "unchanged");
        assert_eq!(
            seen.observe(&Event::InitDone),
            [
                PoolChange::Vanished {
                    old: Arc::new(a.clone())
                },
                PoolChange::Vanished { old: Arc::new(c) },
                PoolChange::Relisted
            ]
        );
        // Forgotten: a later delete event of a vanished pool has no old version.
        assert!(matches!(
            &seen.observe(&Event::Delete(a.clone()))[..],
            [PoolChange::Deleted { old: None, .. }]
        ));
        // The first list finds nothing vanished.
        let mut fresh = SeenPools::default();
        fresh.observe(&Event::Init);
        assert_eq!(
            fresh.observe(&Event::InitApply(a.clone())),
            [changed(None, &a)]
        );
        assert_eq!(fresh.observe(&Event::InitDone), [PoolChange::Relisted]);
    }

    #[test]
    fn generations_tell_spec_writes_from_status_writes() {
        let mut seen = SeenGenerations::default();
        let mut s = MacvtapNodeState::new("n", Default::default());
        s.metadata.generation = Some(1);
        assert!(seen.spec_written(&s), "first sight");
        assert!(!seen.spec_written(&s), "same generation: a status write");
        s.metadata.generation = Some(2);
        assert!(seen.spec_written(&s));
        seen.forget("n");
        assert!(seen.spec_written(&s), "forgotten: new again");
    }
}
