//! The CNI's node file, `macvtap-node.json` next to the plugin binary: written by the agent's `install-cni`, read by
//! the `macvtap` CNI on every call. Defined once here so writer and reader cannot drift.
//!
//! Node-level on purpose: nothing a NetworkAttachmentDefinition or a pod controls can reach it (the NAD is stdin,
//! a pod's `cni-args` land in stdin too, `CNI_ARGS` is built by the runtime and Multus).
//!
//! JSON: `{"podResourcesSocket": "/var/lib/kubelet/pod-resources/kubelet.sock", "outsideKubernetes": "refuse" |
//! "allow", "allocationDir": "/var/lib/macvtap-operator/nodes/<node>"}`, all optional, unknown keys refused (a typo
//! must not silently keep a default), paths absolute.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The node file's name next to the plugin binary.
pub const FILE_NAME: &str = "macvtap-node.json";
/// The kubelet's PodResources socket when the node file names none.
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// What ADD does for a caller that is not a Kubernetes pod (no `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in `CNI_ARGS`),
/// where no kubelet can say which devices the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutsideKubernetes {
    /// Refuse (CNI error 4): on a Kubernetes node every legitimate call carries the pod's identity.
    #[default]
    Refuse,
    /// Attach links that carry the agent's marker, unchecked (direct QEMU/libvirt hosts, where the caller is the
    /// host's own root). Unmarked links of the original are still refused: nothing proves whose they are.
    Allow,
}

/// The node's settings for the CNI; an absent file means [`CniNodeFile::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniNodeFile {
    #[serde(default = "default_socket")]
    pub pod_resources_socket: PathBuf,
    #[serde(default, skip_serializing_if = "is_refuse")]
    pub outside_kubernetes: OutsideKubernetes,
    /// This node's allocation records (`<state>/nodes/<node>`, written by the agent's `Allocate`): a device with a
    /// record is attached in place. `None` (an agent that writes no records): every device is moved in from its
    /// host link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_dir: Option<PathBuf>,
}

/// Why a node file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCniNodeFile {
    #[error("{0}")]
    Json(String),
    #[error("{key} {} is not an absolute path", path.display())]
    RelativePath { key: &'static str, path: PathBuf },
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_POD_RESOURCES_SOCKET)
}

fn is_refuse(o: &OutsideKubernetes) -> bool {
    *o == OutsideKubernetes::Refuse
}

impl Default for CniNodeFile {
    fn default() -> Self {
        Self {
            pod_resources_socket: default_socket(),
            outside_kubernetes: OutsideKubernetes::Refuse,
            allocation_dir: None,
        }
    }
}

impl CniNodeFile {
    /// Parse and check a node file's content (fuzzed through the CNI).
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidCniNodeFile> {
        let f: Self =
            serde_json::from_slice(bytes).map_err(|e| InvalidCniNodeFile::Json(e.to_string()))?;
        let relative = |key, path: &PathBuf| InvalidCniNodeFile::RelativePath {
            key,
            path: path.clone(),
        };
        if !f.pod_resources_socket.is_absolute() {
            return Err(relative("podResourcesSocket", &f.pod_resources_socket));
        }
        if let Some(d) = &f.allocation_dir
            && !d.is_absolute()
        {
            return Err(relative("allocationDir", d));
        }
        Ok(f)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_and_defaults() {
        assert_eq!(
            CniNodeFile::from_json(b"{}").unwrap(),
            CniNodeFile::default(),
            "an empty file is the defaults"
        );
        let c = CniNodeFile::from_json(br#"{"podResourcesSocket":"/var/lib/k0s/kubelet/pod-resources/kubelet.sock","outsideKubernetes":"allow"}"#)
            .unwrap();
        assert_eq!(
            c.pod_resources_socket,
            Path::new("/var/lib/k0s/kubelet/pod-resources/kubelet.sock")
        );
        assert_eq!(c.outside_kubernetes, OutsideKubernetes::Allow);
        assert_eq!(c.allocation_dir, None);
        for bad in [
            &br#"{"outsideKubernets":"allow"}"#[..],
            br#"{"outsideKubernetes":"yes"}"#,
            br#"{"podResourcesSocket":"relative.sock"}"#,
            br#"{"allocationDir":"relative/dir"}"#,
            b"not json",
        ] {
            assert!(
                CniNodeFile::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// What the agent's install-cni writes, read back by the CNI: the same bytes both ways.
    #[test]
    fn the_agents_file_round_trips() {
        let written = br#"{"podResourcesSocket":"/var/lib/kubelet/pod-resources/kubelet.sock","allocationDir":"/var/lib/macvtap-operator/nodes/node-a"}"#;
        let f = CniNodeFile {
            allocation_dir: Some("/var/lib/macvtap-operator/nodes/node-a".into()),
            ..CniNodeFile::default()
        };
        assert_eq!(f.to_json(), written);
        assert_eq!(CniNodeFile::from_json(written).unwrap(), f);
        let allow = CniNodeFile {
            outside_kubernetes: OutsideKubernetes::Allow,
            ..CniNodeFile::default()
        };
        assert_eq!(CniNodeFile::from_json(&allow.to_json()).unwrap(), allow);
    }
}
