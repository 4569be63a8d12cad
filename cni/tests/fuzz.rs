//! The bounded fuzz run of `cargo test`: every parser of outside input, fed hostile input from one fixed seed and a
//! fixed case count ([`hostile`]), never panics, and every refusal is a spec error with its code (the parser's own:
//! 1/6/7 for stdin, 4 for `CNI_ARGS` and the environment, 50 for the node file, 101 for a bad device ID, 11 for an unreadable record (the agent repairs it)), and a whole
//! in-process invocation answers with one. No root, no netns: the invocation's `CNI_NETNS` does not exist and its
//! `CNI_PATH` is empty, so nothing it could reach acts. The open-ended run is `cni/fuzz` (cargo-fuzz).

#[path = "common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

use std::path::Path;

use macvtap_cni::config::{
    declared_version, ipam_stdin, parse_cni_args, parse_config, parse_stdin, requested_mac,
};
use macvtap_cni::env::Env;
use macvtap_cni::error::{CniError, Code};
use macvtap_cni::node_file;
use macvtap_cni::plugin::read_record;
use macvtap_cni::pod_resources::PodRef;
use macvtap_cni::version::SUPPORTED;
use macvtap_core::allocation::is_tap_index;
use macvtap_core::{AllocationRecord, CniNodeFile};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::Value;

/// `e` carries one of `codes`.
fn coded(e: &CniError, codes: &[Code], input: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        codes.iter().any(|c| *c as u32 == e.code),
        "code {} not in {codes:?} for {:?}: {e:?}",
        e.code,
        String::from_utf8_lossy(input)
    );
    prop_assert!(!e.msg.is_empty());
    Ok(())
}

/// Counts the cases a parser accepted: a run whose every input is refused at the first gate tests little.
#[derive(Default)]
struct Accepted(std::cell::Cell<u32>);

impl Accepted {
    fn one(&self) {
        self.0.set(self.0.get() + 1);
    }

    fn at_least(&self, n: u32, of: &str) {
        eprintln!("{} {of} accepted", self.0.get());
        assert!(self.0.get() >= n, "only {} {of} accepted", self.0.get());
    }
}

#[test]
fn stdin_configs() {
    let accepted = Accepted::default();
    TestRunner::new(hostile::config(2000))
        .run(&hostile::stdin(), |stdin| {
            let _ = parse_stdin(&stdin).map(|top| declared_version(&top));
            match parse_config(&stdin) {
                Err(e) => coded(
                    &e,
                    &[Code::IncompatibleVersion, Code::Decode, Code::InvalidConfig],
                    &stdin,
                )?,
                Ok(c) => {
                    accepted.one();
                    prop_assert!(SUPPORTED.contains(&c.cni_version.to_string().as_str()));
                    prop_assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                    prop_assert!(c.mac.is_none_or(|m| m[0] & 1 == 0 && m != [0; 6]));
                    prop_assert!(c.runtime_mac.is_none_or(|m| m[0] & 1 == 0 && m != [0; 6]));
                    prop_assert!(c.device_id.as_ref().is_none_or(|d| !d.is_empty()));
                    let ipam: Value = serde_json::from_slice(&ipam_stdin(&c)).unwrap();
                    prop_assert!(ipam.is_object());
                }
            }
            Ok(())
        })
        .unwrap();
    accepted.at_least(100, "configs");
}

#[test]
fn cni_args() {
    let conf = parse_config(br#"{"cniVersion":"1.0.0","deviceID":"a"}"#).unwrap();
    let pods = Accepted::default();
    TestRunner::new(hostile::config(2000))
        .run(&hostile::cni_args(), |s| {
            match parse_cni_args(&s) {
                Err(e) => coded(&e, &[Code::InvalidEnv], s.as_bytes())?,
                Ok(a) => {
                    if let Err(e) = requested_mac(&conf, &a) {
                        coded(&e, &[Code::InvalidEnv], s.as_bytes())?;
                    }
                    match PodRef::from_args(&a) {
                        Err(e) => coded(&e, &[Code::InvalidEnv], s.as_bytes())?,
                        Ok(Some(p)) => {
                            pods.one();
                            prop_assert!(!p.namespace.is_empty() && !p.name.is_empty())
                        }
                        Ok(None) => {}
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    pods.at_least(50, "pod identities");
}

#[test]
fn node_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("macvtap-node.json");
    let env = Env::from_pairs([(node_file::ENV, file.to_str().unwrap())]);
    let accepted = Accepted::default();
    TestRunner::new(hostile::config(800))
        .run(&hostile::node_file(), |bytes| {
            std::fs::write(&file, &bytes).unwrap();
            match (CniNodeFile::from_json(&bytes), node_file::load(&env)) {
                (Err(_), Err(e)) => coded(&e, &[Code::NotAvailable], &bytes)?,
                (Ok(c), Ok(loaded)) => {
                    accepted.one();
                    prop_assert!(c.pod_resources_socket.is_absolute());
                    prop_assert!(c.allocation_dir.as_deref().is_none_or(Path::is_absolute));
                    prop_assert_eq!(loaded.source.as_deref(), Some(file.as_path()));
                    prop_assert_eq!(loaded.settings, c);
                }
                (parsed, loaded) => prop_assert!(false, "parse {parsed:?} but load {loaded:?}"),
            }
            Ok(())
        })
        .unwrap();
    accepted.at_least(20, "node files");
}

#[test]
fn allocation_records() {
    let dir = tempfile::tempdir().unwrap();
    let node = Some(dir.path());
    let accepted = Accepted::default();
    TestRunner::new(hostile::config(800))
        .run(&hostile::record(), |bytes| {
            std::fs::write(dir.path().join("fuzzMvp0.json"), &bytes).unwrap();
            match (
                AllocationRecord::from_json(&bytes),
                read_record(node, "fuzzMvp0"),
            ) {
                (Err(_), Err(e)) => coded(&e, &[Code::TryAgainLater], &bytes)?,
                (Ok(r), Ok(Some(read))) => {
                    accepted.one();
                    prop_assert!(is_tap_index(r.tap_index));
                    prop_assert_eq!(
                        &AllocationRecord::from_json(r.to_json().as_bytes()).unwrap(),
                        &r
                    );
                    prop_assert_eq!(read, r);
                }
                (parsed, read) => prop_assert!(false, "from_json {parsed:?} but read {read:?}"),
            }
            Ok(())
        })
        .unwrap();
    accepted.at_least(10, "records");
    // A device ID that cannot name a record is refused before any file is looked at.
    for bad in ["../fuzzMvp0", "", ".hidden", "a/b"] {
        assert_eq!(
            read_record(node, bad).unwrap_err().code,
            Code::NotOurs as u32
        );
    }
}

/// A whole invocation, every verb and a few bogus ones, hostile stdin, `CNI_ARGS`, interface name and container ID
/// and a hostile node file: a failure is one spec error JSON with a code of ours, and ADD always fails (its netns
/// does not exist), so no hostile input ever reaches further than refusing.
#[test]
fn whole_invocations_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let node_file = dir.path().join("macvtap-node.json");
    let cni_path = dir.path().join("no-plugins");
    std::fs::create_dir(&cni_path).unwrap();
    let netns = dir.path().join("no-such-netns");
    let input = (
        prop::sample::select(
            &[
                "ADD", "ADD", "ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", "",
            ][..],
        ),
        hostile::stdin(),
        hostile::cni_args(),
        hostile::name(),
        hostile::name(),
        // Mostly a good node file, so that more calls get past it.
        prop_oneof![
            2 => Just(br#"{"outsideKubernetes":"allow"}"#.to_vec()),
            1 => hostile::node_file(),
        ],
    );
    let codes = std::cell::RefCell::new(std::collections::BTreeSet::new());
    TestRunner::new(hostile::config(800))
        .run(&input, |(verb, stdin, args, ifname, container, node)| {
            std::fs::write(&node_file, &node).unwrap();
            let env = Env::from_pairs([
                ("CNI_COMMAND", verb.to_string()),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", netns.to_str().unwrap().to_string()),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
                ("CNI_PATH", cni_path.to_str().unwrap().to_string()),
                (node_file::ENV, node_file.to_str().unwrap().to_string()),
            ]);
            let out = macvtap_cni::run(&env, &stdin);
            if out.exit_code == 0 {
                prop_assert_ne!(verb, "ADD", "ADD without a netns succeeded: {:?}", out);
                if !out.stdout.is_empty() {
                    serde_json::from_str::<Value>(&out.stdout).unwrap();
                }
                return Ok(());
            }
            let v: Value = serde_json::from_str(&out.stdout)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", out.stdout)))?;
            prop_assert!(v["cniVersion"].is_string(), "{v}");
            prop_assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            let code = v["code"].as_u64().unwrap_or(0);
            prop_assert!(
                u32::try_from(code).ok().and_then(Code::of).is_some(),
                "code {code} is not one of ours: {v}"
            );
            codes.borrow_mut().insert(code);
            Ok(())
        })
        .unwrap();
    // Refused at many gates, not only the first.
    let codes = codes.into_inner();
    eprintln!("refused with codes {codes:?}");
    assert!(codes.len() >= 6, "refusals seen: {codes:?}");
}
