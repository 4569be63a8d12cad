//! macvtap-operator: turns cluster-wide `MacvtapPool`s into one `MacvtapNodeState` per Node, and reports pool
//! status from what the node agents observe.

pub mod cli;
pub mod controller;
pub mod health;
pub mod heartbeats;
pub mod injector;
pub mod metrics;
pub mod pool_status;
pub mod selection;
#[cfg(test)]
mod test_objects;
