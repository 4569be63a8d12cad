//! VM pods on the real cluster (`images/vm`, the `vm-launcher`): the image pushed into the registry, the pod made
//! from the example `config/vm/pod-vm.yaml`, and the guest's serial console read from the pod's log, where every
//! line of the guest's `/init` starts with `GUEST: ` and every line of the launcher with `vm-launcher: `.
//! Shared by `e2e/tests/vm.rs`, the sandbox's `--vm` and the `vm_startup` bench.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;

use crate::cluster::{Cluster, images_dir};
use crate::registry::ImageArchive;
use crate::workspace::{self, config_file};

/// The VM image as `images/build.sh --print-refs vm` names it; an error when its archive was not built.
pub fn vm_image() -> Result<ImageArchive> {
    let out = Command::new("bash")
        .arg(workspace::root().join("images/build.sh"))
        .args(["--print-refs", "vm"])
        .env("MACVTAP_IMAGES_DIR", images_dir())
        .output()
        .context("images/build.sh --print-refs vm")?;
    ensure!(
        out.status.success(),
        "images/build.sh --print-refs vm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let [name, reference, archive] = text.split_whitespace().collect::<Vec<_>>()[..] else {
        bail!("images/build.sh --print-refs vm printed {text:?}");
    };
    ensure!(
        Path::new(archive).is_file(),
        "the VM image archive {archive} is missing: build it with `images/build.sh vm` (or `make images`)"
    );
    Ok(ImageArchive {
        name: name.into(),
        reference: reference.into(),
        archive: archive.into(),
    })
}

/// Pushes the VM image into the cluster's registry; returns its reference.
pub fn push_vm_image(c: &Cluster) -> Result<String> {
    let image = vm_image()?;
    c.registry.push_all([&image])?;
    Ok(image.reference)
}

/// The network selection of `config/vm/`: the `dataplane-ips` NAD with a fixed MAC and address (`ip` without
/// prefix: /24).
pub fn dataplane_ips(mac: &str, ip: &str) -> String {
    format!(r#"[{{"name": "dataplane-ips", "mac": "{mac}", "ips": ["{ip}/24"]}}]"#)
}

/// A VM pod: `config/vm/pod-vm.yaml` with another name, network selection, queues, ping target and node.
#[derive(Debug, Clone)]
pub struct VmPod<'a> {
    pub name: &'a str,
    pub image: &'a str,
    /// The `k8s.v1.cni.cncf.io/networks` annotation.
    pub networks: String,
    pub queues: u8,
    pub ping: Option<&'a str>,
    pub node: Option<&'a str>,
}

impl VmPod<'_> {
    pub fn pod(&self) -> Result<Pod> {
        let text = std::fs::read_to_string(config_file("vm/pod-vm.yaml"))?;
        let mut pod: serde_json::Value = serde_saphyr::from_str(&text).context("pod-vm.yaml")?;
        pod["metadata"]["name"] = self.name.into();
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] =
            self.networks.clone().into();
        let container = &mut pod["spec"]["containers"][0];
        container["image"] = self.image.into();
        let mut env =
            vec![serde_json::json!({"name": "VM_QUEUES", "value": self.queues.to_string()})];
        if let Some(p) = self.ping {
            env.push(serde_json::json!({"name": "VM_PING", "value": p}));
        }
        container["env"] = env.into();
        if let Some(n) = self.node {
            pod["spec"]["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": n});
        }
        Ok(serde_json::from_value(pod)?)
    }
}

/// The VMs' peer, `config/vm/pod-peer.yaml`, kept to `node`.
pub fn peer_pod(node: &str) -> Result<Pod> {
    let mut peer: Pod =
        serde_saphyr::from_str(&std::fs::read_to_string(config_file("vm/pod-peer.yaml"))?)?;
    peer.spec
        .as_mut()
        .context("pod-peer.yaml has no spec")?
        .node_selector = Some(
        [("kubernetes.io/hostname".to_string(), node.to_string())]
            .into_iter()
            .collect(),
    );
    Ok(peer)
}

/// A pod's log (`kubectl logs`), with containerd's timestamps when `timestamps`.
pub fn pod_log(c: &Cluster, ns: &str, name: &str, timestamps: bool) -> Result<String> {
    let mut args = vec!["logs", "-n", ns, name];
    if timestamps {
        args.push("--timestamps");
    }
    c.kubectl_out(&args)
}

/// Waits until the pod's log has a line containing `needle`; returns the whole log. The error shows the log.
pub async fn wait_log_line(
    c: &Cluster,
    ns: &str,
    name: &str,
    needle: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match pod_log(c, ns, name, false) {
            Ok(log) if log.lines().any(|l| l.contains(needle)) => return Ok(log),
            Ok(log) => log,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("pod {ns}/{name}: no log line with {needle:?} within {timeout:?}; log:\n{last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `ping -c 1` from a pod's container (`kubectl exec`), retried until a reply or `timeout`.
pub async fn ping_from(
    c: &Cluster,
    ns: &str,
    pod: &str,
    target: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = c.kubectl_out(&[
            "exec", "-n", ns, pod, "--", "ping", "-c", "1", "-W", "2", target,
        ]);
        match r {
            Ok(out) if out.contains("1 packets received") => return Ok(()),
            Ok(out) if Instant::now() > deadline => {
                bail!("{pod} -> {target}: no reply within {timeout:?}:\n{out}")
            }
            Err(e) if Instant::now() > deadline => {
                bail!("{pod} -> {target}: no reply within {timeout:?}: {e:#}")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
