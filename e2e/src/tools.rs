//! Where the Go-built test tools (kube-apiserver, etcd, kubectl, helm, multus, kube-ovn and its controller and daemon)
//! live.
//!
//! Tests never skip when a tool is missing: they fail, telling how to build it (CI always builds them first).

use std::path::PathBuf;

/// Overrides the tools cache (the script's `MACVTAP_TOOLS_CACHE`); binaries are in its `bin/`.
pub const CACHE_ENV: &str = "MACVTAP_TOOLS_CACHE";

/// The directory `e2e/tools/build-tools.sh` builds into (`MACVTAP_TOOLS_CACHE`, default
/// `~/.cache/macvtap-operator/tools`), plus `/bin`.
pub fn bin_dir() -> PathBuf {
    let cache = std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/macvtap-operator/tools")
        });
    cache.join("bin")
}

/// Path of one tool, or an error telling how to build it.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build the test tools first with `e2e/tools/build-tools.sh` \
             (all of them, ~10 min cold on 2 cores; cached afterwards)",
            p.display()
        ))
    }
}

/// `PATH` with the tools' directory first: programs that look others up by name (containerd its runc shim) find
/// ours before any the machine has.
pub fn path_with_tools_first() -> std::ffi::OsString {
    let mut dirs = vec![bin_dir()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    ));
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

/// Like [`tool`], but panics (failing the test) with that message.
pub fn require(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|e| panic!("{e}"))
}
