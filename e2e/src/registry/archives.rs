//! The OCI archives `images/build.sh` leaves in its output directory, and the references they are for.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Error, Result, io_err};
use crate::workspace;

/// One OCI archive of `images/build.sh` and the reference it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    /// `operator`, `agent`, `pause`, `busybox`.
    pub name: String,
    pub reference: String,
    pub archive: PathBuf,
}

/// The images `images/build.sh` builds into `images_dir` (its `MACVTAP_IMAGES_DIR`), from its `--print-refs`.
/// Builds nothing: the archives exist only after `images/build.sh` ran.
pub fn image_archives(images_dir: &Path) -> Result<Vec<ImageArchive>> {
    let script = workspace::root().join("images/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-refs")
        .env("MACVTAP_IMAGES_DIR", images_dir)
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: "images/build.sh --print-refs".into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, reference, archive] => Some(ImageArchive {
                name: name.into(),
                reference: reference.into(),
                archive: archive.into(),
            }),
            _ => None,
        })
        .collect())
}
