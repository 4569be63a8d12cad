//! The network-resources injector on the real cluster: the API server calls the operator's webhook over TLS (the
//! operator's own CA, in the Secret, its bundle written into the MutatingWebhookConfiguration), every replica
//! serves it, the certificate keeps rotating (the suite's chart values make it live 90 s).

use std::io::Write as _;
use std::process::Stdio;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::*;

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

/// The original README's pods and the kube-ovn variants, their `resources` removed: the injector adds the device.
pub async fn injector_original_pods(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    for file in ["original/pod.yaml", "original/pod-with-mac.yaml"] {
        let name = format!(
            "inj-{}",
            file.trim_start_matches("original/")
                .trim_end_matches(".yaml")
        );
        let pod = without_resources(example(file, Some(&name), Some("node-a"))?);
        let pod = c
            .run_pod(pod, RUN)
            .await
            .with_context(|| file.to_string())?;
        ensure_injected(c, "default", &name, "dataplane", 1).await?;
        let l = pod.net1()?;
        ensure!(l["linkinfo"]["info_kind"] == "macvtap", "{file}: net1 {l}");
        check_tap(&pod)?;
        c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    }
    kube_ovn_cases(c, true).await
}

/// One NAD twice, a NAD in another namespace, a limit the user already set, a NAD that does not exist.
pub async fn injector_attachments(c: &mut Cluster) -> Result<()> {
    c.apply_file(&config_file("original/nad-dataplane.yaml"))
        .await?;
    // Two attachments of one NAD: two devices, net1 and net2 both macvtaps.
    let pod = c
        .run_pod(
            busybox("inj-two", Some("dataplane,dataplane"), None, Some("node-a")),
            RUN,
        )
        .await?;
    ensure_injected(c, "default", "inj-two", "dataplane", 2).await?;
    for ifname in ["net1", "net2"] {
        let l = pod.link(ifname)?.with_context(|| format!("no {ifname}"))?;
        ensure!(l["linkinfo"]["info_kind"] == "macvtap", "{ifname}: {l}");
    }
    ensure!(pod.tap_devices().len() == 2, "taps {:?}", pod.tap_devices());
    c.delete_pod("default", "inj-two", GONE).await?;

    // A NAD in another namespace (namespace/name in the annotation).
    c.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: inj-other\n")
        .await?;
    let nad = std::fs::read_to_string(config_file("original/nad-dataplane.yaml"))?.replace(
        "  name: dataplane\n",
        "  name: dataplane\n  namespace: inj-other\n",
    );
    c.apply_yaml(&nad).await?;
    let pod = c
        .run_pod(
            busybox(
                "inj-other-ns",
                Some("inj-other/dataplane"),
                None,
                Some("node-b"),
            ),
            RUN,
        )
        .await?;
    ensure_injected(c, "default", "inj-other-ns", "dataplane", 1).await?;
    check_tap(&pod)?;
    c.delete_pod("default", "inj-other-ns", GONE).await?;

    // A limit the user set is kept: the original pod (1) unchanged; 2 for one attachment stays 2.
    let pod = original_pod(c, "inj-kept", "node-a").await?;
    ensure_injected(c, "default", "inj-kept", "dataplane", 1).await?;
    c.delete_pod(&pod.namespace, &pod.name, GONE).await?;
    let mut two = busybox(
        "inj-higher",
        Some("dataplane"),
        Some("dataplane"),
        Some("node-a"),
    );
    two.spec.as_mut().unwrap().containers[0]
        .resources
        .as_mut()
        .unwrap()
        .limits
        .as_mut()
        .unwrap()
        .insert(
            resource_name("dataplane"),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        );
    c.run_pod(two, RUN).await?;
    ensure_injected(c, "default", "inj-higher", "dataplane", 2).await?;
    c.delete_pod("default", "inj-higher", GONE).await?;

    // A NAD that does not exist: admitted unchanged, with a warning naming it.
    let (ok, out) = kubectl_apply(
        c,
        &pod_manifest("inj-missing", "default", Some("nope"), None),
    )?;
    eprintln!("   a pod naming a missing NAD, kubectl says:\n{out}");
    ensure!(ok, "refused: {out}");
    ensure!(
        out.contains(
            "Warning: macvtap injector: NetworkAttachmentDefinition default/nope not found"
        ),
        "{out}"
    );
    ensure!(
        unmutated(c, "default", "inj-missing").await?,
        "a pod naming a missing NAD got limits"
    );
    c.delete_pod("default", "inj-missing", GONE).await?;
    c.kubectl_out(&["delete", "namespace", "inj-other", "--wait=false"])?;
    Ok(())
}

/// Pods without the annotations (and pods of kube-system and the operator's namespace) never reach the webhook:
/// its own request counter does not move; a pod with one moves it by exactly one.
pub async fn injector_not_sent(c: &mut Cluster) -> Result<()> {
    let before = pod_requests(c).await?;
    let plain = c
        .run_pod(busybox("inj-plain", None, None, None), RUN)
        .await?;
    for ns in ["kube-system", NAMESPACE] {
        let (ok, out) = kubectl_apply(
            c,
            &pod_manifest("inj-excluded", ns, Some("dataplane"), Some("nowhere")),
        )?;
        ensure!(ok, "{ns}: {out}");
        ensure!(!out.contains("Warning"), "{ns}: {out}");
        ensure!(
            unmutated(c, ns, "inj-excluded").await?,
            "{ns}: the pod was mutated"
        );
        c.delete_pod(ns, "inj-excluded", GONE).await?;
    }
    let after = pod_requests(c).await?;
    ensure!(
        after == before,
        "webhook requests {before} -> {after} for pods that must not be sent"
    );
    // The counter does count: one pod naming a network, one request.
    let (ok, out) = kubectl_apply(
        c,
        &pod_manifest("inj-counted", "default", Some("dataplane"), Some("nowhere")),
    )?;
    ensure!(ok, "{out}");
    let counted = pod_requests(c).await?;
    ensure!(
        counted == before + 1,
        "webhook requests {before} -> {counted} for one pod"
    );
    eprintln!(
        "   webhook pod requests: {before} before, {after} after 3 pods not sent, {counted} after one sent"
    );
    c.delete_pod("default", "inj-counted", GONE).await?;
    c.delete_pod(&plain.namespace, &plain.name, GONE).await?;
    Ok(())
}

/// `kubectl apply` of macvtap NADs prints our warnings, and applies them all the same.
pub async fn injector_nad_warnings(c: &mut Cluster) -> Result<()> {
    let nad = |name: &str, resource: Option<&str>, config: serde_json::Value| {
        let mut n = json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default", "annotations": {}},
            "spec": {"config": config.to_string()}
        });
        if let Some(r) = resource {
            n["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] = r.into();
        }
        n
    };
    let (ok, out) = kubectl_apply(
        c,
        &nad(
            "inj-bad",
            None,
            json!({"cniVersion": "0.3.1", "type": "macvtap", "mtu": 40, "mode": "bridged", "deviceID": "dataplaneMvp0"}),
        ),
    )?;
    eprintln!("   kubectl apply of a bad macvtap NAD:\n{out}");
    ensure!(ok, "a NAD was refused: {out}");
    for w in [
        "without the k8s.v1.cni.cncf.io/resourceName",
        "mtu 40",
        "mode \"bridged\"",
        "deviceID \"dataplaneMvp0\"",
    ] {
        ensure!(
            out.contains(&format!("Warning: {w}")) || out.contains(w),
            "no warning {w:?}: {out}"
        );
    }
    let (ok, out) = kubectl_apply(
        c,
        &nad(
            "inj-unserved",
            Some("macvtap.network.kubevirt.io/nope"),
            json!({"cniVersion": "0.3.1", "type": "macvtap"}),
        ),
    )?;
    ensure!(ok && out.contains("no MacvtapPool serves"), "{out}");
    let original = std::fs::read_to_string(config_file("original/nad-dataplane.yaml"))?;
    // Created afresh under another name: kubectl warns about objects it did not create itself.
    let mut original = serde_saphyr::from_str::<serde_json::Value>(&original)?;
    original["metadata"]["name"] = "inj-original".into();
    let (ok, out) = kubectl_apply(c, &original)?;
    ensure!(ok && !out.contains("Warning"), "the original NAD: {out}");
    c.kubectl_out(&[
        "delete",
        "network-attachment-definitions",
        "inj-bad",
        "inj-unserved",
        "inj-original",
    ])?;
    Ok(())
}

async fn scale_operator(c: &Cluster, replicas: i32) -> Result<()> {
    Api::<Deployment>::namespaced(c.client(), NAMESPACE)
        .patch(
            DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    if replicas > 0 {
        return c.wait_chart_ready(Duration::from_secs(120)).await;
    }
    let pods = Api::<Pod>::namespaced(c.client(), NAMESPACE);
    wait::until("operator pods gone", Duration::from_secs(60), || async {
        Ok(pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await?
            .items
            .is_empty())
    })
    .await
}

fn set_failure_policy(c: &Cluster, policy: &str) -> Result<()> {
    c.kubectl_out(&[
        "patch",
        "mutatingwebhookconfiguration",
        MUTATING,
        "--type=json",
        "-p",
        &json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}])
            .to_string(),
    ])?;
    Ok(())
}

/// No replica answers: under `Fail` a pod naming a network is refused (the user sees why and retries), pods
/// without one are not affected; under `Ignore` it is admitted without its device and its sandbox then fails.
pub async fn injector_down(c: &mut Cluster) -> Result<()> {
    scale_operator(c, 0).await?;
    let result = async {
        let (ok, out) = kubectl_apply(
            c,
            &pod_manifest("inj-down", "default", Some("dataplane"), Some("node-a")),
        )?;
        eprintln!("   webhook down, failurePolicy Fail, kubectl apply says:\n{out}");
        ensure!(!ok && out.contains("failed calling webhook"), "{out}");
        let plain = c
            .run_pod(busybox("inj-down-plain", None, None, Some("node-a")), RUN)
            .await?;
        c.delete_pod(&plain.namespace, &plain.name, GONE).await?;

        set_failure_policy(c, "Ignore")?;
        // The API server's webhook configuration cache follows within moments.
        let mut admitted = false;
        let mut out = String::new();
        for _ in 0..20 {
            let r = kubectl_apply(
                c,
                &pod_manifest("inj-down", "default", Some("dataplane"), Some("node-a")),
            )?;
            out = r.1;
            if r.0 {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!(admitted, "not admitted under Ignore: {out}");
        eprintln!("   webhook down, failurePolicy Ignore, kubectl apply says:\n{out}");
        ensure!(
            unmutated(c, "default", "inj-down").await?,
            "admitted with limits while the webhook is down?"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let events = loop {
            let events = c.failed_sandboxes("default", "inj-down").await?;
            if !events.is_empty() {
                break events;
            }
            ensure!(
                Instant::now() < deadline,
                "no sandbox failure of a pod without its device in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!("   ... and the pod's event: {}", events[0]);
        ensure!(events[0].contains("deviceID"), "{events:?}");
        c.delete_pod("default", "inj-down", GONE).await?;
        Ok(())
    }
    .await;
    set_failure_policy(c, "Fail")?;
    scale_operator(c, 2).await?;
    result
}

/// Pods created every 2 s while the serving certificate is renewed (every 60 s with the suite's 90 s lifetime):
/// every one admitted and injected; then every replica serves the new certificate.
pub async fn injector_rotation(c: &mut Cluster) -> Result<()> {
    let secrets = Api::<Secret>::namespaced(c.client(), NAMESPACE);
    let cert = |s: Secret| s.data.and_then(|d| d.get("tls.crt").map(|b| b.0.clone()));
    let first = cert(secrets.get(SECRET).await?).context("no tls.crt")?;
    let expiry = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("macvtap_operator_webhook_certificate_expiry_timestamp_seconds ")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    let before: Vec<_> = operator_metrics(c)
        .await?
        .iter()
        .map(|t| expiry(t))
        .collect();
    let pods = Api::<Pod>::namespaced(c.client(), "default");
    let t0 = Instant::now();
    let mut rotated_at = None;
    let mut created = Vec::new();
    let res = resource_name("dataplane");
    while rotated_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(15)) {
        ensure!(
            t0.elapsed() < Duration::from_secs(150),
            "no renewal within 150 s"
        );
        let name = format!("inj-rot-{}", created.len());
        // Kept from every node: only admission matters here.
        let pod = busybox(&name, Some("dataplane"), None, Some("nowhere"));
        let got = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating {name}"))?;
        let limit = got
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(&res))
            .map(|q| q.0.clone());
        ensure!(limit.as_deref() == Some("1"), "{name}: limit {limit:?}");
        created.push(name);
        if rotated_at.is_none() && cert(secrets.get(SECRET).await?).as_ref() != Some(&first) {
            rotated_at = Some(Instant::now());
            eprintln!(
                "   serving certificate renewed after {:.0?}, {} pods created so far",
                t0.elapsed(),
                created.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Every replica has loaded the renewed certificate: one expiry, later than any before.
    let expiries: Vec<_> = operator_metrics(c)
        .await?
        .iter()
        .map(|t| expiry(t))
        .collect();
    ensure!(
        expiries.iter().all(|e| e.is_some() && *e == expiries[0])
            && before.iter().all(|b| *b < expiries[0]),
        "replicas' certificate expiries {before:?} before, {expiries:?} after the renewal"
    );
    eprintln!(
        "   {} pods created across the renewal, all admitted with their device; replicas' certificate expiry {:?}",
        created.len(),
        expiries
    );
    for n in &created {
        pods.delete(n, &kube::api::DeleteParams::default()).await?;
    }
    Ok(())
}

/// Figures (printed, not asserted): the webhook's own answer times, and pod create → Running with the injector
/// vs with hand-written limits, one pod at a time on node-a.
pub async fn injector_figures(c: &mut Cluster) -> Result<()> {
    const N: usize = 8;
    let mut with_limits = Vec::new();
    let mut injected = Vec::new();
    for i in 0..N {
        for (hand_written, times) in [(true, &mut with_limits), (false, &mut injected)] {
            let name = format!("inj-fig-{}-{i}", if hand_written { "hand" } else { "inj" });
            let mut pod = example("original/pod.yaml", Some(&name), Some("node-a"))?;
            if !hand_written {
                pod = without_resources(pod);
            }
            let t = Instant::now();
            let p = c.run_pod(pod, RUN).await?;
            times.push(t.elapsed().as_secs_f64());
            c.delete_pod(&p.namespace, &p.name, GONE).await?;
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w50, w99, count) = webhook_latency(c).await?;
    eprintln!(
        "   FIGURE injector: webhook answer time over {count} pod admissions: p50 <= {:.2} ms, p99 <= {:.2} ms \
         (histogram bucket bounds)",
        w50 * 1000.0,
        w99 * 1000.0
    );
    eprintln!(
        "   FIGURE injector: pod create -> Running (100 ms polling, {N} each, node-a): hand-written limits p50 {:.2} s, \
         injected p50 {:.2} s",
        p50(&mut with_limits),
        p50(&mut injected)
    );
    Ok(())
}
