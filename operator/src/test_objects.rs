//! Builders of the API objects the unit tests need (pools, labels, selectors, times).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use macvtap_api::{
    MacvtapMode, MacvtapNodeState, MacvtapNodeStateStatus, MacvtapPool, MacvtapPoolSpec,
    NodeResourceStatus,
};

use crate::selection::Labels;

/// A bridge pool spec on `lower` with capacity 10, selecting every node.
pub fn pool_spec(lower: &str) -> MacvtapPoolSpec {
    MacvtapPoolSpec {
        lower_device: Some(lower.into()),
        discovery: None,
        mode: MacvtapMode::Bridge,
        capacity: 10,
        resource_name: None,
        node_selector: None,
        lower_device_overrides: None,
    }
}

/// A pool created at second `created_s`.
pub fn pool(name: &str, created_s: i64, spec: MacvtapPoolSpec) -> MacvtapPool {
    let mut p = MacvtapPool::new(name, spec);
    p.metadata.creation_timestamp = Some(at(created_s));
    p
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A selector by `matchLabels`.
pub fn match_labels(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    })
}

/// The time `s` seconds after the epoch.
pub fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

/// A node state at spec generation 2 whose agent reports `entries` for that generation.
pub fn node_state(node: &str, entries: Vec<NodeResourceStatus>) -> MacvtapNodeState {
    let mut s = MacvtapNodeState::new(node, Default::default());
    s.metadata.generation = Some(2);
    s.status = Some(MacvtapNodeStateStatus {
        observed_generation: Some(2),
        resources: entries,
        ..Default::default()
    });
    s
}

/// What an agent reports for resource `name` of pool `name` on `eth1` (capacity 10, registered).
pub fn resource_status(
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
