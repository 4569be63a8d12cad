//! The container images: `images/build.sh` builds them into OCI archives (static musl binaries, `FROM scratch`,
//! buildah without a daemon), and each archive holds exactly the binaries the chart runs, tagged with the ref the
//! chart points at, and able to start with nothing else from the image.
//!
//! Slow (a musl release build of the operator, agent and CNI: ~10-15 min cold on 2 cores, ~1 min when cached), so it
//! is `#[ignore]`d for everyday `cargo test`; CI runs it with
//! `cargo test -p macvtap-e2e --test images -- --include-ignored`. Needs root (buildah, chroot).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_e2e::workspace;
use serde_json::Value;

/// (image, files it must hold, user, entrypoint)
const IMAGES: &[(&str, &[&str], &str, &str)] = &[
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

fn tar(args: &[&str]) -> String {
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

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest alg:hex");
    layout.join("blobs").join(alg).join(hex)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// True for an ELF executable without a program interpreter (PT_INTERP): it runs on an empty base image.
fn is_static_elf(path: &Path) -> bool {
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
fn starts_alone(root: &Path, bin: &str, args: &[&str]) {
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

#[test]
#[ignore = "slow: musl release build + buildah (CI: --include-ignored)"]
fn build_script_yields_oci_archives_with_the_binaries() {
    let out_dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let status = Command::new("bash")
        .arg(workspace::root().join("images/build.sh"))
        .env("MACVTAP_IMAGES_DIR", out_dir.path())
        .env_remove("IMAGE_REGISTRY")
        .status()
        .expect("running images/build.sh");
    assert!(status.success(), "images/build.sh failed: {status}");
    eprintln!("images/build.sh took {:?}", t0.elapsed());

    let refs = Command::new("bash")
        .arg(workspace::root().join("images/build.sh"))
        .arg("--print-refs")
        .env("MACVTAP_IMAGES_DIR", out_dir.path())
        .env_remove("IMAGE_REGISTRY")
        .output()
        .unwrap();
    let refs = String::from_utf8(refs.stdout).unwrap();

    for (name, files, user, entrypoint) in IMAGES {
        let line = refs
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .expect("ref line");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (image_ref, archive) = (fields[1], Path::new(fields[2]));
        assert!(archive.starts_with(out_dir.path()), "{}", archive.display());
        let size = fs::metadata(archive)
            .unwrap_or_else(|e| panic!("{}: {e}", archive.display()))
            .len();
        eprintln!(
            "{name}: {image_ref} {} ({:.1} MiB)",
            archive.display(),
            size as f64 / 1048576.0
        );

        // OCI image layout: index -> manifest -> config + layers.
        let layout = out_dir.path().join(format!("{name}-layout"));
        fs::create_dir_all(&layout).unwrap();
        tar(&[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ]);
        assert_eq!(
            read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
            "1.0.0"
        );
        let index = read_json(&layout.join("index.json"));
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        assert_eq!(
            manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
            *image_ref
        );
        let manifest = read_json(&blob_path(
            &layout,
            manifests[0]["digest"].as_str().unwrap(),
        ));
        let config = read_json(&blob_path(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["User"], *user);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint])
        );
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION")
        );

        // Unpack every layer into one root and list what is in it: only our binaries (FROM scratch).
        let rootfs = out_dir.path().join(format!("{name}-rootfs"));
        fs::create_dir_all(&rootfs).unwrap();
        let mut listed = BTreeSet::new();
        for layer in manifest["layers"].as_array().unwrap() {
            let blob = blob_path(&layout, layer["digest"].as_str().unwrap());
            // GNU tar detects gzip/zstd compression by itself.
            for entry in tar(&["-tf", blob.to_str().unwrap()]).lines() {
                let entry = entry.trim_start_matches("./").trim_end_matches('/');
                if !entry.is_empty() {
                    listed.insert(entry.to_string());
                }
            }
            tar(&[
                "-xf",
                blob.to_str().unwrap(),
                "-C",
                rootfs.to_str().unwrap(),
            ]);
        }
        let regular: BTreeSet<String> = listed
            .iter()
            .filter(|p| rootfs.join(p).symlink_metadata().is_ok_and(|m| m.is_file()))
            .cloned()
            .collect();
        let want: BTreeSet<String> = files.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            regular, want,
            "{name} image files (all entries: {listed:?})"
        );
        for f in *files {
            let path = rootfs.join(f);
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{f} is not executable: {mode:o}");
            assert!(is_static_elf(&path), "{f} is not a static ELF executable");
            starts_alone(&rootfs, &format!("/{f}"), &["--help"]);
        }
        // Static, stripped, size-optimised binaries: an image far above this means something crept in.
        assert!(size < 80 << 20, "{name} archive is {size} bytes");
    }
}
