//! The network-resources injector: a mutating admission webhook, served by every replica (not only the leader),
//! that adds `macvtap.network.kubevirt.io/<pool>` to the first container of a pod naming a macvtap
//! NetworkAttachmentDefinition, so users need not write the limit by hand; and a validating webhook that only
//! warns about macvtap NADs.
//!
//! - [`annotations`]: the Multus network-selection annotations (pure);
//! - [`mutate`]: pod + NADs → JSON patch + warnings (pure);
//! - [`nad_check`]: a NAD + the pools → warnings (pure);
//! - [`certs`]: CA and serving certificate, when to renew (pure, but for key generation);
//! - [`tls_secret`]: the Secret, the renewal writes, the CA bundle in the webhook configurations;
//! - [`server`]: HTTPS with a swappable certificate; [`webhooks`]: the two endpoints; [`metrics`].
//!
//! The API server sends only pods that carry one of the annotations (the chart's `matchConditions`), and none of
//! the release namespace or `kube-system` (its `namespaceSelector`): the operator's own pods never wait for it.

pub mod annotations;
pub mod certs;
pub mod metrics;
pub mod mutate;
pub mod nad_check;
pub mod server;
pub mod tls_secret;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use macvtap_api::MacvtapPool;
use tracing::{error, info, warn};

use metrics::InjectorMetrics;
use mutate::ResourceFilter;
use server::{ServingCert, TlsListener};
use tls_secret::SecretSettings;

/// The NetworkAttachmentDefinition kind (Multus' CRD).
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub filter: ResourceFilter,
    pub secret: SecretSettings,
}

/// Binds the webhook port (an error if taken: the pod must not run without it), then serves forever; `ready`
/// turns true once a serving certificate is loaded and the API server has the CA bundle to trust it.
pub async fn start(
    client: Client,
    settings: Settings,
    metrics: InjectorMetrics,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let serving = Arc::new(ServingCert::default());
    let listener = TlsListener::bind(settings.addr, serving.clone()).await?;
    info!(addr = %settings.addr, "serving the admission webhooks (HTTPS)");

    let nad_resource = nad_resource();
    let nads_writer = reflector::store::Writer::new(nad_resource.clone());
    let nads = nads_writer.as_reader();
    let nad_api: Api<DynamicObject> = Api::all_with(client.clone(), &nad_resource);
    tokio::spawn(
        reflector::reflector(nads_writer, watcher(nad_api, watcher::Config::default()))
            .default_backoff()
            .for_each(|e| async move {
                if let Err(e) = e {
                    warn!(error = %e, "NetworkAttachmentDefinition watch");
                }
            }),
    );
    let (pools, pools_writer) = reflector::store();
    tokio::spawn(
        reflector::reflector(
            pools_writer,
            watcher(
                Api::<MacvtapPool>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|e| async move {
            if let Err(e) = e {
                warn!(error = %e, "MacvtapPool watch (NAD warnings)");
            }
        }),
    );

    let certs = serving.clone();
    let secret_metrics = metrics.clone();
    let secret_client = client.clone();
    let secret_settings = settings.secret.clone();
    tokio::spawn(async move {
        tls_secret::run(
            secret_client,
            secret_settings,
            &certs,
            secret_metrics,
            &ready,
        )
        .await;
    });

    let app = webhooks::router(Arc::new(webhooks::Webhooks {
        nads,
        nad_resource,
        pools,
        filter: settings.filter,
        metrics,
    }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "webhook server stopped");
        }
    });
    Ok(())
}
