//! Kubeconfig files (JSON, which kubectl, helm and kube-rs all read) for the admin, the nodes and ServiceAccounts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Client, Config};

use super::{ControlPlane, Result, io_err};

impl ControlPlane {
    /// Writes a kubeconfig for `node` (its client certificate, the node-side server URL) to `path`.
    pub fn write_node_kubeconfig(&self, node: &str, path: &Path) -> Result<()> {
        let (cert, key) = self.node_credentials(node);
        let kc = kubeconfig(
            &self.node_server_url(),
            &self.ca_path,
            &format!("system:node:{node}"),
            None,
            AuthInfo {
                client_certificate: Some(cert.display().to_string()),
                client_key: Some(key.display().to_string()),
                ..Default::default()
            },
        );
        write_kubeconfig(path, &kc)
    }

    /// Writes an admin kubeconfig with the node-side server URL (for node programs such as kube-proxy, and for
    /// users of a kept sandbox who work from a node).
    pub fn write_node_admin_kubeconfig(&self, path: &Path) -> Result<()> {
        let mut kc = Kubeconfig::read_from(&self.kubeconfig_path)?;
        for c in &mut kc.clusters {
            if let Some(cluster) = c.cluster.as_mut() {
                cluster.server = Some(self.node_server_url());
            }
        }
        write_kubeconfig(path, &kc)
    }

    /// Writes a kubeconfig for a ServiceAccount (a TokenRequest token valid `seconds`) that works from the
    /// nodes (`node_server_url`), for node-level programs such as Multus.
    pub async fn write_node_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        seconds: i64,
        path: &Path,
    ) -> Result<()> {
        let token = self.request_token(namespace, name, seconds, None).await?;
        let kc = kubeconfig(
            &self.node_server_url(),
            &self.ca_path,
            &format!("system:serviceaccount:{namespace}:{name}"),
            Some(namespace),
            AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            },
        );
        write_kubeconfig(path, &kc)
    }

    /// A client authenticated as `system:serviceaccount:<namespace>:<name>` with a TokenRequest token.
    /// The ServiceAccount must exist. Must be called inside a tokio runtime.
    pub async fn client_as_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let kubeconfig = self.service_account_kubeconfig(namespace, name).await?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Writes a kubeconfig for the ServiceAccount (token from TokenRequest) into the control plane's dir and
    /// returns its path: run our binaries or kubectl as that ServiceAccount with `KUBECONFIG=<path>`.
    pub async fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf> {
        let kubeconfig = self.service_account_kubeconfig(namespace, name).await?;
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_kubeconfig(&path, &kubeconfig)?;
        Ok(path)
    }

    async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<Kubeconfig> {
        let token = self.service_account_token(namespace, name).await?;
        Ok(self.kubeconfig_with(
            &format!("system:serviceaccount:{namespace}:{name}"),
            Some(namespace),
            AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            },
        ))
    }

    fn kubeconfig_with(&self, user: &str, namespace: Option<&str>, auth: AuthInfo) -> Kubeconfig {
        kubeconfig(&self.server_url, &self.ca_path, user, namespace, auth)
    }
}

pub(super) fn kubeconfig(
    server: &str,
    ca: &Path,
    user: &str,
    namespace: Option<&str>,
    auth: AuthInfo,
) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "macvtap-e2e".into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority: Some(ca.display().to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(auth),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "macvtap-e2e".into(),
            context: Some(Context {
                cluster: "macvtap-e2e".into(),
                user: Some(user.into()),
                namespace: namespace.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("macvtap-e2e".into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Default::default()
    }
}

/// Kubeconfig files are JSON (a YAML subset, read by kubectl, helm and kube-rs alike).
pub(super) fn write_kubeconfig(path: &Path, kubeconfig: &Kubeconfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(kubeconfig).expect("a kubeconfig serializes");
    write_private(path, &json)
}

pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let what = || format!("writing {}", path.display());
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(io_err(what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_file_is_json_kube_can_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let kc = kubeconfig(
            "https://127.0.0.1:1",
            Path::new("/ca.crt"),
            "u",
            Some("ns"),
            AuthInfo {
                token: Some("t".to_string().into()),
                ..Default::default()
            },
        );
        write_kubeconfig(&path, &kc).unwrap();
        let back = Kubeconfig::read_from(&path).unwrap();
        let ctx = back.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("ns"));
        assert_eq!(
            back.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:1")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
