//! Shared by the operator's integration tests: the real control plane, the chart's RBAC for the operator, the
//! operator binary run as the chart's ServiceAccount, and polling helpers.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use macvtap_e2e::apply::{apply_objects, parse_objects};
use macvtap_e2e::control_plane::ControlPlane;
use macvtap_e2e::process::Process;
use macvtap_e2e::{tools, workspace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Namespace the chart is "installed" in (its RBAC objects, the operator's ServiceAccount and Lease).
pub const NAMESPACE: &str = "macvtap-system";
/// Helm release name: objects are `<release>-macvtap-operator-*`.
pub const RELEASE: &str = "mvt";

/// The control plane with the CRDs and the chart's operator RBAC applied.
pub struct Cluster {
    pub cp: &'static ControlPlane,
    pub admin: Client,
    /// The operator's ServiceAccount name, as the chart renders it.
    pub service_account: String,
    /// The operator's Lease name, as the chart renders it.
    pub lease_name: String,
    pub kubeconfig: PathBuf,
    pub logs: tempfile::TempDir,
}

fn rendered_chart(extra_set: &[&str]) -> String {
    let helm = tools::require("helm");
    let mut cmd = Command::new(helm);
    cmd.args(["template", RELEASE])
        .arg(workspace::root().join("charts/macvtap-operator"))
        .args(["--namespace", NAMESPACE]);
    for s in extra_set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

impl Cluster {
    /// Applies the CRDs and exactly the operator's RBAC objects of the chart (rendered with the real helm), and
    /// writes a kubeconfig for the operator's ServiceAccount.
    pub async fn start(extra_set: &[&str]) -> Cluster {
        let cp = ControlPlane::shared();
        cp.apply_crds().await.expect("applying CRDs");
        let admin = cp.admin_client();
        let objects =
            parse_objects(&rendered_chart(extra_set)).expect("parsing the rendered chart");
        let rbac_kinds = [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ];
        let operator_rbac: Vec<_> = objects
            .into_iter()
            .filter(|o| {
                let kind = o
                    .types
                    .as_ref()
                    .map(|t| t.kind.as_str())
                    .unwrap_or_default();
                rbac_kinds.contains(&kind)
                    && o.labels()
                        .get("app.kubernetes.io/component")
                        .map(String::as_str)
                        == Some("operator")
            })
            .collect();
        let service_account = operator_rbac
            .iter()
            .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "ServiceAccount"))
            .map(|o| o.name_any())
            .expect("the chart renders the operator's ServiceAccount");
        assert!(
            operator_rbac.len() >= 5,
            "operator RBAC objects: {}",
            operator_rbac.len()
        );
        // The namespace first (no controller-manager here); create_service_account makes both.
        cp.create_service_account(NAMESPACE, &service_account)
            .await
            .expect("namespace and ServiceAccount");
        apply_objects(&admin, &operator_rbac, NAMESPACE)
            .await
            .expect("applying the chart's operator RBAC");
        let kubeconfig = cp
            .write_service_account_kubeconfig(NAMESPACE, &service_account)
            .await
            .expect("ServiceAccount kubeconfig");
        Cluster {
            cp,
            admin,
            lease_name: format!("{RELEASE}-macvtap-operator-operator"),
            service_account,
            kubeconfig,
            logs: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Starts the operator binary as the chart's ServiceAccount, with leader election in [`NAMESPACE`].
    pub fn operator(&self, identity: &str, extra_args: &[&str]) -> Operator {
        let port = free_port();
        let log = self.logs.path().join(format!("{identity}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_macvtap-operator"));
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--leader-election-id", &self.lease_name])
            .args(["--leader-election-identity", identity])
            // Short lease so hand-over tests finish quickly.
            .args([
                "--lease-duration-seconds",
                "4",
                "--lease-grace-seconds",
                "1",
            ])
            .args(extra_args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", NAMESPACE)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,macvtap_operator=debug".into()),
            );
        let process = Process::spawn(identity, cmd, &log).expect("spawning the operator");
        Operator {
            identity: identity.to_string(),
            process,
            port,
        }
    }

    pub fn pools(&self) -> Api<MacvtapPool> {
        Api::all(self.admin.clone())
    }
    pub fn states(&self) -> Api<MacvtapNodeState> {
        Api::all(self.admin.clone())
    }
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.admin.clone())
    }

    pub async fn create_node(&self, name: &str, labels: &[(&str, &str)]) -> Node {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"))
    }

    /// Replaces the node's labels (a merge patch; `None` removes a label).
    pub async fn label_node(&self, name: &str, labels: &[(&str, Option<&str>)]) {
        let map: BTreeMap<&str, Option<&str>> = labels.iter().copied().collect();
        self.nodes()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": map}})),
            )
            .await
            .unwrap_or_else(|e| panic!("labelling node {name}: {e}"));
    }

    pub async fn delete_node(&self, name: &str) {
        self.nodes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting node {name}: {e}"));
    }

    /// Creates a pool from a JSON spec.
    pub async fn create_pool(&self, name: &str, spec: serde_json::Value) -> MacvtapPool {
        let pool: MacvtapPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "macvtap.network.kubevirt.io/v1alpha1",
            "kind": "MacvtapPool",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("pool JSON");
        self.pools()
            .create(&PostParams::default(), &pool)
            .await
            .unwrap_or_else(|e| panic!("creating pool {name}: {e}"))
    }

    pub async fn patch_pool(&self, name: &str, spec: serde_json::Value) {
        self.pools()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap_or_else(|e| panic!("patching pool {name}: {e}"));
    }

    pub async fn delete_pool(&self, name: &str) {
        self.pools()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting pool {name}: {e}"));
    }

    /// Writes a node state's status as its agent would (status subresource, admin standing in for the agent): for
    /// the state's current spec generation, with a fresh `lastUpdateTime`.
    pub async fn report_status(&self, node: &str, resources: serde_json::Value) {
        let generation = self
            .states()
            .get(node)
            .await
            .unwrap_or_else(|e| panic!("getting node state {node}: {e}"))
            .metadata
            .generation;
        self.report_status_for(node, generation, resources).await;
    }

    /// [`Cluster::report_status`] for a given observed generation.
    pub async fn report_status_for(
        &self,
        node: &str,
        observed_generation: Option<i64>,
        resources: serde_json::Value,
    ) {
        let body = serde_json::json!({
            "apiVersion": "macvtap.network.kubevirt.io/v1alpha1",
            "kind": "MacvtapNodeState",
            "status": {
                "agentVersion": "test",
                "observedGeneration": observed_generation,
                "lastUpdateTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
                "resources": resources,
            },
        });
        self.states()
            .patch_status(
                node,
                &PatchParams::apply("test-agent").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("writing status of node state {node}: {e}"));
    }

    /// (resource name, pool, lower device, capacity) of a node state, sorted; None when it does not exist.
    pub async fn resources_of(&self, node: &str) -> Option<Vec<(String, String, String, u32)>> {
        let state = self
            .states()
            .get_opt(node)
            .await
            .expect("getting node state")?;
        let mut r: Vec<_> = state
            .spec
            .resources
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.pool.clone(),
                    r.lower_device.clone(),
                    r.capacity,
                )
            })
            .collect();
        r.sort();
        Some(r)
    }
}

pub fn res(name: &str, pool: &str, dev: &str, cap: u32) -> (String, String, String, u32) {
    (name.into(), pool.into(), dev.into(), cap)
}

/// A running operator process.
pub struct Operator {
    pub identity: String,
    pub process: Process,
    pub port: u16,
}

impl Operator {
    /// GET a path of its HTTP server: (status code, body).
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = String::new();
        stream.read_to_string(&mut buf).await?;
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// Value of a metric line that starts with `prefix` (name and labels), 0 when absent.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await.unwrap_or_default();
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail(60)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- operator {} log ---\n{}",
                self.identity,
                self.log_tail()
            );
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns Ok or `timeout` passes; panics with the last error.
pub use macvtap_e2e::wait::eventually;

pub const TIMEOUT: Duration = Duration::from_secs(30);
