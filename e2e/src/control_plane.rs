//! A real control plane for tests: etcd and kube-apiserver (built by `e2e/tools/build-tools.sh`) on free
//! 127.0.0.1 ports, with RBAC, ServiceAccount token issuing (TokenRequest) and certificates made for each run.
//!
//! [`ControlPlane::start`] runs no controllers: no garbage collection of owned objects, namespaces stay
//! `Terminating` after deletion, no default ServiceAccounts (create them with
//! [`ControlPlane::create_service_account`]), workload controllers create no Pods, and the `ServiceAccount`
//! admission plugin is off so Pods can be created in namespaces without a `default` ServiceAccount.
//! [`ControlPlane::start_cluster`] is the control plane of the real cluster (`crate::cluster`): all of that on,
//! with kube-controller-manager and kube-scheduler, Node authorization and node credentials.
//!
//! Teardown: dropping a [`ControlPlane`] kills both processes and removes its temp dir. [`ControlPlane::shared`]
//! is never dropped, so two more guards cover it and any process that dies without unwinding: the servers are
//! spawned from one thread that lives as long as the process, with `PR_SET_PDEATHSIG=SIGKILL`, and a small `sh`
//! "reaper" blocks on a pipe from this process; when the process ends (exit, abort, SIGKILL), the pipe closes and
//! the reaper kills the servers and removes the temp dir.
//!
//! Clients are tied to the tokio runtime they are made in (kube's client spawns a buffer task), so every
//! `*client*` function builds a fresh one and must be called inside a runtime: `#[tokio::test]` gives one per test.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tracing::{debug, info, warn};

use crate::tools;

/// Field manager used for everything this fixture applies.
pub const FIELD_MANAGER: &str = "macvtap-e2e";

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
/// Port races with other processes on the machine are retried this many times with fresh ports.
const START_ATTEMPTS: usize = 3;

/// Keeps the temp dir (certificates, kubeconfigs, server logs) after teardown when set, for debugging.
pub const KEEP_ENV: &str = "MACVTAP_E2E_KEEP_CONTROL_PLANE";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    ToolMissing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{component} did not become ready: {reason}\n--- end of {} ---\n{tail}", log.display())]
    NotReady {
        component: &'static str,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("waiting for a condition: {0}")]
    Wait(#[from] kube::runtime::wait::Error),
    #[error("building a client config: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("reading CRDs from {}: {reason}", path.display())]
    CrdFile { path: PathBuf, reason: String },
    #[error("CRD {name} not Established within {timeout:?}")]
    CrdNotEstablished { name: String, timeout: Duration },
    #[error("TokenRequest for {namespace}/{name} returned no token")]
    NoToken { namespace: String, name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The control plane of a cluster with real nodes (see `crate::cluster`): what the API server needs to know
/// about the network the nodes live on, and which nodes get credentials.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The host's address on the nodes' segment: the API server listens there too and advertises it as the
    /// endpoint of the `kubernetes` Service.
    pub host_ip: Ipv4Addr,
    /// `--service-cluster-ip-range`; its first address is the `kubernetes` Service's ClusterIP.
    pub service_cidr: String,
    /// The `kubernetes` Service's ClusterIP (first address of `service_cidr`), for the serving certificate.
    pub service_ip: Ipv4Addr,
    /// Node names that get a client certificate (`system:node:<name>` in `system:nodes`).
    pub nodes: Vec<String>,
}

/// A running etcd + kube-apiserver pair (plus kube-controller-manager and kube-scheduler for a cluster). Drop
/// stops it and removes its files.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    etcd_url: String,
    etcd: Child,
    apiserver: Child,
    /// kube-controller-manager and kube-scheduler, when started for a cluster.
    controllers: Vec<Child>,
    reaper: Option<Child>,
    admin_config: Config,
    kubeconfig_path: PathBuf,
    ca_path: PathBuf,
    cluster: Option<ClusterSpec>,
}

impl ControlPlane {
    /// Starts a new control plane and waits until `/readyz` answers ok. Blocking; fine to call from async tests.
    pub fn start() -> Result<ControlPlane> {
        Self::start_with(None)
    }

    /// Starts the control plane of a cluster with real nodes: the API server also listens on
    /// `cluster.host_ip`, authorizes kubelets with the Node authorizer, mounts ServiceAccount tokens into pods,
    /// and kube-controller-manager and kube-scheduler run beside it.
    pub fn start_cluster(cluster: ClusterSpec) -> Result<ControlPlane> {
        Self::start_with(Some(cluster))
    }

    fn start_with(cluster: Option<ClusterSpec>) -> Result<ControlPlane> {
        // Readiness checks need a runtime of their own; a caller inside one cannot block on another, so start
        // from a plain thread.
        std::thread::Builder::new()
            .name("control-plane-start".into())
            .spawn(move || start_blocking(cluster))
            .map_err(io_err("spawning the start thread"))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The API server URL as the nodes of a cluster reach it (`https://<host_ip>:<port>`); the loopback URL for
    /// a control plane without nodes.
    pub fn node_server_url(&self) -> String {
        match &self.cluster {
            Some(c) => self.server_url.replace("127.0.0.1", &c.host_ip.to_string()),
            None => self.server_url.clone(),
        }
    }

    /// Client certificate and key of a node named in [`ClusterSpec::nodes`].
    pub fn node_credentials(&self, node: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("node-{node}.crt")),
            self.dir.join(format!("node-{node}.key")),
        )
    }

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
        let token = self.token(namespace, name, seconds).await?;
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

    /// One control plane per test binary, started on first use and stopped when the process exits.
    ///
    /// Panics (failing the test) when it cannot start, e.g. because the tools are not built.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| match ControlPlane::start() {
            Ok(cp) => cp,
            Err(e) => panic!("starting the shared control plane: {e}"),
        })
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// Admin kubeconfig (user in `system:masters`), for kubectl, helm and our binaries.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The built `kubectl`, pointed at this control plane as admin (`--kubeconfig`).
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(tools::tool("kubectl").map_err(Error::ToolMissing)?);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig_path.display()));
        Ok(cmd)
    }

    /// The built `helm`, pointed at this control plane as admin (`KUBECONFIG`), with its cache, config and data
    /// dirs inside the control plane's temp dir so runs do not share state.
    pub fn helm(&self) -> Result<Command> {
        let mut cmd = Command::new(tools::tool("helm").map_err(Error::ToolMissing)?);
        cmd.env("KUBECONFIG", &self.kubeconfig_path)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        Ok(cmd)
    }

    /// PEM file of the CA that signed the API server's serving certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Temp dir with certificates, kubeconfigs and the servers' logs (`etcd.log`, `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.id(), self.apiserver.id()]
    }

    /// Client config of the admin user.
    pub fn admin_config(&self) -> Config {
        self.admin_config.clone()
    }

    /// A new admin client. Must be called inside a tokio runtime; use it only in that runtime.
    pub fn admin_client(&self) -> Client {
        Client::try_from(self.admin_config.clone())
            .expect("admin client config was validated at start")
    }

    /// Creates the namespace and the ServiceAccount when missing (there is no controller-manager to make
    /// `default`). Idempotent.
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let client = self.admin_client();
        let pp = PatchParams::apply(FIELD_MANAGER);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .patch(namespace, &pp, &Patch::Apply(&ns))
            .await?;
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client, namespace)
            .patch(name, &pp, &Patch::Apply(&sa))
            .await?;
        Ok(())
    }

    /// A one-hour token of an existing ServiceAccount, issued by the API server (TokenRequest).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        self.token(namespace, name, 3600).await
    }

    async fn token(&self, namespace: &str, name: &str, seconds: i64) -> Result<String> {
        let req = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(seconds),
                ..Default::default()
            },
            ..Default::default()
        };
        let resp = Api::<ServiceAccount>::namespaced(self.admin_client(), namespace)
            .create_token_request(name, &PostParams::default(), &req)
            .await?;
        resp.status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::NoToken {
                namespace: namespace.into(),
                name: name.into(),
            })
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

    /// Applies every `*.yaml` file of the repo's `crds/yaml/` (server-side apply) and waits until each CRD is
    /// `Established`. Returns the CRD names.
    pub async fn apply_crds(&self) -> Result<Vec<String>> {
        let dir = crd_yaml_dir();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| Error::CrdFile {
                path: dir.clone(),
                reason: format!("{e} (generate them with `cargo run -p macvtap-api --bin crdgen`)"),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::CrdFile {
                path: dir,
                reason: "no *.yaml files".into(),
            });
        }
        let mut crds = Vec::new();
        for path in &files {
            let text = fs::read_to_string(path).map_err(|e| Error::CrdFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            crds.extend(parse_crds(&text).map_err(|reason| Error::CrdFile {
                path: path.clone(),
                reason,
            })?);
        }
        apply_crd_objects(self.admin_client(), crds).await
    }

    /// Applies the CRDs of a (multi-document) YAML text and waits until they are `Established`.
    pub async fn apply_crd_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let crds = parse_crds(yaml).map_err(|reason| Error::CrdFile {
            path: "<inline>".into(),
            reason,
        })?;
        apply_crd_objects(self.admin_client(), crds).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The reaper first, so it never signals pids that are already reaped (and possibly reused).
        if let Some(mut reaper) = self.reaper.take() {
            kill_and_wait(&mut reaper);
        }
        for c in &mut self.controllers {
            kill_and_wait(c);
        }
        kill_and_wait(&mut self.apiserver);
        kill_and_wait(&mut self.etcd);
        if std::env::var_os(KEEP_ENV).is_some() {
            info!(dir = %self.dir.display(), "keeping control plane dir");
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "removing control plane dir");
        }
    }
}

fn kill_and_wait(child: &mut Child) {
    // SIGKILL: the data is throwaway, and a graceful apiserver shutdown takes seconds.
    let _ = child.kill();
    let _ = child.wait();
}

/// `crds/yaml/` of this repository.
pub fn crd_yaml_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml")
}

fn parse_crds(yaml: &str) -> std::result::Result<Vec<CustomResourceDefinition>, String> {
    let docs: Vec<Option<CustomResourceDefinition>> =
        serde_saphyr::from_str_multiple(yaml).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().flatten().collect())
}

async fn apply_crd_objects(
    client: Client,
    crds: Vec<CustomResourceDefinition>,
) -> Result<Vec<String>> {
    let api = Api::<CustomResourceDefinition>::all(client);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd)).await?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
            Ok(Ok(_)) => debug!(crd = %name, "established"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(Error::CrdNotEstablished {
                    name: name.clone(),
                    timeout: CRD_ESTABLISHED_TIMEOUT,
                });
            }
        }
    }
    Ok(names)
}

fn kubeconfig(
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
fn write_kubeconfig(path: &Path, kubeconfig: &Kubeconfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(kubeconfig).expect("a kubeconfig serializes");
    write_private(path, &json)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------------------
// Start-up.

struct Certs {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    /// The API server's client certificate towards kubelets (logs, exec), in `system:masters`.
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
}

fn start_blocking(cluster: Option<ClusterSpec>) -> Result<ControlPlane> {
    let etcd_bin = tools::tool("etcd").map_err(Error::ToolMissing)?;
    let apiserver_bin = tools::tool("kube-apiserver").map_err(Error::ToolMissing)?;
    let t0 = Instant::now();

    let dir = tempfile::Builder::new()
        .prefix("macvtap-cp-")
        .tempdir()
        .map_err(io_err("creating the control plane temp dir"))?
        .keep();
    let mut reaper = match spawn_reaper(&dir) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let result = (|| {
        let certs = write_certs(&dir, cluster.as_ref())?;
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            match start_attempt(
                &dir,
                &etcd_bin,
                &apiserver_bin,
                &certs,
                cluster.as_ref(),
                &mut reaper.stdin,
            ) {
                Ok(mut cp) => {
                    if cluster.is_some() {
                        start_controllers(&mut cp, &certs, &mut reaper.stdin)?;
                    }
                    return Ok(cp);
                }
                Err((e, retry)) => {
                    warn!(attempt, error = %e, "control plane did not start");
                    last_err = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    })();
    match result {
        Ok(mut cp) => {
            cp.reaper = Some(reaper);
            info!(url = %cp.server_url, dir = %dir.display(), elapsed = ?t0.elapsed(), "control plane ready");
            Ok(cp)
        }
        Err(e) => {
            kill_and_wait(&mut reaper);
            if std::env::var_os(KEEP_ENV).is_none() {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

/// One try with fresh ports. The bool says whether a retry may help (a port was taken meanwhile).
fn start_attempt(
    dir: &Path,
    etcd_bin: &Path,
    apiserver_bin: &Path,
    certs: &Certs,
    cluster: Option<&ClusterSpec>,
    reaper: &mut Option<ChildStdin>,
) -> std::result::Result<ControlPlane, (Error, bool)> {
    let fatal = |e: Error| (e, false);
    let [etcd_port, peer_port, api_port] = free_ports().map_err(fatal)?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let server_url = format!("https://127.0.0.1:{api_port}");
    let data_dir = dir.join("etcd-data");
    let _ = fs::remove_dir_all(&data_dir);

    let etcd_log = dir.join("etcd.log");
    let mut etcd_cmd = Command::new(etcd_bin);
    etcd_cmd
        .arg("--name=e2e")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=e2e={peer_url}"))
        // Test data: durability does not matter, fsync latency does.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let mut etcd = spawn_logged(etcd_cmd, &etcd_log).map_err(fatal)?;
    if let Some(r) = reaper.as_mut() {
        let _ = writeln!(r, "{}", etcd.id());
    }
    if let Err((e, retry)) = wait_etcd(&mut etcd, etcd_port, &etcd_log) {
        kill_and_wait(&mut etcd);
        return Err((e, retry));
    }

    let apiserver_log = dir.join("kube-apiserver.log");
    let mut api_cmd = Command::new(apiserver_bin);
    api_cmd
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--secure-port={api_port}"))
        .arg(format!(
            "--cert-dir={}",
            dir.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", certs.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            certs.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", certs.ca.display()))
        .arg(format!("--service-account-issuer={server_url}"))
        .arg(format!(
            "--service-account-key-file={}",
            certs.sa_pub.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            certs.sa_key.display()
        ))
        .arg("--allow-privileged=true")
        // Speed: no request queuing.
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false");
    match cluster {
        // Nodes reach the API server on the segment; pods through the `kubernetes` Service, whose endpoint
        // is the advertised address. Kubelets are authorized as nodes and reached for logs and exec.
        Some(c) => {
            api_cmd
                .arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={}", c.host_ip))
                .arg(format!("--service-cluster-ip-range={}", c.service_cidr))
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    certs.kubelet_client_cert.display()
                ))
                .arg(format!(
                    "--kubelet-client-key={}",
                    certs.kubelet_client_key.display()
                ))
                .arg("--kubelet-preferred-address-types=InternalIP");
        }
        // API only: no nodes, no controller-manager to create `default` ServiceAccounts (which that admission
        // plugin would require), no endpoint bookkeeping for the `kubernetes` Service.
        None => {
            api_cmd
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--service-cluster-ip-range=10.0.0.0/24")
                .arg("--authorization-mode=RBAC")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--endpoint-reconciler-type=none");
        }
    }
    let mut apiserver = spawn_logged(api_cmd, &apiserver_log).map_err(|e| {
        kill_and_wait(&mut etcd);
        (e, false)
    })?;
    if let Some(r) = reaper.as_mut() {
        let _ = writeln!(r, "{}", apiserver.id());
    }

    let kubeconfig_path = dir.join("admin.kubeconfig");
    let kc = kubeconfig(
        &server_url,
        &certs.ca,
        "admin",
        None,
        AuthInfo {
            client_certificate: Some(certs.admin_cert.display().to_string()),
            client_key: Some(certs.admin_key.display().to_string()),
            ..Default::default()
        },
    );
    let ready = write_kubeconfig(&kubeconfig_path, &kc)
        .map_err(|e| (e, false))
        .and_then(|()| {
            let logs = [apiserver_log.as_path(), etcd_log.as_path()];
            wait_apiserver(&mut apiserver, &mut etcd, kc, logs)
        });
    match ready {
        Ok(admin_config) => Ok(ControlPlane {
            dir: dir.to_path_buf(),
            server_url,
            etcd_url,
            etcd,
            apiserver,
            controllers: Vec::new(),
            reaper: None,
            admin_config,
            kubeconfig_path,
            ca_path: certs.ca.clone(),
            cluster: cluster.cloned(),
        }),
        Err(e) => {
            kill_and_wait(&mut apiserver);
            kill_and_wait(&mut etcd);
            Err(e)
        }
    }
}

/// kube-controller-manager (ServiceAccounts and their CA bundle, workload controllers, garbage collection, node
/// lifecycle) and kube-scheduler, both as the admin user on loopback, without leader election.
fn start_controllers(
    cp: &mut ControlPlane,
    certs: &Certs,
    reaper: &mut Option<ChildStdin>,
) -> Result<()> {
    let kcm = tools::tool("kube-controller-manager").map_err(Error::ToolMissing)?;
    let scheduler = tools::tool("kube-scheduler").map_err(Error::ToolMissing)?;
    let kubeconfig = cp.kubeconfig_path.display().to_string();
    let [kcm_port, sched_port, _] = free_ports()?;
    let mut kcm_cmd = Command::new(kcm);
    kcm_cmd
        .arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg(format!("--root-ca-file={}", certs.ca.display()))
        .arg(format!(
            "--service-account-private-key-file={}",
            certs.sa_key.display()
        ))
        .arg("--use-service-account-credentials=false")
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={kcm_port}"))
        // A node that stops reporting is tainted after this long (the drain and kubelet-restart scenarios).
        .arg("--node-monitor-grace-period=40s")
        .arg("--profiling=false");
    let mut sched_cmd = Command::new(scheduler);
    sched_cmd
        .arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={sched_port}"))
        .arg("--profiling=false");
    for (name, cmd) in [
        ("kube-controller-manager", kcm_cmd),
        ("kube-scheduler", sched_cmd),
    ] {
        let child = spawn_logged(cmd, &cp.dir.join(format!("{name}.log")))?;
        if let Some(r) = reaper.as_mut() {
            let _ = writeln!(r, "{}", child.id());
        }
        cp.controllers.push(child);
    }
    Ok(())
}

/// Three distinct free loopback ports. They are released before the servers bind them, so another process
/// may grab one meanwhile: start-up retries then.
fn free_ports() -> Result<[u16; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("finding free ports"))?;
    let mut ports = [0u16; 3];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().map_err(io_err("finding free ports"))?.port();
    }
    Ok(ports)
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err("duplicating a log file handle"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let program = cmd.get_program().to_string_lossy().into_owned();
    crate::process::spawn_owned(cmd).map_err(io_err(format!("starting {program}")))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn port_taken(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|t| t.contains("address already in use"))
}

fn not_ready(component: &'static str, reason: String, log: &Path) -> (Error, bool) {
    let retry = port_taken(log);
    (
        Error::NotReady {
            component,
            reason,
            log: log.to_path_buf(),
            tail: log_tail(log),
        },
        retry,
    )
}

fn wait_etcd(etcd: &mut Child, port: u16, log: &Path) -> std::result::Result<(), (Error, bool)> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = etcd.try_wait() {
            return Err(not_ready("etcd", format!("exited with {status}"), log));
        }
        if etcd_healthy(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(not_ready(
                "etcd",
                format!("no healthy answer within {ETCD_READY_TIMEOUT:?}"),
                log,
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd's `/health` over plain HTTP/1.0; a hand-written request keeps an HTTP client out of the dependencies.
fn etcd_healthy(port: u16) -> bool {
    let probe = || -> io::Result<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    probe().is_ok_and(|b| b.contains(r#""health":"true""#))
}

fn wait_apiserver(
    apiserver: &mut Child,
    etcd: &mut Child,
    kubeconfig: Kubeconfig,
    [log, etcd_log]: [&Path; 2],
) -> std::result::Result<Config, (Error, bool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (io_err("building a tokio runtime")(e), false))?;
    rt.block_on(async {
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| (Error::from(e), false))?;
        let client = Client::try_from(config.clone()).map_err(|e| (Error::from(e), false))?;
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = apiserver.try_wait() {
                return Err(not_ready(
                    "kube-apiserver",
                    format!("exited with {status}"),
                    log,
                ));
            }
            if let Ok(Some(status)) = etcd.try_wait() {
                // etcd may have lost its port to another process after answering /health from there.
                return Err(not_ready("etcd", format!("exited with {status}"), etcd_log));
            }
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a valid request");
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(config),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(not_ready(
                    "kube-apiserver",
                    format!(
                        "/readyz not ok within {APISERVER_READY_TIMEOUT:?}; last answer: {last}"
                    ),
                    log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn write_certs(dir: &Path, cluster: Option<&ClusterSpec>) -> Result<Certs> {
    let file = |name: &str| dir.join(name);
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "macvtap-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // The apiserver's own loopback client and in-cluster clients use these names.
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "10.0.0.1".into(),
    ])?;
    if let Some(c) = cluster {
        for ip in [c.host_ip, c.service_ip] {
            serving
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.into()));
        }
    }
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    // Organization system:masters is the group the default RBAC binds to cluster-admin.
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    // ES256 ServiceAccount token signing key.
    let sa_key = KeyPair::generate()?;

    let client_cert = |cn: &str, org: &str, cert: PathBuf, key: PathBuf| -> Result<()> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, org);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let k = KeyPair::generate()?;
        let c = p.signed_by(&k, &issuer)?;
        write_private(&cert, c.pem().as_bytes())?;
        write_private(&key, k.serialize_pem().as_bytes())
    };
    client_cert(
        "kube-apiserver-kubelet-client",
        "system:masters",
        file("kubelet-client.crt"),
        file("kubelet-client.key"),
    )?;
    for node in cluster.map(|c| c.nodes.as_slice()).unwrap_or_default() {
        client_cert(
            &format!("system:node:{node}"),
            "system:nodes",
            file(&format!("node-{node}.crt")),
            file(&format!("node-{node}.key")),
        )?;
    }

    let certs = Certs {
        ca: file("ca.crt"),
        serving_cert: file("apiserver.crt"),
        serving_key: file("apiserver.key"),
        admin_cert: file("admin.crt"),
        admin_key: file("admin.key"),
        sa_key: file("sa.key"),
        sa_pub: file("sa.pub"),
        kubelet_client_cert: file("kubelet-client.crt"),
        kubelet_client_key: file("kubelet-client.key"),
    };
    write_private(&certs.ca, ca_cert.pem().as_bytes())?;
    write_private(&certs.serving_cert, serving_cert.pem().as_bytes())?;
    write_private(&certs.serving_key, serving_key.serialize_pem().as_bytes())?;
    write_private(&certs.admin_cert, admin_cert.pem().as_bytes())?;
    write_private(&certs.admin_key, admin_key.serialize_pem().as_bytes())?;
    write_private(&certs.sa_key, sa_key.serialize_pem().as_bytes())?;
    write_private(&certs.sa_pub, sa_key.public_key_pem().as_bytes())?;
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------------------
// Process lifetime.

/// Reads pids from stdin until EOF (this process ended or dropped the handle), then kills them and removes the
/// dir. Ignores the signals a Ctrl-C or hang-up sends to the whole process group.
const REAPER_SCRIPT: &str = r#"trap '' INT HUP TERM PIPE
dir=$1 keep=$2 pids=
while read -r p; do pids="$pids $p"; done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
# Give the kernel a moment to tear the processes down before removing their files.
i=0
while [ $i -lt 100 ]; do
  alive=
  for p in $pids; do
    s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null) && [ "$s" != Z ] && alive=1
  done
  [ -z "$alive" ] && break
  i=$((i + 1)); sleep 0.05
done
[ -z "$keep" ] && rm -rf "$dir"
exit 0
"#;

fn spawn_reaper(dir: &Path) -> Result<Child> {
    let keep = if std::env::var_os(KEEP_ENV).is_some() {
        "1"
    } else {
        ""
    };
    Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("macvtap-e2e-reaper")
        .arg(dir)
        .arg(keep)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Own process group: a terminal's Ctrl-C must not reach it.
        .process_group(0)
        .spawn()
        .map_err(io_err("starting the reaper (sh)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_crd_yaml_with_comments_and_empty_documents() {
        let yaml = r#"# generated
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: as.example.com
spec:
  group: example.com
  names: {kind: A, plural: as}
  scope: Cluster
  versions: []
---
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: bs.example.com
spec:
  group: example.com
  names: {kind: B, plural: bs}
  scope: Namespaced
  versions: []
"#;
        let names: Vec<_> = parse_crds(yaml)
            .unwrap()
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["as.example.com", "bs.example.com"]);
    }

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
