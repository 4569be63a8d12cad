//! An OCI archive unpacked: its index, manifest, config and the files of its layers.

use super::*;

/// An OCI archive unpacked: index -> manifest -> config + layers, the layers extracted into `rootfs`.
pub struct Unpacked {
    pub ref_name: String,
    pub manifest_digest: String,
    pub manifest: Value,
    pub config: Value,
    pub rootfs: PathBuf,
    /// Every path in the layers (no leading `./`, no trailing `/`).
    pub listed: BTreeSet<String>,
}

impl Unpacked {
    pub fn new(archive: &Path, dir: &Path) -> Self {
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
    pub fn regular_files(&self) -> BTreeSet<String> {
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

    pub fn layer_digests(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}
