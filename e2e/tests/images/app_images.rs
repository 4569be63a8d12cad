//! The operator and agent images: what `images/build.sh` puts in each archive.

use super::*;

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
