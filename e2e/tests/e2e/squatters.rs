//! Squatted taps (issue 20): a pod with `CAP_NET_ADMIN` in its own netns can create a macvtap at any ifindex, hence
//! take any `/dev/tapN` of the machine. It aims at the indices the agent used to derive from public data (xxh64 of
//! `<node>/<deviceID>`) and floods the start of the range; the victims that start afterwards get their own taps.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use macvtap_core::allocation::{TAP_INDEX_COUNT, TAP_INDEX_FIRST};

use super::*;

/// The index the agent gave `<node>/<deviceID>` before the node key existed: anyone could compute it.
fn public_guess(owner: &str) -> u32 {
    let seed = xxhash_rust::xxh64::xxh64(owner.as_bytes(), 0);
    TAP_INDEX_FIRST + (seed % u64::from(TAP_INDEX_COUNT)) as u32
}

/// Indices the squatter takes: the guesses for the node's first devices, then the first `flood` of the range.
fn aims(node: &str, pool: &str, devices: usize, flood: u32) -> BTreeSet<u32> {
    (0..devices)
        .map(|i| public_guess(&format!("{node}/{pool}Mvp{i}")))
        .chain(TAP_INDEX_FIRST..TAP_INDEX_FIRST + flood)
        .collect()
}

/// Creates a macvtap on the pod's `eth0` at each index, inside the pod's netns (what its `CAP_NET_ADMIN` allows);
/// returns the indices whose tap now exists on the machine.
fn squat(pod: &RunningPod, indices: &BTreeSet<u32>) -> Result<BTreeSet<u32>> {
    let pid = pod.net_pid()?;
    let mut ip = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip", "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("nsenter + ip (iproute2)")?;
    let mut batch = String::new();
    for (k, n) in indices.iter().enumerate() {
        batch.push_str(&format!(
            "link add link eth0 name sq{k} index {n} type macvtap mode bridge\n"
        ));
    }
    ip.stdin.take().unwrap().write_all(batch.as_bytes())?;
    let out = ip.wait_with_output()?;
    let taken: BTreeSet<u32> = indices
        .iter()
        .copied()
        .filter(|n| macvtap_link_tap_exists(*n))
        .collect();
    ensure!(
        !taken.is_empty(),
        "the squatter took no index: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(taken)
}

/// Whether the machine has `/dev/tap<n>` (devtmpfs names a macvtap's tap after its ifindex, whatever its netns).
fn macvtap_link_tap_exists(n: u32) -> bool {
    std::path::Path::new(&format!("/dev/tap{n}")).exists()
}

pub async fn squatters(c: &mut Cluster) -> Result<()> {
    let squatter = c
        .run_pod(busybox("squatter", None, None, Some("node-a")), RUN)
        .await?;
    let taken = squat(&squatter, &aims("node-a", "dataplane", 10, 300))?;
    eprintln!("    the squatter holds {} taps on node-a", taken.len());

    // Victims: pods with the network (in place, CNI ADD) and one with a device only (PreStartContainer's host link).
    let mut victims = Vec::new();
    for i in 0..4 {
        victims.push(original_pod(c, &format!("victim-{i}"), "node-a").await?);
    }
    let plain = c
        .run_pod(
            busybox("victim-plain", None, Some("dataplane"), Some("node-a")),
            RUN,
        )
        .await?;
    for v in &victims {
        let tap = check_tap(v)?;
        let index = v.net1()?["ifindex"].as_u64().context("ifindex")? as u32;
        ensure!(
            !taken.contains(&index),
            "{} got the squatter's /dev/tap{index} ({})",
            v.name,
            tap.display()
        );
    }
    let taps = plain.tap_devices();
    ensure!(taps.len() == 1, "victim-plain: taps {taps:?}");
    let index = taps[0].ifindex().context("tap index")?;
    ensure!(
        !taken.contains(&index),
        "victim-plain got the squatter's /dev/tap{index}"
    );
    // Its tap is the host link the agent made for it, not a squatter's.
    let hosts = c.node_macvtaps("node-a")?;
    ensure!(
        hosts.iter().any(|l| l.starts_with("mvt")),
        "no host link of ours on node-a: {hosts:?}"
    );
    for p in victims.iter().chain([&plain, &squatter]) {
        c.delete_pod(&p.namespace, &p.name, GONE).await?;
    }
    ensure!(
        taken.iter().all(|n| !macvtap_link_tap_exists(*n)),
        "the squatter's taps outlived its pod"
    );
    Ok(())
}
