//! `macvtap-agent install-cni`: puts the `macvtap` CNI binary into the host's CNI bin directory atomically (a
//! temporary file in the destination directory, synced, then renamed over the old one), so a runtime never executes
//! a half-written binary, and writes the plugin's node file next to it ([`CniNodeFile`], `macvtap-node.json`: where
//! this node's allocation records and the kubelet's PodResources socket are; the CNI reads it there).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use macvtap_core::CniNodeFile;
use macvtap_core::cni_node_file::FILE_NAME;

/// The CNI binary's file name.
pub const CNI_BINARY: &str = "macvtap";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find the agent's own executable to locate {CNI_BINARY} next to it: {0}")]
    OwnExe(#[source] std::io::Error),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// Default source: `macvtap` next to the running executable.
pub fn default_source() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::OwnExe)?;
    Ok(exe.with_file_name(CNI_BINARY))
}

/// Copies `source` to `<dest_dir>/macvtap` atomically, mode 0755. Returns the installed path.
pub fn install_cni(source: &Path, dest_dir: &Path) -> Result<PathBuf, InstallError> {
    let data = fs::read(source).map_err(io("reading", source))?;
    replace_file(dest_dir, CNI_BINARY, &data, 0o755)
}

/// Writes `<dest_dir>/macvtap-node.json` atomically, mode 0644. Returns its path.
pub fn write_node_file(file: &CniNodeFile, dest_dir: &Path) -> Result<PathBuf, InstallError> {
    replace_file(dest_dir, FILE_NAME, &file.to_json(), 0o644)
}

/// `<dir>/<name>` replaced by `data` with `mode`: a temporary file, synced, renamed over the old one.
fn replace_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, InstallError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(data).map_err(io("writing", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &target).map_err(io("renaming into place", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src-bin");
        fs::write(&src, b"v1").unwrap();
        let dest = dir.path().join("opt/cni/bin");
        let got = install_cni(&src, &dest).unwrap();
        assert_eq!(got, dest.join("macvtap"));
        assert_eq!(fs::read(&got).unwrap(), b"v1");
        assert_eq!(
            fs::metadata(&got).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::write(&src, b"v2").unwrap();
        install_cni(&src, &dest).unwrap();
        assert_eq!(fs::read(&got).unwrap(), b"v2");
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 1);
        let err = install_cni(&dir.path().join("missing"), &dest).unwrap_err();
        assert!(err.to_string().contains("reading"), "{err}");
    }

    #[test]
    fn node_file_has_the_keys_the_cni_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = CniNodeFile {
            pod_resources_socket: "/var/lib/kubelet/pod-resources/kubelet.sock".into(),
            allocation_dir: Some("/var/lib/macvtap-operator/nodes/node-a".into()),
            ..CniNodeFile::default()
        };
        let path = write_node_file(&file, dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            r#"{"podResourcesSocket":"/var/lib/kubelet/pod-resources/kubelet.sock","allocationDir":"/var/lib/macvtap-operator/nodes/node-a"}"#
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
