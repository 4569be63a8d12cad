//! `MacvtapNodeState`: what one node serves. The operator writes the spec, that node's agent the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use macvtap_core::{DiscoveryConfig, MacvtapMode, NodeConfig, ResourceConfig};

/// The macvtap resources one node serves. Named after the node. The spec is written only by the operator, from
/// the MacvtapPools that select the node; the status only by that node's agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "macvtap.network.kubevirt.io",
    version = "v1alpha1",
    kind = "MacvtapNodeState",
    plural = "macvtapnodestates",
    singular = "macvtapnodestate",
    shortname = "mvns",
    category = "macvtap",
    status = "MacvtapNodeStateStatus",
    derive = "PartialEq",
    doc = "MacvtapNodeState is the per-node desired state (written by the operator) and observed state (written \
           by the node's agent) of macvtap resources. Its name is the node's name.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".status.agentVersion"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapNodeStateSpec {
    /// Resources with a named lower device; names are unique (a list map keyed by name).
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub resources: Vec<NodeResource>,
    /// When set, every physical link and bond of the node is served as a resource named after the link
    /// (names already in resources excepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<NodeDiscovery>,
}

/// One resource with a named lower device on this node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeResource {
    /// Resource name: macvtap.network.kubevirt.io/<name>.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The MacvtapPool this resource comes from.
    pub pool: String,
    /// Lower device on this node (per-node overrides already applied).
    #[schemars(length(min = 1, max = 15))]
    pub lower_device: String,
    /// macvtap mode.
    #[serde(default)]
    pub mode: MacvtapMode,
    /// Device slots to advertise.
    #[schemars(range(min = 1, max = 4096))]
    pub capacity: u32,
}

/// Discovery of lower devices on this node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDiscovery {
    /// The MacvtapPool that asked for discovery.
    pub pool: String,
    /// macvtap mode.
    #[serde(default)]
    pub mode: MacvtapMode,
    /// Device slots per discovered link.
    #[schemars(range(min = 1, max = 4096))]
    pub capacity: u32,
}

/// What the node's agent observes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapNodeStateStatus {
    /// The metadata.generation of the spec the agent serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Version of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// One entry per resource the agent serves (explicit and discovered).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub resources: Vec<NodeResourceStatus>,
    /// Cleanup of host links no pod holds: whether it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<NodeCleanupStatus>,
    /// When the agent last wrote this status. The agent writes at least every heartbeat period (30 seconds by
    /// default), so an old time means the agent is gone or cannot reach the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// The agent's cleanup of macvtap host links that no pod holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCleanupStatus {
    /// True while cleanup is skipped: the kubelet's PodResources API cannot be asked which devices pods hold (or
    /// the link table cannot be read), so no link is removed and orphaned links stay until it can run again.
    #[serde(default)]
    pub skipped: bool,
    /// Why cleanup is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of one resource on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeResourceStatus {
    /// Resource name.
    pub name: String,
    /// The pool it comes from, when served from a MacvtapNodeState.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Lower device.
    pub lower_device: String,
    /// The lower device exists on the node.
    #[serde(default)]
    pub lower_device_present: bool,
    /// The lower device is up (operationally).
    #[serde(default)]
    pub lower_device_up: bool,
    /// Device slots advertised.
    #[serde(default)]
    pub capacity: u32,
    /// Slots advertised Healthy.
    #[serde(default)]
    pub healthy: u32,
    /// Slots with a macvtap link allocated.
    #[serde(default)]
    pub allocated: u32,
    /// The kubelet accepted the device plugin's registration.
    #[serde(default)]
    pub registered: bool,
    /// Last error on this resource (registration, allocation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl MacvtapNodeStateSpec {
    /// The configuration the agent serves for this spec.
    pub fn to_node_config(&self) -> NodeConfig {
        NodeConfig {
            resources: self
                .resources
                .iter()
                .map(|r| ResourceConfig {
                    name: r.name.clone(),
                    lower_device: r.lower_device.clone(),
                    mode: r.mode,
                    capacity: r.capacity,
                    pool: Some(r.pool.clone()),
                })
                .collect(),
            discovery: self.discovery.as_ref().map(|d| DiscoveryConfig {
                mode: d.mode,
                capacity: d.capacity,
                pool: Some(d.pool.clone()),
            }),
        }
    }
}
