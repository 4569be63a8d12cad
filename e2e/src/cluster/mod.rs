//! A real Kubernetes cluster on this one machine: the control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler), an OCI registry with the images, and nodes that each run containerd,
//! runc, the kubelet and kube-proxy (see [`node`]), wired by two L2 segments (see [`network`]). The chart is
//! installed with helm as a user would: the operator Deployment and the agent DaemonSet run as pods from our
//! images, pulled from the registry.
//!
//! What is not the real thing, and why: Multus and the CNI config are installed by the harness (what Multus's own
//! install DaemonSet would do); kube-proxy and kube-ovn ([`crate::kube_ovn`], started by the first scenario that needs
//! it) run as processes on the nodes and the machine, like the kubelet, not as pods.
//!
//! One cluster per process; several processes may each run one (see [`network::ClusterSlot`]).

mod chart;
mod kube_ovn;
mod multus;
pub mod network;
pub mod node;
pub mod pods;
pub mod resources;
pub mod teardown;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::apply;
use crate::control_plane::{ClusterSpec, ControlPlane};
use crate::kube_ovn::KubeOvn;
use crate::netns::Netns;
use crate::registry::{Registry, image_archives};
use crate::workspace;
pub use chart::FAST_CLEANUP;
use network::{ClusterSlot, MAX_NODES, Segments};
use node::{NODE_MOUNTS, Node, NodeSpec};
use teardown::{Teardown, TeardownPlan};

/// Where clusters keep their slot locks and mount namespace files.
pub const RUN_DIR: &str = "/run/macvtap-e2e";

/// How long a node may take from its kubelet's start to `Ready`.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to bring up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self::with_nodes(2)
    }
}

impl ClusterOptions {
    /// `node-a`, `node-b`, ...
    pub fn with_nodes(n: usize) -> Self {
        Self {
            nodes: (0..n)
                .map(|i| format!("node-{}", (b'a' + i as u8) as char))
                .collect(),
        }
    }
}

/// The chart as the cluster runs it.
#[derive(Debug, Clone)]
pub struct ChartRelease {
    pub namespace: String,
    pub release: String,
}

impl Default for ChartRelease {
    fn default() -> Self {
        Self {
            namespace: "macvtap-system".into(),
            release: "macvtap-operator".into(),
        }
    }
}

/// A running cluster. Dropping it removes every trace (see [`teardown`]).
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    /// kube-ovn, once a scenario started it (see [`Cluster::start_kube_ovn`]).
    kube_ovn: Option<KubeOvn>,
    pub registry: Registry,
    pub slot: ClusterSlot,
    pub chart: ChartRelease,
    /// Admin kubeconfig with the node-side server URL (kube-proxy; users reaching the cluster from a node).
    pub node_admin_kubeconfig: PathBuf,
    segments: Segments,
    teardown: Teardown,
    plan: TeardownPlan,
    // Last: the control plane outlives everything that talks to it.
    pub control_plane: ControlPlane,
}

impl Cluster {
    /// Brings up the control plane, the registry with every image of `images/build.sh`, and the nodes, and waits
    /// until every node is `Ready`. Blocking (spawns its own runtime for API calls); call from a plain thread
    /// or with `spawn_blocking`.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        ensure!(
            !options.nodes.is_empty() && options.nodes.len() <= MAX_NODES,
            "1 to {MAX_NODES} nodes"
        );
        ensure!(
            nix::unistd::Uid::effective().is_root(),
            "the cluster needs root"
        );
        let t0 = Instant::now();
        // The cluster needs its own images; the chart's are checked by `install_chart`.
        let images: Vec<_> = image_archives(&images_dir())?
            .into_iter()
            .filter(|i| i.archive.exists())
            .collect();
        for needed in ["pause", "busybox"] {
            ensure!(
                images.iter().any(|i| i.name == needed),
                "the {needed} image archive is missing: build the images with `make images`"
            );
        }
        let slot = ClusterSlot::claim(Path::new(RUN_DIR))?;
        let id = format!("{}-{}", std::process::id(), slot.index());
        let dir = tempfile::Builder::new()
            .prefix("macvtap-cluster-")
            .tempdir()?
            .keep();
        let run_dir = Path::new(RUN_DIR).join(format!("run-{id}"));
        let mut plan = TeardownPlan {
            run_dir: run_dir.clone(),
            host_link: format!("mvte2e{}", slot.index()),
            dirs: vec![dir.clone()],
            own_slot_lock: slot.lock_path().to_path_buf(),
            ..Default::default()
        };
        let teardown = Teardown::arm(&plan, &Path::new(RUN_DIR).join(format!("teardown-{id}.sh")))?;
        // From here on, an error drops `teardown`, which removes what was made so far.

        std::fs::create_dir_all(&run_dir)?;
        sh(&format!(
            "mount --bind '{0}' '{0}' && mount --make-private '{0}'",
            run_dir.display()
        ))?;
        for (_, target) in NODE_MOUNTS {
            for p in missing_dirs(Path::new(target)) {
                std::fs::create_dir(&p)?;
                plan.created_mount_points.push(p);
            }
        }
        teardown.update(&plan)?;

        let segments = Segments::create(&slot)?;
        plan.netns.push(segments.switch.name().to_string());
        teardown.update(&plan)?;

        let spec = ClusterSpec {
            host_ip: slot.host_ip(),
            service_cidr: slot.service_cidr(),
            service_ip: slot.service_ip(),
            nodes: options.nodes.clone(),
        };
        let control_plane =
            tokio::task::spawn_blocking(move || ControlPlane::start_cluster(spec)).await??;
        let node_admin_kubeconfig = dir.join("admin-node.kubeconfig");
        control_plane.write_node_admin_kubeconfig(&node_admin_kubeconfig)?;

        let registry_addr = SocketAddr::from((slot.host_ip(), free_port(slot.host_ip())?));
        let registry = Registry::start(registry_addr, &dir.join("registry"))?;
        registry.push_all(&images)?;
        let registry_hosts_dir = dir.join("registry-hosts");
        registry.write_containerd_hosts(&registry_hosts_dir)?;
        let pause_image = images
            .iter()
            .find(|i| i.name == "pause")
            .map(|i| i.reference.clone())
            .ok_or_else(|| anyhow!("images/build.sh names no pause image"))?;

        let mut nodes = Vec::new();
        for (n, name) in options.nodes.iter().enumerate() {
            let netns = Netns::new(&format!("mvt-{name}"))?;
            plan.netns.push(netns.name().to_string());
            let cgroup_root = format!("macvtap-e2e-{id}-{name}");
            plan.cgroup_roots.push(cgroup_root.clone());
            let mount_ns = run_dir.join(format!("{name}.mnt"));
            plan.mount_ns_files.push(mount_ns.clone());
            teardown.update(&plan)?;
            segments.attach(&netns, n, slot.node_ip(n), slot.node_prefix_len())?;
            // Programs of the node itself (hostNetwork pods such as our agent) reach Services through kube-proxy's
            // DNAT in the output hook, which runs only after a route was found: an on-link route for the Service
            // range, no gateway, so a packet kube-proxy does not rewrite goes nowhere.
            netns.ip(&["route", "add", &slot.service_cidr(), "dev", "eth0"])?;
            let spec = NodeSpec {
                name: name.clone(),
                index: n,
                ip: slot.node_ip(n),
                prefix_len: slot.node_prefix_len(),
                pod_cidr: slot.pod_cidr(n),
                cluster_cidr: slot.cluster_cidr(),
                registry_hosts_dir: registry_hosts_dir.clone(),
                pause_image: pause_image.clone(),
                cgroup_root,
                tap_reservations: dir.join("taps"),
            };
            let node_dir = dir.join(name);
            let mut node = Node::create(spec, netns, node_dir.clone(), mount_ns)?;
            node.start_containerd()?;
            let kubeconfig = node_dir.join("kubelet.kubeconfig");
            control_plane.write_node_kubeconfig(name, &kubeconfig)?;
            node.start_kubelet(&kubeconfig, control_plane.ca_path())?;
            node.start_kube_proxy(&node_admin_kubeconfig)?;
            // The API server (on the machine) calls admission webhooks at their pods' IPs: the node's pod network
            // is reached through the node. The route goes with the machine's link into the segment at teardown.
            sh(&format!(
                "ip route replace {} via {}",
                slot.pod_cidr(n),
                slot.node_ip(n)
            ))?;
            nodes.push(node);
        }

        let cluster = Cluster {
            dir,
            nodes,
            kube_ovn: None,
            registry,
            slot,
            chart: ChartRelease::default(),
            node_admin_kubeconfig,
            segments,
            teardown,
            plan,
            control_plane,
        };
        cluster.wait_nodes_ready().await?;
        cluster.install_multus().await?;
        tracing::info!(elapsed = ?t0.elapsed(), "cluster ready");
        Ok(cluster)
    }

    pub fn client(&self) -> Client {
        self.control_plane.admin_client()
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> Command {
        self.control_plane
            .kubectl()
            .expect("kubectl was found at start")
    }

    /// Runs `kubectl <args>` and returns stdout; the error has stderr.
    pub fn kubectl_out(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl().args(args).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Waits until every node reports `Ready`.
    pub async fn wait_nodes_ready(&self) -> Result<()> {
        let api = Api::<NodeObject>::all(self.client());
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            let list = api.list(&ListParams::default()).await?;
            let ready: Vec<String> = list
                .items
                .iter()
                .filter(|n| node_ready(n))
                .map(|n| n.name_any())
                .collect();
            if self
                .nodes
                .iter()
                .all(|n| ready.iter().any(|r| r == n.name()))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| !ready.iter().any(|r| r == n.name()))
                    .map(|n| {
                        format!(
                            "--- kubelet of {} ---\n{}",
                            n.name(),
                            n.kubelet_log_tail(30)
                        )
                    })
                    .collect();
                bail!(
                    "nodes not Ready within {NODE_READY_TIMEOUT:?} (ready: {ready:?})\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Applies a YAML file (namespaced objects into `default` unless they say otherwise).
    pub async fn apply_file(&self, path: &Path) -> Result<()> {
        apply::apply_file(&self.client(), path, "default").await?;
        Ok(())
    }

    pub async fn apply_yaml(&self, yaml: &str) -> Result<()> {
        apply::apply_objects(&self.client(), &apply::parse_objects(yaml)?, "default").await?;
        Ok(())
    }

    /// The segment switch (its bridges `br0`, `br1` carry the nodes' `eth0` and `p4p1`).
    pub fn switch(&self) -> &Netns {
        &self.segments.switch
    }

    /// Tears everything down now (also what drop does).
    pub fn stop(self) {}
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop the node programs gracefully while the API server is still there, kube-ovn's after the kubelets (the
        // pods' DELs may still ask its daemons); then the script.
        self.nodes.clear();
        self.kube_ovn = None;
        self.teardown.update(&self.plan).ok();
        self.teardown.run();
    }
}

fn node_ready(n: &NodeObject) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where `images/build.sh` leaves its archives (its `MACVTAP_IMAGES_DIR`, default `<repo>/target/images`).
pub fn images_dir() -> PathBuf {
    std::env::var_os("MACVTAP_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace::root().join("target/images"))
}

/// The parents of `path` (and itself) that do not exist yet, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn sh(script: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
