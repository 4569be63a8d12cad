//! The two admission endpoints: `/mutate-pods` (the injector: [`mutate`] over the NAD cache) and
//! `/validate-nads` (warnings only: [`nad_check`] over the pool cache). Either answers 503 while its cache has not
//! synced, so the API server applies the configuration's `failurePolicy` instead of us guessing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, ConvertAdmissionReviewError,
};
use kube::runtime::reflector::{ObjectRef, Store};
use macvtap_api::MacvtapPool;
use tracing::{debug, info, warn};

use super::metrics::InjectorMetrics;
use super::mutate::{self, NadLookup, RESOURCE_NAME, ResourceFilter};
use super::nad_check::{self, ServedResources};

/// How long a request waits for a cache that is still filling (a replica just started).
const SYNC_WAIT: Duration = Duration::from_secs(5);

pub const PODS_PATH: &str = "/mutate-pods";
pub const NADS_PATH: &str = "/validate-nads";

/// What the handlers share.
pub struct Webhooks {
    pub nads: Store<DynamicObject>,
    pub nad_resource: ApiResource,
    pub pools: Store<MacvtapPool>,
    pub filter: ResourceFilter,
    pub metrics: InjectorMetrics,
}

pub fn router(w: Arc<Webhooks>) -> Router {
    Router::new()
        .route(PODS_PATH, post(pods))
        .route(NADS_PATH, post(nads))
        .with_state(w)
}

fn json(review: AdmissionReview<DynamicObject>) -> Response {
    match serde_json::to_vec(&review) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::time::timeout(SYNC_WAIT, store.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The request of an AdmissionReview body; an unreadable one is answered 400 and counted.
fn read_review<K>(
    w: &Webhooks,
    webhook: &'static str,
    body: &[u8],
    start: Instant,
) -> Result<AdmissionRequest<K>, Box<Response>>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    let parsed = serde_json::from_slice::<AdmissionReview<K>>(body)
        .map_err(|e| e.to_string())
        .and_then(|review| {
            review
                .try_into()
                .map_err(|e: ConvertAdmissionReviewError| e.to_string())
        });
    parsed.map_err(|e| {
        warn!(webhook, error = %e, "unreadable admission review");
        w.metrics
            .answered(webhook, "bad_request", start.elapsed().as_secs_f64());
        Box::new((StatusCode::BAD_REQUEST, e).into_response())
    })
}

async fn pods(State(w): State<Arc<Webhooks>>, body: Bytes) -> Response {
    let start = Instant::now();
    let request: AdmissionRequest<Pod> = match read_review(&w, "pods", &body, start) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if !synced(&w.nads).await {
        w.metrics
            .answered("pods", "not_synced", start.elapsed().as_secs_f64());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the NetworkAttachmentDefinition cache has not synced yet",
        )
            .into_response();
    }
    let mut response = AdmissionResponse::from(&request);
    let Some(pod) = request.object.as_ref() else {
        w.metrics
            .answered("pods", "unchanged", start.elapsed().as_secs_f64());
        return json(response.into_review());
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let m = mutate::mutate(pod, &namespace, &w.filter, |r| {
        let key = ObjectRef::new_with(&r.name, w.nad_resource.clone()).within(&r.namespace);
        match w.nads.get(&key) {
            None => NadLookup::Missing,
            Some(nad) => NadLookup::Found(
                nad.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(RESOURCE_NAME))
                    .cloned(),
            ),
        }
    });
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let outcome = if !m.patch.is_empty() {
        "patched"
    } else if !m.warnings.is_empty() {
        "warned"
    } else {
        "unchanged"
    };
    if !m.patch.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(m.patch))
            .expect("JSON patch operations");
        response = match response.with_patch(patch) {
            Ok(r) => r,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        };
        info!(pod = %name, %namespace, resources = ?m.resources, "device resources added");
    } else {
        debug!(pod = %name, %namespace, warnings = ?m.warnings, "pod admitted unchanged");
    }
    if !m.warnings.is_empty() {
        response.warnings = Some(m.warnings);
    }
    w.metrics
        .answered("pods", outcome, start.elapsed().as_secs_f64());
    json(response.into_review())
}

async fn nads(State(w): State<Arc<Webhooks>>, body: Bytes) -> Response {
    let start = Instant::now();
    let request: AdmissionRequest<DynamicObject> = match read_review(&w, "nads", &body, start) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let mut response = AdmissionResponse::from(&request);
    // Warnings only: without the pool cache we still check the NAD itself, assuming a discovery pool.
    let served = if synced(&w.pools).await {
        let mut s = ServedResources::default();
        for p in w.pools.state() {
            match p.resource_name() {
                Some(r) => {
                    s.names.insert(macvtap_core::extended_resource_name(&r));
                }
                None => s.discovery = true,
            }
        }
        s
    } else {
        ServedResources {
            discovery: true,
            ..Default::default()
        }
    };
    let warnings = request
        .object
        .as_ref()
        .map(|o| {
            nad_check::nad_warnings(
                &serde_json::to_value(o).unwrap_or_default(),
                &served,
                &w.filter,
            )
        })
        .unwrap_or_default();
    let outcome = if warnings.is_empty() {
        "unchanged"
    } else {
        "warned"
    };
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    w.metrics
        .answered("nads", outcome, start.elapsed().as_secs_f64());
    json(response.into_review())
}
