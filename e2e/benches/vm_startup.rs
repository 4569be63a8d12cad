//! A VM pod on the real cluster, create → the guest's first ping reply, one VM at a time on node-a (its peer on
//! node-b), p50 over `RUNS` VMs (default 5; `RUNS=n`), split into our part and the rest:
//!
//! - **ours**: the agent's Allocate (its own `allocated … elapsed_us` log line) + our CNI's ADD (timed by a
//!   wrapper around the `macvtap` binary on node-a, see `macvtap_e2e::cni_timing`);
//! - **the rest**, from the pod's log timestamps (containerd's, `kubectl logs --timestamps`; the bench's clock for
//!   the create, same machine): create → launcher running (scheduling, sandbox, CNI, container start), launcher
//!   running → QEMU exec'd (waiting for the network status to reach the downward API file), QEMU → the guest's
//!   ping reply (firmware, guest kernel boot under TCG, the virtio-net modules, the first ARP and ping).
//!
//! Run: `cargo bench -p macvtap-e2e --bench vm_startup` (root; `make tools images` first).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use macvtap_e2e::cluster::resources::pool_ready;
use macvtap_e2e::cluster::{Cluster, ClusterOptions};
use macvtap_e2e::cni_timing;
use macvtap_e2e::vm_pod::{VmPod, dataplane_ips, peer_pod, pod_log, push_vm_image, wait_log_line};
use macvtap_e2e::workspace::config_file;

const PEER_IP: &str = "10.200.0.20";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn p50(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 0.5)
}

/// Seconds since the epoch of an RFC 3339 timestamp.
fn secs(ts: &str) -> Result<f64> {
    let t: Timestamp = ts.parse().with_context(|| format!("timestamp {ts:?}"))?;
    Ok(t.as_nanosecond() as f64 / 1e9)
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The timestamp (`kubectl logs --timestamps`) of the first line containing `needle`.
fn log_time(log: &str, needle: &str) -> Result<f64> {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no {needle:?} in the log"))?;
    secs(line.split_whitespace().next().unwrap_or_default())
}

/// The newest `allocated` line of node-a's agent: its `elapsed_us`.
async fn allocate_ms(c: &Cluster) -> Result<f64> {
    let agent = c.agent_pod("node-a").await?;
    let log = c.kubectl_out(&[
        "logs",
        "-n",
        &c.chart.namespace,
        &agent.name_any(),
        "-c",
        "agent",
    ])?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("allocated") && l.contains("elapsed_us"))
        .context("no `allocated` line in the agent's log")?;
    let us: String = line
        .split("elapsed_us")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(us.parse::<f64>().context("elapsed_us")? / 1000.0)
}

struct Run {
    total: f64,
    allocate_ms: f64,
    cni_add_ms: f64,
    to_launcher: f64,
    to_qemu: f64,
    to_ping: f64,
}

async fn one(c: &Cluster, image: &str, name: &str, times: &std::path::Path) -> Result<Run> {
    let spec = VmPod {
        name,
        image,
        networks: dataplane_ips("02:00:0a:c8:00:0a", "10.200.0.10"),
        queues: 1,
        ping: Some(PEER_IP),
        node: Some("node-a"),
    };
    let t0 = epoch(SystemTime::now());
    let vm = c.run_pod(spec.pod()?, Duration::from_secs(300)).await?;
    wait_log_line(
        c,
        "default",
        name,
        &format!("GUEST: ping {PEER_IP} ok"),
        Duration::from_secs(420),
    )
    .await?;
    let log = pod_log(c, "default", name, true)?;
    let launcher = log_time(&log, "vm-launcher: waiting for the network status")?;
    let qemu = log_time(&log, "vm-launcher: starting QEMU")?;
    let ping = log_time(&log, "GUEST: ping")?;
    let run = Run {
        total: ping - t0,
        allocate_ms: allocate_ms(c).await?,
        cni_add_ms: cni_timing::call_ms(times, "ADD", name)?,
        to_launcher: launcher - t0,
        to_qemu: qemu - launcher,
        to_ping: ping - qemu,
    };
    c.delete_pod(&vm.namespace, &vm.name, Duration::from_secs(90))
        .await?;
    Ok(run)
}

fn main() -> Result<()> {
    let n: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let c = Cluster::start(ClusterOptions::default()).await?;
        c.install_chart(&[]).await?;
        let image = push_vm_image(&c)?;
        let times = cni_timing::wrap_cni(&c, "node-a")?;
        c.apply_file(&config_file("pools/dataplane.yaml")).await?;
        c.wait_pool("dataplane", Duration::from_secs(120), pool_ready)
            .await?;
        c.apply_file(&config_file("vm/nad-dataplane-ips.yaml"))
            .await?;
        c.run_pod(peer_pod("node-b")?, Duration::from_secs(120))
            .await?;
        // Warm-up, not counted: the image is pulled onto node-a once.
        one(&c, &image, "vm-warmup", &times).await?;
        let mut runs = Vec::new();
        for i in 0..n {
            let r = one(&c, &image, &format!("vm-bench-{i}"), &times).await?;
            println!(
                "run {i}: {:.2} s (Allocate {:.2} ms, CNI ADD {:.0} ms; create -> launcher {:.2} s, -> QEMU {:.2} s, \
                 -> guest's ping reply {:.2} s)",
                r.total, r.allocate_ms, r.cni_add_ms, r.to_launcher, r.to_qemu, r.to_ping
            );
            runs.push(r);
        }
        let col = |f: fn(&Run) -> f64| p50(runs.iter().map(f).collect());
        let ours_ms = col(|r| r.allocate_ms + r.cni_add_ms);
        let total = col(|r| r.total);
        println!("VM pod create -> guest's first ping reply, p50 over {n} runs (node-a, TCG):");
        println!("  total                                   {total:.2} s");
        println!(
            "  ours: Allocate + CNI ADD                {:.0} ms (Allocate {:.2} ms, CNI ADD {:.0} ms)",
            ours_ms,
            col(|r| r.allocate_ms),
            col(|r| r.cni_add_ms)
        );
        println!(
            "  the rest                                {:.2} s",
            total - ours_ms / 1000.0
        );
        println!(
            "    create -> launcher running            {:.2} s (scheduling, sandbox, CNI, container start)",
            col(|r| r.to_launcher)
        );
        println!(
            "    launcher -> QEMU exec'd               {:.2} s (network status reaching the downward API file)",
            col(|r| r.to_qemu)
        );
        println!(
            "    QEMU -> guest's first ping reply      {:.2} s (firmware, kernel boot under TCG, modules, ARP)",
            col(|r| r.to_ping)
        );
        Ok(())
    })
}
