//! `macvtap-agent install-cni`: puts the `macvtap` CNI binary into the host's CNI bin directory atomically (a
//! temporary file in the destination directory, synced, then renamed over the old one), so a runtime never executes
//! a half-written binary.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    fs::create_dir_all(dest_dir).map_err(io("creating", dest_dir))?;
    let target = dest_dir.join(CNI_BINARY);
    let tmp = dest_dir.join(format!(".{CNI_BINARY}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&data).map_err(io("writing", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(0o755))
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
}
