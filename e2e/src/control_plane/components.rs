//! kube-controller-manager and kube-scheduler, for the control plane of a cluster with nodes.

use std::io::Write;
use std::process::{ChildStdin, Command};

use super::pki::Certs;
use super::spawn::{free_ports, spawn_logged};
use super::{ControlPlane, Error, Result};
use crate::tools;

/// kube-controller-manager (ServiceAccounts and their CA bundle, workload controllers, garbage collection, node
/// lifecycle) and kube-scheduler, both as the admin user on loopback, without leader election.
pub(super) fn start_controllers(
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
