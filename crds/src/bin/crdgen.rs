//! Writes the generated CRD YAML to `crds/yaml/` and the chart's `crds/` directory (run from anywhere in the
//! workspace): `cargo run -p macvtap-api --bin crdgen`. `--check` fails when a committed file is stale.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let mut stale = Vec::new();
    for dir in macvtap_api_dirs(&root) {
        if !check {
            std::fs::create_dir_all(&dir).expect("create output dir");
        }
        for (name, body) in macvtap_api::crd_yaml_files() {
            let path = dir.join(&name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == body {
                continue;
            }
            if check {
                stale.push(path);
            } else {
                std::fs::write(&path, body).expect("write CRD YAML");
                println!("wrote {}", path.display());
            }
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in stale {
            eprintln!(
                "stale: {} (run `cargo run -p macvtap-api --bin crdgen`)",
                p.display()
            );
        }
        ExitCode::FAILURE
    }
}

fn macvtap_api_dirs(root: &Path) -> Vec<PathBuf> {
    macvtap_api::CRD_OUTPUT_DIRS
        .iter()
        .map(|d| root.join(d))
        .collect()
}
