//! The busybox image the original README's pods use.

use super::*;

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
