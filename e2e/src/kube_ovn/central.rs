//! kube-ovn's control side: one `ovsdb-server` with the OVN northbound and southbound databases, `ovn-northd`, and
//! `kube-ovn-controller`, as processes on the machine (its network namespace, where the API server is; a mount
//! namespace of their own, kept in a file the cluster's teardown knows, so a test process killed outright leaves none
//! of them behind).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::{Share, ovs_program};
use crate::process::Process;
use crate::tools;
use crate::wait::{LOCAL_INTERVAL, poll_blocking};

/// Where the cluster's addresses for kube-ovn's own networks come from: kube-ovn's defaults. They live only in the
/// nodes' network namespaces (the join network's `ovn0`), never on the machine.
const DEFAULT_CIDR: &str = "10.16.0.0/16";
const JOIN_CIDR: &str = "100.64.0.0/16";

/// What the control side needs of the cluster.
pub struct CentralSpec<'a> {
    pub dir: PathBuf,
    /// The file that keeps the control side's mount namespace (the teardown kills what lives in it).
    pub mount_ns: PathBuf,
    /// The machine's address on the nodes' segment: the databases listen there for the nodes' `ovn-controller`.
    pub host_ip: Ipv4Addr,
    pub db_port: u16,
    /// Admin kubeconfig for the controller (the machine-side server URL).
    pub kubeconfig: &'a Path,
    pub service_cidr: &'a str,
    /// A free port on the machine for the controller's metrics and health endpoint (two clusters may run at once).
    pub controller_port: u16,
}

/// The running control side; dropping it stops the processes.
pub struct Central {
    /// `tcp:<machine IP>:<port>`: both databases (ovn-northd, the controller and every node's ovn-controller).
    pub db_addr: String,
    mount_ns: PathBuf,
    dir: PathBuf,
    controller_args: Vec<String>,
    kubeconfig: PathBuf,
    // Stopped in this order: the controller before the databases it writes.
    controller: Option<Process>,
    northd: Option<Process>,
    ovsdb: Option<Process>,
}

impl Central {
    /// Creates the databases from kube-ovn's schemas and starts the three programs; returns once the controller
    /// has been started (it then needs the kube-ovn CRDs, applied by the caller before).
    pub fn start(spec: CentralSpec<'_>, share: &Share) -> Result<Self> {
        std::fs::create_dir_all(&spec.dir)?;
        std::fs::File::create(&spec.mount_ns)?;
        let out = Command::new("unshare")
            .arg(format!("--mount={}", spec.mount_ns.display()))
            .args(["--propagation", "private", "true"])
            .output()
            .context("unshare (util-linux)")?;
        if !out.status.success() {
            bail!(
                "mount namespace of kube-ovn's control side: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut central = Central {
            db_addr: format!("tcp:{}:{}", spec.host_ip, spec.db_port),
            mount_ns: spec.mount_ns.clone(),
            dir: spec.dir.clone(),
            controller_args: Vec::new(),
            kubeconfig: PathBuf::new(),
            controller: None,
            northd: None,
            ovsdb: None,
        };
        let (nb, sb) = (spec.dir.join("ovnnb.db"), spec.dir.join("ovnsb.db"));
        share.create_db(&nb, "ovnnb")?;
        share.create_db(&sb, "ovnsb")?;
        let sock = spec.dir.join("db.sock");
        let mut ovsdb = central.command(ovs_program("ovsdb-server")?);
        ovsdb
            .arg(&nb)
            .arg(&sb)
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg(format!("--remote=ptcp:{}:{}", spec.db_port, spec.host_ip))
            .arg(format!(
                "--unixctl={}",
                spec.dir.join("ovsdb-server.ctl").display()
            ))
            .arg("-vconsole:info")
            .arg("-vsyslog:off");
        central.ovsdb = Some(central.spawn("ovsdb-server", ovsdb)?);
        poll_blocking(Duration::from_secs(20), LOCAL_INTERVAL, || {
            sock.exists().then_some(()).ok_or(())
        })
        .map_err(|()| {
            anyhow!(
                "kube-ovn's ovsdb-server did not start: {}",
                central.tail("ovsdb-server")
            )
        })?;

        let db = format!("unix:{}", sock.display());
        let mut northd = central.command(ovs_program("ovn-northd")?);
        northd
            .arg(format!("--ovnnb-db={db}"))
            .arg(format!("--ovnsb-db={db}"))
            .arg(format!(
                "--unixctl={}",
                spec.dir.join("ovn-northd.ctl").display()
            ))
            .env("OVN_RUNDIR", &spec.dir)
            .arg("-vconsole:info")
            .arg("-vsyslog:off");
        central.northd = Some(central.spawn("ovn-northd", northd)?);

        central.controller_args = vec![
            format!("--ovn-nb-addr={}", central.db_addr),
            format!("--ovn-sb-addr={}", central.db_addr),
            format!("--default-cidr={DEFAULT_CIDR}"),
            format!("--node-switch-cidr={JOIN_CIDR}"),
            format!("--service-cluster-ip-range={}", spec.service_cidr),
            // Only IPAM for other CNIs' networks: no load balancers, network policies or NAT of its own.
            "--non-primary-cni-mode=true".into(),
            "--enable-lb=false".into(),
            "--enable-np=false".into(),
            "--enable-eip-snat=false".into(),
            "--keep-vm-ip=false".into(),
            // 0 busy-loops it at over a core.
            "--inspect-interval=20".into(),
            // Its metrics and health port (default 10660 on every address of the machine).
            format!("--pprof-port={}", spec.controller_port),
            format!("--kubeconfig={}", spec.kubeconfig.display()),
        ];
        central.kubeconfig = spec.kubeconfig.to_path_buf();
        central.start_controller()?;
        Ok(central)
    }

    fn start_controller(&mut self) -> Result<()> {
        let mut controller =
            self.command(tools::tool("kube-ovn-controller").map_err(anyhow::Error::msg)?);
        controller
            .args(&self.controller_args)
            // One of its loops reads KUBECONFIG only; POD_NAME and POD_NAMESPACE name its Lease and holder.
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", "kube-ovn-controller")
            .env("POD_NAMESPACE", "kube-system");
        self.controller = Some(self.spawn("kube-ovn-controller", controller)?);
        Ok(())
    }

    /// Starts the controller again if it exited, as the kubelet restarts a crashed pod: it exits when it loses its
    /// Lease, e.g. with the API server down longer than the Lease's renew deadline. Returns whether it had to.
    pub fn revive_controller(&mut self) -> Result<bool> {
        if self.controller.as_mut().is_some_and(Process::is_running) {
            return Ok(false);
        }
        tracing::warn!(log = %self.tail("kube-ovn-controller"), "kube-ovn-controller had exited; starting it again");
        self.start_controller()?;
        Ok(true)
    }

    /// `program` entered into the control side's mount namespace.
    fn command(&self, program: PathBuf) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.mount_ns.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<Process> {
        Process::spawn(name, cmd, &self.dir.join(format!("{name}.log")))
            .with_context(|| format!("starting {name}"))
    }

    /// The last lines of one program's log.
    pub fn tail(&self, name: &str) -> String {
        crate::process::log_tail(&self.dir.join(format!("{name}.log")), 20)
    }

    pub fn pids(&self) -> Vec<u32> {
        [&self.ovsdb, &self.northd, &self.controller]
            .into_iter()
            .flatten()
            .map(Process::pid)
            .collect()
    }

    /// Every process still running? (`Err` names the first that is not, with its log.)
    pub fn check_running(&mut self) -> Result<()> {
        let stopped = [
            ("ovsdb-server", &mut self.ovsdb),
            ("ovn-northd", &mut self.northd),
            ("kube-ovn-controller", &mut self.controller),
        ]
        .into_iter()
        .find_map(|(name, p)| (!p.as_mut().is_some_and(Process::is_running)).then_some(name));
        if let Some(name) = stopped {
            bail!("kube-ovn's {name} is not running: {}", self.tail(name));
        }
        Ok(())
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        for p in [&mut self.controller, &mut self.northd, &mut self.ovsdb] {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(5));
            }
        }
    }
}
