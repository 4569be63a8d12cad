//! A node's configuration files, as its packages and install steps would leave them: containerd's config, the
//! CNI plugins and networks (Multus first), the kubelet's config; and its cgroup root.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{CLUSTER_NETWORK_NAME, Node};
use crate::tools;

impl Node {
    /// containerd 2.4's own format (`version = 4`: the CRI plugin split into `images` and `runtime`, the listeners
    /// are server plugins), so nothing is migrated at start-up.
    pub(super) fn write_containerd_config(&self) -> Result<()> {
        let images = "plugins.'io.containerd.cri.v1.images'";
        let runtime = "plugins.'io.containerd.cri.v1.runtime'";
        let config = format!(
            r#"# containerd of test node {name} (written by macvtap-e2e)
version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[plugins.'io.containerd.server.v1.grpc']
  address = "/run/containerd/containerd.sock"

[{images}]
  snapshotter = "overlayfs"
  [{images}.pinned_images]
    sandbox = "{pause}"
  [{images}.registry]
    config_path = "{hosts}"

[{runtime}]
  # This host's root lacks CAP_SYS_RESOURCE: nothing may lower an oom_score_adj (see the README).
  restrict_oom_score_adj = true
  [{runtime}.containerd]
    default_runtime_name = "runc"
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        # PID 1 is not systemd here; the kubelet learns the driver from this (CRI RuntimeConfig).
        SystemdCgroup = false
  [{runtime}.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1

# NRI is on by default in 2.x; its socket (/run/nri/nri.sock) is one of the node's private paths.
[plugins.'io.containerd.nri.v1.nri']
  disable = false
"#,
            name = self.name(),
            pause = self.spec.pause_image,
            hosts = self.spec.registry_hosts_dir.display(),
        );
        std::fs::write(self.dir.join("containerd.toml"), config)?;
        Ok(())
    }

    /// `/opt/cni/bin`: the reference plugins (bridge, host-local, static, loopback, ...), Multus, kube-ovn's CNI
    /// binary; our `macvtap` is not here: the agent's install-cni init container puts it there. `/etc/cni/net.d`:
    /// Multus first, delegating the cluster network to a bridge `.conf` (a single plugin, see the README).
    pub(super) fn install_cni(&self) -> Result<()> {
        let bin = self.dir.join("cni-bin");
        for entry in std::fs::read_dir("/usr/lib/cni")
            .context("/usr/lib/cni (Debian containernetworking-plugins)")?
        {
            let entry = entry?;
            std::fs::copy(entry.path(), bin.join(entry.file_name()))?;
        }
        for tool in ["multus", "kube-ovn"] {
            let path = tools::tool(tool).map_err(anyhow::Error::msg)?;
            std::fs::copy(&path, bin.join(tool))?;
        }
        let conf = self.dir.join("cni-conf");
        let multus_dir = conf.join("multus.d");
        std::fs::create_dir_all(&multus_dir)?;
        let cluster = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": CLUSTER_NETWORK_NAME,
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.spec.pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": "/var/lib/cni/networks",
            },
        });
        std::fs::write(
            multus_dir.join("cluster.conf"),
            serde_json::to_vec_pretty(&cluster)?,
        )?;
        let multus = serde_json::json!({
            "cniVersion": "0.3.1",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
            "clusterNetwork": "/etc/cni/net.d/multus.d/cluster.conf",
            "cniDir": "/var/lib/cni/multus",
            "binDir": "/opt/cni/bin",
            "logFile": "/var/log/pods/multus.log",
            "logLevel": "verbose",
        });
        std::fs::write(
            conf.join("00-multus.conf"),
            serde_json::to_vec_pretty(&multus)?,
        )?;
        Ok(())
    }

    /// Where Multus's kubeconfig goes (written by the cluster once the ServiceAccount exists).
    pub fn multus_kubeconfig(&self) -> PathBuf {
        self.dir.join("cni-conf/multus.d/multus.kubeconfig")
    }

    pub(super) fn kubelet_config(&self, client_ca: &Path) -> String {
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
# This machine runs cgroup v1 (hybrid); kubelet 1.35 refuses it unless told.
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: ""
rotateCertificates: false
serverTLSBootstrap: false
volumePluginDir: /var/lib/kubelet/volume-plugins
# Images cannot be pulled again from the internet: never collect them, evict only when really out of space.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
serializeImagePulls: false
maxPods: 110
podCIDR: {pod_cidr}
"#,
            ip = self.spec.ip,
            ca = client_ca.display(),
            cgroup_root = self.spec.cgroup_root,
            pod_cidr = self.spec.pod_cidr,
        )
    }
}

/// Hierarchies of this machine's cgroup v1 (and the unified one of the hybrid layout).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// The node's cgroup root in every hierarchy; cpuset needs its cpus and mems before anything can join.
pub(super) fn create_cgroup_root(root: &str) -> Result<()> {
    for h in cgroup_hierarchies() {
        let dir = h.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if h.ends_with("cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(h.join(f))?;
                std::fs::write(dir.join(f), parent.trim())?;
            }
        }
    }
    Ok(())
}
