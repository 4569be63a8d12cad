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

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_e2e::registry::{self, ImageArchive, Registry};
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

/// Runs `images/build.sh <names>` into `out` and returns what `--print-refs` says it built (all four images).
fn build(out: &Path, names: &[&str]) -> Vec<ImageArchive> {
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

fn archive_of<'a>(built: &'a [ImageArchive], name: &str) -> &'a ImageArchive {
    built
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("--print-refs lists no {name}: {built:?}"))
}

/// An OCI archive unpacked: index -> manifest -> config + layers, the layers extracted into `rootfs`.
struct Unpacked {
    ref_name: String,
    manifest_digest: String,
    manifest: Value,
    config: Value,
    rootfs: PathBuf,
    /// Every path in the layers (no leading `./`, no trailing `/`).
    listed: BTreeSet<String>,
}

impl Unpacked {
    fn new(archive: &Path, dir: &Path) -> Self {
        let layout = dir.join("layout");
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
        let manifest_digest = manifests[0]["digest"].as_str().unwrap().to_string();
        let manifest = read_json(&blob_path(&layout, &manifest_digest));
        let config = read_json(&blob_path(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        let rootfs = dir.join("rootfs");
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
        Self {
            ref_name: manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            manifest_digest,
            manifest,
            config,
            rootfs,
            listed,
        }
    }

    /// The regular files among the listed paths.
    fn regular_files(&self) -> BTreeSet<String> {
        self.listed
            .iter()
            .filter(|p| {
                self.rootfs
                    .join(p)
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_file())
            })
            .cloned()
            .collect()
    }

    fn layer_digests(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

#[test]
#[ignore = "slow: musl release build + buildah (CI: --include-ignored)"]
fn build_script_yields_oci_archives_with_the_binaries() {
    let out_dir = tempfile::tempdir().unwrap();
    // No argument: all four images.
    let built = build(out_dir.path(), &[]);
    assert_eq!(
        built.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["operator", "agent", "pause", "busybox"]
    );
    for i in &built {
        assert!(i.archive.starts_with(out_dir.path()), "{i:?}");
        assert!(i.archive.is_file(), "the default build made no {i:?}");
    }

    for (name, files, user, entrypoint) in IMAGES {
        let ImageArchive {
            reference: image_ref,
            archive,
            ..
        } = archive_of(&built, name);
        let size = fs::metadata(archive)
            .unwrap_or_else(|e| panic!("{}: {e}", archive.display()))
            .len();
        eprintln!(
            "{name}: {image_ref} {} ({:.1} MiB)",
            archive.display(),
            size as f64 / 1048576.0
        );
        let img = Unpacked::new(archive, &out_dir.path().join(name));
        assert_eq!(&img.ref_name, image_ref);
        let config = &img.config;
        assert_eq!(config["config"]["User"], *user);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint])
        );
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION")
        );

        // Only our binaries (FROM scratch).
        let want: BTreeSet<String> = files.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            img.regular_files(),
            want,
            "{name} image files (all entries: {:?})",
            img.listed
        );
        for f in *files {
            let path = img.rootfs.join(f);
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{f} is not executable: {mode:o}");
            assert!(is_static_elf(&path), "{f} is not a static ELF executable");
            starts_alone(&img.rootfs, &format!("/{f}"), &["--help"]);
        }
        // Static, stripped, size-optimised binaries: an image far above this means something crept in.
        assert!(size < 80 << 20, "{name} archive is {size} bytes");
    }
}

/// A running child killed (SIGKILL) and reaped on drop, so a failed assertion leaves nothing running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill(2)");
}

/// Waits up to 10 s for the child to exit and returns its exit code.
fn exit_code(child: &mut Reaped) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("process {} did not exit within 10 s", child.0.id());
}

/// The pids of `pid`'s children (Linux `/proc/<pid>/task/<pid>/children`).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn poll_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pause_image_is_one_static_process_that_exits_0_on_sigterm_and_sigint() {
    use nix::sys::signal::Signal;
    let out = tempfile::tempdir().unwrap();
    let built = build(out.path(), &["pause"]);
    let a = archive_of(&built, "pause");
    assert_eq!(a.reference, "registry.k8s.io/pause:3.10");
    let img = Unpacked::new(&a.archive, &out.path().join("unpacked"));
    assert_eq!(img.ref_name, a.reference);
    assert_eq!(
        img.regular_files(),
        BTreeSet::from(["pause".to_string()]),
        "{:?}",
        img.listed
    );
    assert_eq!(
        img.config["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );
    assert_eq!(img.config["config"]["User"], "65535:65535");
    let bin = img.rootfs.join("pause");
    assert!(is_static_elf(&bin), "pause is not a static ELF executable");
    let size = fs::metadata(&bin).unwrap().len();
    eprintln!("pause binary: {size} bytes");
    assert!(
        size < 64 << 10,
        "pause is {size} bytes: not a tiny static program"
    );

    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut p = Reaped(Command::new(&bin).spawn().expect("running pause"));
        // Still there after a while: it waits, it does not exit on its own.
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.0.try_wait().unwrap().is_none(), "pause exited by itself");
        signal(p.0.id(), sig);
        assert_eq!(exit_code(&mut p), Some(0), "exit status after {sig}");
    }
}

#[test]
fn pause_as_pid_1_reaps_orphans_and_exits_0_on_sigterm() {
    let out = tempfile::tempdir().unwrap();
    let built = build(out.path(), &["pause"]);
    let img = Unpacked::new(&archive_of(&built, "pause").archive, &out.path().join("u"));
    // As in a pod: PID 1 of its own PID namespace, where the kernel drops default-action signals to init, so
    // SIGTERM works only because pause blocks and waits for it. --kill-child: pause dies with unshare.
    let mut unshare = Reaped(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(img.rootfs.join("pause"))
            .spawn()
            .expect("running unshare (util-linux)"),
    );
    let mut pause = 0;
    poll_until("pause to start under unshare", || {
        pause = children(unshare.0.id()).first().copied().unwrap_or(0);
        pause != 0
    });

    // An orphan in its namespace: the shell started by nsenter exits at once, its `sleep` is re-parented to pause.
    let status = Command::new("nsenter")
        .args([
            "--target",
            &pause.to_string(),
            "--pid",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg("sleep 0.5 & exit 0")
        .status()
        .expect("running nsenter (util-linux)");
    assert!(status.success(), "nsenter: {status}");
    let orphans = children(pause);
    assert_eq!(
        orphans.len(),
        1,
        "the orphaned sleep should be pause's child"
    );
    // Once it exits pause must reap it: a zombie would stay listed as its child.
    poll_until("pause to reap its orphan", || children(pause).is_empty());

    signal(pause, nix::sys::signal::Signal::SIGTERM);
    // unshare --fork exits with its child's status.
    assert_eq!(exit_code(&mut unshare), Some(0));
}

#[test]
fn busybox_image_is_static_busybox_with_applet_links_and_reproducible() {
    let out = tempfile::tempdir().unwrap();
    let built = build(out.path(), &["busybox"]);
    let a = archive_of(&built, "busybox");
    assert_eq!(a.reference, "docker.io/library/busybox:latest");
    let img = Unpacked::new(&a.archive, &out.path().join("unpacked"));
    assert_eq!(img.ref_name, a.reference);
    let size = fs::metadata(&a.archive).unwrap().len();
    eprintln!(
        "busybox archive: {size} bytes, {} entries",
        img.listed.len()
    );

    let files = img.regular_files();
    assert_eq!(
        files,
        BTreeSet::from(["bin/busybox", "etc/group", "etc/passwd"].map(String::from))
    );
    let busybox = img.rootfs.join("bin/busybox");
    assert!(
        is_static_elf(&busybox),
        "busybox is not a static ELF executable"
    );
    // One /bin/<applet> link to busybox for every applet it lists.
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    let applets: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox")
        .map(String::from)
        .collect();
    for must in [
        "sh", "ip", "ping", "cat", "sleep", "ls", "ifconfig", "udhcpc",
    ] {
        assert!(applets.iter().any(|a| a == must), "busybox has no {must}");
    }
    for a in &applets {
        let link = img.rootfs.join("bin").join(a);
        assert_eq!(
            fs::read_link(&link).unwrap_or_else(|e| panic!("/bin/{a}: {e}")),
            Path::new("busybox"),
            "/bin/{a}"
        );
    }
    assert_eq!(img.config["config"]["Cmd"], serde_json::json!(["sh"]));
    let path_env = img.config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.strip_prefix("PATH="))
        .next()
        .expect("PATH in the image config")
        .to_string();
    assert!(path_env.split(':').any(|d| d == "/bin"), "{path_env}");

    // It works as a root of its own: a shell finds the applets through the image's PATH.
    let run = Command::new("chroot")
        .arg(&img.rootfs)
        .args([
            "sh",
            "-c",
            "grep -c ^root: /etc/passwd && ls /bin/ip && echo ok",
        ])
        .env_clear()
        .env("PATH", &path_env)
        .output()
        .expect("running chroot");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "1\n/bin/ip\nok\n",
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Reproducible: another build gives the same manifest digest.
    let out2 = tempfile::tempdir().unwrap();
    let again = build(out2.path(), &["busybox"]);
    let img2 = Unpacked::new(
        &archive_of(&again, "busybox").archive,
        &out2.path().join("u"),
    );
    assert_eq!(img2.manifest_digest, img.manifest_digest);
}

fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn skopeo_inspect(reference: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo (Debian skopeo: e2e/tools/install-deps.sh)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn registry_serves_pushed_archives_under_their_mirror_paths() {
    let out = tempfile::tempdir().unwrap();
    let built = build(out.path(), &["pause", "busybox"]);
    let ours: Vec<ImageArchive> = ["busybox", "pause"]
        .iter()
        .map(|n| archive_of(&built, n).clone())
        .collect();

    let addr = free_local_addr();
    let dir = out.path().join("registry");
    let reg = Registry::start(addr, &dir).expect("starting the registry");
    let t0 = Instant::now();
    let digests = reg.push_all(&ours).expect("pushing");
    eprintln!("pushed busybox and pause in {:?}", t0.elapsed());

    for (i, (image, digest)) in ours.iter().zip(&digests).enumerate() {
        let img = Unpacked::new(&image.archive, &out.path().join(format!("u{i}")));
        assert_eq!(digest, &img.manifest_digest, "{}", image.name);
        let local = reg.local_ref(&image.reference).unwrap();
        let info = skopeo_inspect(&local);
        assert_eq!(info["Digest"], img.manifest_digest, "{local}: {info}");
        assert_eq!(
            info["Layers"],
            serde_json::json!(img.layer_digests()),
            "{local}"
        );
    }
    assert_eq!(
        reg.local_ref("docker.io/library/busybox:latest").unwrap(),
        format!("{addr}/library/busybox:latest")
    );
    assert_eq!(
        reg.local_ref("registry.k8s.io/pause:3.10").unwrap(),
        format!("{addr}/pause:3.10")
    );
    assert!(reg.local_ref("quay.io/some/image:1").is_err());
    let log = reg.log_path();
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("/v2/library/busybox/manifests/latest")
    );

    drop(reg);
    // Stopped: nothing listens any more.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "registry still listening after drop"
    );
}

/// containerd 1.6 (Debian), its own root, state and socket under `dir`, the CRI plugin off: a content store
/// to fetch into. Killed on drop.
fn containerd(dir: &Path) -> (Reaped, PathBuf) {
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            sock.display()
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("running containerd (Debian containerd: e2e/tools/install-deps.sh)");
    let child = Reaped(child);
    poll_until("containerd's socket", || sock.exists());
    (child, sock)
}

fn ctr(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "test"])
        .args(args)
        .output()
        .expect("running ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn containerd_resolves_public_names_through_the_hosts_dir_to_the_registry() {
    let out = tempfile::tempdir().unwrap();
    let built = build(out.path(), &["pause", "busybox"]);
    let ours: Vec<ImageArchive> = ["busybox", "pause"]
        .iter()
        .map(|n| archive_of(&built, n).clone())
        .collect();
    let reg = Registry::start(free_local_addr(), &out.path().join("registry")).unwrap();
    let digests = reg.push_all(&ours).unwrap();

    let hosts = out.path().join("certs.d");
    reg.write_containerd_hosts(&hosts).unwrap();
    for h in registry::mirror_hosts() {
        assert!(hosts.join(h).join("hosts.toml").is_file(), "{h}");
    }
    let cd_dir = out.path().join("containerd");
    fs::create_dir_all(&cd_dir).unwrap();
    let (_containerd, sock) = containerd(&cd_dir);

    // By the names pods and the CRI config use; `busybox` is what `image: busybox` normalises to.
    let hosts_arg = hosts.to_str().unwrap();
    for (name, digest) in [
        ("docker.io/library/busybox:latest", &digests[0]),
        ("registry.k8s.io/pause:3.10", &digests[1]),
    ] {
        ctr(&sock, &["content", "fetch", "--hosts-dir", hosts_arg, name]);
        let listed = ctr(&sock, &["images", "ls"]);
        let line = listed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in ctr images ls:\n{listed}"));
        assert!(line.contains(digest.as_str()), "{line} (want {digest})");
    }
    // The content came from our registry: its access log has containerd's request by the mirror path.
    let log = fs::read_to_string(reg.log_path()).unwrap();
    assert!(
        log.contains("/v2/pause/manifests/3.10"),
        "registry log:\n{log}"
    );
}

#[test]
fn registry_start_fails_with_its_log_when_the_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let err = Registry::start(taken.local_addr().unwrap(), dir.path())
        .expect_err("a second listener on a taken port")
        .to_string();
    // It notices the exit instead of polling until the timeout, and says why.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(err.contains("address already in use"), "{err}");
}
