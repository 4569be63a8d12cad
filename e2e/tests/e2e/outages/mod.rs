//! Outages of what our pods depend on (issue 24): the API server down for a minute, and a node's agent gone while
//! a container holding a device restarts. Each scenario restores what it took away on every path.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::jiff::Timestamp;
use macvtap_api::MacvtapNodeState;

use super::*;

mod agent;
mod api_server;

pub use agent::*;
pub use api_server::*;

/// Our pods (operator and agents) by name: uid and restarts of all containers.
async fn our_pods(c: &Cluster) -> Result<BTreeMap<String, (String, i32)>> {
    let pods = Api::<Pod>::namespaced(c.client(), &c.chart.namespace)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .map(|s| s.restart_count)
                .sum();
            (p.name_any(), (p.uid().unwrap_or_default(), restarts))
        })
        .collect())
}

/// The pid of the pod's `/bin/sleep` (its container's main process: busybox's `command`).
fn main_pid(pod: &RunningPod) -> Result<u32> {
    pod.pids()
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/bin/sleep\0"))
        })
        .with_context(|| format!("no /bin/sleep in pod {}", pod.name))
}

/// SIGKILL to the container's main process: the container exits and the kubelet starts it again.
fn kill_main(pod: &RunningPod) -> Result<u32> {
    let pid = main_pid(pod)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("killing pid {pid} of {}", pod.name))?;
    Ok(pid)
}

/// The host macvtap whose tap a device-plugin-only pod holds (ifindex, MAC): PreStartContainer made it.
fn host_link_of(c: &Cluster, pod: &RunningPod) -> Result<serde_json::Value> {
    let taps = pod.tap_devices();
    let ifindex = taps
        .first()
        .and_then(|t| t.ifindex())
        .with_context(|| format!("pod {}: taps {taps:?}", pod.name))?;
    host_link(c, &pod.node, ifindex)
}

/// A frame from `from` reaches `to`, and one back.
fn frames(from: &mut (Tap, [u8; 6]), to: &mut (Tap, [u8; 6]), what: &str) -> Result<()> {
    one_frame(from, to, &format!("{what}: there"))?;
    one_frame(to, from, &format!("{what}: back"))
}

fn one_frame(from: &mut (Tap, [u8; 6]), to: &mut (Tap, [u8; 6]), payload: &str) -> Result<()> {
    from.0.send(to.1, from.1, payload.as_bytes())?;
    ensure!(
        to.0.receive(payload.as_bytes(), Duration::from_secs(5))? == Some(from.1),
        "frame lost: {payload}"
    );
    Ok(())
}

fn tap_of(pod: &RunningPod) -> Result<(Tap, [u8; 6])> {
    Ok((Tap::open(&check_tap(pod)?)?, net1_mac(pod)?))
}

/// A container's waiting reason and message, and its restarts.
async fn container_state(c: &Cluster, name: &str) -> Result<(String, String, i32)> {
    let pod = Api::<Pod>::namespaced(c.client(), "default")
        .get(name)
        .await?;
    let cs = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .with_context(|| format!("pod {name} has no container status"))?;
    let waiting = cs.state.and_then(|s| s.waiting).unwrap_or_default();
    Ok((
        waiting.reason.unwrap_or_default(),
        waiting.message.unwrap_or_default(),
        cs.restart_count,
    ))
}

/// How often the kubelet failed to start the pod's container at PreStartContainer: the `Failed` events' counts
/// (the kubelet aggregates repeats into one event with a count).
async fn prestart_failures(c: &Cluster, pod: &str) -> Result<i32> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.client(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod},reason=Failed")))
        .await?;
    Ok(events
        .items
        .iter()
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("PreStartContainer"))
        })
        .map(|e| e.count.unwrap_or(1))
        .sum())
}

/// Deletes the scenario's pods (those that exist).
async fn delete_pods(c: &Cluster, names: &[&str]) -> Result<()> {
    for n in names {
        c.delete_pod("default", n, GONE).await?;
    }
    Ok(())
}
