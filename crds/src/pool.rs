//! `MacvtapPool`: a cluster-wide request to offer macvtap interfaces on a host NIC of every matching node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use macvtap_core::{DEFAULT_CAPACITY, MacvtapMode};

fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

/// Core's rule for the modes that take a lower device whole, as a CEL rule of the schema.
fn whole_device_capacity() -> Rule {
    let (rule, message) = MacvtapMode::whole_device_capacity_rule();
    Rule::new(rule).message(message.as_str())
}

/// A pool of macvtap interfaces on a lower device (a host NIC), offered to pods as the kubelet extended resource
/// `macvtap.network.kubevirt.io/<resourceName>` on every node the pool selects. A pod asks for one with
/// `resources.limits: {macvtap.network.kubevirt.io/<name>: 1}` and a NetworkAttachmentDefinition of type `macvtap`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "macvtap.network.kubevirt.io",
    version = "v1alpha1",
    kind = "MacvtapPool",
    plural = "macvtappools",
    singular = "macvtappool",
    shortname = "mvp",
    category = "macvtap",
    status = "MacvtapPoolStatus",
    derive = "PartialEq",
    doc = "MacvtapPool offers macvtap interfaces on a host NIC (the lower device) of every selected node as the \
           extended resource macvtap.network.kubevirt.io/<resourceName>.",
    printcolumn(name = "Lower Device", type_ = "string", json_path = ".spec.lowerDevice"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Capacity", type_ = "integer", json_path = ".spec.capacity"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodesReady", description = "nodes serving the pool"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocated"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "has(self.spec.discovery) || has(self.spec.resourceName) || self.metadata.name.size() <= 63"
    ).message("metadata.name: a pool without spec.resourceName is served under its name, which must be at most 63 characters")
)]
#[x_kube(
    validation = Rule::new("has(self.lowerDevice) != has(self.discovery)")
        .message("exactly one of spec.lowerDevice or spec.discovery must be set"),
    validation = Rule::new("!has(self.discovery) || !has(self.resourceName)")
        .message("spec.resourceName cannot be used with spec.discovery: discovered resources are named after their link"),
    validation = Rule::new("!has(self.discovery) || !has(self.lowerDeviceOverrides)")
        .message("spec.lowerDeviceOverrides cannot be used with spec.discovery"),
    validation = whole_device_capacity()
)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapPoolSpec {
    /// Host interface the macvtap links are created on, e.g. `eth0` or `bond0` (at most 15 characters).
    /// Exactly one of lowerDevice and discovery is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self.matches('^[^/:\\\\s]+$') && self != '.' && self != '..'")
        .message("must be a valid interface name: no '/', ':' or whitespace"))]
    pub lower_device: Option<String>,

    /// Discover lower devices instead of naming one: every physical link and bond of the node (not loopback,
    /// not bond members) becomes its own resource, named after the link, as the original `DP_MACVTAP_CONF=[]`
    /// did. Exactly one of lowerDevice and discovery is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<PoolDiscovery>,

    /// macvtap mode of the created interfaces: bridge (default), vepa, private, passthru or source.
    #[serde(default)]
    pub mode: MacvtapMode,

    /// How many interfaces each node offers (device slots advertised to the kubelet), 1 to 4096; default 100.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 4096))]
    pub capacity: u32,

    /// Extended resource name suffix, `macvtap.network.kubevirt.io/<resourceName>`. Defaults to the pool's
    /// name. Set it to keep a resource name that is not a valid object name, or to move a resource between pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')")
        .message("must consist of letters, digits, '-', '_' or '.', and start and end with a letter or digit"))]
    pub resource_name: Option<String>,

    /// Nodes that serve this pool. Empty or unset selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Per-node lower device names where NIC names differ between nodes: the first entry whose nodeSelector
    /// matches a node replaces lowerDevice on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub lower_device_overrides: Option<Vec<LowerDeviceOverride>>,
}

/// Discovery of lower devices (physical links and bonds).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolDiscovery {}

/// A lower device name for the nodes a selector matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LowerDeviceOverride {
    /// Nodes this override applies to.
    pub node_selector: LabelSelector,
    /// Lower device on those nodes (at most 15 characters).
    #[schemars(length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self.matches('^[^/:\\\\s]+$') && self != '.' && self != '..'")
        .message("must be a valid interface name: no '/', ':' or whitespace"))]
    pub lower_device: String,
}

/// Observed state of a pool, aggregated by the operator from the nodes' MacvtapNodeState status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapPoolStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready: every matched node serves the pool. Degraded: some node cannot (reason and nodes in the message).
    /// Conflict: another pool claims the same resource name or lower device on some node.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Nodes the pool's nodeSelector matches.
    #[serde(default)]
    pub nodes_matched: u32,
    /// Matched nodes whose agent reports the pool's lower device present and up.
    #[serde(default)]
    pub nodes_ready: u32,
    /// Device slots advertised over all matched nodes.
    #[serde(default)]
    pub capacity: u32,
    /// Healthy device slots over all matched nodes.
    #[serde(default)]
    pub allocatable: u32,
    /// Slots currently allocated to pods.
    #[serde(default)]
    pub allocated: u32,
}

impl MacvtapPool {
    /// The resource name this pool is served under, `None` for a discovery pool (named per link).
    pub fn resource_name(&self) -> Option<String> {
        if self.spec.discovery.is_some() {
            return None;
        }
        Some(
            self.spec
                .resource_name
                .clone()
                .unwrap_or_else(|| kube::ResourceExt::name_any(self)),
        )
    }
}
