//! Runs the `release-cni` build of the `macvtap` binary as a runtime would (env + stdin, in a node netns with a veth
//! lower device, into a pod netns) and prints ADD and DEL latency (p50, p99) without IPAM and with host-local, the
//! binary size and the peak RSS of one invocation. Needs root.
//!
//! `cargo bench -p macvtap-cni --bench cni_latency` (ITERATIONS env var, default 200). Set MACVTAP_CNI_BIN to
//! measure another binary instead of building `--profile release-cni`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_e2e::netns::Netns;
use macvtap_link::{MacvtapMode, Netlink, block_on, device_id, in_netns};
use serde_json::{Value, json};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and gets nothing to do here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cni_latency needs root (network namespaces); skipped");
        return;
    }
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
    let cases = [
        ("no IPAM", json!(null)),
        (
            "host-local",
            json!({"type": "host-local", "subnet": "10.90.0.0/16", "dataDir": data.path()}),
        ),
    ];
    let mut peak_rss_kib = 0i64;
    for (name, ipam) in cases {
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            let id = device_id("bench", i as u32);
            in_netns(node.path(), || {
                block_on(async {
                    let nl = Netlink::new().unwrap();
                    nl.create_macvtap("lower0", &id, MacvtapMode::Bridge)
                        .await
                        .unwrap()
                })
                .unwrap()
            })
            .unwrap();
            let mut conf =
                json!({"cniVersion": "1.0.0", "name": "bench", "type": "macvtap", "deviceID": id});
            if !ipam.is_null() {
                conf["ipam"] = ipam.clone();
            }
            let (d, rss) = run(&bin, &node, &pod, "ADD", &conf);
            add.push(d);
            peak_rss_kib = peak_rss_kib.max(rss);
            let (d, rss) = run(&bin, &node, &pod, "DEL", &conf);
            del.push(d);
            peak_rss_kib = peak_rss_kib.max(rss);
        }
        println!(
            "{name:>10}: ADD p50 {:>8.2?} p99 {:>8.2?} | DEL p50 {:>8.2?} p99 {:>8.2?} ({iterations} runs)",
            pct(&mut add, 50),
            pct(&mut add, 99),
            pct(&mut del, 50),
            pct(&mut del, 99)
        );
    }
    println!("peak RSS of one invocation: {peak_rss_kib} KiB");
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

/// One invocation inside the node netns (reaped with wait4 to read its rusage); returns wall time (spawn to exit) and the child's max RSS in KiB.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which std cannot see
fn run(bin: &PathBuf, node: &Netns, pod: &Netns, cmd: &str, conf: &Value) -> (Duration, i64) {
    let ns = File::open(node.path()).unwrap();
    let fd = ns.as_raw_fd();
    let mut c = Command::new(bin);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setns is async-signal-safe; the fd outlives the spawn.
    unsafe {
        c.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
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
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is plain data.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(pid, child.id() as i32);
    assert!(
        nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0,
        "{cmd} failed: {stdout}"
    );
    (elapsed, usage.ru_maxrss)
}
