//! Our CNI's ADD with the real kube-ovn as IPAM beside the same in-place ADD without IPAM, in one run on the real
//! cluster: pods on node-a, one at a time, alternating a pod of the original README's `dataplane` NAD (no IPAM) and
//! one of config/kube-ovn's `p4p1` NAD (IPAM by the `kube-ovn` binary asking node-a's kube-ovn-daemon for the
//! address kube-ovn-controller allocated from the Subnet). Both with the kubelet's PodResources check, timed by a
//! wrapper around node-a's `macvtap` (see `macvtap_e2e::cni_timing`: a shell and two `date` on top of both alike).
//! Prints ADD and DEL p50/p99 of each, and kube-ovn's start-up time and memory.
//!
//! Run: `cargo bench -p macvtap-e2e --bench kube_ovn_add` (root; `make tools images` first; PODS, default 20).

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use macvtap_e2e::cluster::resources::pool_ready;
use macvtap_e2e::cluster::{Cluster, ClusterOptions};
use macvtap_e2e::cni_timing;
use macvtap_e2e::workspace::config_file;

fn pod(name: &str, kube_ovn: bool) -> Pod {
    let (network, resource) = if kube_ovn {
        ("default/p4p1", "macvtap.network.kubevirt.io/p4p1")
    } else {
        ("dataplane", "macvtap.network.kubevirt.io/dataplane")
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": network}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": {"kubernetes.io/hostname": "node-a"},
            "containers": [{"name": "busybox", "image": "busybox", "command": ["/bin/sleep", "3600"],
                            "resources": {"limits": {resource: 1}}}],
        },
    }))
    .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and gets nothing to do here.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let n: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut c = Cluster::start(ClusterOptions::default()).await?;
        c.install_chart(&[]).await?;
        c.apply_file(&config_file("pools/dataplane.yaml")).await?;
        c.wait_pool("dataplane", Duration::from_secs(120), pool_ready)
            .await?;
        c.apply_file(&config_file("original/nad-dataplane.yaml"))
            .await?;
        let started = c.kube_ovn_examples_network().await?;
        let (procs, rss) = c.kube_ovn().expect("started").rss_mib();
        let times = cni_timing::wrap_cni(&c, "node-a")?;
        let mut add = [Vec::new(), Vec::new()];
        let mut del = [Vec::new(), Vec::new()];
        let t0 = Instant::now();
        // One warm-up pair (image on the node, first calls), then the measured ones.
        for i in 0..=n {
            for kube_ovn in [false, true] {
                let name = format!("add-{}-{i}", if kube_ovn { "ovn" } else { "plain" });
                let p = c.run_pod(pod(&name, kube_ovn), Duration::from_secs(120)).await?;
                c.delete_pod(&p.namespace, &p.name, Duration::from_secs(60))
                    .await?;
                if i > 0 {
                    add[kube_ovn as usize].push(cni_timing::call_ms(&times, "ADD", &name)?);
                    del[kube_ovn as usize].push(cni_timing::call_ms(&times, "DEL", &name)?);
                }
            }
        }
        println!(
            "kube-ovn (controller, OVN databases + northd, per node OVS + ovn-controller + daemon): serving {started:.1?} \
             after its start; {procs} processes, RSS {rss:.0} MiB together"
        );
        println!(
            "our CNI on node-a, in-place ADD with the kubelet's PodResources check, {n} pods each, one at a time \
             ({:.0?}), wrapper included:",
            t0.elapsed()
        );
        for (i, what) in ["no IPAM (dataplane)", "kube-ovn IPAM (p4p1)"].iter().enumerate() {
            add[i].sort_by(f64::total_cmp);
            del[i].sort_by(f64::total_cmp);
            println!(
                "  {what:<22} ADD p50 {:>6.1} ms  p99 {:>6.1} ms   DEL p50 {:>6.1} ms  p99 {:>6.1} ms",
                percentile(&add[i], 0.5),
                percentile(&add[i], 0.99),
                percentile(&del[i], 0.5),
                percentile(&del[i], 0.99)
            );
        }
        println!(
            "  kube-ovn's part of the ADD at p50: {:.1} ms",
            percentile(&add[1], 0.5) - percentile(&add[0], 0.5)
        );
        Ok(())
    })
}
