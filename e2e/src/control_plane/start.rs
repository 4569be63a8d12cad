//! Start-up of a control plane: a temp dir with the reaper watching it, certificates, then etcd and the API server
//! on fresh ports, tried again when another process took a port meanwhile; controllers for a cluster.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ChildStdin;
use std::time::Instant;

use kube::config::AuthInfo;
use tracing::{info, warn};

use super::components::start_controllers;
use super::kubeconfig::{kubeconfig, write_kubeconfig};
use super::pki::{Certs, write_certs};
use super::reaper::spawn_reaper;
use super::spawn::{free_ports, spawn_logged};
use super::{ClusterSpec, ControlPlane, Error, KEEP_ENV, Result, apiserver, etcd, io_err};
use crate::process::kill_and_wait;
use crate::tools;

/// Port races with other processes on the machine are retried this many times with fresh ports.
const START_ATTEMPTS: usize = 3;

pub(super) fn start_blocking(cluster: Option<ClusterSpec>) -> Result<ControlPlane> {
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
    let etcd_cmd = etcd::command(etcd_bin, &data_dir, &etcd_url, &peer_url);
    let mut etcd = spawn_logged(etcd_cmd, &etcd_log).map_err(fatal)?;
    if let Some(r) = reaper.as_mut() {
        let _ = writeln!(r, "{}", etcd.id());
    }
    if let Err((e, retry)) = etcd::wait_ready(&mut etcd, etcd_port, &etcd_log) {
        kill_and_wait(&mut etcd);
        return Err((e, retry));
    }

    let apiserver_log = dir.join("kube-apiserver.log");
    let launch = apiserver::Launch {
        bin: apiserver_bin.to_path_buf(),
        dir: dir.to_path_buf(),
        server_url: server_url.clone(),
        port: api_port,
        etcd_url: etcd_url.clone(),
        certs: certs.clone(),
        cluster: cluster.cloned(),
    };
    let mut apiserver = spawn_logged(apiserver::command(&launch), &apiserver_log).map_err(|e| {
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
            apiserver::wait_ready(&mut apiserver, &mut etcd, kc, logs)
        });
    match ready {
        Ok(admin_config) => Ok(ControlPlane {
            dir: dir.to_path_buf(),
            server_url,
            etcd_url,
            etcd,
            apiserver,
            apiserver_launch: launch,
            apiserver_starts: 1,
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
