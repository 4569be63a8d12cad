//! kube-ovn on one node, as its DaemonSets would run it there: an Open vSwitch of the node's own (`ovsdb-server` with
//! `conf.db`, `ovs-vswitchd` with the userspace datapath: the machine has no openvswitch module), `ovn-controller`
//! binding the node as an OVN chassis, and `kube-ovn-daemon`, the CNI server the `kube-ovn` binary posts to at
//! `/run/openvswitch/kube-ovn-daemon.sock`. Each is entered into the node's network and mount namespaces like its
//! kubelet, so the paths kube-ovn fixes (`/run/openvswitch`, `/etc/openvswitch`, `/var/log/kube-ovn`, ...) are the
//! node's own (see `crate::cluster::node::NODE_MOUNTS`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::{Share, ovs_program};
use crate::cluster::node::Node;
use crate::process::Process;
use crate::tools;
use crate::wait::{LOCAL_INTERVAL, poll_blocking};

/// The daemon's socket, inside the node.
pub const DAEMON_SOCKET: &str = "/run/openvswitch/kube-ovn-daemon.sock";

/// kube-ovn's programs on one node; dropping it stops them.
pub struct NodeSide {
    node: String,
    dir: PathBuf,
    // Stopped in this order: the daemon first, the database last.
    daemon: Option<Process>,
    ovn_controller: Option<Process>,
    vswitchd: Option<Process>,
    ovsdb: Option<Process>,
}

impl NodeSide {
    /// Starts the node's programs (after a reboot too: the node's `conf.db` is kept, like a host's `/etc`) and returns
    /// without waiting for the daemon (see [`NodeSide::wait_ready`]).
    pub fn start(node: &Node, db_addr: &str, kubeconfig: &Path, share: &Share) -> Result<Self> {
        let etc = node.dir.join("etc-openvswitch");
        let conf_db = etc.join("conf.db");
        if !conf_db.exists() {
            share.create_db(&conf_db, "vswitch")?;
        }
        // kube-ovn reads the chassis name from here; ovn-controller from `external_ids:system-id`.
        std::fs::write(etc.join("system-id.conf"), node.name())?;
        let mut side = NodeSide {
            node: node.name().to_string(),
            dir: node.dir.clone(),
            daemon: None,
            ovn_controller: None,
            vswitchd: None,
            ovsdb: None,
        };
        let mut ovsdb = node.command(ovs_program("ovsdb-server")?);
        ovsdb.args([
            "/etc/openvswitch/conf.db",
            "--remote=punix:/run/openvswitch/db.sock",
            "--unixctl=/run/openvswitch/ovsdb-server.ctl",
            "-vconsole:info",
            "-vsyslog:off",
        ]);
        side.ovsdb = Some(side.spawn("ovsdb-server", ovsdb)?);
        let sock = node.dir.join("openvswitch/db.sock");
        poll_blocking(Duration::from_secs(20), LOCAL_INTERVAL, || {
            sock.exists().then_some(()).ok_or(())
        })
        .map_err(|()| {
            anyhow!(
                "ovsdb-server of {} did not start: {}",
                node.name(),
                side.tail("ovsdb-server")
            )
        })?;
        let ip = node.spec.ip.to_string();
        let external_ids = [
            ("system-id", node.name()),
            ("hostname", node.name()),
            ("ovn-remote", db_addr),
            ("ovn-encap-type", "geneve"),
            ("ovn-encap-ip", ip.as_str()),
            ("ovn-bridge-datapath-type", "netdev"),
        ];
        let mut vsctl = vec![
            "--no-wait".to_string(),
            "--".to_string(),
            "init".to_string(),
            "--".to_string(),
            "set".to_string(),
            "Open_vSwitch".to_string(),
            ".".to_string(),
        ];
        vsctl.extend(
            external_ids
                .iter()
                .map(|(k, v)| format!("external_ids:{k}={v}")),
        );
        vsctl.extend(
            [
                "--",
                "--may-exist",
                "add-br",
                "br-int",
                "--",
                "set",
                "Bridge",
                "br-int",
                "datapath_type=netdev",
                "fail_mode=secure",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = vsctl.iter().map(String::as_str).collect();
        node.run(
            ovs_program("ovs-vsctl")?.to_str().expect("UTF-8 path"),
            &args,
        )?;

        let mut vswitchd = node.command(ovs_program("ovs-vswitchd")?);
        vswitchd.args([
            "unix:/run/openvswitch/db.sock",
            "--unixctl=/run/openvswitch/ovs-vswitchd.ctl",
            "-vconsole:info",
            "-vsyslog:off",
        ]);
        side.vswitchd = Some(side.spawn("ovs-vswitchd", vswitchd)?);

        let mut ovn_controller = node.command(ovs_program("ovn-controller")?);
        ovn_controller
            .args([
                "unix:/run/openvswitch/db.sock",
                "-vconsole:info",
                "-vsyslog:off",
            ])
            .env("OVN_RUNDIR", "/run/ovn");
        side.ovn_controller = Some(side.spawn("ovn-controller", ovn_controller)?);

        // It never removes its socket, and refuses to bind over one: a reboot's or a crash's leftover goes first.
        let socket = node.dir.join("openvswitch/kube-ovn-daemon.sock");
        if socket.exists() {
            std::fs::remove_file(&socket)?;
        }
        let mut daemon = node.command(tools::tool("kube-ovn-daemon").map_err(anyhow::Error::msg)?);
        // Its Open vSwitch database is the fixed /var/run/openvswitch/db.sock; its encap IP is eth0's.
        daemon
            .arg(format!("--bind-socket={DAEMON_SOCKET}"))
            .arg("--iface=eth0")
            .arg("--non-primary-cni-mode=true")
            // Its CNI config would go next to Multus's: kube-ovn is only IPAM here, so it goes nowhere the kubelet reads.
            .arg("--cni-conf-dir=/etc/openvswitch/cni")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            // Its metrics server reads KUBECONFIG only. NODE_NAME: without it, the machine's host name (all nodes').
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", node.name())
            .env("POD_NAME", format!("kube-ovn-cni-{}", node.name()))
            .env("POD_NAMESPACE", "kube-system");
        side.daemon = Some(side.spawn("kube-ovn-daemon", daemon)?);
        Ok(side)
    }

    /// Does the daemon serve its socket yet? An error when it exited, with its log.
    pub fn ready(&mut self) -> Result<bool> {
        if self.dir.join("openvswitch/kube-ovn-daemon.sock").exists() {
            return Ok(true);
        }
        if !self.daemon.as_mut().is_some_and(Process::is_running) {
            bail!(
                "kube-ovn-daemon of {} exited: {}",
                self.node,
                self.tail("kube-ovn-daemon")
            );
        }
        Ok(false)
    }

    pub fn pids(&self) -> Vec<u32> {
        [
            &self.ovsdb,
            &self.vswitchd,
            &self.ovn_controller,
            &self.daemon,
        ]
        .into_iter()
        .flatten()
        .map(Process::pid)
        .collect()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn spawn(&self, name: &str, cmd: std::process::Command) -> Result<Process> {
        Process::spawn(
            &format!("{name}-{}", self.node),
            cmd,
            &self.dir.join(format!("{name}.log")),
        )
        .with_context(|| format!("starting {name} on {}", self.node))
    }

    /// The last lines of one program's log.
    pub fn tail(&self, name: &str) -> String {
        crate::process::log_tail(&self.dir.join(format!("{name}.log")), 20)
    }
}

impl Drop for NodeSide {
    fn drop(&mut self) {
        for p in [
            &mut self.daemon,
            &mut self.ovn_controller,
            &mut self.vswitchd,
            &mut self.ovsdb,
        ] {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(5));
            }
        }
    }
}
