//! The built `macvtap` binary, run as a runtime would in a throwaway node netns, on hostile stdin and `CNI_ARGS`
//! generated from the fuzz run's fixed seed: each ADD fails with one spec error on stdout, and neither the node nor
//! the pod netns changes. No device is granted to any pod and no record exists, so whatever parses is still refused
//! (no pod identity: 4; a pod that holds nothing: 107), never attached.

mod common;

use common::*;
use macvtap_cni::error::Code;
use proptest::prop_oneof;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

#[test]
fn hostile_stdin_and_cni_args_fail_cleanly_and_create_nothing() {
    const CASES: u32 = 60;
    let f = Fixture::new();
    // A device the kubelet stand-in knows nothing about, on the node as the agent would have left it.
    f.create_link(&macvtap_link::device_id("hostile", 0));
    let before = node_state(&f);
    let pod_before = f.pod.link_names().unwrap();
    // A third hostile stdin as the fixture's pod (parsing ones reach the kubelet), a third a good config with hostile
    // CNI_ARGS, a third both hostile.
    let good_stdin = conf(
        "1.0.0",
        &macvtap_link::device_id("hostile", 0),
        serde_json::json!({}),
    )
    .to_string()
    .into_bytes();
    let pod = Fixture::pod_args(&f.pod_name);
    let inputs = prop_oneof![
        hostile::stdin().prop_map(move |s| (s, pod.clone())),
        hostile::cni_args().prop_map(move |a| (good_stdin.clone(), a)),
        (hostile::stdin(), hostile::cni_args()),
    ];
    let mut runner = TestRunner::new(hostile::config(CASES));
    let mut codes = std::collections::BTreeSet::new();
    for _ in 0..CASES {
        let (stdin, args) = inputs.new_tree(&mut runner).unwrap().current();
        // The environment cannot carry a NUL.
        let args = args.replace('\0', "");
        let reply = f.call("ADD", "net1").env("CNI_ARGS", &args).run_raw(&stdin);
        let input = format!(
            "stdin {:?}, CNI_ARGS {args:?}",
            String::from_utf8_lossy(&stdin)
        );
        assert_ne!(reply.code, 0, "{input}: {reply:?}");
        let v = reply.json();
        assert!(v["cniVersion"].is_string(), "{input}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{input}: {v}"
        );
        let code = v["code"].as_u64().and_then(|c| u32::try_from(c).ok());
        assert!(
            code.and_then(Code::of).is_some(),
            "{input}: code of ours: {v}"
        );
        codes.extend(code);
        assert_eq!(node_state(&f), before, "{input}: node changed");
        assert_eq!(
            f.pod.link_names().unwrap(),
            pod_before,
            "{input}: pod changed"
        );
    }
    eprintln!("refused with codes {codes:?}");
    // The inputs reached more than one check (a run refused only at the first gate would test little).
    assert!(codes.len() >= 4, "refusals seen: {codes:?}");
    assert!(
        codes.contains(&(Code::NotAllocatedToPod as u32)),
        "no input got as far as the kubelet: {codes:?}"
    );
}
