//! kube-apiserver for one control plane: its command line (API only, or the control plane of a cluster with
//! nodes) and its readiness (`/readyz` with the admin client).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::pki::Certs;
use super::spawn::not_ready;
use super::{ClusterSpec, Error, io_err};

const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything the API server's command line is made of: kept by the control plane so that a server stopped by a
/// test starts again as the same server (port, certificates, etcd).
#[derive(Debug, Clone)]
pub(super) struct Launch {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub server_url: String,
    pub port: u16,
    pub etcd_url: String,
    pub certs: Certs,
    pub cluster: Option<ClusterSpec>,
}

/// The API server on `port`, storing in `etcd_url`, with the run's certificates; `cluster` adds what nodes need.
pub(super) fn command(launch: &Launch) -> Command {
    let Launch {
        bin,
        dir,
        server_url,
        port,
        etcd_url,
        certs,
        cluster,
    } = launch;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--secure-port={port}"))
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
            cmd.arg("--bind-address=0.0.0.0")
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
                .arg("--kubelet-preferred-address-types=InternalIP")
                // Admission webhooks (the injector) are dialled at their endpoints' pod IPs, which the machine
                // routes to the nodes; a ClusterIP would need kube-proxy's DNAT, which runs only in the nodes.
                .arg("--enable-aggregator-routing=true");
        }
        // API only: no nodes, no controller-manager to create `default` ServiceAccounts (which that admission
        // plugin would require), no endpoint bookkeeping for the `kubernetes` Service.
        None => {
            cmd.arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--service-cluster-ip-range=10.0.0.0/24")
                .arg("--authorization-mode=RBAC")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--endpoint-reconciler-type=none");
        }
    }
    cmd
}

pub(super) fn wait_ready(
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
