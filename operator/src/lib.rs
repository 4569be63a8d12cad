//! macvtap-operator: turns cluster-wide `MacvtapPool`s into one `MacvtapNodeState` per Node, and reports pool
//! status from what the node agents observe.

pub mod cli;
pub mod controller;
pub mod heartbeats;
pub mod metrics;
pub mod pool_status;
pub mod selection;
pub mod server;
pub mod telemetry;
#[cfg(test)]
mod test_objects;
