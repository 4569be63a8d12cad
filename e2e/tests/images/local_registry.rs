//! The local registry the real cluster pulls from, and containerd resolving public names through it.

use super::*;

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
    assert!(reg.local_ref("gcr.io/some/image:1").is_err());
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
            // Content and images only: no CRI, and no NRI socket at its machine-wide default path.
            "version = 4\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\", \
             \"io.containerd.cri.v1.images\", \"io.containerd.nri.v1.nri\"]\n\
             [plugins.'io.containerd.server.v1.grpc']\n  address = \"{1}\"\n\
             [plugins.'io.containerd.server.v1.ttrpc']\n  address = \"{1}.ttrpc\"\n",
            dir.display(),
            sock.display()
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new(tools::require("containerd"))
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("running containerd (built by e2e/tools/build-tools.sh)");
    let child = Reaped(child);
    poll_until("containerd's socket", || sock.exists());
    (child, sock)
}

fn ctr(sock: &Path, args: &[&str]) -> String {
    let out = Command::new(tools::require("ctr"))
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
