//! Pods, links and pools as the scenarios look at them.

use super::*;

pub const RUN: Duration = Duration::from_secs(120);
pub const GONE: Duration = Duration::from_secs(90);

pub use macvtap_e2e::test_pods::{busybox, check_tap, example, net1_mac};

/// The original README's pod (config/original/pod.yaml, `net1` on `dataplane`) as `name`, kept to `node`.
pub async fn original_pod(c: &Cluster, name: &str, node: &str) -> Result<RunningPod> {
    c.run_pod(example("original/pod.yaml", Some(name), Some(node))?, RUN)
        .await
}

/// Edits a pool's capacity, as a user would with `kubectl patch`.
pub async fn set_capacity(c: &Cluster, pool: &str, capacity: i64) -> Result<()> {
    let patch = Patch::Merge(serde_json::json!({"spec": {"capacity": capacity}}));
    Api::<MacvtapPool>::all(c.client())
        .patch(pool, &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

pub async fn allocated(c: &Cluster, pool: &str) -> Result<i64> {
    let p = Api::<MacvtapPool>::all(c.client()).get(pool).await?;
    Ok(p.status.map(|s| s.allocated as i64).unwrap_or(-1))
}

/// The host macvtap of `node` with `ifindex` (a device-plugin-only pod's tap; found while its container is not
/// running, too).
pub fn host_link(c: &Cluster, node: &str, ifindex: u32) -> Result<serde_json::Value> {
    let out = c
        .node(node)
        .netns
        .ip(&["-j", "link", "show", "type", "macvtap"])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifindex"] == ifindex)
        .cloned()
        .with_context(|| format!("no host macvtap with ifindex {ifindex} on {node}: {links}"))
}

/// The MAC of a link as `ip -j link` shows it.
pub fn link_mac(link: &serde_json::Value) -> Result<[u8; 6]> {
    macvtap_e2e::tap::parse_mac(link["address"].as_str().unwrap_or_default())
        .with_context(|| format!("the MAC of {link}"))
}

/// The one device whose allocation record has `tap_index` (a pod's net1 ifindex or `/dev/tapN`): its device.
pub fn device_with_tap(
    records: &std::collections::BTreeMap<String, macvtap_core::AllocationRecord>,
    tap_index: u32,
) -> Result<String> {
    let of: Vec<&String> = records
        .iter()
        .filter(|(_, r)| r.tap_index == tap_index)
        .map(|(id, _)| id)
        .collect();
    ensure!(
        of.len() == 1,
        "tap index {tap_index} is in the records of {of:?}"
    );
    Ok(of[0].clone())
}
