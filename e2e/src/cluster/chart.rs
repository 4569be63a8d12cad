//! The chart on the cluster: `helm install` as a user runs it, and waiting until its workloads are ready.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{Cluster, images_dir};
use crate::registry::image_archives;
use crate::workspace;

/// The chart values of the scenario clusters: orphaned links cleaned within seconds instead of the default two
/// minutes, so scenarios can watch cleanup happen.
pub const FAST_CLEANUP: [&str; 2] = [
    "agent.extraArgs[0]=--cleanup-grace-secs=10",
    "agent.extraArgs[1]=--cleanup-interval-secs=3",
];

/// The scenario clusters' webhook certificate lives 90 s: renewed every minute, its CA replaced every ~13 minutes, so
/// every pod the suites create goes through a webhook whose certificate keeps rotating.
pub const FAST_CERT_ROTATION: &str = "injector.certificates.validitySeconds=90";

impl Cluster {
    /// A cluster of the default shape with the chart installed as the scenario suites run it ([`FAST_CLEANUP`],
    /// [`FAST_CERT_ROTATION`]).
    pub async fn start_with_chart() -> Result<Cluster> {
        let cluster = Cluster::start(super::ClusterOptions::default())
            .await
            .context("the cluster starts")?;
        let values: Vec<String> = FAST_CLEANUP
            .iter()
            .chain([&FAST_CERT_ROTATION])
            .map(|s| s.to_string())
            .collect();
        cluster
            .install_chart(&values)
            .await
            .context("the chart installs and its pods run")?;
        Ok(cluster)
    }

    /// `helm install` of the chart (its defaults point at the images the registry serves), then waits until the
    /// operator Deployment is available and the agent DaemonSet ready on every node.
    pub async fn install_chart(&self, set: &[String]) -> Result<()> {
        let images = image_archives(&images_dir())?;
        for needed in ["operator", "agent"] {
            ensure!(
                images
                    .iter()
                    .any(|i| i.name == needed && i.archive.exists()),
                "the {needed} image archive is missing: build the images with `make images`"
            );
        }
        // Pushed now, not at cluster start: the archives may be newer than the cluster.
        self.registry.push_all(
            images
                .iter()
                .filter(|i| i.name == "operator" || i.name == "agent"),
        )?;
        let mut helm = self.control_plane.helm()?;
        helm.args(["install", &self.chart.release])
            .arg(workspace::root().join("charts/macvtap-operator"))
            .args(["--namespace", &self.chart.namespace, "--create-namespace"]);
        for s in set {
            helm.args(["--set", s]);
        }
        let out = helm.output().context("running helm")?;
        if !out.status.success() {
            bail!(
                "helm install failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.wait_chart_ready(Duration::from_secs(180)).await
    }

    /// Waits until the operator Deployment is available and the agent DaemonSet has a ready pod on every node.
    pub async fn wait_chart_ready(&self, timeout: Duration) -> Result<()> {
        let ns = &self.chart.namespace;
        let deployments = Api::<Deployment>::namespaced(self.client(), ns);
        let daemonsets = Api::<DaemonSet>::namespaced(self.client(), ns);
        let deadline = Instant::now() + timeout;
        loop {
            let ds = daemonsets.list(&ListParams::default()).await?;
            let dep = deployments.list(&ListParams::default()).await?;
            let ds_ready = !ds.items.is_empty()
                && ds.items.iter().all(|d| {
                    d.status.as_ref().is_some_and(|s| {
                        s.number_ready == self.nodes.len() as i32
                            && s.updated_number_scheduled.unwrap_or(0) == self.nodes.len() as i32
                    })
                });
            let dep_ready = !dep.items.is_empty()
                && dep.items.iter().all(|d| {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    d.status
                        .as_ref()
                        .is_some_and(|s| s.available_replicas.unwrap_or(0) >= want)
                });
            if ds_ready && dep_ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let pods = self
                    .kubectl_out(&["get", "pods", "-A", "-o", "wide"])
                    .unwrap_or_default();
                let events = self
                    .kubectl_out(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"])
                    .unwrap_or_default();
                let mut logs = String::new();
                for node in &self.nodes {
                    if let Ok(p) = self.agent_pod(node.name()).await {
                        let name = p.name_any();
                        let l = self
                            .kubectl_out(&[
                                "logs",
                                "-n",
                                ns,
                                &name,
                                "--all-containers",
                                "--tail=30",
                            ])
                            .unwrap_or_else(|e| e.to_string());
                        logs.push_str(&format!("--- logs of {name}\n{l}\n"));
                    }
                }
                bail!(
                    "the chart's workloads not ready within {timeout:?} (DaemonSet ready: {ds_ready}, \
                     Deployment available: {dep_ready})\n{pods}\n{events}\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The agent pod running on `node`.
    pub async fn agent_pod(&self, node: &str) -> Result<Pod> {
        let pods = Api::<Pod>::namespaced(self.client(), &self.chart.namespace)
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        pods.items
            .into_iter()
            .find(|p| p.name_any().contains("agent"))
            .ok_or_else(|| anyhow!("no agent pod on {node}"))
    }
}
