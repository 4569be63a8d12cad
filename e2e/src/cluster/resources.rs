//! What a user watches on the cluster: pools and their status, the macvtap resources on each Node, and which pod
//! the kubelet gave which device.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;
use macvtap_api::MacvtapPool;

use super::Cluster;

/// `macvtap.network.kubevirt.io/<name>`.
pub fn resource_name(name: &str) -> String {
    format!("macvtap.network.kubevirt.io/{name}")
}

/// Ready on every matched node, `Ready=True`.
pub fn pool_ready(p: &MacvtapPool) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.nodes_ready == s.nodes_matched
            && s.nodes_matched > 0
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// A Node's (capacity, allocatable) of one resource, as the kubelet reports them.
pub fn node_resource(node: &NodeObject, resource: &str) -> (i64, i64) {
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        m.and_then(|m| m.get(resource))
            .and_then(|q| q.0.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let st = node.status.as_ref();
    (
        get(st.and_then(|s| s.capacity.as_ref())),
        get(st.and_then(|s| s.allocatable.as_ref())),
    )
}

impl Cluster {
    /// Our macvtap links in a node's network namespace (host side: not in any pod).
    pub fn node_macvtaps(&self, node: &str) -> Result<Vec<String>> {
        let out = self
            .node(node)
            .netns
            .ip(&["-d", "-j", "link", "show", "type", "macvtap"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect())
    }

    /// The allocation records the agent of `node` wrote (device ID → record), from the node's state directory.
    pub fn allocation_records(
        &self,
        node: &str,
    ) -> Result<std::collections::BTreeMap<String, macvtap_core::AllocationRecord>> {
        let dir = self.node(node).dir.join("macvtap-state/nodes").join(node);
        let mut out = std::collections::BTreeMap::new();
        for entry in
            anyhow::Context::with_context(std::fs::read_dir(&dir), || dir.display().to_string())?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(r) = macvtap_core::AllocationRecord::read(&dir, id)?
            {
                out.insert(id.to_string(), r);
            }
        }
        Ok(out)
    }

    /// Waits until `pred` holds for the pool; the error shows the pool as last seen.
    pub async fn wait_pool(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&MacvtapPool) -> bool,
    ) -> Result<MacvtapPool> {
        let api = Api::<MacvtapPool>::all(self.client());
        let deadline = Instant::now() + timeout;
        loop {
            let last = api.get_opt(name).await?;
            if let Some(p) = &last
                && pred(p)
            {
                return Ok(p.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "pool {name} not as expected within {timeout:?}; last: {}",
                    serde_json::to_string(&last.map(|p| p.status)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the Node's allocatable of `resource` satisfies `pred`; returns (capacity, allocatable).
    pub async fn wait_node_resource(
        &self,
        node: &str,
        resource: &str,
        timeout: Duration,
        pred: impl Fn(i64, i64) -> bool,
    ) -> Result<(i64, i64)> {
        let api = Api::<NodeObject>::all(self.client());
        let deadline = Instant::now() + timeout;
        loop {
            let n = api.get(node).await?;
            let (cap, alloc) = node_resource(&n, resource);
            if pred(cap, alloc) {
                return Ok((cap, alloc));
            }
            if Instant::now() > deadline {
                bail!(
                    "{resource} on Node {node} not as expected within {timeout:?}: capacity {cap}, \
                     allocatable {alloc}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The kubelet's own record of which pod holds which devices (its device manager checkpoint,
/// `/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint`): pod UID → device IDs of `resource`. The kubelet
/// keeps it across device plugins, so it names the devices the original's plugin allocated as well as ours.
pub fn checkpoint_devices(
    checkpoint: &serde_json::Value,
    resource: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let entries = checkpoint["Data"]["PodDeviceEntries"].as_array();
    for e in entries.into_iter().flatten() {
        if e["ResourceName"] != resource {
            continue;
        }
        let Some(uid) = e["PodUID"].as_str() else {
            continue;
        };
        // `DeviceIDs` is keyed by NUMA node ("-1" without topology).
        let ids = e["DeviceIDs"].as_object().into_iter().flatten();
        let ids = ids.flat_map(|(_, v)| v.as_array().into_iter().flatten());
        out.entry(uid.to_string())
            .or_default()
            .extend(ids.filter_map(|id| id.as_str().map(String::from)));
    }
    out
}

impl Cluster {
    /// [`checkpoint_devices`] of `node`'s kubelet, read from the node's directory.
    pub fn kubelet_devices(
        &self,
        node: &str,
        resource: &str,
    ) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let path = self
            .node(node)
            .dir
            .join("kubelet/device-plugins/kubelet_internal_checkpoint");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let json = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        Ok(checkpoint_devices(&json, resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_devices_per_pod_of_one_resource() {
        let cp = serde_json::json!({"Data": {"PodDeviceEntries": [
            {"PodUID": "a", "ContainerName": "c", "ResourceName": "macvtap.network.kubevirt.io/dp",
             "DeviceIDs": {"-1": ["dpMvp3"]}, "AllocResp": "xx"},
            {"PodUID": "b", "ContainerName": "c", "ResourceName": "macvtap.network.kubevirt.io/dp",
             "DeviceIDs": {"0": ["dpMvp1"], "1": ["dpMvp2"]}},
            {"PodUID": "c", "ContainerName": "c", "ResourceName": "other", "DeviceIDs": {"-1": ["x"]}},
        ], "RegisteredDevices": {}}, "Checksum": 1});
        let got = checkpoint_devices(&cp, "macvtap.network.kubevirt.io/dp");
        let want: BTreeMap<String, BTreeSet<String>> = [
            ("a".to_string(), ["dpMvp3".to_string()].into()),
            (
                "b".to_string(),
                ["dpMvp1".to_string(), "dpMvp2".to_string()].into(),
            ),
        ]
        .into();
        assert_eq!(got, want);
    }
}
