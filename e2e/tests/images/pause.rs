//! The pause image: one static process that waits, exits 0 on SIGTERM and SIGINT, and reaps orphans as pid 1.

use super::*;

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

/// The same inputs build nothing again: the archive stays the very file it was; an archive whose recorded inputs are
/// gone (or differ) is built again.
#[test]
fn an_image_with_unchanged_inputs_is_not_built_again() {
    use std::os::unix::fs::MetadataExt;
    let out = tempfile::tempdir().unwrap();
    let archive = archive_of(&build(out.path(), &["pause"]), "pause")
        .archive
        .clone();
    let identity = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.ino(), m.mtime_nsec(), m.mtime())
    };
    let first = identity(&archive);
    build(out.path(), &["pause"]);
    assert_eq!(
        identity(&archive),
        first,
        "rebuilt although nothing changed"
    );
    let inputs = PathBuf::from(format!("{}.inputs", archive.display()));
    fs::write(&inputs, "something else\n").unwrap();
    build(out.path(), &["pause"]);
    assert_ne!(
        identity(&archive),
        first,
        "not rebuilt although its inputs differ"
    );
}
