//! kube-ovn, the IPAM behind the kube-ovn examples: the real `kube-ovn-controller` and `kube-ovn-daemon` (built by
//! `e2e/tools/build-tools.sh` from the module the `kube-ovn` CNI binary comes from) with Debian's Open vSwitch and OVN
//! userspace programs, run as processes: the control side on the machine ([`central`]), the rest on each node in its
//! namespaces ([`node_side`]). Not as pods: kube-ovn's images cannot be pulled here, and images of the same binaries
//! would add minutes of build to every cold run for no behaviour the processes lack (what the daemon sees of its
//! node is the same: its network namespace and its `/run/openvswitch`).
//!
//! [`stand_in`] is a daemon of ours, kept for the CNI tests that need answers the real daemon cannot be made to give
//! on demand (a MAC in the answer, as for an OVN provider; no answer at all).

pub mod central;
pub mod node_side;
pub mod stand_in;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub use central::{Central, CentralSpec};
pub use node_side::{DAEMON_SOCKET, NodeSide};

/// The CRDs kube-ovn's chart installs, as the build script copied them from the module.
pub fn crds(share: &Share) -> PathBuf {
    share.dir.join("crd.yaml")
}

/// What `build-tools.sh` kept of the kube-ovn module besides programs: its CRDs and the OVSDB schemas its models
/// expect (newer than Debian's: libovsdb refuses a database that lacks a column its model maps).
pub struct Share {
    pub dir: PathBuf,
}

impl Share {
    pub fn locate() -> Result<Share> {
        let dir = crate::tools::bin_dir()
            .parent()
            .map(|c| c.join("share/kube-ovn"))
            .context("tools dir has no parent")?;
        if !dir.join(".version").is_file() {
            bail!(
                "{} is missing: build the test tools with `e2e/tools/build-tools.sh`",
                dir.display()
            );
        }
        Ok(Share { dir })
    }

    /// Creates the database `db` from kube-ovn's schema `schema` (`ovnnb`, `ovnsb` or `vswitch`).
    pub fn create_db(&self, db: &Path, schema: &str) -> Result<()> {
        let schema = self.dir.join(format!("{schema}.ovsschema"));
        let out = Command::new(ovs_program("ovsdb-tool")?)
            .arg("create")
            .arg(db)
            .arg(&schema)
            .output()?;
        if !out.status.success() {
            bail!(
                "ovsdb-tool create {} {}: {}",
                db.display(),
                schema.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// An Open vSwitch or OVN program from Debian's packages, or an error telling how to install them.
pub fn ovs_program(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found: install Open vSwitch and OVN (openvswitch-switch, ovn-central, ovn-host) with \
                 `e2e/tools/install-deps.sh`"
            )
        })
}

/// kube-ovn on a cluster: its control side and one [`NodeSide`] per node (the cluster's order).
pub struct KubeOvn {
    pub nodes: Vec<NodeSide>,
    /// Where its schemas are (a node's programs start again after the node's reboot).
    pub share: Share,
    // Last: the nodes' programs stop before the databases they talk to.
    pub central: Central,
}

impl KubeOvn {
    /// How many processes kube-ovn runs on the cluster, and their resident memory together (MiB).
    pub fn rss_mib(&self) -> (usize, f64) {
        let pids: Vec<u32> = self
            .nodes
            .iter()
            .flat_map(NodeSide::pids)
            .chain(self.central.pids())
            .collect();
        let kib: u64 = pids.iter().map(|p| crate::process::rss_kib(*p)).sum();
        (pids.len(), kib as f64 / 1024.0)
    }
}
