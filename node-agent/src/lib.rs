//! The macvtap node agent: one kubelet device plugin per macvtap resource, health from netlink events, macvtap
//! links created on Allocate, cleanup of orphaned links, `MacvtapNodeState.status`, and the CNI installer.
//!
//! - [`cli`]: the command line (`macvtap-agent`, `macvtap-agent install-cni`); `main.rs` only calls it.
//! - [`agent::run`] with [`agent::AgentOptions`]: the long-running agent, wiring the parts below.
//! - [`config`]: the configuration sources (legacy `DP_MACVTAP_CONF`, a watched file with the same JSON, the
//!   node's `MacvtapNodeState`).
//! - [`device_plugin`]: per resource, its device pool, the kubelet device plugin gRPC service, and registration.
//! - [`allocator`]: Allocate and PreStartContainer of one device ID (the tap index it answers, the host link, no
//!   squatter's tap); [`preferred`]: which slots GetPreferredAllocation offers first.
//! - [`link_writer`]: the one writer of host links (Allocate, adoption, cleanup take turns).
//! - [`resource_state`]: what each served resource reports (serving, registered, health, last error).
//! - [`netmon`]: host links pushed on link changes (the link crate's subscription); [`discovery`]: which resources
//!   the node serves (explicit ones, plus one per suitable link with discovery).
//! - [`records`]: this node's allocation records and tap-index reservations, repaired of crash leftovers;
//!   [`tap_index_key`]: the node-local secret that orders tap-index candidates; [`tap_owner`]: whose tap a
//!   device's index is when PreStartContainer runs (no squatting).
//! - [`cleanup`]: cleanup of host links no pod holds (asks the kubelet's PodResources); [`recent`]: the devices
//!   allocated lately, which Allocate notes and cleanup's grace period reads.
//! - [`original`]: the rule that adopts links the original kubevirt/macvtap-cni left for our slots, and the one
//!   adoption Allocate and cleanup both call.
//! - [`status`]: the status writer. [`install`]: `install-cni`. [`health`]: the probes; [`metrics`]: the
//!   agent's metrics (both served by `macvtap_telemetry::admin`).
//!
//! Every part the tasks share publishes its changes one way, on a `tokio::sync::watch` channel (links, the
//! device plugin directory, resource states, the cleanup report, the configuration); the only lock is the
//! link writer's turn, which is mutual exclusion, not publication.

pub mod agent;
pub mod allocator;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod device_plugin;
pub mod discovery;
pub mod health;
pub mod install;
pub mod link_writer;
pub mod metrics;
pub mod netmon;
pub mod original;
pub mod preferred;
pub mod recent;
pub mod records;
pub mod resource_state;
pub mod status;
pub mod tap_index_key;
pub mod tap_owner;

/// Version reported in `MacvtapNodeState.status.agentVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
