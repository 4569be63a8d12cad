//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to the API server (leader election running, or controllers started without it).
    pub started: AtomicBool,
    /// This replica leads and reconciles.
    pub leading: AtomicBool,
    /// The leader's caches are filled (shared with the controllers).
    pub synced: Arc<AtomicBool>,
}

impl Health {
    /// Ready: a standby replica as soon as it takes part in the election (it must be able to take over); the
    /// leader once its caches are synced.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && (!self.leading.load(Ordering::Acquire) || self.synced.load(Ordering::Acquire))
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds `addr` (errors surface before the operator starts) and returns the serving future.
pub async fn bind(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let state = AppState {
        registry: Arc::new(registry),
        health,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, async move { axum::serve(listener, app).await }))
}
