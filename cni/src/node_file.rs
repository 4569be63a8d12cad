//! Where this invocation's node settings come from ([`CniNodeFile`], defined in `macvtap-core` with its writer, the
//! agent's `install-cni`):
//! - the file named by the environment variable [`ENV`], when set (the runtime's own environment: containerd/CRI-O
//!   and Multus pass theirs to plugins, and only node admins set it; tests point it at their stand-ins);
//! - else `macvtap-node.json` next to the plugin binary (`/opt/cni/bin/macvtap-node.json`). Next to the binary
//!   rather than under `/etc` because that directory is what every runtime and Multus' thick daemon already see at
//!   the same place the binary is;
//! - else the defaults: the kubelet's standard socket, calls from outside Kubernetes refused, no allocation records.

use std::path::{Path, PathBuf};

use macvtap_core::CniNodeFile;
use macvtap_core::cni_node_file::FILE_NAME;

use crate::env::Env;
use crate::error::{CniError, Code};

/// Environment variable naming the node file (overrides the file next to the binary).
pub const ENV: &str = "MACVTAP_CNI_NODE_CONFIG";

/// The node's settings and the file they came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFile {
    pub settings: CniNodeFile,
    /// `None`: the defaults, no file (for messages).
    pub source: Option<PathBuf>,
}

/// The node file for this invocation. An unusable file is error 50 (the plugin is not available on this node until
/// its admin fixes it); a missing file next to the binary means the defaults, a missing file named by [`ENV`] is an
/// error.
pub fn load(env: &Env) -> Result<NodeFile, CniError> {
    match env.get(ENV) {
        Some(p) => read(Path::new(&p), true),
        None => match std::env::current_exe() {
            Ok(exe) => read(&exe.with_file_name(FILE_NAME), false),
            Err(_) => Ok(NodeFile::default()),
        },
    }
}

fn read(path: &Path, required: bool) -> Result<NodeFile, CniError> {
    let unusable = |why: String| {
        CniError::new(
            Code::NotAvailable,
            format!("node config {} is unusable", path.display()),
            why,
        )
    };
    match std::fs::read(path) {
        Ok(bytes) => Ok(NodeFile {
            settings: CniNodeFile::from_json(&bytes).map_err(|e| unusable(e.to_string()))?,
            source: Some(path.to_path_buf()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(NodeFile::default()),
        Err(e) => Err(unusable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use macvtap_core::OutsideKubernetes;

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
        assert_eq!(c.settings.outside_kubernetes, OutsideKubernetes::Allow);
        assert_eq!(c.source.as_deref(), Some(good.as_path()));
    }
}
