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
//! Outages: [`ControlPlane::stop_apiserver`] and [`ControlPlane::start_apiserver`] stop kube-apiserver and start it
//! again from the same command line ([`apiserver::command`]); the reaper is told of each pid it should forget or
//! kill, so the restarted server is owned like the first.
//!
//! Clients are tied to the tokio runtime they are made in (kube's client spawns a buffer task), so every
//! `*client*` function builds a fresh one and must be called inside a runtime: `#[tokio::test]` gives one per test.
//!
//! Files by concern: [`pki`] (the run's CA and certificates), [`etcd`] and [`apiserver`] (each server's command
//! line and readiness), [`components`] (controller-manager and scheduler of a cluster), [`start`] (the start-up
//! sequence with its retries), [`reaper`] (cleanup when the process dies), [`kubeconfig`], [`service_accounts`]
//! (tokens and clients of ServiceAccounts), [`crds`].

mod apiserver;
mod components;
mod crds;
mod etcd;
mod kubeconfig;
mod pki;
mod reaper;
mod service_accounts;
mod spawn;
mod start;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use kube::{Client, Config};
use tracing::{info, warn};

use crate::process::kill_and_wait;
use crate::tools;

pub use crds::crd_yaml_dir;

/// Field manager used for everything this fixture applies.
pub const FIELD_MANAGER: &str = "macvtap-e2e";

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
    /// How [`ControlPlane::start_apiserver`] starts the same server again.
    apiserver_launch: apiserver::Launch,
    /// Starts of kube-apiserver so far (each start after the first keeps the previous log beside the new one).
    apiserver_starts: u32,
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
            .spawn(move || start::start_blocking(cluster))
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

    /// Stops kube-apiserver with SIGKILL, as a crash or a lost control-plane machine looks to its clients (their
    /// connections reset); etcd, the controllers and everything on the nodes keep running. The reaper forgets its
    /// pid, so a later reuse of that pid is never killed at exit.
    pub fn stop_apiserver(&mut self) {
        kill_and_wait(&mut self.apiserver);
        self.tell_reaper(&format!("-{}", self.apiserver.id()));
    }

    /// Whether kube-apiserver runs (false after [`ControlPlane::stop_apiserver`] or a crash).
    pub fn apiserver_running(&mut self) -> bool {
        matches!(self.apiserver.try_wait(), Ok(None))
    }

    /// Starts kube-apiserver again with the command line of the first start (same port, certificates and etcd,
    /// so every client's URL and credentials stay valid) and waits until `/readyz` answers ok. Nothing to do when
    /// it runs. The new process is owned like the first (killed on drop, by the parent-death signal and by the
    /// reaper). Blocking; fine to call from async tests.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver_running() {
            return Ok(());
        }
        let log = self.dir.join("kube-apiserver.log");
        let previous = self
            .dir
            .join(format!("kube-apiserver.{}.log", self.apiserver_starts));
        fs::rename(&log, &previous).map_err(io_err(format!("keeping {}", log.display())))?;
        let mut apiserver = spawn::spawn_logged(apiserver::command(&self.apiserver_launch), &log)?;
        self.apiserver_starts += 1;
        self.tell_reaper(&apiserver.id().to_string());
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig_path)?;
        let etcd_log = self.dir.join("etcd.log");
        let etcd = &mut self.etcd;
        // `wait_ready` runs a runtime of its own, which cannot block inside the caller's: a plain thread.
        let ready = std::thread::scope(|s| {
            s.spawn(|| {
                apiserver::wait_ready(
                    &mut apiserver,
                    etcd,
                    kubeconfig,
                    [log.as_path(), etcd_log.as_path()],
                )
                .map(drop)
                .map_err(|(e, _)| e)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        // Owned either way: a server that did not get ready is still killed on drop.
        self.apiserver = apiserver;
        if ready.is_err() {
            self.stop_apiserver();
        }
        ready
    }

    /// One line to the reaper: a pid to kill at exit, or `-<pid>` to forget one.
    fn tell_reaper(&mut self, line: &str) {
        use std::io::Write;
        if let Some(stdin) = self.reaper.as_mut().and_then(|r| r.stdin.as_mut()) {
            let _ = writeln!(stdin, "{line}");
        }
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
