//! The macvtap node agent: one kubelet device plugin per macvtap resource, health from netlink events, macvtap
//! links created on Allocate, cleanup of orphaned links, `MacvtapNodeState.status`, and the CNI installer.
//!
//! - [`agent::run`] with [`agent::AgentOptions`]: the long-running agent.
//! - [`config`]: the configuration sources (legacy `DP_MACVTAP_CONF`, a watched file with the same JSON, the
//!   node's `MacvtapNodeState`).
//! - [`plugin`]: the device plugin gRPC service and its registration lifecycle.
//! - [`allocator`]: preferred allocation and Allocate of one device ID (the host link, the tap it answers).
//! - [`netmon`]: host links pushed from rtnetlink multicast events; discovery rules.
//! - [`gc`]: cleanup of host links no pod holds (asks the kubelet's PodResources).
//! - [`original`]: the rule that adopts links the original kubevirt/macvtap-cni left for our slots.
//! - [`status`]: the status writer. [`install`]: `install-cni`. [`health`] and [`http`]: probes and metrics.

pub mod agent;
pub mod allocator;
pub mod config;
pub mod gc;
pub mod health;
pub mod http;
pub mod install;
pub mod metrics;
pub mod netmon;
pub mod original;
pub mod plugin;
pub mod shared;
pub mod status;

/// Version reported in `MacvtapNodeState.status.agentVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
