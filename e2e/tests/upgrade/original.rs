//! The original kubevirt/macvtap-cni v0.13.1, run as its README deploys it: its two programs (built from its
//! source outside this repository, `../shared/original-macvtap-cni/`), an image of them made here with buildah on
//! our busybox image, its ConfigMap and DaemonSet.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use macvtap_e2e::cluster::{Cluster, images_dir};
use macvtap_e2e::workspace;

/// The original's image as its manifest names it (`quay.io/kubevirt/macvtap-cni`), at the release under test.
pub const IMAGE: &str = "quay.io/kubevirt/macvtap-cni:v0.13.1";
/// Where the original's manifests put its objects.
pub const NAMESPACE: &str = "default";
pub const DAEMONSET: &str = "macvtap-cni";
pub const CONFIGMAP: &str = "macvtap-deviceplugin-config";

/// Overrides where the original's binaries are (default `<workspace>/../shared/original-macvtap-cni/v0.13.1`).
pub const DIR_ENV: &str = "MACVTAP_ORIGINAL_DIR";

/// The original's DaemonSet as its `manifests/macvtap.yaml` writes it (image tag pinned, pulled from the cluster's
/// registry): the device plugin with `DP_MACVTAP_CONF` from the ConfigMap, privileged, host network and PID, the
/// kubelet's device-plugin directory; an init container copying its CNI to the node's `/opt/cni/bin/macvtap`.
pub fn daemonset_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {DAEMONSET}
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      name: {DAEMONSET}
  template:
    metadata:
      labels:
        name: {DAEMONSET}
    spec:
      hostNetwork: true
      hostPID: true
      priorityClassName: system-node-critical
      initContainers:
      - name: install-cni
        image: {IMAGE}
        command: ["cp", "/macvtap-cni", "/host/opt/cni/bin/macvtap"]
        securityContext:
          privileged: true
        volumeMounts:
        - name: cni
          mountPath: /host/opt/cni/bin
      containers:
      - name: {DAEMONSET}
        image: {IMAGE}
        command: ["/macvtap-deviceplugin", "-v", "3", "-logtostderr"]
        envFrom:
        - configMapRef:
            name: {CONFIGMAP}
        resources:
          requests:
            cpu: 60m
            memory: 30Mi
        securityContext:
          privileged: true
        volumeMounts:
        - name: deviceplugin
          mountPath: /var/lib/kubelet/device-plugins
        readinessProbe:
          exec:
            command: ["sh", "-c", "test -S /var/lib/kubelet/device-plugins/macvtap.network.kubevirt.io*"]
          periodSeconds: 2
        livenessProbe:
          exec:
            command: ["sh", "-c", "test -S /var/lib/kubelet/device-plugins/macvtap.network.kubevirt.io*"]
          initialDelaySeconds: 30
      volumes:
      - name: deviceplugin
        hostPath:
          path: /var/lib/kubelet/device-plugins
      - name: cni
        hostPath:
          path: /opt/cni/bin
"#
    )
}

/// The original's two programs, checked against its `SHA256SUMS`.
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub const DEVICE_PLUGIN: &str = "macvtap-deviceplugin";
    pub const CNI: &str = "macvtap-cni";

    /// Finds the binaries and checks them; fails naming what is missing.
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace::root().join("../shared/original-macvtap-cni/v0.13.1"));
        for f in [Self::DEVICE_PLUGIN, Self::CNI, "SHA256SUMS"] {
            ensure!(
                dir.join(f).is_file(),
                "the original's {f} is not in {} (set {DIR_ENV} to the directory with the v0.13.1 binaries)",
                dir.display()
            );
        }
        let out = Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dir)
            .output()
            .context("running sha256sum")?;
        ensure!(
            out.status.success(),
            "the original's binaries in {} do not match their SHA256SUMS:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { dir })
    }

    pub fn cni(&self) -> PathBuf {
        self.dir.join(Self::CNI)
    }
}

/// Builds the original's image into `<work>/original.oci.tar`: our busybox image (it has `sh` and `cp`, what the
/// original's probes and init container run) plus both programs at `/`, as the original's `cmd/Dockerfile` puts them.
/// buildah with its own storage under `work` (vfs), nothing global.
pub fn build_image(bins: &Binaries, work: &Path) -> Result<PathBuf> {
    let busybox = images_dir().join("busybox.oci.tar");
    ensure!(
        busybox.is_file(),
        "{} is missing: build the images with `make images`",
        busybox.display()
    );
    let buildah = |args: &[&str]| -> Result<String> {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(work.join("root"))
            .arg("--runroot")
            .arg(work.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .context("running buildah (Debian buildah: e2e/tools/install-deps.sh)")?;
        if !out.status.success() {
            bail!(
                "buildah {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let from = format!("oci-archive:{}", busybox.display());
    let container = buildah(&["from", "--quiet", &from])?;
    let dp = bins.dir.join(Binaries::DEVICE_PLUGIN);
    let cni = bins.cni();
    buildah(&[
        "copy",
        "--chmod",
        "0755",
        &container,
        &dp.to_string_lossy(),
        &cni.to_string_lossy(),
        "/",
    ])?;
    let archive = work.join("original.oci.tar");
    buildah(&[
        "commit",
        "--quiet",
        &container,
        &format!("oci-archive:{}:{IMAGE}", archive.display()),
    ])?;
    buildah(&["rm", &container])?;
    Ok(archive)
}

/// Waits until the original's DaemonSet has a ready pod on every node (its readiness probe: the plugin's socket).
pub async fn wait_ready(c: &Cluster, timeout: Duration) -> Result<()> {
    let api = Api::<DaemonSet>::namespaced(c.client(), NAMESPACE);
    let deadline = Instant::now() + timeout;
    loop {
        let ds = api.get(DAEMONSET).await?;
        let ready = ds.status.as_ref().map_or(0, |s| s.number_ready);
        if ready == c.nodes.len() as i32 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the original's DaemonSet has {ready} ready pods of {} within {timeout:?}\n{}\n{}",
                c.nodes.len(),
                c.kubectl_out(&["get", "pods", "-n", NAMESPACE, "-o", "wide"])
                    .unwrap_or_default(),
                logs(c)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until no pod of the original's DaemonSet is left.
pub async fn wait_gone(c: &Cluster, timeout: Duration) -> Result<()> {
    let api = Api::<Pod>::namespaced(c.client(), NAMESPACE);
    let lp = ListParams::default().labels(&format!("name={DAEMONSET}"));
    let deadline = Instant::now() + timeout;
    while !api.list(&lp).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("pods of the original's DaemonSet still there after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The original's pods' logs (init container and plugin), for failures.
pub fn logs(c: &Cluster) -> String {
    c.kubectl_out(&[
        "logs",
        "-n",
        NAMESPACE,
        "-l",
        &format!("name={DAEMONSET}"),
        "--all-containers",
        "--prefix",
        "--tail=40",
    ])
    .unwrap_or_else(|e| e.to_string())
}
