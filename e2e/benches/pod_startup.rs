//! What our part costs a user at pod start, on the real cluster: pod create → Running for a busybox pod with
//! one macvtap network (device plugin Allocate + Multus + our CNI, with the kubelet's PodResources check) and for
//! the same pod without it:
//! - one pod at a time so the two series see the same node, p50/p95 over `PODS` pods each (default 20);
//! - a burst: `BURST` pods created at once on one node (default 50, a node starting its VMs; `BURST=0` skips it),
//!   without and then with the network: create → all Running and each pod's create → Ready p50/p95, from the pods'
//!   own timestamps (creation, `Ready` condition: whole seconds), not from polling; and the sandboxes that failed.
//!
//! Run: `cargo bench -p macvtap-e2e --bench pod_startup` (root; `make tools images` first).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use macvtap_e2e::cluster::resources::pool_ready;
use macvtap_e2e::cluster::{Cluster, ClusterOptions};
use macvtap_e2e::workspace::config_file;

fn pod(name: &str, macvtap: bool) -> Pod {
    let mut p = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": {"kubernetes.io/hostname": "node-a"},
            "containers": [{"name": "busybox", "image": "busybox", "command": ["/bin/sleep", "3600"],
                            "resources": {"limits": {}}}],
        },
    });
    if macvtap {
        p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "dataplane".into();
        p["spec"]["containers"][0]["resources"]["limits"]["macvtap.network.kubevirt.io/dataplane"] =
            1.into();
    }
    serde_json::from_value(p).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn series(c: &Cluster, macvtap: bool, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..n {
        let name = format!("bench-{}-{i}", if macvtap { "mvt" } else { "plain" });
        let t = Instant::now();
        let p = c
            .run_pod(pod(&name, macvtap), Duration::from_secs(120))
            .await?;
        times.push(t.elapsed());
        c.delete_pod(&p.namespace, &p.name, Duration::from_secs(60))
            .await?;
    }
    times.sort();
    Ok(times)
}

/// The burst's figures from the pods' timestamps: (all Running in s, per-pod p50 s, per-pod p95 s, failed sandboxes).
async fn burst(c: &Cluster, macvtap: bool, n: usize) -> Result<(i64, i64, i64, usize)> {
    let api = Api::<Pod>::namespaced(c.client(), "default");
    let prefix = format!("burst-{}-", if macvtap { "mvt" } else { "plain" });
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let creates = names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(name, macvtap))
                .await
        }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let mut spans = Vec::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for name in &names {
        let p = c
            .wait_running("default", name, Duration::from_secs(600))
            .await?;
        let span = p
            .create_to_ready_secs()
            .context("creation and Ready timestamps")?;
        let created = p
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .context("created")?
            .0
            .as_second();
        spans.push(span);
        first = first.min(created);
        last = last.max(created + span);
    }
    let failures = c.failed_sandboxes("default", &prefix).await?;
    for f in &failures {
        // Whose ADD failed and why: the end of the runtime's message names the network and the plugin's words.
        let tail: String = f
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        println!("    FailedCreatePodSandBox: ...{tail}");
    }
    let failed = failures.len();
    for name in &names {
        c.delete_pod("default", name, Duration::from_secs(120))
            .await?;
    }
    spans.sort_unstable();
    let pct = |p: f64| spans[((spans.len() - 1) as f64 * p).round() as usize];
    Ok((last - first, pct(0.5), pct(0.95), failed))
}

fn main() -> Result<()> {
    let n: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let burst_n: usize = std::env::var("BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let c = Cluster::start(ClusterOptions::default()).await?;
        let up = t0.elapsed();
        c.install_chart(&[]).await?;
        let chart = t0.elapsed() - up;
        c.apply_file(&config_file("pools/dataplane.yaml")).await?;
        c.wait_pool("dataplane", Duration::from_secs(120), pool_ready)
            .await?;
        c.apply_file(&config_file("original/nad-dataplane.yaml"))
            .await?;
        // Warm the image on the node so neither series pays the first pull.
        series(&c, false, 1).await?;
        let plain = series(&c, false, n).await?;
        let mvt = series(&c, true, n).await?;
        println!("cluster up {up:.1?}, chart ready {chart:.1?}");
        println!("pod create -> Running over {n} pods each (one at a time, node-a):");
        for (what, s) in [
            ("without macvtap", &plain),
            ("with one macvtap network", &mvt),
        ] {
            println!(
                "  {what:<26} p50 {:>5} ms  p95 {:>5} ms",
                percentile(s, 0.5).as_millis(),
                percentile(s, 0.95).as_millis()
            );
        }
        let diff = |p: f64| percentile(&mvt, p).as_millis() as i64 - percentile(&plain, p).as_millis() as i64;
        println!(
            "  difference (our part)      p50 {:>5} ms  p95 {:>5} ms  (Running is seen by polling every 100 ms)",
            diff(0.5),
            diff(0.95)
        );
        if burst_n > 0 {
            println!(
                "{burst_n} pods created at once on node-a (figures from the pods' timestamps, whole seconds):"
            );
            for (what, macvtap) in [("without macvtap", false), ("with one macvtap network", true)] {
                let (all, p50, p95, failed) = burst(&c, macvtap, burst_n).await?;
                println!(
                    "  {what:<26} all Running {all:>3} s  each create -> Ready p50 {p50:>3} s  p95 {p95:>3} s  \
                     FailedCreatePodSandBox {failed}"
                );
            }
        }
        Ok(())
    })
}
