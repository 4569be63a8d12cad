//! The controllers: one cache (reflector) per watched kind, three reconcilers on top.
//!
//! - [`node_state`] (`nodestate`): per Node, writes `MacvtapNodeState.spec` when the desired state differs from
//!   the cached object.
//! - [`orphans`] (`nodestate-gc`): per MacvtapNodeState, deletes it when its Node is gone (there is no
//!   owner-reference garbage collection without kube-controller-manager, and a Node delete must not wait for it).
//! - [`pool`] (`poolstatus`): per pool, writes status from the caches, plus an Event when a conflict appears.
//!
//! Which reconciles a watch event asks for is decided in [`triggers`] (pure, unit-tested); [`watches`] runs the
//! three watches and delivers those decisions. Everything is built inside [`run`] and dropped with it, so a
//! replica that loses the leader Lease stops all watches and reconciles by dropping the future.

mod backoff;
mod conflict_events;
mod memory;
mod node_state;
mod orphans;
mod pool;
mod stale_node_resources;
mod throttle;
mod triggers;
mod watches;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::mpsc::unbounded;
use futures::{FutureExt, Stream, StreamExt, future, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use tracing::{info, warn};

use crate::heartbeats::Heartbeats;
use crate::metrics::{Metrics, NODE_STATE, NODE_STATE_GC, POOL_STATUS};
use crate::selection::Labels;
use backoff::Backoff;
use conflict_events::PublishedConflicts;
use watches::Queues;

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "macvtap-operator";
/// Label put on the node states the operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Nodes are watched as metadata only (labels and uid are all we need; Node status is large and changes often).
type NodeMeta = PartialObjectMeta<Node>;

/// Behaviour switches of the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Remove a deleted pool's `macvtap.network.kubevirt.io/<name>` from Node status (needs `nodes/status` patch).
    pub clean_stale_node_resources: bool,
    /// Periodic re-check of every object, a safety net for missed triggers.
    pub resync: Duration,
    /// Node state writes in flight at once.
    pub concurrency: u16,
    /// `reportingInstance` of Events (pod name).
    pub instance: Option<String>,
    /// An agent whose status was not updated for this long is "not reporting": what it last said no longer
    /// counts for pool readiness. Agents write at least every 30 s by default.
    pub agent_stale_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            clean_stale_node_resources: false,
            resync: Duration::from_secs(600),
            concurrency: 16,
            instance: None,
            agent_stale_after: Duration::from_secs(120),
        }
    }
}

/// Why a reconcile failed. Every error requeues that object with backoff; none stops the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing MacvtapNodeState {name}: {source}")]
    WriteNodeState {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting orphaned MacvtapNodeState {name}: {source}")]
    DeleteNodeState {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status of MacvtapPool {name}: {source}")]
    PoolStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("a watch cache was dropped before it was ready")]
    CacheGone,
}

impl Error {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WriteNodeState { .. } => "write_node_state",
            Self::DeleteNodeState { .. } => "delete_node_state",
            Self::PoolStatus { .. } => "pool_status",
            Self::CacheGone => "cache_gone",
        }
    }
}

/// Shared by the reconcilers.
struct Context {
    client: Client,
    pools: Store<MacvtapPool>,
    nodes: Store<NodeMeta>,
    states: Store<MacvtapNodeState>,
    metrics: Metrics,
    recorder: Recorder,
    settings: Settings,
    /// Consecutive failures per (controller, object), for the error backoff.
    failures: Backoff,
    published_conflicts: PublishedConflicts,
    heartbeats: Arc<Heartbeats>,
    synced_rx: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    /// What every reconcile does first: count and time it, and wait for the caches. `None` for an object being
    /// deleted (its owner references or the next event take over); else the timer, held until the reconcile ends.
    async fn begin<K: Resource>(
        &self,
        controller: &'static str,
        object: &K,
    ) -> Result<Option<crate::metrics::ReconcileTimer>, Error> {
        let timer = self
            .metrics
            .reconcile_started(controller, &object.name_any());
        self.wait_synced().await?;
        Ok(object.meta().deletion_timestamp.is_none().then_some(timer))
    }

    async fn wait_synced(&self) -> Result<(), Error> {
        // A watch channel, not Store::wait_until_ready: the latter wakes only one of several concurrent waiters.
        let mut synced = self.synced_rx.clone();
        synced
            .wait_for(|s| *s)
            .await
            .map(|_| ())
            .map_err(|_| Error::CacheGone)
    }
}

fn node_labels(node: &NodeMeta) -> Labels {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Runs the watches and the three controllers until dropped. Returns only if every controller stream ended.
pub async fn run(client: Client, settings: Settings, metrics: Metrics, synced: Arc<AtomicBool>) {
    let (pools, pools_writer) = reflector::store::<MacvtapPool>();
    let (nodes, nodes_writer) = reflector::store::<NodeMeta>();
    let (states, states_writer) = reflector::store::<MacvtapNodeState>();

    let (node_tx, node_rx) = unbounded();
    let (orphan_tx, orphan_rx) = unbounded();
    let (all_orphans_tx, all_orphans_rx) = unbounded();
    let (status_tx, status_rx) = unbounded();
    let queues = Arc::new(Queues {
        node_states: node_tx,
        orphan_checks: orphan_tx,
        all_orphan_checks: all_orphans_tx,
        pool_statuses: status_tx,
        metrics: metrics.clone(),
    });

    // One waiter per store (Store::wait_until_ready wakes a single waiter), then everyone via the watch channel.
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let sync_waiter = {
        let (pools, nodes, states) = (pools.clone(), nodes.clone(), states.clone());
        async move {
            let all = async {
                pools.wait_until_ready().await?;
                nodes.wait_until_ready().await?;
                states.wait_until_ready().await
            };
            if all.await.is_ok() {
                info!("caches synced");
                synced.store(true, Ordering::Release);
                let _ = synced_tx.send(true);
                // Keep the sender alive: a closed channel would read as "caches gone".
                future::pending::<()>().await;
            }
        }
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: settings.instance.clone(),
        },
    );
    let heartbeats = Arc::new(Heartbeats::default());
    let ctx = Arc::new(Context {
        heartbeats: heartbeats.clone(),
        client: client.clone(),
        pools: pools.clone(),
        nodes: nodes.clone(),
        states: states.clone(),
        metrics: metrics.clone(),
        recorder,
        settings: settings.clone(),
        failures: Backoff::default(),
        published_conflicts: PublishedConflicts::default(),
        synced_rx,
    });

    let node_watch = watches::nodes(client.clone(), nodes_writer, queues.clone());
    let pool_watch = watches::pools(
        client.clone(),
        pools_writer,
        (pools.clone(), nodes.clone(), states.clone()),
        queues.clone(),
        settings.clean_stale_node_resources,
    );
    let state_watch = watches::node_states(client.clone(), states_writer, heartbeats, queues);

    let node_controller = Controller::for_stream(never(), nodes.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .reconcile_on(node_rx)
        .run(node_state::reconcile, error_policy(NODE_STATE), ctx.clone())
        .for_each(report(NODE_STATE, metrics.clone()));
    let orphan_controller = Controller::for_stream(never(), states.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .reconcile_on(orphan_rx)
        .reconcile_all_on(all_orphans_rx)
        .run(orphans::reconcile, error_policy(NODE_STATE_GC), ctx.clone())
        .for_each(report(NODE_STATE_GC, metrics.clone()));
    let status_controller = Controller::for_stream(never(), pools.clone())
        .with_config(ControllerConfig::default().concurrency(4))
        .reconcile_all_on(throttle::throttled(status_rx, STATUS_PERIOD))
        .run(pool::reconcile, error_policy(POOL_STATUS), ctx.clone())
        .for_each(report(POOL_STATUS, metrics.clone()));

    info!("controllers started");
    future::join3(
        sync_waiter,
        future::join3(node_watch, pool_watch, state_watch),
        future::join3(node_controller, orphan_controller, status_controller),
    )
    .map(|_| ())
    .await;
}

/// Pool status is recomputed at most this often: every node state change asks for it, and one pass covers all.
const STATUS_PERIOD: Duration = Duration::from_millis(500);

/// A trigger stream that never yields: the controllers are driven by `reconcile_on` alone, and their caches are
/// filled by the watches in [`watches`].
fn never<K: Send + 'static>() -> impl Stream<Item = Result<K, watcher::Error>> + Send {
    stream::pending()
}

fn error_policy<K: Resource>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, error, ctx| {
        let name = obj.meta().name.clone().unwrap_or_default();
        ctx.metrics.reconcile_failed(controller, error.kind());
        let delay = ctx.failures.failed(controller, &name);
        warn!(controller, object = %name, error = %error, retry_in = ?delay, "reconcile failed");
        ctx.metrics.enqueued(controller, &name);
        Action::requeue(delay)
    }
}

type RunResult<K> =
    Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<Error, watcher::Error>>;

/// Logs controller-level outcomes and keeps the queue-depth gauge honest for triggers that were dropped.
fn report<K: Resource>(
    controller: &'static str,
    metrics: Metrics,
) -> impl FnMut(RunResult<K>) -> future::Ready<()> {
    move |result| {
        if let Err(kube::runtime::controller::Error::ObjectNotFound(obj)) = &result {
            metrics.dequeued(controller, &obj.name);
        } else if let Err(e) = &result
            && !matches!(e, kube::runtime::controller::Error::ReconcilerFailed(..))
        {
            warn!(controller, error = %e, "controller error");
        }
        future::ready(())
    }
}
