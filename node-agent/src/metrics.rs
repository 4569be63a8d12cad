//! Prometheus metrics of the agent (prometheus-client, OpenMetrics text on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

impl ResourceLabel {
    pub fn new(resource: &str) -> Self {
        Self {
            resource: resource.to_string(),
        }
    }
}

/// Why something was skipped: a fixed set of values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What was repaired in the state directory: a fixed set of values (see [`crate::records::Repair`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    pub what: &'static str,
}

/// Every metric the agent exports.
#[derive(Default)]
pub struct Metrics {
    /// Device IDs for which Allocate created a macvtap link.
    pub allocations: Family<ResourceLabel, Counter>,
    /// Device IDs Allocate could not serve.
    pub allocation_failures: Family<ResourceLabel, Counter>,
    /// Devices currently advertised Healthy.
    pub healthy_devices: Family<ResourceLabel, Gauge>,
    /// Accepted registrations with the kubelet.
    pub registrations: Family<ResourceLabel, Counter>,
    /// Failed registration attempts.
    pub registration_failures: Family<ResourceLabel, Counter>,
    /// Open ListAndWatch streams (a leak shows as a number above 1 per resource).
    pub list_and_watch_streams: Family<ResourceLabel, Gauge>,
    /// Orphaned host links removed by cleanup.
    pub links_removed: Counter,
    /// Tap indices (and their allocation records) released by cleanup once no pod holds the device.
    pub tap_indices_released: Counter,
    /// Leftovers of a crash or garbage found in the state directory and repaired, by what was done.
    pub state_repaired: Family<WhatLabel, Counter>,
    /// Links of the original macvtap-cni adopted (marker set) for one of our slots.
    pub links_adopted: Counter,
    /// Cleanup passes that removed nothing on purpose, by reason (`pod_resources_unreachable`,
    /// `links_unreadable`).
    pub cleanup_skipped: Family<ReasonLabel, Counter>,
    /// 1 when the latest cleanup pass ran, 0 when it was skipped.
    pub cleanup_active: Gauge,
    /// Times the netlink link monitor lost its event stream and subscribed again.
    pub netlink_resubscriptions: Counter,
    /// Configuration updates rejected (the last good configuration stays in effect).
    pub config_errors: Counter,
    /// Resources currently served.
    pub resources: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("macvtap_agent");
        r.register(
            "allocations",
            "Device IDs for which Allocate created a macvtap link",
            self.allocations.clone(),
        );
        r.register(
            "allocation_failures",
            "Device IDs Allocate could not serve",
            self.allocation_failures.clone(),
        );
        r.register(
            "healthy_devices",
            "Devices advertised Healthy to the kubelet",
            self.healthy_devices.clone(),
        );
        r.register(
            "registrations",
            "Registrations accepted by the kubelet",
            self.registrations.clone(),
        );
        r.register(
            "registration_failures",
            "Registration attempts that failed",
            self.registration_failures.clone(),
        );
        r.register(
            "list_and_watch_streams",
            "Open ListAndWatch streams",
            self.list_and_watch_streams.clone(),
        );
        r.register(
            "links_removed",
            "Orphaned host macvtap links removed by cleanup",
            self.links_removed.clone(),
        );
        r.register(
            "tap_indices_released",
            "Tap indices and allocation records released by cleanup",
            self.tap_indices_released.clone(),
        );
        r.register(
            "state_repaired",
            "Crash leftovers or garbage in the state directory repaired (temporary file removed, unowned reservation reclaimed, record re-derived or removed, tap-index key replaced)",
            self.state_repaired.clone(),
        );
        r.register(
            "links_adopted",
            "Links of the original macvtap-cni adopted for one of our slots",
            self.links_adopted.clone(),
        );
        r.register(
            "cleanup_skipped",
            "Cleanup passes that removed nothing because the kubelet's PodResources (or the link table) could not be read",
            self.cleanup_skipped.clone(),
        );
        r.register(
            "cleanup_active",
            "1 when the latest cleanup pass ran, 0 when it was skipped",
            self.cleanup_active.clone(),
        );
        r.register(
            "netlink_resubscriptions",
            "Times the netlink link monitor lost its event stream and subscribed again",
            self.netlink_resubscriptions.clone(),
        );
        r.register(
            "config_errors",
            "Configuration updates rejected; the last good configuration stays in effect",
            self.config_errors.clone(),
        );
        r.register("resources", "Resources served", self.resources.clone());
    }
}
