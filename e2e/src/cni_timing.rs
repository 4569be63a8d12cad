//! Our CNI's own time per call on a node of the real cluster, as the kubelet (through Multus) calls it: the node's
//! `macvtap` (installed by the agent's init container) is wrapped by a script that notes nanosecond clock readings
//! before and after the real binary. The wrapper's own cost (a shell and two `date`) is a few ms on top of every
//! call alike; Multus's own log has whole seconds only. The log goes to the node's `/var/lib/cni`: the kubelet's log
//! GC removes what it does not know in `/var/log/pods`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cluster::Cluster;

/// Wraps `node`'s `/opt/cni/bin/macvtap`; returns the log every call then appends to.
pub fn wrap_cni(c: &Cluster, node: &str) -> Result<PathBuf> {
    let bin = c.dir.join(node).join("cni-bin");
    let times = c.dir.join(node).join("cni-state/macvtap-cni-times.log");
    std::fs::rename(bin.join("macvtap"), bin.join("macvtap.real"))
        .with_context(|| format!("{node}'s /opt/cni/bin/macvtap (agent's install-cni)"))?;
    let script = "#!/bin/sh\n\
                  s=$(date +%s%N)\n\
                  /opt/cni/bin/macvtap.real \"$@\"\n\
                  rc=$?\n\
                  e=$(date +%s%N)\n\
                  echo \"$CNI_COMMAND $s $e $CNI_ARGS\" >>/var/lib/cni/macvtap-cni-times.log\n\
                  exit $rc\n";
    std::fs::write(bin.join("macvtap"), script)?;
    std::fs::set_permissions(bin.join("macvtap"), std::fs::Permissions::from_mode(0o755))?;
    Ok(times)
}

/// The duration (ms) of the first `command` (`ADD`, `DEL`) call for `pod`, from the wrapper's log.
pub fn call_ms(times: &Path, command: &str, pod: &str) -> Result<f64> {
    let log = std::fs::read_to_string(times)?;
    let line = log
        .lines()
        .find(|l| {
            l.starts_with(&format!("{command} ")) && l.contains(&format!("K8S_POD_NAME={pod};"))
        })
        .with_context(|| format!("no {command} of {pod} in {}", times.display()))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    Ok((f[1] - f[0]) / 1e6)
}
