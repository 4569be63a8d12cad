//! The container images: `images/build.sh` builds them into OCI archives (static binaries, `FROM scratch`,
//! buildah without a daemon), and each archive holds exactly the binaries it should, tagged with the ref that the
//! chart, the containerd config or a test pod names, and able to start with nothing else from the image. Then the
//! local registry the real cluster pulls from: pushed archives come back under their mirror path, and containerd
//! 1.6 resolves them by their public names through the hosts dir [`Registry`] writes.
//!
//! The operator/agent image test is slow (a musl release build of the operator, agent and CNI: ~10-15 min cold on
//! 2 cores, ~1 min when cached), so it is `#[ignore]`d for everyday `cargo test`; CI runs it with
//! `cargo test -p macvtap-e2e --test images -- --include-ignored`. The pause, busybox and registry tests take
//! seconds (no cargo) and always run. All need root (buildah, chroot, unshare, containerd); the registry tests
//! need the `registry` tool (`e2e/tools/build-tools.sh`), skopeo and containerd (`e2e/tools/install-deps.sh`).

mod app_images;
mod busybox;
mod local_registry;
mod pause;
mod unpacked;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_e2e::process::kill_and_wait;
use macvtap_e2e::registry::{self, ImageArchive, Registry};
use macvtap_e2e::{tools, wait, workspace};
use serde_json::Value;
use unpacked::Unpacked;

/// (image, files it must hold, user, entrypoint)
pub const IMAGES: &[(&str, &[&str], &str, &str)] = &[
    (
        "operator",
        &["usr/bin/macvtap-operator"],
        "65532:65532",
        "/usr/bin/macvtap-operator",
    ),
    (
        "agent",
        &["usr/bin/macvtap-agent", "usr/bin/macvtap"],
        "0:0",
        "/usr/bin/macvtap-agent",
    ),
];

pub fn tar(args: &[&str]) -> String {
    let out = Command::new("tar")
        .args(args)
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest alg:hex");
    layout.join("blobs").join(alg).join(hex)
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// True for an ELF executable without a program interpreter (PT_INTERP): it runs on an empty base image.
pub fn is_static_elf(path: &Path) -> bool {
    let b = fs::read(path).unwrap();
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let p = phoff + i * phentsize;
        u32::from_le_bytes(b[p..p + 4].try_into().unwrap()) != 3
    })
}

/// Starts `bin` inside `root` (chroot: nothing but the image's own files) and checks the kernel could exec it:
/// chroot exits 126/127 when the file cannot be executed or found (a missing dynamic loader is such a case).
pub fn starts_alone(root: &Path, bin: &str, args: &[&str]) {
    // Absolute path: the child's environment is cleared, so there is no PATH to search.
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chroot (coreutils)");
    let mut child = Command::new(chroot)
        .arg(root)
        .arg(bin)
        .args(args)
        .env_clear()
        // The CNI plugin answers VERSION without any other input.
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chroot");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(
                !matches!(status.code(), Some(126 | 127)) && status.code().is_some(),
                "{bin} did not start inside its image: {status}: {err}"
            );
            return;
        }
        if Instant::now() > deadline {
            // Still running after 10 s: it started; that is all this checks.
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `images/build.sh <names>` into `out` and returns what `--print-refs` says it built (all four images).
pub fn build(out: &Path, names: &[&str]) -> Vec<ImageArchive> {
    let t0 = Instant::now();
    let status = Command::new("bash")
        .arg(workspace::root().join("images/build.sh"))
        .args(names)
        .env("MACVTAP_IMAGES_DIR", out)
        .env_remove("IMAGE_REGISTRY")
        .status()
        .expect("running images/build.sh");
    assert!(
        status.success(),
        "images/build.sh {names:?} failed: {status}"
    );
    eprintln!("images/build.sh {names:?} took {:?}", t0.elapsed());
    registry::image_archives(out).expect("images/build.sh --print-refs")
}

pub fn archive_of<'a>(built: &'a [ImageArchive], name: &str) -> &'a ImageArchive {
    built
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("--print-refs lists no {name}: {built:?}"))
}

/// A running child killed (SIGKILL) and reaped on drop, so a failed assertion leaves nothing running.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        kill_and_wait(&mut self.0);
    }
}

/// Polls `ok` every 20 ms until it holds; panics after 10 s.
pub fn poll_until(what: &str, mut ok: impl FnMut() -> bool) {
    let waited = wait::poll_blocking(Duration::from_secs(10), Duration::from_millis(20), || {
        ok().then_some(()).ok_or(())
    });
    assert!(waited.is_ok(), "timed out waiting for {what}");
}
