//! The network-resources injector on the real cluster: the API server calls the operator's webhook over TLS (the
//! operator's own CA, in the Secret, its bundle written into the MutatingWebhookConfiguration), every replica
//! serves it, the certificate keeps rotating (the suite's chart values make it live 90 s).
//!
//! [`admission`]: what the webhook does to pods and NADs; [`operations`]: the webhook while the operator is scaled
//! down, rotates its certificate, and its figures.

use std::io::Write as _;
use std::process::Stdio;

use serde_json::json;

use super::*;

mod admission;
mod operations;

pub use admission::*;
pub use operations::*;

const NAMESPACE: &str = "macvtap-system";
const DEPLOYMENT: &str = "macvtap-operator-operator";
const MUTATING: &str = "macvtap-operator-injector";
const SECRET: &str = "macvtap-operator-webhook-tls";

/// The pod as the user wrote it minus every container's `resources`.
pub fn without_resources(mut pod: Pod) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        for c in &mut spec.containers {
            c.resources = None;
        }
    }
    pod
}

/// The pod's first container asks for exactly `n` of the pool's resource, in requests and limits (what the
/// injector writes; the API server copies a limit into requests for a pod that set only the limit).
pub async fn ensure_injected(c: &Cluster, ns: &str, name: &str, pool: &str, n: i64) -> Result<()> {
    let pod = Api::<Pod>::namespaced(c.client(), ns).get(name).await?;
    let r = pod.spec.as_ref().context("spec")?.containers[0]
        .resources
        .clone()
        .unwrap_or_default();
    let res = resource_name(pool);
    let want = n.to_string();
    for (what, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        let got = map.as_ref().and_then(|m| m.get(&res)).map(|q| q.0.clone());
        ensure!(
            got.as_deref() == Some(want.as_str()),
            "pod {ns}/{name}: {what}[{res}] = {got:?}, want {want}"
        );
    }
    Ok(())
}

/// The pod's first container has no limits at all: the injector did not touch it.
async fn unmutated(c: &Cluster, ns: &str, name: &str) -> Result<bool> {
    let pod = Api::<Pod>::namespaced(c.client(), ns).get(name).await?;
    Ok(pod.spec.context("spec")?.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default()
        .is_empty())
}

/// `kubectl apply -f -` of `manifest`: (succeeded, stdout + stderr), where kubectl prints admission warnings.
fn kubectl_apply(c: &Cluster, manifest: &serde_json::Value) -> Result<(bool, String)> {
    let mut child = c
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn pod_manifest(
    name: &str,
    ns: &str,
    networks: Option<&str>,
    node: Option<&str>,
) -> serde_json::Value {
    let mut pod = serde_json::to_value(busybox(name, networks, None, node)).expect("pod JSON");
    pod["metadata"]["namespace"] = ns.into();
    pod
}

/// `/metrics` of every operator replica (through the API server's pod proxy).
async fn operator_metrics(c: &Cluster) -> Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(c.client(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    let mut out = Vec::new();
    for p in pods.items {
        out.push(c.kubectl_out(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/{NAMESPACE}/pods/{}:8080/proxy/metrics",
                p.name_any()
            ),
        ])?);
    }
    ensure!(!out.is_empty(), "no operator pods");
    Ok(out)
}

/// Sum over the replicas of the pod webhook's requests (every outcome).
async fn pod_requests(c: &Cluster) -> Result<u64> {
    let mut n = 0;
    for text in operator_metrics(c).await? {
        for l in text.lines() {
            if l.starts_with("macvtap_operator_webhook_requests_total{")
                && l.contains("webhook=\"pods\"")
            {
                n += l
                    .rsplit(' ')
                    .next()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    Ok(n)
}

/// p50 and p99 (upper bucket bounds, seconds) of the pod webhook's answer times, over every replica.
async fn webhook_latency(c: &Cluster) -> Result<(f64, f64, u64)> {
    let mut buckets: std::collections::BTreeMap<u64, (f64, u64)> = Default::default();
    for text in operator_metrics(c).await? {
        for l in text.lines().filter(|l| {
            l.starts_with("macvtap_operator_webhook_duration_seconds_bucket{")
                && l.contains("webhook=\"pods\"")
        }) {
            let le = l
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("+Inf");
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            let count: u64 = l.rsplit(' ').next().unwrap_or("0").parse()?;
            let e = buckets.entry(le.to_bits()).or_insert((le, 0));
            e.1 += count;
        }
    }
    let mut sorted: Vec<(f64, u64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last().map(|b| b.1).unwrap_or(0);
    let quantile = |q: f64| {
        sorted
            .iter()
            .find(|b| b.1 as f64 >= q * total as f64)
            .map(|b| b.0)
            .unwrap_or(f64::NAN)
    };
    Ok((quantile(0.5), quantile(0.99), total))
}
