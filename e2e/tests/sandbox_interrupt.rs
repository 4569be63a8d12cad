//! `make sandbox KEEP=1`, then Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group. The
//! sandbox must tear the cluster down within a minute and leave nothing behind: no process of the cluster, no
//! network namespace, no mount.
//!
//! (Before the cluster's programs got process groups of their own, that SIGINT stopped etcd, the kubelets and
//! containerd at once while kube-apiserver kept running, and the teardown waited minutes on API calls.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What the sandbox prints once the cluster is up and it waits for Ctrl-C.
const WAITING: &str = "the cluster stays up; Ctrl-C tears it down";
/// The bound: a user's Ctrl-C ends the sandbox within a minute.
const TEARDOWN_BOUND: Duration = Duration::from_secs(60);

fn netns() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .expect("/proc/self/mounts")
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// Command lines of the processes running a program of the tools directory (etcd, kube-apiserver, the kubelets,
/// containerd and its shims, kube-proxy, the registry).
fn cluster_processes() -> BTreeSet<String> {
    let tools = macvtap_e2e::tools::bin_dir();
    let tools = tools.to_string_lossy();
    let mut found = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(tools.as_ref()) {
            found.insert(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                cmdline.trim()
            ));
        }
    }
    found
}

#[test]
fn ctrl_c_to_the_process_group_tears_the_sandbox_down_within_a_minute() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the sandbox needs root (network namespaces, kubelets)"
    );
    let (netns0, mounts0, procs0) = (netns(), mounts(), cluster_processes());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg("--keep")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A foreground job of its own, as a shell makes it: the group a terminal's Ctrl-C is sent to.
        .process_group(0)
        .spawn()
        .expect("running the sandbox binary");
    let pgid = Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("sandbox| {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(WAITING) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                panic!(
                    "the sandbox did not come up (or exited) within 15 min: {:?}",
                    child.wait()
                );
            }
        }
    }
    // Let it sit as a user's would for a moment, then Ctrl-C.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    killpg(pgid, Signal::SIGINT).expect("SIGINT to the sandbox's process group");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > TEARDOWN_BOUND {
            let _ = killpg(pgid, Signal::SIGKILL);
            panic!("the sandbox still runs {TEARDOWN_BOUND:?} after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "Ctrl-C → sandbox exited ({status}) after {:.1?}",
        t.elapsed()
    );
    assert!(status.success(), "the sandbox's teardown failed: {status}");
    // The teardown script runs in the sandbox's drop; a reaper may still be finishing: give it a few seconds.
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        let (n, m, p) = (netns(), mounts(), cluster_processes());
        let left_netns: Vec<_> = n.difference(&netns0).collect();
        let left_mounts: Vec<_> = m.difference(&mounts0).collect();
        let left_procs: Vec<_> = p.difference(&procs0).collect();
        if left_netns.is_empty() && left_mounts.is_empty() && left_procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settle,
            "left behind after Ctrl-C:\nnetns {left_netns:?}\nmounts {left_mounts:?}\nprocesses {left_procs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
