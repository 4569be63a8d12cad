//! etcd for one control plane: its command line (throwaway data: no fsync) and its readiness (`/health`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::Error;
use super::spawn::not_ready;

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-member etcd on the given client and peer URLs.
pub(super) fn command(bin: &Path, data_dir: &Path, client_url: &str, peer_url: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--name=e2e")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=e2e={peer_url}"))
        // Test data: durability does not matter, fsync latency does.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    cmd
}

pub(super) fn wait_ready(
    etcd: &mut Child,
    port: u16,
    log: &Path,
) -> std::result::Result<(), (Error, bool)> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = etcd.try_wait() {
            return Err(not_ready("etcd", format!("exited with {status}"), log));
        }
        if etcd_healthy(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(not_ready(
                "etcd",
                format!("no healthy answer within {ETCD_READY_TIMEOUT:?}"),
                log,
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd's `/health` over plain HTTP/1.0; a hand-written request keeps an HTTP client out of the dependencies.
fn etcd_healthy(port: u16) -> bool {
    let probe = || -> io::Result<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    probe().is_ok_and(|b| b.contains(r#""health":"true""#))
}
