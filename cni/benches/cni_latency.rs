//! Runs the `release-cni` build of the `macvtap` binary as a runtime would (env + stdin, in a node netns with a veth
//! lower device, into a pod netns) and prints ADD and DEL latency (p50, p99), the binary size and the peak RSS of
//! one invocation, for: no pod check (a call from outside Kubernetes on a node that allows it), the PodResources
//! check by `Get`, the check falling back to `List` (a kubelet without `Get`; 110 pods listed, the kubelet's
//! default maximum), and host-local IPAM with the `Get` check; each for a device moved in from its host link (the
//! path of devices without an allocation record) and for one attached in place (the agent's record, the link created
//! inside the pod). Side by side, the kernel's floor of each path measured in-process (one move of an up macvtap into
//! the pod keeping its index; one creation inside the pod), and 50 ADDs started at once (50 pods) per path, without
//! the pod check and with the `Get` check. The kubelet is a PodResources stand-in (the tests' own) on a unix socket:
//! without its rate limit for the one-at-a-time rows (they measure the plugin, and a serial ADD+DEL loop outruns
//! 100 calls/s), with the kubelet's (100/s, burst 10) for the 50 ADDs with the check, which print how many calls it
//! refused. Needs root: fails, never skips, without it.
//!
//! `cargo bench -p macvtap-cni --bench cni_latency` (ITERATIONS env var, default 200). Set MACVTAP_CNI_BIN to
//! measure another binary instead of building `--profile release-cni`, ONLY to a part of a row's name (`in place:
//! no IPAM, check by Get`) to run only the floors and the rows naming it (no 50-ADD bursts).

#[path = "cni_latency/burst.rs"]
mod burst;
#[path = "../tests/common/pod_resources.rs"]
#[allow(dead_code)]
mod pod_resources;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_core::AllocationRecord;
use macvtap_core::allocation::TAP_INDEX_FIRST;
use macvtap_e2e::netns::{Netns, enter_before_exec};
use macvtap_e2e::process::wait_with_peak_rss;
use macvtap_link::{MacvtapMode, Netlink, PodMacvtap, block_on, device_id, in_netns};
use pod_resources::{GetMode, PodResourcesStandIn, RateLimit};
use serde_json::{Value, json};

const RESOURCE: &str = "macvtap.network.kubevirt.io/bench";
const POD_ARGS: &str = "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_INFRA_CONTAINER_ID=bench;K8S_POD_UID=uid-vm";

/// One measured setup: the kubelet's `Get` behaviour (`None`: a call from outside Kubernetes, no check) and IPAM.
struct Case {
    name: &'static str,
    get: Option<GetMode>,
    ipam: Value,
    in_place: bool,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and gets nothing to do here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "cni_latency needs root (network namespaces)"
    );
    let bin = binary();
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let size = std::fs::metadata(&bin).unwrap().len();
    println!(
        "binary: {} ({} bytes, {:.1} KiB)",
        bin.display(),
        size,
        size as f64 / 1024.0
    );

    let node = Netns::new("bench-node").unwrap();
    node.add_veth("lower0", "peer0").unwrap();
    let pod = Netns::new("bench-pod").unwrap();
    let data = tempfile::tempdir().unwrap();
    let kubelet = PodResourcesStandIn::start(&data.path().join("kubelet.sock"));
    // A full node's worth of other pods, each with a device: what List has to carry.
    for p in 0..109 {
        kubelet.grant(
            "default",
            &format!("other{p}"),
            RESOURCE,
            &format!("otherMvp{p}"),
        );
    }
    let node_config = data.path().join("macvtap-node.json");
    let alloc_dir = data.path().join("state/nodes/bench");
    std::fs::write(
        &node_config,
        json!({"podResourcesSocket": kubelet.socket(), "outsideKubernetes": "allow",
               "allocationDir": alloc_dir})
        .to_string(),
    )
    .unwrap();
    let host_local =
        json!({"type": "host-local", "subnet": "10.90.0.0/16", "dataDir": data.path()});
    let mut cases = Vec::new();
    for in_place in [false, true] {
        for (name, get, ipam) in [
            ("no IPAM, no pod check", None, Value::Null),
            ("no IPAM, check by Get", Some(GetMode::Answer), Value::Null),
            (
                "no IPAM, check by List",
                Some(GetMode::Unimplemented),
                Value::Null,
            ),
            (
                "host-local, check by Get",
                Some(GetMode::Answer),
                host_local.clone(),
            ),
        ] {
            cases.push(Case {
                name,
                get,
                ipam,
                in_place,
            });
        }
    }
    floors(&node, &pod, iterations);
    // What any plugin costs before it does anything: spawned the same way, VERSION answers and exits.
    let mut starts: Vec<Duration> = (0..iterations)
        .map(|_| {
            run(
                &bin,
                &node,
                &pod,
                "VERSION",
                &json!({"cniVersion": "1.0.0"}),
                &[],
            )
            .0
        })
        .collect();
    println!(
        "process floor:          the plugin spawned for VERSION (fork, exec, start, exit) p50 {:>8.2?} p99 {:>8.2?}",
        pct(&mut starts, 50),
        pct(&mut starts, 99)
    );
    let mut peak_rss_kib = 0i64;
    kubelet.set_rate_limit(None);
    // Device IDs and ifindexes unique across cases: /dev/tap<ifindex> is one node for the whole machine, and the
    // plugin proves it is the link's before chowning it (the indices stay far above what the kernel picks).
    let mut n = 0u32;
    let only = std::env::var("ONLY").ok();
    for case in cases {
        if only
            .as_deref()
            .is_some_and(|o| !row_name(&case).contains(o))
        {
            continue;
        }
        if let Some(mode) = case.get {
            kubelet.set_get(mode);
        }
        let args = if case.get.is_some() { POD_ARGS } else { "" };
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            n += 1;
            let id = device_id("bench", n);
            let at = unique_index(n, case.in_place);
            allocate(&node, &alloc_dir, &id, at, case.in_place);
            kubelet.grant("default", "vm", RESOURCE, &id);
            let mut conf =
                json!({"cniVersion": "1.0.0", "name": "bench", "type": "macvtap", "deviceID": id});
            if !case.ipam.is_null() {
                conf["ipam"] = case.ipam.clone();
            }
            let env = [
                ("CNI_ARGS", args),
                ("MACVTAP_CNI_NODE_CONFIG", node_config.to_str().unwrap()),
            ];
            let (d, rss) = run(&bin, &node, &pod, "ADD", &conf, &env);
            add.push(d);
            peak_rss_kib = peak_rss_kib.max(rss);
            let (d, rss) = run(&bin, &node, &pod, "DEL", &conf, &env);
            del.push(d);
            peak_rss_kib = peak_rss_kib.max(rss);
        }
        let name = row_name(&case);
        println!(
            "{name:>36}: ADD p50 {:>8.2?} p99 {:>8.2?} | DEL p50 {:>8.2?} p99 {:>8.2?} ({iterations} runs)",
            pct(&mut add, 50),
            pct(&mut add, 99),
            pct(&mut del, 50),
            pct(&mut del, 99)
        );
    }
    println!("peak RSS of one invocation: {peak_rss_kib} KiB");
    if only.is_some() {
        return;
    }
    kubelet.set_get(GetMode::Answer);
    for check in [false, true] {
        // The kubelet's own limiter, its bucket full, as a node that was idle.
        kubelet.set_rate_limit(check.then_some(RateLimit::KUBELET));
        for in_place in [false, true] {
            n += 1000;
            let burst = burst::Burst {
                bin: &bin,
                node: &node,
                alloc_dir: &alloc_dir,
                node_config: &node_config,
                kubelet: &kubelet,
            };
            let took = burst.run(n, in_place, check);
            let path = if in_place { "in place" } else { "moved" };
            if check {
                let refused = kubelet.take_refused().len();
                let answered = kubelet.take_calls().len();
                println!(
                    "50 ADDs at once (50 pods, no IPAM, Get check, kubelet rate limit 100/s burst 10), {path}: all done in {took:.2?}; {refused} of {} calls rate-limited",
                    refused + answered
                );
            } else {
                println!(
                    "50 ADDs at once (50 pods, no IPAM, no pod check), {path}: all done in {took:.2?}"
                );
            }
        }
    }
}

/// A row's name: the path, then the case.
fn row_name(case: &Case) -> String {
    let path = if case.in_place {
        "in place:"
    } else {
        "moved:   "
    };
    format!("{path} {}", case.name)
}

/// An ifindex for bench device `n` no other process uses: the in-place range for records, far below it for host links.
fn unique_index(n: u32, in_place: bool) -> u32 {
    let base = if in_place {
        TAP_INDEX_FIRST
    } else {
        20_000_000
    };
    base + (std::process::id() % 1_000) * 10_000 + n
}

/// What the agent's Allocate leaves for the CNI: a record (in place) or a host link (before in-place attach).
fn allocate(node: &Netns, alloc_dir: &std::path::Path, id: &str, at: u32, in_place: bool) {
    if in_place {
        AllocationRecord {
            resource: "bench".into(),
            lower_device: "lower0".into(),
            mode: MacvtapMode::Bridge,
            tap_index: at,
        }
        .write(alloc_dir, id)
        .unwrap();
        return;
    }
    in_netns(node.path(), || {
        block_on(async {
            let nl = Netlink::new().unwrap();
            nl.create_macvtap_at("lower0", id, MacvtapMode::Bridge, Some(at))
                .await
                .unwrap()
        })
        .unwrap()
    })
    .unwrap();
}

/// The kernel's floor of each path, in-process on one socket in the node netns: moving an up macvtap into the pod
/// keeping its index (the moved path's one unavoidable request), and creating one inside the pod (in place).
fn floors(node: &Netns, pod: &Netns, iterations: usize) {
    let pod_fd = File::open(pod.path()).unwrap();
    let (moves, creates) = in_netns(node.path(), || {
        block_on(async {
            let nl = Netlink::new().unwrap();
            let lower = nl.find_link("lower0").await.unwrap().unwrap();
            let (mut moves, mut creates) = (Vec::new(), Vec::new());
            for i in 0..iterations as u32 {
                let at = unique_index(500_000 + i, false);
                let l = nl
                    .create_macvtap_at(
                        "lower0",
                        &device_id("floor", i),
                        MacvtapMode::Bridge,
                        Some(at),
                    )
                    .await
                    .unwrap();
                let t = Instant::now();
                nl.move_to_netns_keeping_index(l.index, &pod_fd)
                    .await
                    .unwrap();
                moves.push(t.elapsed());
                let at = unique_index(500_000 + i, true);
                let spec = PodMacvtap {
                    name: "floor1",
                    index: at,
                    lower: &lower,
                    mode: MacvtapMode::Bridge,
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: None,
                    promisc: false,
                    up: true,
                };
                let t = Instant::now();
                nl.create_macvtap_in(&spec, &pod_fd).await.unwrap();
                creates.push(t.elapsed());
                // Both leave the pod: the next round starts from the same state.
                in_netns(pod.path(), || {
                    block_on(async {
                        let p = Netlink::new().unwrap();
                        p.delete_link(l.index).await.unwrap();
                        p.delete_link(at).await.unwrap();
                    })
                    .unwrap()
                })
                .unwrap();
            }
            (moves, creates)
        })
        .unwrap()
    })
    .unwrap();
    let (mut moves, mut creates) = (moves, creates);
    println!(
        "kernel floor, moved:    one move of an up macvtap into the pod p50 {:>8.2?} p99 {:>8.2?}",
        pct(&mut moves, 50),
        pct(&mut moves, 99)
    );
    println!(
        "kernel floor, in place: one creation inside the pod          p50 {:>8.2?} p99 {:>8.2?}",
        pct(&mut creates, 50),
        pct(&mut creates, 99)
    );
}

/// The binary to measure: MACVTAP_CNI_BIN, else a fresh `--profile release-cni` build.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MACVTAP_CNI_BIN") {
        return p.into();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--profile",
            "release-cni",
            "-p",
            "macvtap-cni",
            "--bin",
            "macvtap",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the release-cni binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release-cni/macvtap")
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1)]
}

/// One invocation inside the node netns (reaped with wait4 to read its own rusage); returns wall time (spawn to exit) and the child's max RSS in KiB.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which std cannot see
fn run(
    bin: &PathBuf,
    node: &Netns,
    pod: &Netns,
    cmd: &str,
    conf: &Value,
    env: &[(&str, &str)],
) -> (Duration, i64) {
    let ns = File::open(node.path()).unwrap();
    let mut c = Command::new(bin);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    enter_before_exec(&mut c, ns);
    let body = conf.to_string();
    let start = Instant::now();
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let (status, peak_rss) = wait_with_peak_rss(&mut child).unwrap();
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd} failed: {stdout}");
    (elapsed, peak_rss)
}
