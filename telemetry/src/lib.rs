//! What the node agent and the operator run the same way, so both binaries behave alike towards the cluster:
//!
//! - [`logs`]: log setup (`--log-format text|json`, filtered by `RUST_LOG`, default `info`, to stderr).
//! - [`admin`]: the admin HTTP server: `/metrics` (OpenMetrics text of a prometheus-client registry), `/healthz`
//!   and `/readyz` answered by [`admin::Probes`] the caller supplies (only it knows what ready means).
//! - [`signals`]: SIGTERM/SIGINT → a cancelled [`CancellationToken`].
//!
//! Each binary keeps its own metric definitions and probe logic; this crate holds only the mechanics.

pub mod admin;
pub mod logs;
pub mod signals;

pub use tokio_util::sync::CancellationToken;
