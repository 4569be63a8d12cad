//! kube-ovn on the cluster (see [`crate::kube_ovn`]), started by the first scenario that needs it: a cluster without
//! kube-ovn networks does not pay for its programs.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::resources::pool_ready;
use super::{Cluster, free_port};
use crate::apply;
use crate::kube_ovn::{self, Central, CentralSpec, KubeOvn, NodeSide, Share};
use crate::workspace::config_file;

/// Start of kube-ovn → every node's daemon serving: it waits for the controller's node annotations, then pings the
/// join network's gateway through OVN (cold: ~20 s).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

impl Cluster {
    /// Starts kube-ovn unless it runs: its CRDs, the control side, every node's programs; returns once every node's
    /// daemon serves its socket, with the time that took (zero when it was running).
    pub async fn start_kube_ovn(&mut self) -> Result<Duration> {
        if let Some(k) = self.kube_ovn.as_mut() {
            k.central.revive_controller()?;
            return Ok(Duration::ZERO);
        }
        let t0 = Instant::now();
        let share = Share::locate()?;
        apply::apply_file(&self.client(), &kube_ovn::crds(&share), "default").await?;
        crate::wait::until("kube-ovn CRDs served", Duration::from_secs(30), || async {
            Ok(self
                .kubectl()
                .args(["get", "subnets.kubeovn.io"])
                .output()?
                .status
                .success())
        })
        .await?;
        let mount_ns = self.plan.run_dir.join("kube-ovn.mnt");
        self.plan.mount_ns_files.push(mount_ns.clone());
        self.teardown.update(&self.plan)?;
        let host_ip = self.slot.host_ip();
        let central = Central::start(
            CentralSpec {
                dir: self.dir.join("kube-ovn"),
                mount_ns,
                host_ip,
                db_port: free_port(host_ip)?,
                kubeconfig: self.control_plane.kubeconfig_path(),
                service_cidr: &self.slot.service_cidr(),
                controller_port: free_port(Ipv4Addr::UNSPECIFIED)?,
            },
            &share,
        )?;
        let mut nodes = Vec::new();
        for node in &self.nodes {
            nodes.push(NodeSide::start(
                node,
                &central.db_addr,
                &self.node_admin_kubeconfig,
                &share,
            )?);
        }
        let mut k = KubeOvn {
            nodes,
            share,
            central,
        };
        loop {
            let mut all = true;
            for side in &mut k.nodes {
                all &= side.ready()?;
            }
            if all {
                break;
            }
            k.central.check_running()?;
            if t0.elapsed() > READY_TIMEOUT {
                let tails: Vec<String> = k
                    .nodes
                    .iter()
                    .map(|s| {
                        format!(
                            "--- kube-ovn-daemon of {} ---\n{}",
                            s.node(),
                            s.tail("kube-ovn-daemon")
                        )
                    })
                    .collect();
                bail!(
                    "kube-ovn's daemons did not serve their sockets within {READY_TIMEOUT:?}\n--- controller ---\n{}\n{}",
                    k.central.tail("kube-ovn-controller"),
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.kube_ovn = Some(k);
        Ok(t0.elapsed())
    }

    /// The network of the kube-ovn examples: kube-ovn started (first use), then config/'s pool `p4p1`, the Subnet and
    /// the NAD as written, each waited for (pool and Subnet `Ready`). Returns what starting kube-ovn took.
    pub async fn kube_ovn_examples_network(&mut self) -> Result<Duration> {
        let started = self.start_kube_ovn().await?;
        self.apply_file(&config_file("pools/p4p1.yaml")).await?;
        self.wait_pool("p4p1", Duration::from_secs(90), pool_ready)
            .await?;
        self.apply_file(&config_file("kube-ovn/subnet-p4p1.yaml"))
            .await?;
        crate::wait::until("Subnet p4p1 Ready", Duration::from_secs(60), || async {
            let ready = self.kubectl_out(&[
                "get",
                "subnets.kubeovn.io",
                "p4p1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok(ready.trim() == "True")
        })
        .await?;
        self.apply_file(&config_file("kube-ovn/nad-p4p1.yaml"))
            .await?;
        Ok(started)
    }

    /// kube-ovn, when a scenario started it.
    pub fn kube_ovn(&self) -> Option<&KubeOvn> {
        self.kube_ovn.as_ref()
    }

    /// A node's kube-ovn programs after its reboot: started again as its boot would (the pods' ADDs wait for the
    /// daemon's socket, as on a real node where the daemon is a pod the kubelet starts).
    pub(crate) fn restart_kube_ovn_on(&mut self, n: usize) -> Result<()> {
        let Some(k) = self.kube_ovn.as_mut() else {
            return Ok(());
        };
        let side = NodeSide::start(
            &self.nodes[n],
            &k.central.db_addr,
            &self.node_admin_kubeconfig,
            &k.share,
        )?;
        k.nodes[n] = side;
        Ok(())
    }
}
