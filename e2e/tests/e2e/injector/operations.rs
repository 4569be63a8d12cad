//! The webhook while its replicas go away, its certificate rotates, and what it costs an admission.

use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;

use super::*;

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
