//! `cargo +nightly fuzz run config_and_args` (from cni/): the stdin config and CNI_ARGS parsers never panic, and
//! what they accept keeps the invariants the verbs rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use macvtap_cni::config::{ipam_stdin, parse_cni_args, parse_config, requested_mac};
use macvtap_cni::keys::folds_to;
use macvtap_cni::version::SUPPORTED;

fuzz_target!(|data: &[u8]| {
    // First line: CNI_ARGS; the rest: the stdin config.
    let (args, conf) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let args = parse_cni_args(&String::from_utf8_lossy(args));
    if let Ok(a) = &args {
        for (k, _) in &a.pairs {
            assert!(!k.contains(';'));
        }
    }
    if let Ok(c) = parse_config(conf) {
        assert!(SUPPORTED.contains(&c.cni_version.to_string().as_str()));
        if let Some(m) = c.mtu {
            assert!((68..=65535).contains(&m));
        }
        let stripped: serde_json::Value = serde_json::from_slice(&ipam_stdin(&c)).expect("valid JSON");
        // No key a Go IPAM plugin would read as deviceID/pciBusID, in any letter case.
        let m = stripped.as_object().expect("an object");
        assert!(m.keys().all(|k| !folds_to(k, "deviceID") && !folds_to(k, "pciBusID")));
        if let Ok(a) = &args
            && let Ok(Some(mac)) = requested_mac(&c, a)
        {
            assert_eq!(mac[0] & 1, 0, "never a multicast MAC");
        }
    }
});
