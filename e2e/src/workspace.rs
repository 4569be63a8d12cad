//! Paths of this workspace: its root, its config examples, and the binaries cargo built.

use std::path::PathBuf;

/// The workspace root (the parent of `e2e/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `config/<rel>`.
pub fn config_file(rel: &str) -> PathBuf {
    root().join("config").join(rel)
}

/// A binary of this workspace (`macvtap-agent`, `macvtap-operator`, `macvtap`), as `cargo build`/`cargo test`
/// left it in the target dir of the current profile. Tests never run cargo themselves: a nested cargo would wait on
/// the lock the outer `cargo test` holds.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    // The test executable lives in target/<profile>/deps: its profile dir is where cargo put the binaries.
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
    {
        candidates.push(profile_dir.join(name));
    }
    candidates.push(target.join("debug").join(name));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!("binary {name} not built: run `cargo build --workspace --bins` first")
    })
}
