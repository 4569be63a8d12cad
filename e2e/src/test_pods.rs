//! The pods the real-cluster suites run (busybox pods, the examples of `config/`) and what they check on a pod's
//! `net1` and tap: shared by the main suite (`tests/e2e`) and the upgrade test (`tests/upgrade`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;

use crate::cluster::pods::RunningPod;
use crate::cluster::resources::resource_name;
use crate::tap::parse_mac;
use crate::workspace::config_file;

/// A busybox pod (the image the original README's pods use), optionally on Multus networks, asking for one
/// device of `resource`, kept to a node by a nodeSelector (the scheduler still places it).
pub fn busybox(
    name: &str,
    networks: Option<&str>,
    resource: Option<&str>,
    node: Option<&str>,
) -> Pod {
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "busybox",
                "image": "busybox",
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {}},
            }],
        },
    });
    if let Some(n) = networks {
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = n.into();
    }
    if let Some(r) = resource {
        pod["spec"]["containers"][0]["resources"]["limits"][resource_name(r)] = 1.into();
    }
    if let Some(n) = node {
        pod["spec"]["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": n});
    }
    serde_json::from_value(pod).expect("a valid pod")
}

/// Reads an example of config/ as a pod, renamed and kept to a node.
pub fn example(file: &str, name: Option<&str>, node: Option<&str>) -> Result<Pod> {
    let path = config_file(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut pod: Pod = serde_saphyr::from_str(&text).with_context(|| path.display().to_string())?;
    if let Some(n) = name {
        pod.metadata.name = Some(n.into());
    }
    if let Some(n) = node {
        pod.spec
            .as_mut()
            .context("the example has no spec")?
            .node_selector = Some(
            [("kubernetes.io/hostname".to_string(), n.to_string())]
                .into_iter()
                .collect(),
        );
    }
    Ok(pod)
}

/// The pod's tap must be the device of its net1: same ifindex in the name, same device number as the machine's.
/// Returns the machine's `/dev/tapN`.
pub fn check_tap(pod: &RunningPod) -> Result<PathBuf> {
    let l = pod.net1()?;
    let ifindex = l["ifindex"].as_u64().context("ifindex")? as u32;
    let taps = pod.tap_devices();
    ensure!(taps.len() == 1, "pod {}: taps {taps:?}", pod.name);
    let tap = &taps[0];
    ensure!(
        tap.ifindex() == Some(ifindex),
        "pod {}: /dev/{} but net1 has ifindex {ifindex}",
        pod.name,
        tap.name
    );
    let host = std::fs::metadata(tap.host_path())
        .with_context(|| format!("pod {}: {}", pod.name, tap.host_path().display()))?;
    ensure!(
        host.rdev() == tap.rdev,
        "pod {}: /dev/{} in the container is not the machine's",
        pod.name,
        tap.name
    );
    Ok(tap.host_path())
}

/// The MAC of the pod's `net1`.
pub fn net1_mac(pod: &RunningPod) -> Result<[u8; 6]> {
    parse_mac(pod.net1()?["address"].as_str().unwrap_or_default()).context("net1 MAC")
}
