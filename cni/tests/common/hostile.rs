//! Hostile input for the CNI, as proptest strategies with one fixed seed: stdin configs (the plugin's keys in any
//! letter case, Go's two non-ASCII folds, duplicates, values of every JSON type and edge number, truncated, mutated,
//! deeply nested, or bytes), `CNI_ARGS`, node files and allocation records. Shared by the in-process fuzz run
//! (`tests/fuzz.rs`) and the run of the built binary (`tests/hostile_input.rs`).

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Value, json};

/// The one seed: every `cargo test` runs the same cases (a failure names its input, and reruns the same).
pub const SEED: u64 = 0x6d61_6376_7461_7030;

/// `cases` cases from [`SEED`], no shrinking past a few hundred steps, no persistence file in the tree.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

/// The stdin keys the plugin reads (top level and nested) and a few it passes on.
const CONFIG_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "deviceID",
    "pciBusID",
    "mtu",
    "promiscMode",
    "owner",
    "group",
    "mac",
    "runtimeConfig",
    "ipam",
    "prevResult",
    "capabilities",
];

const VERSIONS: &[&str] = &[
    "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "",
    "1.0.0 ",
];

/// Text a field might be given: empty, names, paths, MACs good and bad, control bytes, long, any Unicode.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(&[
            "", "lo", "lower0", "dpMvp1", "../x", "/", ".", "..", "a/b", "host-local", "static", "macvtap",
            "02:00:00:00:00:01", "01:00:5e:00:00:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "02-00-00-00-00-01",
            "0a:58:0a:00:00:07:09", "zz:00:00:00:00:01", "allow", "refuse", "Allow", "bridge", "passthru",
            "default", "vm", "a\u{0}b", "\t", "é", "\u{212A}", "\u{017F}", "\u{FEFF}", "\u{A0}",
        ][..]).prop_map(str::to_string),
        2 => "[a-zA-Z0-9:._/=; -]{0,24}",
        1 => any::<String>(),
        1 => (1usize..400).prop_map(|n| "x".repeat(n)),
    ]
}

/// A name as a runtime would give one (interface, container, pod, namespace, device ID) mostly, else any text.
pub fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z][a-z0-9-]{0,11}", 1 => text()]
}

/// A unicast, locally administered MAC in the notation the plugin reads.
fn good_mac() -> impl Strategy<Value = String> {
    any::<[u8; 5]>().prop_map(|b| {
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        )
    })
}

/// `name` with each letter's case flipped where `bits` says, sometimes `k`/`s` as Go's folds KELVIN SIGN/LONG S.
fn folded(name: &str, bits: u64) -> String {
    let go_fold = bits.count_ones().is_multiple_of(5);
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let flip = bits >> (i % 64) & 1 == 1;
            match c.to_ascii_lowercase() {
                'k' if flip && go_fold => '\u{212A}',
                's' if flip && go_fold => '\u{017F}',
                _ if flip && c.is_ascii_lowercase() => c.to_ascii_uppercase(),
                _ if flip => c.to_ascii_lowercase(),
                _ => c,
            }
        })
        .collect()
}

/// A key of `names` in some letter case, or any text.
fn key(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(names).prop_map(str::to_string),
        2 => (select(names), any::<u64>()).prop_map(|(k, bits)| folded(k, bits)),
        1 => text(),
    ]
}

/// Any JSON value, edge numbers weighted in, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        select(
            &[
                -2i64,
                -1,
                0,
                1,
                67,
                68,
                107,
                1400,
                65535,
                65536,
                4_294_967_294,
                4_294_967_295,
                4_294_967_296,
                i64::MIN,
                i64::MAX,
                1_900_000_000,
            ][..]
        )
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((key(CONFIG_KEYS), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A member of a macvtap config the plugin accepts (its key in some letter case).
fn valid_member() -> impl Strategy<Value = (String, Value)> {
    let versions = &VERSIONS[..5];
    prop_oneof![
        (key(&["cniVersion"]), select(versions)).prop_map(|(k, v)| (k, json!(v))),
        (key(&["deviceID"]), "[a-zA-Z0-9]{1,20}").prop_map(|(k, v)| (k, json!(v))),
        (key(&["mtu"]), prop_oneof![Just(0i64), 68i64..=65535]).prop_map(|(k, v)| (k, json!(v))),
        (key(&["owner", "group"]), (-1i64..70_000)).prop_map(|(k, v)| (k, json!(v))),
        (key(&["mac"]), good_mac()).prop_map(|(k, v)| (k, json!(v))),
        (key(&["promiscMode"]), any::<bool>()).prop_map(|(k, v)| (k, json!(v))),
        (
            key(&["ipam"]),
            select(&["host-local", "static", "kube-ovn"][..])
        )
            .prop_map(|(k, t)| (k, object("type".into(), t.into()))),
        (key(&["runtimeConfig"]), good_mac()).prop_map(|(k, m)| (k, object("mac".into(), m))),
        Just(("type".to_string(), json!("macvtap"))),
        Just(("name".to_string(), json!("dataplane"))),
    ]
}

/// A member of a macvtap config with a value of the right kind but perhaps not a good one.
fn plausible_member() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        (key(&["cniVersion"]), select(VERSIONS)).prop_map(|(k, v)| (k, json!(v))),
        (key(&["deviceID"]), text()).prop_map(|(k, v)| (k, json!(v))),
        (key(&["mtu"]), (-2i64..70_000)).prop_map(|(k, v)| (k, json!(v))),
        (key(&["owner", "group"]), (-3i64..70_000)).prop_map(|(k, v)| (k, json!(v))),
        (key(&["mac"]), text()).prop_map(|(k, v)| (k, json!(v))),
        (key(&["ipam"]), key(&["type"]), text()).prop_map(|(k, t, v)| (k, object(t, v))),
        (key(&["runtimeConfig"]), key(&["mac", "deviceID"]), text())
            .prop_map(|(k, f, v)| (k, object(f, v))),
    ]
}

fn object(k: String, v: String) -> Value {
    Value::Object([(k, Value::from(v))].into_iter().collect())
}

/// A config's members, duplicates and order kept as written: a version and valid members, then (winning where the
/// keys fold alike) up to three hostile ones.
fn members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let base = (
        prop::option::weighted(0.9, (key(&["cniVersion"]), select(&VERSIONS[..5]))),
        prop::collection::vec(valid_member(), 0..6),
    );
    let hostile = prop::collection::vec(
        prop_oneof![2 => plausible_member(), 1 => (key(CONFIG_KEYS), json_value())],
        0..3,
    );
    (base, hostile).prop_map(|((version, mut m), h)| {
        if let Some((k, v)) = version {
            m.insert(0, (k, json!(v)));
        }
        m.extend(h);
        m
    })
}

/// `{"k": v, ...}` as written, duplicates included (a `Map` would drop them).
pub fn render(members: &[(String, Value)]) -> Vec<u8> {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// Bytes of a JSON object from `members`, sometimes broken after writing.
fn document(
    members: impl Strategy<Value = Vec<(String, Value)>>,
) -> impl Strategy<Value = Vec<u8>> {
    (members, 0u8..6, any::<Index>(), any::<u8>()).prop_map(|(m, how, at, byte)| {
        let mut doc = render(&m);
        match how {
            // One byte replaced.
            0 => {
                let i = at.index(doc.len());
                doc[i] = byte;
            }
            // Cut short.
            1 => doc.truncate(at.index(doc.len())),
            _ => {}
        }
        doc
    })
}

/// A stdin network config.
pub fn stdin() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => document(members()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        // Nested past any parser's recursion limit.
        1 => (1usize..3000, any::<bool>()).prop_map(|(n, arr)| {
            if arr { "[".repeat(n) } else { "{\"ipam\":".repeat(n) }.into_bytes()
        }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

const ARG_KEYS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
    "MAC",
];

/// A `CNI_ARGS` value: mostly a pod's identity as Multus writes it, then `K=V` pairs (known keys in any case,
/// hostile values, `;`/`=` inside) or pairs without `=`; else any text.
pub fn cni_args() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        4 => (key(ARG_KEYS), name()).prop_map(|(k, v)| format!("{k}={v}")),
        1 => text(),
    ];
    let pod = (name(), name()).prop_map(|(ns, pod)| {
        format!("IgnoreUnknown=true;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}")
    });
    prop_oneof![
        4 => (prop::option::weighted(0.7, pod), prop::collection::vec(pair, 0..4)).prop_map(|(pod, pairs)| {
            pod.into_iter().chain(pairs).collect::<Vec<_>>().join(";")
        }),
        1 => any::<String>(),
    ]
}

/// A node file (`macvtap-node.json`).
pub fn node_file() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &["podResourcesSocket", "outsideKubernetes", "allocationDir"];
    let member = prop_oneof![
        2 => (key(KEYS), text()).prop_map(|(k, v)| (k, json!(v))),
        1 => (key(KEYS), select(&["/var/lib/kubelet/pod-resources/kubelet.sock", "/", "/tmp/x"][..]))
            .prop_map(|(k, v)| (k, json!(v))),
        1 => (key(KEYS), json_value()),
    ];
    prop_oneof![
        5 => document(prop::collection::vec(member, 0..5)),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

/// An allocation record (`<allocationDir>/<deviceID>.json`): a valid one, then up to two hostile members.
pub fn record() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &["resource", "lowerDevice", "mode", "tapIndex"];
    const FIRST: i64 = macvtap_core::allocation::TAP_INDEX_FIRST as i64;
    const COUNT: i64 = macvtap_core::allocation::TAP_INDEX_COUNT as i64;
    const MODES: &[&str] = &["bridge", "vepa", "private", "passthru", "source"];
    let valid = (
        "[a-z][a-z0-9]{0,10}",
        "[a-z][a-z0-9]{0,10}",
        select(MODES),
        FIRST..FIRST + COUNT,
    )
        .prop_map(|(r, l, m, i)| {
            vec![
                ("resource".to_string(), json!(r)),
                ("lowerDevice".to_string(), json!(l)),
                ("mode".to_string(), json!(m)),
                ("tapIndex".to_string(), json!(i)),
            ]
        });
    let member = prop_oneof![
        (select(KEYS), text()).prop_map(|(k, v)| (k.to_string(), json!(v))),
        (select(KEYS), select(&["Bridge", "", "macvlan"][..]))
            .prop_map(|(k, v)| (k.to_string(), json!(v))),
        (
            Just("tapIndex"),
            prop_oneof![
                FIRST - 2..FIRST + 2,
                FIRST + COUNT - 2..FIRST + COUNT + 2,
                any::<i64>()
            ]
        )
            .prop_map(|(k, v)| (k.to_string(), json!(v))),
        (key(KEYS), json_value()),
    ];
    let members = (valid, prop::collection::vec(member, 0..3)).prop_map(|(mut v, h)| {
        v.extend(h);
        v
    });
    prop_oneof![
        5 => document(members),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}
