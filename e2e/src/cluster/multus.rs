//! Multus as its install step would leave it: the NetworkAttachmentDefinition CRD, a ServiceAccount with the
//! rights its thin plugin uses, and a kubeconfig on every node (the binary and `00-multus.conf` are the node's,
//! see [`super::node`]).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::Api;

use super::Cluster;
use crate::{apply, workspace};

impl Cluster {
    /// Multus: its CRD, a ServiceAccount with the rights its thin plugin uses, and a kubeconfig on every node.
    pub(super) async fn install_multus(&self) -> Result<()> {
        self.control_plane
            .apply_crd_yaml(&std::fs::read_to_string(
                workspace::root().join("e2e/manifests/network-attachment-definition-crd.yaml"),
            )?)
            .await
            .context("NetworkAttachmentDefinition CRD")?;
        apply::apply_objects(
            &self.client(),
            &apply::parse_objects(MULTUS_RBAC)?,
            "kube-system",
        )
        .await
        .context("Multus RBAC")?;
        wait_service_account(&self.client(), "kube-system", "multus").await?;
        for node in &self.nodes {
            // A day: longer than any test or sandbox session (a real Multus install refreshes it).
            self.control_plane
                .write_node_service_account_kubeconfig(
                    "kube-system",
                    "multus",
                    86_400,
                    &node.multus_kubeconfig(),
                )
                .await?;
        }
        wait_service_account(&self.client(), "default", "default").await
    }
}

async fn wait_service_account(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "ServiceAccount {ns}/{name} not created within 60 s (kube-controller-manager running?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// What Multus's thin plugin needs: NADs, and pods to read and annotate with the network status.
const MULTUS_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: multus, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: multus}
rules:
- apiGroups: ["k8s.cni.cncf.io"]
  resources: ["*"]
  verbs: ["*"]
- apiGroups: [""]
  resources: ["pods", "pods/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: multus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: multus}
subjects:
- {kind: ServiceAccount, name: multus, namespace: kube-system}
"#;
