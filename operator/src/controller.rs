//! The controllers: one cache (reflector) per watched kind, three reconcilers on top.
//!
//! - `nodestate`: per Node, writes `MacvtapNodeState.spec` (server-side apply) when the desired state differs
//!   from the cached object. Triggered by node label changes, pool spec changes (only the nodes the old or new
//!   pool selects, or whose state names the pool) and spec changes of node states made by others.
//! - `nodestate-gc`: per MacvtapNodeState, deletes it when its Node is gone (there is no owner-reference garbage
//!   collection without kube-controller-manager, and a Node delete must not wait for it).
//! - `poolstatus`: per pool, writes status from the caches, plus an Event when a conflict appears.
//!
//! Everything is built inside [`run`] and dropped with it, so a replica that loses the leader Lease stops all
//! watches and reconciles by dropping the future.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{FutureExt, Stream, StreamExt, future, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, predicates, watcher as watch};
use kube::{Client, Resource, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::heartbeats::Heartbeats;
use crate::metrics::{Metrics, NODE_STATE, NODE_STATE_GC, POOL_STATUS};
use crate::pool_status::{self, CONFLICT, NodeView};
use crate::selection::{Labels, plan_node, pool_selects};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "macvtap-operator";
/// Label put on the node states the operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

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
    ApplyNodeState {
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
            Self::ApplyNodeState { .. } => "apply_node_state",
            Self::DeleteNodeState { .. } => "delete_node_state",
            Self::PoolStatus { .. } => "pool_status",
            Self::CacheGone => "cache_gone",
        }
    }
}

/// Shared by the reconcilers.
pub struct Context {
    client: Client,
    pools: Store<MacvtapPool>,
    nodes: Store<NodeMeta>,
    states: Store<MacvtapNodeState>,
    metrics: Metrics,
    recorder: Recorder,
    settings: Settings,
    /// Consecutive failures per (controller, object), for the error backoff.
    failures: Mutex<HashMap<(&'static str, String), u32>>,
    /// The Conflict message last published as an Event per pool, so a stale cache never repeats an Event.
    published_conflicts: Mutex<HashMap<String, String>>,
    heartbeats: Arc<Heartbeats>,
    synced_rx: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    async fn wait_synced(&self) -> Result<(), Error> {
        // A watch channel, not Store::wait_until_ready: the latter wakes only one of several concurrent waiters.
        let mut synced = self.synced_rx.clone();
        synced
            .wait_for(|s| *s)
            .await
            .map(|_| ())
            .map_err(|_| Error::CacheGone)
    }

    fn backoff(&self, controller: &'static str, name: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures poisoned");
        let n = failures.entry((controller, name.to_string())).or_insert(0);
        *n = n.saturating_add(1);
        // 1s, 2s, 4s ... capped at 5 minutes.
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, controller: &'static str, name: &str) {
        let mut failures = self.failures.lock().expect("failures poisoned");
        failures.remove(&(controller, name.to_string()));
    }
}

fn node_labels(node: &NodeMeta) -> Labels {
    node.metadata.labels.clone().unwrap_or_default()
}

fn owner_reference(node: &NodeMeta) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name_any(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        // blockOwnerDeletion would need update on nodes/finalizers; the Node must never wait for us.
        block_owner_deletion: None,
    }
}

async fn reconcile_node(node: Arc<NodeMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.name_any();
    let _timer = ctx.metrics.reconcile_started(NODE_STATE, &name);
    ctx.wait_synced().await?;
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pools = ctx.pools.state();
    let labels = node_labels(&node);
    let plan = plan_node(pools.iter().map(|p| p.as_ref()), &labels);
    let owner = owner_reference(&node);
    let current = ctx.states.get(&ObjectRef::new(&name));
    let up_to_date = current.as_ref().is_some_and(|s| {
        s.metadata.deletion_timestamp.is_none()
            && s.spec == plan.spec
            && s.owner_references().iter().any(|o| o == &owner)
    });
    if !up_to_date {
        let api = Api::<MacvtapNodeState>::all(ctx.client.clone());
        let metadata = json!({
            "name": name,
            "labels": { MANAGED_BY_LABEL: FIELD_MANAGER },
            "ownerReferences": [owner],
        });
        let err = |source| Error::ApplyNodeState {
            name: name.clone(),
            source,
        };
        // A merge patch replaces the lists whole: it empties `resources`, and drops entries someone else added
        // (server-side apply keeps another manager's items, and removing all of ours would leave `spec` empty,
        // which the API server prunes and then rejects as missing).
        let replace = |metadata: serde_json::Value| {
            let body = json!({
                "metadata": metadata,
                "spec": { "resources": plan.spec.resources, "discovery": plan.spec.discovery },
            });
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let (api, name) = (api.clone(), name.clone());
            async move { api.patch(&name, &pp, &Patch::Merge(&body)).await }
        };
        let empty = plan.spec.resources.is_empty() && plan.spec.discovery.is_none();
        if empty && current.is_some() {
            replace(metadata).await.map_err(err)?;
        } else {
            let body = json!({
                "apiVersion": MacvtapNodeState::api_version(&()),
                "kind": MacvtapNodeState::kind(&()),
                "metadata": metadata.clone(),
                "spec": plan.spec,
            });
            let applied = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map_err(err)?;
            if applied.spec != plan.spec {
                ctx.metrics.wrote("macvtapnodestates", "apply");
                replace(metadata).await.map_err(err)?;
            }
        }
        ctx.metrics.wrote("macvtapnodestates", "apply");
        debug!(node = %name, resources = ?plan.spec.resources, "node state written");
    }
    ctx.succeeded(NODE_STATE, &name);
    Ok(Action::requeue(ctx.settings.resync))
}

async fn reconcile_gc(state: Arc<MacvtapNodeState>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = state.name_any();
    let _timer = ctx.metrics.reconcile_started(NODE_STATE_GC, &name);
    ctx.wait_synced().await?;
    if ctx.nodes.get(&ObjectRef::new(&name)).is_some() {
        return Ok(Action::await_change());
    }
    let dp = DeleteParams {
        // Only the object we looked at: a state recreated for a new Node of the same name stays.
        preconditions: Some(Preconditions {
            uid: state.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match Api::<MacvtapNodeState>::all(ctx.client.clone())
        .delete(&name, &dp)
        .await
    {
        Ok(_) => {
            ctx.metrics.wrote("macvtapnodestates", "delete");
            info!(node = %name, "node gone; node state deleted");
        }
        // Already gone, or replaced by a newer object: nothing of ours left to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(source) => return Err(Error::DeleteNodeState { name, source }),
    }
    ctx.succeeded(NODE_STATE_GC, &name);
    Ok(Action::await_change())
}

fn conflict_message(pool: &MacvtapPool) -> Option<String> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == CONFLICT && c.status == "True")
        .map(|c| c.message.clone())
}

fn now_seconds() -> Time {
    // The API server keeps seconds; computing with seconds keeps cached and computed conditions comparable.
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

async fn reconcile_pool(pool: Arc<MacvtapPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = pool.name_any();
    let _timer = ctx.metrics.reconcile_started(POOL_STATUS, &name);
    ctx.wait_synced().await?;
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pools = ctx.pools.state();
    let all: Vec<&MacvtapPool> = pools.iter().map(|p| p.as_ref()).collect();
    let nodes = ctx.nodes.state();
    let threshold = ctx.settings.agent_stale_after;
    let mut next_check = ctx.settings.resync;
    let labels: Vec<(String, Labels, Option<Arc<MacvtapNodeState>>, bool)> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let state = ctx.states.get(&ObjectRef::new(&name));
            let age = state
                .as_ref()
                .filter(|s| s.status.is_some())
                .and_then(|_| ctx.heartbeats.age(&name));
            let stale = age.is_some_and(|a| a > threshold);
            if let Some(a) = age.filter(|_| !stale) {
                // Look again right after this agent would turn stale.
                next_check = next_check.min(threshold - a + Duration::from_millis(500));
            }
            (name, node_labels(n), state, stale)
        })
        .collect();
    let views = labels.iter().map(|(name, labels, state, stale)| NodeView {
        name,
        labels,
        state: state.as_deref(),
        stale: *stale,
    });
    let report = pool_status::compute(&pool, &all, views, &now_seconds());

    if pool.status.as_ref() != Some(&report.status) {
        let body = json!({
            "apiVersion": MacvtapPool::api_version(&()),
            "kind": MacvtapPool::kind(&()),
            "status": report.status,
        });
        Api::<MacvtapPool>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|source| Error::PoolStatus {
                name: name.clone(),
                source,
            })?;
        ctx.metrics.wrote("macvtappools", "apply-status");
    }

    publish_conflict_event(&pool, &report, &ctx).await;
    ctx.succeeded(POOL_STATUS, &name);
    Ok(Action::requeue(next_check))
}

/// An Event when a pool starts losing a conflict (or loses a different one), and when it stops.
async fn publish_conflict_event(
    pool: &MacvtapPool,
    report: &pool_status::PoolReport,
    ctx: &Context,
) {
    let name = pool.name_any();
    let now = report
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONFLICT && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()));
    let cached = conflict_message(pool);
    let event = {
        let mut published = ctx.published_conflicts.lock().expect("poisoned");
        let last = published.get(&name).cloned().or(cached);
        match (&now, last) {
            (Some((reason, message)), last) if last.as_deref() != Some(message.as_str()) => {
                published.insert(name.clone(), message.clone());
                Some(KubeEvent {
                    type_: EventType::Warning,
                    reason: reason.clone(),
                    note: Some(truncate(message, 1000)),
                    action: "Reconcile".into(),
                    secondary: None,
                })
            }
            (None, Some(_)) => {
                published.remove(&name);
                Some(KubeEvent {
                    type_: EventType::Normal,
                    reason: "ConflictResolved".into(),
                    note: Some("no other pool claims the same resources any more".into()),
                    action: "Reconcile".into(),
                    secondary: None,
                })
            }
            _ => None,
        }
    };
    if let Some(event) = event {
        // An Event is informational: a failure is logged, never retried into a status flap.
        match ctx.recorder.publish(&event, &pool.object_ref(&())).await {
            Ok(()) => ctx.metrics.wrote("events", "create"),
            Err(e) => warn!(pool = %name, error = %e, "publishing event"),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Remembers the pools as last seen, to find the nodes a change affects (old and new selection).
#[derive(Default)]
struct PoolIndex {
    pools: HashMap<String, Arc<MacvtapPool>>,
    /// Names seen during a relist, to detect pools deleted while the watch was down.
    relisting: Option<HashSet<String>>,
}

/// The nodes whose desired state may change when a pool goes from `old` to `new`.
fn affected_nodes(
    old: Option<&MacvtapPool>,
    new: Option<&MacvtapPool>,
    nodes: &Store<NodeMeta>,
    states: &Store<MacvtapNodeState>,
) -> BTreeSet<String> {
    let mut affected = BTreeSet::new();
    for node in nodes.state() {
        let labels = node_labels(&node);
        if old.is_some_and(|p| pool_selects(p, &labels))
            || new.is_some_and(|p| pool_selects(p, &labels))
        {
            affected.insert(node.name_any());
        }
    }
    // Nodes whose written state names the pool, in case the node cache moved on since.
    let pool_name = old.or(new).map(|p| p.name_any()).unwrap_or_default();
    for state in states.state() {
        let spec = &state.spec;
        if spec.resources.iter().any(|r| r.pool == pool_name)
            || spec.discovery.as_ref().is_some_and(|d| d.pool == pool_name)
        {
            affected.insert(state.name_any());
        }
    }
    affected
}

/// The spec-relevant identity of a pool version: a status-only write keeps it.
fn same_spec(a: &MacvtapPool, b: &MacvtapPool) -> bool {
    a.metadata.uid == b.metadata.uid
        && a.metadata.generation == b.metadata.generation
        && a.metadata.deletion_timestamp == b.metadata.deletion_timestamp
}

struct Triggers {
    nodes: UnboundedSender<ObjectRef<NodeMeta>>,
    gc: UnboundedSender<ObjectRef<MacvtapNodeState>>,
    gc_all: UnboundedSender<()>,
    status_all: UnboundedSender<()>,
    metrics: Metrics,
}

impl Triggers {
    fn node(&self, name: &str) {
        self.metrics.enqueued(NODE_STATE, name);
        let _ = self.nodes.unbounded_send(ObjectRef::new(name));
    }
    fn gc(&self, name: &str) {
        self.metrics.enqueued(NODE_STATE_GC, name);
        let _ = self.gc.unbounded_send(ObjectRef::new(name));
    }
    fn gc_all(&self) {
        let _ = self.gc_all.unbounded_send(());
    }
    fn status_all(&self) {
        let _ = self.status_all.unbounded_send(());
    }
}

/// Removes `macvtap.network.kubevirt.io/<resource>` from a Node's status when nothing serves it any more and
/// nothing is allocated: the kubelet keeps advertising 0 of a resource whose plugin went away.
async fn clean_stale_node_resource(
    client: Client,
    node: String,
    resource: String,
    metrics: Metrics,
) {
    let key = macvtap_api::extended_resource_name(&resource)
        .replace('~', "~0")
        .replace('/', "~1");
    let patch: Vec<serde_json::Value> = vec![
        json!({"op": "test", "path": format!("/status/allocatable/{key}"), "value": "0"}),
        json!({"op": "remove", "path": format!("/status/allocatable/{key}")}),
        json!({"op": "remove", "path": format!("/status/capacity/{key}")}),
    ];
    let patch: json_patch::Patch = match serde_json::from_value(json!(patch)) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "building node status patch");
            return;
        }
    };
    match Api::<Node>::all(client)
        .patch_status(&node, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            metrics.wrote("nodes", "patch-status");
            info!(%node, %resource, "removed stale extended resource from node status");
        }
        // Not there, or still advertised/allocated (the test op failed): leave it.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 404 || e.code == 409 => {
            debug!(%node, %resource, reason = %e.message, "node status left alone");
        }
        Err(e) => warn!(%node, %resource, error = %e, "cleaning node status"),
    }
}

fn handle_pool_event(
    event: &Event<MacvtapPool>,
    index: &mut PoolIndex,
    nodes: &Store<NodeMeta>,
    states: &Store<MacvtapNodeState>,
    triggers: &Triggers,
) -> Vec<(MacvtapPool, BTreeSet<String>)> {
    let mut deleted = Vec::new();
    let changed = |old: Option<Arc<MacvtapPool>>, new: Option<&MacvtapPool>| {
        for node in affected_nodes(old.as_deref(), new, nodes, states) {
            triggers.node(&node);
        }
        triggers.status_all();
    };
    let apply = |pool: &MacvtapPool, index: &mut PoolIndex| {
        let name = pool.name_any();
        if let Some(seen) = index.relisting.as_mut() {
            seen.insert(name.clone());
        }
        let old = index.pools.insert(name, Arc::new(pool.clone()));
        if old.as_deref().is_none_or(|o| !same_spec(o, pool)) {
            changed(old, Some(pool));
        }
    };
    match event {
        Event::Apply(pool) | Event::InitApply(pool) => apply(pool, index),
        Event::Delete(pool) => {
            let old = index.pools.remove(&pool.name_any());
            let had = affected_nodes(old.as_deref(), Some(pool), nodes, states);
            changed(old, Some(pool));
            deleted.push((pool.clone(), had));
        }
        Event::Init => index.relisting = Some(HashSet::new()),
        Event::InitDone => {
            debug!("pool cache synced");
            let seen = index.relisting.take().unwrap_or_default();
            let gone: Vec<String> = index
                .pools
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for name in gone {
                if let Some(old) = index.pools.remove(&name) {
                    let had = affected_nodes(Some(&old), None, nodes, states);
                    deleted.push(((*old).clone(), had));
                    changed(Some(old), None);
                }
            }
            triggers.status_all();
        }
    }
    deleted
}

fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Runs the watches and the three controllers until dropped. Returns only if every controller stream ended.
pub async fn run(client: Client, settings: Settings, metrics: Metrics, synced: Arc<AtomicBool>) {
    let pools_api = Api::<MacvtapPool>::all(client.clone());
    let nodes_api = Api::<NodeMeta>::all(client.clone());
    let states_api = Api::<MacvtapNodeState>::all(client.clone());
    let (pools, pools_writer) = reflector::store::<MacvtapPool>();
    let (nodes, nodes_writer) = reflector::store::<NodeMeta>();
    let (states, states_writer) = reflector::store::<MacvtapNodeState>();

    let (node_tx, node_rx) = unbounded();
    let (gc_tx, gc_rx) = unbounded();
    let (gc_all_tx, gc_all_rx) = unbounded();
    let (status_tx, status_rx) = unbounded();
    let triggers = Arc::new(Triggers {
        nodes: node_tx,
        gc: gc_tx,
        gc_all: gc_all_tx,
        status_all: status_tx,
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
        failures: Mutex::default(),
        published_conflicts: Mutex::default(),
        synced_rx,
    });

    // Nodes: metadata only (labels and uid are all we need; Node status is large and changes often).
    let node_events = triggers.clone();
    let label_changes = triggers.clone();
    let node_stream = watch(nodes_api, watcher_config())
        .default_backoff()
        .reflect(nodes_writer)
        .inspect(move |ev| match ev {
            Ok(Event::Delete(n)) => {
                node_events.gc(&n.name_any());
                node_events.status_all();
            }
            Ok(Event::InitDone) => {
                debug!("node cache synced");
                node_events.gc_all();
                node_events.status_all();
            }
            _ => {}
        })
        .applied_objects()
        // Only label changes (and new uids) matter; kubelet heartbeats on Node status are filtered out here.
        .predicate_filter(predicates::labels, Default::default())
        .inspect(move |n| {
            if let Ok(n) = n {
                label_changes.metrics.enqueued(NODE_STATE, &n.name_any());
                label_changes.status_all();
            }
        });

    // Pools: the cache, plus the node triggers computed from old and new versions.
    let pool_triggers = triggers.clone();
    let (pool_nodes, pool_states, pool_cache) = (nodes.clone(), states.clone(), pools.clone());
    let clean = settings.clean_stale_node_resources;
    let pool_client = client.clone();
    let pool_metrics = metrics.clone();
    let mut index = PoolIndex::default();
    let pool_driver = watch(pools_api, watcher_config())
        .default_backoff()
        .reflect(pools_writer)
        .for_each(move |ev| {
            match ev {
                Ok(ev) => {
                    let deleted = handle_pool_event(
                        &ev,
                        &mut index,
                        &pool_nodes,
                        &pool_states,
                        &pool_triggers,
                    );
                    if clean {
                        for (pool, nodes) in deleted {
                            spawn_cleanup(
                                &pool_client,
                                &pool_metrics,
                                &pool,
                                nodes,
                                (&pool_cache, &pool_nodes),
                            );
                        }
                    }
                }
                Err(e) => warn!(error = %e, "MacvtapPool watch error; retrying"),
            }
            future::ready(())
        });

    // Node states: the cache; orphans go to the GC, spec edits by others back to the node reconciler.
    let state_triggers = triggers.clone();
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let state_driver = watch(states_api, watcher_config())
        .default_backoff()
        .reflect(states_writer)
        .for_each(move |ev| {
            match ev {
                Ok(Event::Apply(s) | Event::InitApply(s)) => {
                    let name = s.name_any();
                    heartbeats.observe(&s);
                    state_triggers.gc(&name);
                    if generations.insert(name.clone(), s.metadata.generation)
                        != Some(s.metadata.generation)
                    {
                        state_triggers.node(&name);
                    }
                    state_triggers.status_all();
                }
                Ok(Event::Delete(s)) => {
                    let name = s.name_any();
                    generations.remove(&name);
                    heartbeats.forget(&name);
                    // Recreated if its Node still exists.
                    state_triggers.node(&name);
                    state_triggers.status_all();
                }
                Ok(Event::InitDone) => {
                    debug!("node state cache synced");
                    state_triggers.gc_all();
                    state_triggers.status_all();
                }
                Ok(Event::Init) => {}
                Err(e) => warn!(error = %e, "MacvtapNodeState watch error; retrying"),
            }
            future::ready(())
        });

    let node_controller = Controller::for_stream(node_stream, nodes.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .reconcile_on(node_rx)
        .run(reconcile_node, error_policy(NODE_STATE), ctx.clone())
        .for_each(report(NODE_STATE, metrics.clone()));
    let gc_controller = Controller::for_stream(never(), states.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .reconcile_on(gc_rx)
        .reconcile_all_on(gc_all_rx)
        .run(reconcile_gc, error_policy(NODE_STATE_GC), ctx.clone())
        .for_each(report(NODE_STATE_GC, metrics.clone()));
    let status_controller = Controller::for_stream(never(), pools.clone())
        .with_config(ControllerConfig::default().concurrency(4))
        .reconcile_all_on(throttled(status_rx, STATUS_PERIOD))
        .run(reconcile_pool, error_policy(POOL_STATUS), ctx.clone())
        .for_each(report(POOL_STATUS, metrics.clone()));

    info!("controllers started");
    future::join(
        sync_waiter,
        future::join5(
            pool_driver,
            state_driver,
            node_controller,
            gc_controller,
            status_controller,
        ),
    )
    .map(|_| ())
    .await;
}

/// Pool status is recomputed at most this often: every node state change asks for it, and one pass covers all.
const STATUS_PERIOD: Duration = Duration::from_millis(500);

/// Passes the first trigger at once, then at most one per `period` (triggers in between are merged into it).
fn throttled(rx: UnboundedReceiver<()>, period: Duration) -> impl Stream<Item = ()> + Send {
    stream::unfold((rx, false), move |(mut rx, throttling)| async move {
        if throttling {
            tokio::time::sleep(period).await;
            let mut merged = false;
            while rx.try_recv().is_ok() {
                merged = true;
            }
            if merged {
                return Some(((), (rx, true)));
            }
        }
        rx.next().await?;
        Some(((), (rx, true)))
    })
}

/// A trigger stream that never yields: the GC and status controllers are driven by `reconcile_on` alone, and
/// their caches are filled by the drivers.
fn never<K: Send + 'static>() -> impl Stream<Item = Result<K, watcher::Error>> + Send {
    stream::pending()
}

fn spawn_cleanup(
    client: &Client,
    metrics: &Metrics,
    pool: &MacvtapPool,
    nodes: BTreeSet<String>,
    caches: (&Store<MacvtapPool>, &Store<NodeMeta>),
) {
    let Some(resource) = pool.resource_name() else {
        return;
    };
    let (client, metrics) = (client.clone(), metrics.clone());
    let (pools, node_cache) = (caches.0.clone(), caches.1.clone());
    tokio::spawn(async move {
        for node in nodes {
            // Another pool may serve the same name there now (e.g. the loser of a conflict takes over).
            let labels = node_cache
                .get(&ObjectRef::new(&node))
                .map(|n| node_labels(&n))
                .unwrap_or_default();
            let still_served = plan_node(pools.state().iter().map(|p| p.as_ref()), &labels)
                .spec
                .resources
                .iter()
                .any(|r| r.name == resource);
            if !still_served {
                clean_stale_node_resource(client.clone(), node, resource.clone(), metrics.clone())
                    .await;
            }
        }
    });
}

fn error_policy<K: Resource>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, error, ctx| {
        let name = obj.meta().name.clone().unwrap_or_default();
        ctx.metrics.reconcile_failed(controller, error.kind());
        let delay = ctx.backoff(controller, &name);
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
