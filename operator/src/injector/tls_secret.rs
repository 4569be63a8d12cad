//! Every replica, every few seconds: read the webhook Secret, renew what [`certs::renewal`] says is due (one
//! replica wins the write by `resourceVersion`, the others read its result), load the serving certificate, and
//! put the CA bundle into the webhook configurations. With cert-manager (`external`), only the load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::certs::{self, Bundle, CertSettings, TLS_CERT, TLS_KEY};
use super::metrics::InjectorMetrics;
use super::server::ServingCert;

/// Who makes the certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertSource {
    /// The operator: CA and serving certificate in the Secret, CA bundle into the webhook configurations.
    Operator,
    /// Someone else (cert-manager) writes the Secret and the CA bundle; the operator only serves.
    External,
}

#[derive(Debug, Clone)]
pub struct SecretSettings {
    pub namespace: String,
    pub secret: String,
    pub source: CertSource,
    pub cert: CertSettings,
    pub mutating_config: String,
    pub validating_config: Option<String>,
    pub check_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading Secret {0}: {1}")]
    Read(String, #[source] kube::Error),
    #[error("writing Secret {0}: {1}")]
    Write(String, #[source] kube::Error),
    #[error("Secret {0} has no {1} yet")]
    Missing(String, &'static str),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("loading the serving certificate: {0}")]
    Load(#[from] super::server::LoadError),
    #[error("writing the CA bundle into {0}: {1}")]
    CaBundle(String, #[source] kube::Error),
}

/// Runs forever; `ready` turns true after the first complete pass (certificate loaded and, when the operator makes
/// the certificates, the CA bundle in the webhook configurations): before that the API server could not trust us.
pub async fn run(
    client: Client,
    s: SecretSettings,
    serving: &ServingCert,
    metrics: InjectorMetrics,
    ready: &AtomicBool,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    loop {
        match sync_once(&client, &secrets, &s, serving, &metrics).await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tokio::time::sleep(s.check_every).await
            }
            Err(e) => {
                warn!(error = %e, "webhook certificate");
                tokio::time::sleep(Duration::from_secs(2).min(s.check_every)).await;
            }
        }
    }
}

async fn sync_once(
    client: &Client,
    secrets: &Api<Secret>,
    s: &SecretSettings,
    serving: &ServingCert,
    metrics: &InjectorMetrics,
) -> Result<(), SyncError> {
    let secret = secrets
        .get_opt(&s.secret)
        .await
        .map_err(|e| SyncError::Read(s.secret.clone(), e))?;
    let data: std::collections::BTreeMap<String, Vec<u8>> = secret
        .as_ref()
        .and_then(|x| x.data.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    if s.source == CertSource::External {
        let get = |k: &'static str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .ok_or_else(|| SyncError::Missing(s.secret.clone(), k))
        };
        if serving.load(&get(TLS_CERT)?, &get(TLS_KEY)?)? {
            info!(secret = %s.secret, "serving the webhook certificate from the Secret");
        }
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut bundle = Bundle::from_data(&data);
    if let Some(new) = certs::renewal(bundle.as_ref(), &s.cert, now)? {
        let mut obj = secret.clone().unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(s.secret.clone()),
                namespace: Some(s.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "macvtap-operator".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        });
        obj.data = Some(
            new.to_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        );
        // Create, or replace at the resourceVersion read: when two replicas renew at once one write wins,
        // the other gets a conflict and reads the winner's bundle next time.
        let written = match secret {
            None => secrets.create(&PostParams::default(), &obj).await,
            Some(_) => {
                secrets
                    .replace(&s.secret, &PostParams::default(), &obj)
                    .await
            }
        };
        match written {
            Ok(_) => {
                metrics.renewals.inc();
                info!(secret = %s.secret, not_after = %certs::not_after(&new.cert)?, "webhook certificate written");
                bundle = Some(new);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                info!(secret = %s.secret, "another replica renewed the webhook certificate first");
                return Box::pin(sync_once(client, secrets, s, serving, metrics)).await;
            }
            Err(e) => return Err(SyncError::Write(s.secret.clone(), e)),
        }
    }
    let bundle = bundle.ok_or_else(|| SyncError::Missing(s.secret.clone(), TLS_CERT))?;
    if serving.load(&bundle.cert, &bundle.key)? {
        info!(not_after = %certs::not_after(&bundle.cert)?, "serving a new webhook certificate");
    }
    metrics
        .cert_expiry
        .set(certs::not_after(&bundle.cert)?.unix_timestamp());
    let ca = bundle.ca_bundle(now).into_bytes();
    set_ca_bundle::<MutatingWebhookConfiguration>(client, &s.mutating_config, &ca).await?;
    if let Some(v) = &s.validating_config {
        set_ca_bundle::<ValidatingWebhookConfiguration>(client, v, &ca).await?;
    }
    Ok(())
}

/// Writes `ca` into every webhook of the configuration whose `caBundle` differs (a JSON patch per webhook index:
/// the list has no merge key a merge patch could use). A missing configuration is not an error: the injector may
/// run without the chart (tests) or be turned off while the operator still runs.
async fn set_ca_bundle<K>(client: &Client, name: &str, ca: &[u8]) -> Result<(), SyncError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let Some(config) = api
        .get_opt(name)
        .await
        .map_err(|e| SyncError::CaBundle(name.to_string(), e))?
    else {
        return Ok(());
    };
    let value = serde_json::to_value(&config).unwrap_or_default();
    let want = serde_json::to_value(ByteString(ca.to_vec())).unwrap_or_default();
    let ops: Vec<Value> = value["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w["clientConfig"]["caBundle"] != want)
        .map(|(i, _)| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}))
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).expect("JSON patch operations");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|e| SyncError::CaBundle(name.to_string(), e))?;
    info!(
        config = name,
        "CA bundle written into the webhook configuration"
    );
    Ok(())
}
