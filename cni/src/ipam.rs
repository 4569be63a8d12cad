//! The IPAM delegate: `ipam.type` run from `CNI_PATH` with our environment (only `CNI_COMMAND` changed) and the
//! config minus `deviceID`/`pciBusID` on stdin, as libcni's `invoke.DelegateAdd/Del` do. One type for every verb, so
//! the stdin is built once and ADD's parse, "no IPs" and release-on-error are written once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::{NetConf, ipam_stdin};
use crate::env::Env;
use crate::error::{CniError, Code};
use crate::result::{ParsedResult, parse_result};

/// The config's IPAM plugin, ready to run for any verb.
pub struct Ipam<'a> {
    plugin: &'a str,
    env: &'a Env,
    stdin: Vec<u8>,
}

impl<'a> Ipam<'a> {
    /// The delegate of `conf`, `None` without an `ipam` section.
    pub fn of(conf: &'a NetConf, env: &'a Env) -> Option<Self> {
        conf.ipam_type.as_deref().map(|plugin| Self {
            plugin,
            env,
            stdin: ipam_stdin(conf),
        })
    }

    /// ADD: the plugin's result, with at least one IP. An unusable result (not JSON, not a result, no IPs) is
    /// error 103, and the address it may have taken is released.
    pub fn add(&self) -> Result<ParsedResult, CniError> {
        let out = self.exec("ADD")?;
        let t = self.plugin;
        let parsed = serde_json::from_slice::<Value>(&out)
            .map_err(|e| {
                CniError::new(
                    Code::IpamResult,
                    format!("ipam {t}: result is not JSON"),
                    e.to_string(),
                )
            })
            .and_then(|v| parse_result(&v))
            .and_then(|r| {
                if r.ips.is_empty() {
                    Err(CniError::new(
                        Code::IpamResult,
                        format!("ipam {t}: returned no IPs"),
                        "",
                    ))
                } else {
                    Ok(r)
                }
            });
        parsed.inspect_err(|_| self.release())
    }

    /// Best-effort DEL after a failed ADD, so no IP leaks (its own failure is only logged).
    pub fn release(&self) {
        if let Err(e) = self.exec("DEL") {
            eprintln!("macvtap: releasing the IP after a failed ADD: {e}");
        }
    }

    pub fn del(&self) -> Result<(), CniError> {
        self.exec("DEL").map(drop)
    }

    pub fn check(&self) -> Result<(), CniError> {
        self.exec("CHECK").map(drop)
    }

    pub fn status(&self) -> Result<(), CniError> {
        self.exec("STATUS").map(drop)
    }

    pub fn gc(&self) -> Result<(), CniError> {
        self.exec("GC").map(drop)
    }

    /// Run the plugin for `command`; `Ok(stdout)` on exit 0, its own error (code and message kept, the plugin
    /// named) otherwise.
    fn exec(&self, command: &str) -> Result<Vec<u8>, CniError> {
        let plugin = self.plugin;
        let cni_path = self.env.get("CNI_PATH").unwrap_or_default();
        let path = find_plugin(plugin, &cni_path).ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("ipam.type {plugin:?}: plugin not found in CNI_PATH"),
                format!("CNI_PATH={cni_path}"),
            )
        })?;
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .envs(self.env.vars())
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
        let _ = child.stdin.take().expect("piped").write_all(&self.stdin);
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
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k));
        let code = field("code").and_then(Value::as_u64).unwrap_or(999) as u32;
        let msg = field("msg")
            .and_then(Value::as_str)
            .unwrap_or("failed without an error object");
        let details = field("details").and_then(Value::as_str).unwrap_or_default();
        Err(CniError {
            code,
            msg: format!("ipam {plugin} {command}: {msg}"),
            details: details.to_string(),
        })
    }
}

/// Find `plugin` in the `:`-separated `cni_path`.
pub fn find_plugin(plugin: &str, cni_path: &str) -> Option<PathBuf> {
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.is_file())
}
