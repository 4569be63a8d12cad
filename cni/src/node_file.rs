//! The node's own settings for the plugin: where the kubelet's PodResources socket is, and whether calls from
//! outside Kubernetes may attach devices.
//!
//! They are node-level on purpose: nothing a NetworkAttachmentDefinition or a pod controls can reach them (the NAD
//! is stdin, the pod's network-selection `cni-args` land in stdin too, `CNI_ARGS` is built by the runtime and
//! Multus). Where they come from:
//! - the file named by the environment variable [`ENV`], when set (the runtime's own environment: containerd/CRI-O
//!   and Multus pass theirs to plugins, and only node admins set it; tests point it at their stand-ins);
//! - else [`FILE_NAME`] next to the plugin binary (`/opt/cni/bin/macvtap-node.json`), written by whoever installs
//!   the binary (the agent's `install-cni`). Next to the binary rather than under `/etc` because that directory is
//!   what every runtime and Multus' thick daemon already see at the same place the binary is;
//! - else the defaults: the kubelet's standard socket, calls from outside Kubernetes refused.
//!
//! The file is JSON: `{"podResourcesSocket": "/var/lib/kubelet/pod-resources/kubelet.sock", "outsideKubernetes":
//! "refuse" | "allow", "allocationDir": "/var/lib/macvtap-operator/nodes/<node>"}`, all optional, unknown keys
//! refused (a typo must not silently keep a default). `allocationDir` is where the agent's `Allocate` writes this
//! node's allocation records (in-place attach); the agent writes the file with it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::env::Env;
use crate::error::{CniError, Code};

/// Environment variable naming the node config file (overrides the file next to the binary).
pub const ENV: &str = "MACVTAP_CNI_NODE_CONFIG";
/// The node config file's name next to the plugin binary.
pub const FILE_NAME: &str = "macvtap-node.json";
/// The kubelet's PodResources socket when the node config names none.
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// What ADD does for a caller that is not a Kubernetes pod (no `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in `CNI_ARGS`),
/// where no kubelet can say which devices the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutsideKubernetes {
    /// Refuse (error 4): on a Kubernetes node every legitimate call carries the pod's identity.
    #[default]
    Refuse,
    /// Attach links that carry the agent's marker, unchecked (direct QEMU/libvirt hosts, where the caller is the
    /// host's own root). Unmarked links of the original are still refused: nothing proves whose they are.
    Allow,
}

/// The node's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub pod_resources_socket: PathBuf,
    pub outside_kubernetes: OutsideKubernetes,
    /// This node's allocation records (`<state>/nodes/<node>`, written by the agent's `Allocate`): a device with a
    /// record is attached in place. `None` (an agent that writes no records): every device is moved in from its host
    /// link.
    pub allocation_dir: Option<PathBuf>,
    /// The file these came from, if any (for messages).
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    pod_resources_socket: Option<PathBuf>,
    #[serde(default)]
    outside_kubernetes: OutsideKubernetes,
    allocation_dir: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            pod_resources_socket: PathBuf::from(DEFAULT_POD_RESOURCES_SOCKET),
            outside_kubernetes: OutsideKubernetes::Refuse,
            allocation_dir: None,
            source: None,
        }
    }
}

/// Parse a node config file's content.
pub fn parse(bytes: &[u8]) -> Result<NodeConfig, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let socket = f
        .pod_resources_socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POD_RESOURCES_SOCKET));
    if !socket.is_absolute() {
        return Err(format!(
            "podResourcesSocket {} is not an absolute path",
            socket.display()
        ));
    }
    if let Some(d) = &f.allocation_dir
        && !d.is_absolute()
    {
        return Err(format!(
            "allocationDir {} is not an absolute path",
            d.display()
        ));
    }
    Ok(NodeConfig {
        pod_resources_socket: socket,
        outside_kubernetes: f.outside_kubernetes,
        allocation_dir: f.allocation_dir,
        source: None,
    })
}

/// The node config for this invocation. An unusable file is error 50 (the plugin is not available on this node
/// until its admin fixes it); a missing file next to the binary means the defaults, a missing file named by
/// [`ENV`] is an error.
pub fn load(env: &Env) -> Result<NodeConfig, CniError> {
    match env.get(ENV) {
        Some(p) => read(Path::new(&p), true),
        None => match std::env::current_exe() {
            Ok(exe) => read(&exe.with_file_name(FILE_NAME), false),
            Err(_) => Ok(NodeConfig::default()),
        },
    }
}

fn read(path: &Path, required: bool) -> Result<NodeConfig, CniError> {
    let unusable = |why: String| {
        CniError::new(
            Code::NotAvailable,
            format!("node config {} is unusable", path.display()),
            why,
        )
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut c = parse(&bytes).map_err(unusable)?;
            c.source = Some(path.to_path_buf());
            Ok(c)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(NodeConfig::default())
        }
        Err(e) => Err(unusable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        assert_eq!(
            parse(b"{}").unwrap(),
            NodeConfig::default(),
            "an empty file is the defaults"
        );
        let c = parse(br#"{"podResourcesSocket":"/var/lib/k0s/kubelet/pod-resources/kubelet.sock","outsideKubernetes":"allow"}"#)
            .unwrap();
        assert_eq!(
            c.pod_resources_socket,
            Path::new("/var/lib/k0s/kubelet/pod-resources/kubelet.sock")
        );
        assert_eq!(c.outside_kubernetes, OutsideKubernetes::Allow);
        assert_eq!(c.allocation_dir, None);
        // Exactly what the agent's install-cni writes (its test pins the same string).
        let c = parse(br#"{"podResourcesSocket":"/var/lib/kubelet/pod-resources/kubelet.sock","allocationDir":"/var/lib/macvtap-operator/nodes/node-a"}"#).unwrap();
        assert_eq!(
            c.allocation_dir.as_deref(),
            Some(Path::new("/var/lib/macvtap-operator/nodes/node-a"))
        );
        assert_eq!(
            c.pod_resources_socket,
            Path::new(DEFAULT_POD_RESOURCES_SOCKET)
        );
        for bad in [
            &br#"{"outsideKubernets":"allow"}"#[..],
            br#"{"outsideKubernetes":"yes"}"#,
            br#"{"podResourcesSocket":"relative.sock"}"#,
            br#"{"allocationDir":"relative/dir"}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_env_file_must_exist_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let env = Env::from_pairs([(ENV, missing.to_str().unwrap())]);
        assert_eq!(load(&env).unwrap_err().code, 50);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let env = Env::from_pairs([(ENV, bad.to_str().unwrap())]);
        let e = load(&env).unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.msg.contains("bad.json"), "{e:?}");
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"outsideKubernetes":"allow"}"#).unwrap();
        let env = Env::from_pairs([(ENV, good.to_str().unwrap())]);
        let c = load(&env).unwrap();
        assert_eq!(c.outside_kubernetes, OutsideKubernetes::Allow);
        assert_eq!(c.source.as_deref(), Some(good.as_path()));
    }
}
