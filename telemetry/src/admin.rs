//! The admin HTTP server of both binaries: `/metrics`, `/healthz`, `/readyz`.
//!
//! Bound before the binary starts its work ([`AdminServer::bind`]): a taken port is a startup error, not a silent
//! absence of probes. The probes say what the caller's [`Probes`] say; this server adds no opinion of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The OpenMetrics text format `/metrics` answers in.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` and `/readyz` answer: `Ok(())` is 200 `ok`; `Err(body)` is 503 with that body.
pub trait Probes: Send + Sync + 'static {
    /// Live: the process can do its job (a failing liveness probe restarts it).
    fn live(&self) -> Result<(), String>;
    /// Ready: it does its job now.
    fn ready(&self) -> Result<(), String>;
}

/// A probe answer from a list of problems: none is `Ok`, else one line per problem.
pub fn from_problems(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n") + "\n")
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    probes: Arc<dyn Probes>,
}

fn answer(probe: Result<(), String>) -> (StatusCode, String) {
    match probe {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    answer(state.probes.live())
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    answer(state.probes.ready())
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The bound admin listener; [`AdminServer::serve`] answers on it.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: tokio::net::TcpListener::bind(addr).await?,
        })
    }

    /// The bound address (the port chosen for `:0`).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled (in-flight requests finish first).
    pub async fn serve(
        self,
        registry: Registry,
        probes: Arc<dyn Probes>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(AppState {
                registry: Arc::new(registry),
                probes,
            });
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Switch(AtomicBool);

    impl Probes for Switch {
        fn live(&self) -> Result<(), String> {
            Ok(())
        }
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::Acquire) {
                Ok(())
            } else {
                from_problems(vec![
                    "resource a: waiting".into(),
                    "resource b: down".into(),
                ])
            }
        }
    }

    /// (status, content type, body) of a GET.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, content_type, body.to_string())
    }

    #[tokio::test]
    async fn probes_and_metrics_answer_what_the_caller_says() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.sub_registry_with_prefix("macvtap_test").register(
            "events",
            "Events seen",
            counter.clone(),
        );
        counter.inc();
        let probes = Arc::new(Switch::default());
        let server = AdminServer::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let addr = server.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(registry, probes.clone(), stop.clone()));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "resource a: waiting\nresource b: down\n")
        );
        probes.0.store(true, Ordering::Release);
        let (code, ctype, body) = get(addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ok"));
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        let (code, ctype, body) = get(addr, "/metrics").await;
        assert_eq!((code, ctype.as_str()), (200, OPENMETRICS_CONTENT_TYPE));
        assert!(body.contains("macvtap_test_events_total 1\n"), "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);

        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
