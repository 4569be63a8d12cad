//! A local OCI registry for the real cluster: nothing can be pulled from the internet, yet pods name
//! `image: busybox` (implicitly `:latest`, so imagePullPolicy `Always`), the chart names
//! `ghcr.io/macvtap-operator/...` and the original's DaemonSet `quay.io/kubevirt/macvtap-cni`. Every node's
//! containerd therefore uses this registry as the mirror of the registries in [`mirror_hosts`], and the harness
//! copies the OCI archives of `images/build.sh` into it.
//!
//! - **Server**: the CNCF distribution registry (`registry`, built by `e2e/tools/build-tools.sh` with
//!   `CGO_ENABLED=0`), run as `registry serve <dir>/config.yml`: plain HTTP on the given address, no auth,
//!   filesystem storage in `<dir>/data`, stdout and stderr in `<dir>/registry.log`, OpenTelemetry export off
//!   (it would otherwise try an OTLP collector on localhost:4318), an empty environment (`REGISTRY_*` variables
//!   would override the config). [`Registry::start`] waits until `GET /v2/` answers 200.
//! - **Lifetime**: dropping the [`Registry`] kills the server and waits for it. It is spawned with
//!   `PR_SET_PDEATHSIG=SIGKILL` from a thread that lives as long as the process (the signal follows the
//!   *spawning thread*), so it also dies when the test process dies without unwinding.
//! - **Names**: a reference is stored under its repository path without the registry host, the path containerd
//!   asks a mirror for: `docker.io/library/busybox:latest` → `<addr>/library/busybox:latest`,
//!   `ghcr.io/macvtap-operator/macvtap-agent:0.1.0` → `<addr>/macvtap-operator/macvtap-agent:0.1.0`,
//!   `registry.k8s.io/pause:3.10` → `<addr>/pause:3.10`. Short Docker names are normalised first (`busybox` →
//!   `docker.io/library/busybox:latest`). Two mirrored registries with the same repository path would share it.
//! - **Push**: `skopeo copy --dest-tls-verify=false oci-archive:<archive> docker://<addr>/<path>:<tag>`: the
//!   manifest is copied unchanged, so its digest is the one in the archive's `index.json`.
//! - **Nodes**: [`Registry::write_containerd_hosts`] writes `<config_path>/<host>/hosts.toml` for each mirrored
//!   host with `server = "http://<addr>"`: containerd (CRI `registry.config_path`, or `ctr --hosts-dir`) then
//!   asks only this registry, never the real one (no fallback traffic off this machine).
//!
//! Files by concern: [`image_ref`] (reference normalisation, what a mirror is asked for), [`archives`] (the
//! OCI archives `images/build.sh` makes), this file (the server, pushing, containerd's `hosts.toml`).
//!
//! ```no_run
//! # use macvtap_e2e::registry::{Registry, image_archives};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reg = Registry::start("198.18.0.1:5000".parse()?, std::path::Path::new("/tmp/reg"))?;
//! reg.push_all(&image_archives(std::path::Path::new("target/images"))?)?;
//! reg.write_containerd_hosts(std::path::Path::new("/node1/etc/containerd/certs.d"))?;
//! # Ok(()) }
//! ```

mod archives;
mod image_ref;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use archives::{ImageArchive, image_archives};
pub use image_ref::ImageRef;

use crate::process::{kill_and_wait, log_tail, log_to, spawn_owned};
use crate::tools;

/// How long the registry may take to answer `GET /v2/` (it starts in well under a second when idle).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registries whose images this one serves: Docker Hub (`image: busybox`), the chart's registry, the
/// CRI sandbox image's, and quay.io (the original kubevirt/macvtap-cni's image, for the upgrade test).
pub fn mirror_hosts() -> &'static [&'static str] {
    &["docker.io", "ghcr.io", "registry.k8s.io", "quay.io"]
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Tool(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "registry on {addr} not ready within {READY_TIMEOUT:?} (last: {last}); log tail:\n{log}"
    )]
    NotReady {
        addr: SocketAddr,
        last: String,
        log: String,
    },
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, &'static str),
    #[error("{reference}: registry {host} is not mirrored (mirrored: {mirrored:?})")]
    NotMirrored {
        reference: String,
        host: String,
        mirrored: &'static [&'static str],
    },
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Registry {
    /// Writes `<dir>/config.yml`, starts `registry serve` on `listen` and waits until `GET /v2/` answers 200.
    /// `dir` is created if missing and keeps the data and the log (`<dir>/registry.log`) after the drop.
    pub fn start(listen: SocketAddr, dir: &Path) -> Result<Self> {
        let bin = tools::tool("registry").map_err(Error::Tool)?;
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
        let config = dir.join("config.yml");
        fs::write(&config, config_yaml(listen, &data))
            .map_err(io_err(format!("writing {}", config.display())))?;
        let log_path = dir.join("registry.log");
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg(&config)
            .env_clear()
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_SDK_DISABLED", "true");
        log_to(&mut cmd, log).map_err(io_err("cloning the log file"))?;
        let child = spawn_owned(cmd).map_err(io_err(format!("starting {}", bin.display())))?;
        let mut reg = Self {
            addr: listen,
            dir: dir.to_path_buf(),
            child,
        };
        reg.wait_ready()?;
        tracing::info!(addr = %listen, dir = %dir.display(), "registry ready");
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                last = format!("exited: {status}");
                break;
            }
            match get_status(self.addr, "/v2/") {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("HTTP {code}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::NotReady {
            addr: self.addr,
            last,
            log: self.log_tail(20),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, the registry part of the references pushed here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Where `reference` lives in this registry: `<addr>/<repository>:<tag>`. Fails for a registry that is not
    /// in [`mirror_hosts`] (a node could not pull it by its name).
    pub fn local_ref(&self, reference: &str) -> Result<String> {
        let r = ImageRef::parse(reference)?;
        if !mirror_hosts().contains(&r.registry.as_str()) {
            return Err(Error::NotMirrored {
                reference: reference.to_string(),
                host: r.registry,
                mirrored: mirror_hosts(),
            });
        }
        Ok(format!("{}/{}", self.host(), r.mirror_path()))
    }

    /// Copies the OCI archive into this registry as `reference` (see the module doc for the name mapping) and
    /// returns the manifest digest (`sha256:...`) the registry now serves.
    pub fn push(&self, archive: &Path, reference: &str) -> Result<String> {
        let dest = self.local_ref(reference)?;
        let skopeo = which("skopeo").ok_or_else(|| {
            Error::Tool("skopeo not found: run e2e/tools/install-deps.sh (Debian skopeo)".into())
        })?;
        let digest_file = tempfile::NamedTempFile::new().map_err(io_err("digest temp file"))?;
        let out = Command::new(skopeo)
            // No signature policy to consult: the archives are ours, the destination is local.
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg("--digestfile")
            .arg(digest_file.path())
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{dest}"))
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running skopeo"))?;
        if !out.status.success() {
            return Err(Error::Command {
                what: format!("skopeo copy {} to {dest}", archive.display()),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let digest = fs::read_to_string(digest_file.path())
            .map_err(io_err("reading skopeo's digest file"))?
            .trim()
            .to_string();
        tracing::info!(%reference, %dest, %digest, "pushed");
        Ok(digest)
    }

    /// [`Registry::push`] for each archive; returns the digests in the same order.
    pub fn push_all<'a>(
        &self,
        images: impl IntoIterator<Item = &'a ImageArchive>,
    ) -> Result<Vec<String>> {
        images
            .into_iter()
            .map(|i| self.push(&i.archive, &i.reference))
            .collect()
    }

    /// `hosts.toml` for containerd's `config_path` layout: this registry is the mirrored host's only server.
    pub fn containerd_hosts_toml(&self) -> String {
        format!(
            "# Written by the e2e harness: every pull goes to the local registry, never to the real host.\n\
             server = \"http://{0}\"\n\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            self.host()
        )
    }

    /// Writes `<config_path>/<host>/hosts.toml` for every host in [`mirror_hosts`].
    pub fn write_containerd_hosts(&self, config_path: &Path) -> Result<()> {
        for host in mirror_hosts() {
            let dir = config_path.join(host);
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
            let file = dir.join("hosts.toml");
            fs::write(&file, self.containerd_hosts_toml())
                .map_err(io_err(format!("writing {}", file.display())))?;
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
    }
}

fn config_yaml(listen: SocketAddr, data: &Path) -> String {
    // Upload purging off: it would delete half-finished uploads of a slow push; no debug/metrics listener.
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: \"{listen}\"\n",
        data = data.display()
    )
}

/// Status code of a plain `GET path` on `addr`.
fn get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head)?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("not an HTTP answer"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_address_and_storage() {
        let y = config_yaml("127.0.0.1:5000".parse().unwrap(), Path::new("/r/data"));
        assert!(y.contains("rootdirectory: /r/data\n"), "{y}");
        assert!(y.contains("addr: \"127.0.0.1:5000\"\n"), "{y}");
        let y6 = config_yaml("[::1]:5000".parse().unwrap(), Path::new("/r"));
        assert!(y6.contains("addr: \"[::1]:5000\"\n"), "{y6}");
    }
}
