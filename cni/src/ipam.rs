//! IPAM delegation: run `ipam.type` from `CNI_PATH` with our environment (only `CNI_COMMAND` changed) and the
//! config on stdin, as libcni's `invoke` does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::Env;
use crate::error::{CniError, Code};

/// Find `plugin` in the `:`-separated `cni_path`.
pub fn find_plugin(plugin: &str, cni_path: &str) -> Option<PathBuf> {
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.is_file())
}

/// Run the IPAM plugin for `command`; `Ok(stdout)` on exit 0, its own error (code and message kept, the plugin
/// named) otherwise.
pub fn exec(plugin: &str, command: &str, env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let cni_path = env.get("CNI_PATH").unwrap_or_default();
    let path = find_plugin(plugin, &cni_path).ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            format!("ipam.type {plugin:?}: plugin not found in CNI_PATH"),
            format!("CNI_PATH={cni_path}"),
        )
    })?;
    let mut cmd = Command::new(&path);
    cmd.env_clear()
        .envs(env.vars())
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(
            Code::Io,
            format!("ipam {plugin}: cannot run {}", path.display()),
            e.to_string(),
        )
    })?;
    // A plugin that exits without reading stdin gives EPIPE here: its exit status tells the real story.
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            Code::Io,
            format!("ipam {plugin}: waiting for it failed"),
            e.to_string(),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let code = v
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .unwrap_or(999) as u32;
    let msg = v
        .as_ref()
        .and_then(|v| v.get("msg"))
        .and_then(Value::as_str)
        .unwrap_or("failed without an error object");
    let details = v
        .as_ref()
        .and_then(|v| v.get("details"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(CniError {
        code,
        msg: format!("ipam {plugin} {command}: {msg}"),
        details: details.to_string(),
    })
}
