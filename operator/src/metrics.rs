//! Prometheus metrics of the operator, served on `/metrics`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: &'static str,
    pub verb: &'static str,
}

/// Controller names used as metric labels.
pub const NODE_STATE: &str = "nodestate";
pub const NODE_STATE_GC: &str = "nodestate-gc";
pub const POOL_STATUS: &str = "poolstatus";

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: HistogramFamily,
    pub queue_depth: Family<ControllerLabels, Gauge>,
    /// Every write request sent to the API server, so "writes only when the desired state changes" is visible.
    pub writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    pending: Arc<Mutex<HashSet<(&'static str, String)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            queue_depth: Family::default(),
            writes: Family::default(),
            leader: Gauge::default(),
            pending: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("macvtap_operator");
        r.register("reconciliations", "Reconciles run", self.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            self.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            self.duration.clone(),
        );
        r.register(
            "queue_depth",
            "Objects waiting for a reconcile (triggered, not started yet)",
            self.queue_depth.clone(),
        );
        r.register(
            "api_writes",
            "Write requests sent to the API server",
            self.writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
    }

    /// Records that `name` waits for a reconcile by `controller`. The queue of kube-runtime is not observable,
    /// so depth is tracked here: triggers add, reconcile starts (or drops) remove, duplicates count once as in
    /// the real queue.
    pub fn enqueued(&self, controller: &'static str, name: &str) {
        let mut pending = self.pending.lock().expect("pending set poisoned");
        if pending.insert((controller, name.to_string())) {
            self.queue_depth
                .get_or_create(&ControllerLabels { controller })
                .inc();
        }
    }

    /// Records that `name` no longer waits (its reconcile started, or the trigger was dropped).
    pub fn dequeued(&self, controller: &'static str, name: &str) {
        let mut pending = self.pending.lock().expect("pending set poisoned");
        if pending.remove(&(controller, name.to_string())) {
            self.queue_depth
                .get_or_create(&ControllerLabels { controller })
                .dec();
        }
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self, controller: &'static str, name: &str) -> ReconcileTimer {
        self.dequeued(controller, name);
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            histogram: self
                .duration
                .get_or_create(&ControllerLabels { controller })
                .clone(),
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    pub fn wrote(&self, resource: &'static str, verb: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { resource, verb })
            .inc();
    }

    /// Total writes of `resource` with `verb` so far.
    pub fn writes_of(&self, resource: &'static str, verb: &'static str) -> u64 {
        self.writes
            .get_or_create(&WriteLabels { resource, verb })
            .get()
    }

    /// Total reconciles of `controller` so far.
    pub fn reconciles_of(&self, controller: &'static str) -> u64 {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .get()
    }
}

/// Observes a reconcile's duration on drop.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_counts_distinct_waiting_objects() {
        let m = Metrics::default();
        let depth = || {
            m.queue_depth
                .get_or_create(&ControllerLabels {
                    controller: NODE_STATE,
                })
                .get()
        };
        m.enqueued(NODE_STATE, "a");
        m.enqueued(NODE_STATE, "a");
        m.enqueued(NODE_STATE, "b");
        assert_eq!(depth(), 2);
        drop(m.reconcile_started(NODE_STATE, "a"));
        assert_eq!(depth(), 1);
        m.dequeued(NODE_STATE, "zzz");
        assert_eq!(depth(), 1);
        assert_eq!(m.reconciles_of(NODE_STATE), 1);

        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("macvtap_operator_queue_depth{controller=\"nodestate\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "macvtap_operator_reconcile_duration_seconds_count{controller=\"nodestate\"} 1"
            ),
            "{text}"
        );
    }
}
