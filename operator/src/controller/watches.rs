//! The three watches: each fills its cache, asks [`super::triggers`] which reconciles an event calls for, and
//! queues them.

use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, future};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, predicates, watcher as watch};
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use tracing::{debug, warn};

use super::backoff::WatchBackoff;
use super::memory::{SeenGenerations, SeenPools};
use super::triggers::{self, Triggered};
use super::{NodeMeta, stale_node_resources};
use crate::heartbeats::Heartbeats;
use crate::metrics::{Metrics, NODE_STATE, NODE_STATE_GC};

/// The reconcile queues of the three controllers.
pub(super) struct Queues {
    pub node_states: UnboundedSender<ObjectRef<NodeMeta>>,
    pub orphan_checks: UnboundedSender<ObjectRef<MacvtapNodeState>>,
    pub all_orphan_checks: UnboundedSender<()>,
    pub pool_statuses: UnboundedSender<()>,
    pub metrics: Metrics,
}

impl Queues {
    fn send(&self, triggered: &Triggered) {
        for name in &triggered.node_states {
            self.metrics.enqueued(NODE_STATE, name);
            let _ = self.node_states.unbounded_send(ObjectRef::new(name));
        }
        for name in &triggered.orphan_checks {
            self.metrics.enqueued(NODE_STATE_GC, name);
            let _ = self.orphan_checks.unbounded_send(ObjectRef::new(name));
        }
        if triggered.all_orphan_checks {
            let _ = self.all_orphan_checks.unbounded_send(());
        }
        if triggered.pool_statuses {
            let _ = self.pool_statuses.unbounded_send(());
        }
    }
}

fn config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Nodes, metadata only. Only label changes (and new Nodes) reach the node-state reconciler: kubelet heartbeats
/// on Node status are filtered out here.
pub(super) async fn nodes(client: Client, cache: Writer<NodeMeta>, queues: Arc<Queues>) {
    let events = queues.clone();
    watch(Api::<NodeMeta>::all(client), config())
        .backoff(WatchBackoff::default())
        .reflect(cache)
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                if matches!(ev, Event::InitDone) {
                    debug!("node cache synced");
                }
                events.send(&triggers::node_event(ev));
            }
        })
        .applied_objects()
        .predicate_filter(predicates::labels, Default::default())
        .for_each(move |node| {
            match node {
                Ok(node) => queues.send(&triggers::node_labels_changed(&node.name_any())),
                Err(e) => warn!(error = %e, "Node watch error; retrying"),
            }
            future::ready(())
        })
        .await
}

/// Pools: the cache, plus the node states a change affects, computed from the old and the new version.
pub(super) async fn pools(
    client: Client,
    cache: Writer<MacvtapPool>,
    caches: (Store<MacvtapPool>, Store<NodeMeta>, Store<MacvtapNodeState>),
    queues: Arc<Queues>,
    clean_stale_node_resources: bool,
) {
    let (pools, nodes, states) = caches;
    let metrics = queues.metrics.clone();
    let mut seen = SeenPools::default();
    watch(Api::<MacvtapPool>::all(client.clone()), config())
        .backoff(WatchBackoff::default())
        .reflect(cache)
        .for_each(move |ev| {
            match ev {
                Ok(ev) => {
                    if matches!(ev, Event::InitDone) {
                        debug!("pool cache synced");
                    }
                    for change in seen.observe(&ev) {
                        let triggered =
                            triggers::pool_change(&change, &nodes.state(), &states.state());
                        queues.send(&triggered);
                        if let Some(pool) = triggered.removed_pool
                            && clean_stale_node_resources
                        {
                            stale_node_resources::spawn_clean_up(
                                &client,
                                &metrics,
                                &pool,
                                triggered.node_states,
                                (&pools, &nodes),
                            );
                        }
                    }
                }
                Err(e) => warn!(error = %e, "MacvtapPool watch error; retrying"),
            }
            future::ready(())
        })
        .await
}

/// Node states: the cache and the agents' heartbeats; orphans go to the orphan check, spec edits by others back
/// to the node-state reconciler.
pub(super) async fn node_states(
    client: Client,
    cache: Writer<MacvtapNodeState>,
    heartbeats: Arc<Heartbeats>,
    queues: Arc<Queues>,
) {
    let mut generations = SeenGenerations::default();
    watch(Api::<MacvtapNodeState>::all(client), config())
        .backoff(WatchBackoff::default())
        .reflect(cache)
        .for_each(move |ev| {
            match ev {
                Ok(Event::Apply(s) | Event::InitApply(s)) => {
                    heartbeats.observe(&s);
                    let spec_written = generations.spec_written(&s);
                    queues.send(&triggers::node_state_written(&s.name_any(), spec_written));
                }
                Ok(Event::Delete(s)) => {
                    let name = s.name_any();
                    generations.forget(&name);
                    heartbeats.forget(&name);
                    queues.send(&triggers::node_state_deleted(&name));
                }
                Ok(Event::InitDone) => {
                    debug!("node state cache synced");
                    queues.send(&triggers::node_states_relisted());
                }
                Ok(Event::Init) => {}
                Err(e) => warn!(error = %e, "MacvtapNodeState watch error; retrying"),
            }
            future::ready(())
        })
        .await
}
