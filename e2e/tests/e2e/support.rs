//! Pods, links and pools as the scenarios look at them.

use super::*;

pub const RUN: Duration = Duration::from_secs(120);
pub const GONE: Duration = Duration::from_secs(90);

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
    let mut pod: Pod = serde_saphyr::from_str(&std::fs::read_to_string(config_file(file))?)?;
    if let Some(n) = name {
        pod.metadata.name = Some(n.into());
    }
    if let Some(n) = node {
        pod.spec.as_mut().unwrap().node_selector = Some(
            [("kubernetes.io/hostname".to_string(), n.to_string())]
                .into_iter()
                .collect(),
        );
    }
    Ok(pod)
}

/// The original README's pod (config/original/pod.yaml, `net1` on `dataplane`) as `name`, kept to `node`.
pub async fn original_pod(c: &Cluster, name: &str, node: &str) -> Result<RunningPod> {
    c.run_pod(example("original/pod.yaml", Some(name), Some(node))?, RUN)
        .await
}

/// The pod's tap must be the device of its net1: same ifindex in the name, same device number as the machine's.
pub fn check_tap(pod: &RunningPod) -> Result<std::path::PathBuf> {
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
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata(tap.host_path())?;
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
