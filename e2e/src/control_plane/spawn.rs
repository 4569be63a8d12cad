//! What every server of the control plane shares at start-up: fresh ports, a child with a fresh log, and "not ready"
//! with the log's tail and whether another process took its port (start-up then tries again).

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command};

use super::{Error, Result, io_err};
use crate::process::{log_tail, log_to};

/// Three distinct free loopback ports. They are released before the servers bind them, so another process
/// may grab one meanwhile: start-up retries then.
pub(super) fn free_ports() -> Result<[u16; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("finding free ports"))?;
    let mut ports = [0u16; 3];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().map_err(io_err("finding free ports"))?.port();
    }
    Ok(ports)
}

pub(super) fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    // A fresh log for every attempt: `port_taken` reads it to decide on a retry.
    let out = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    log_to(&mut cmd, out).map_err(io_err("duplicating a log file handle"))?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    crate::process::spawn_owned(cmd).map_err(io_err(format!("starting {program}")))
}

fn port_taken(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|t| t.contains("address already in use"))
}

pub(super) fn not_ready(component: &'static str, reason: String, log: &Path) -> (Error, bool) {
    let retry = port_taken(log);
    (
        Error::NotReady {
            component,
            reason,
            log: log.to_path_buf(),
            tail: log_tail(log, 25),
        },
        retry,
    )
}
