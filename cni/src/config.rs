//! Network config (stdin) and `CNI_ARGS` parsing. Pure functions, also the fuzz target's entry points.
//!
//! Top-level keys match as the original's Go decoding matched them: case-insensitively, the last one winning
//! ([`crate::keys`]). Values follow the original's Go types: `mtu` 0 or null is "not set", `owner`/`group` unset or
//! null is 107, -1 leaves that id of `/dev/tapN` unchanged (Go's `os.Chown` meaning), 0 is root.
//!
//! Over 400 lines only by its unit tests (every key, case and Go-typed value the original accepted).

use std::collections::BTreeMap;

use macvtap_core::DeviceIdError;
use serde_json::{Map, Value};

use crate::error::{CniError, Code};
use crate::keys::{Members, get_folded, remove_folded};
use crate::version::Version;

/// KubeVirt's qemu user and group: the default owner of `/dev/tapN`.
pub const DEFAULT_OWNER: u32 = 107;
pub const DEFAULT_GROUP: u32 = 107;

/// The plugin's view of the stdin network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The config exactly as received, for delegation to IPAM.
    pub raw: Map<String, Value>,
    pub cni_version: Version,
    pub name: Option<String>,
    /// `runtimeConfig.deviceID`, else top-level `deviceID`.
    pub device_id: Option<String>,
    pub mtu: Option<u32>,
    pub promisc: bool,
    /// Owner of `/dev/tapN`; `None` leaves it unchanged (`-1` in the config).
    pub owner: Option<u32>,
    /// Group of `/dev/tapN`; `None` leaves it unchanged (`-1` in the config).
    pub group: Option<u32>,
    /// Config `mac`.
    pub mac: Option<[u8; 6]>,
    /// `runtimeConfig.mac` (Multus, when the NAD declares `capabilities.mac`).
    pub runtime_mac: Option<[u8; 6]>,
    /// `ipam.type`, when an `ipam` section is present.
    pub ipam_type: Option<String>,
    pub prev_result: Option<Value>,
}

/// The one parse of stdin: the top-level members in document order (what [`from_members`] and the error
/// replies' `cniVersion` read). Error 6 when it is not JSON, or not an object.
pub fn parse_stdin(stdin: &[u8]) -> Result<Members, CniError> {
    serde_json::from_slice(stdin).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            // Well-formed JSON of another type: the only thing a member list refuses as data.
            CniError::new(Code::Decode, "network config is not a JSON object", "")
        } else {
            CniError::new(
                Code::Decode,
                "failed to decode network config",
                e.to_string(),
            )
        }
    })
}

/// The `cniVersion` a config declares (Go-folded key), for error replies and VERSION.
pub fn declared_version(top: &Members) -> Option<String> {
    top.get("cniVersion")?.as_str().map(str::to_string)
}

/// Parse the stdin config. Errors: 6 for undecodable JSON, 1 for a missing/unsupported `cniVersion`, 7 for a bad
/// field (the message names it).
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    from_members(parse_stdin(stdin)?)
}

/// The config from stdin's members ([`parse_stdin`]); errors as [`parse_config`].
pub fn from_members(top: Members) -> Result<NetConf, CniError> {
    let cni_version = match top.get("cniVersion") {
        None | Some(Value::Null) => {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "cniVersion is missing (it would mean 0.1.0, which is not supported)",
                format!("supported versions: {}", crate::version::supported_list()),
            ));
        }
        Some(Value::String(s)) => Version::parse_supported(s)?,
        Some(other) => {
            return Err(CniError::config(format!(
                "cniVersion must be a string, got {other}"
            )));
        }
    };
    let runtime = match top.get("runtimeConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(CniError::config("runtimeConfig must be an object")),
    };
    let device_id = match nested_str(&runtime, "runtimeConfig.deviceID", "deviceID")? {
        Some(d) => Some(d),
        None => opt_str(top.get("deviceID"), "deviceID")?,
    };
    // Another plugin's ID passes here (DEL must succeed whatever it names); whether it is ours is asked where an
    // allocation record would be read.
    if let Some(d) = &device_id
        && let Err(DeviceIdError::Malformed(_)) = macvtap_core::validate_device_id(d)
    {
        return Err(CniError::config(format!(
            "deviceID {d:?} is not a valid device ID"
        )));
    }
    // As in the original and the reference plugins, 0 (and null) means "not set".
    let mtu = match top.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            _ => {
                return Err(CniError::config(format!(
                    "mtu {v} is not 0 (unset) or an integer between 68 and 65535"
                )));
            }
        },
    };
    let promisc = match top.get("promiscMode") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(CniError::config(format!(
                "promiscMode must be a boolean, got {v}"
            )));
        }
    };
    let owner = tap_id(top.get("owner"), "owner", DEFAULT_OWNER)?;
    let group = tap_id(top.get("group"), "group", DEFAULT_GROUP)?;
    let mac = opt_mac(opt_str(top.get("mac"), "mac")?, "mac")?;
    let runtime_mac = opt_mac(
        nested_str(&runtime, "runtimeConfig.mac", "mac")?,
        "runtimeConfig.mac",
    )?;
    let ipam_type = match top.get("ipam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(Value::Object(m)) => match nested(m, "ipam.type", "type")? {
            Some(Value::String(t)) if valid_plugin_name(t) => Some(t.clone()),
            Some(Value::String(t)) => {
                return Err(CniError::config(format!(
                    "ipam.type {t:?} is not a valid plugin name"
                )));
            }
            _ => return Err(CniError::config("ipam.type is required when ipam is set")),
        },
        Some(_) => return Err(CniError::config("ipam must be an object")),
    };
    let name = opt_str(top.get("name"), "name")?;
    let prev_result = top.get("prevResult").filter(|v| !v.is_null()).cloned();
    // Duplicate keys: the later one stays, as in a `serde_json::Value` of the same text.
    let raw = top.0.into_iter().collect();
    Ok(NetConf {
        raw,
        cni_version,
        name,
        device_id,
        mtu,
        promisc,
        owner,
        group,
        mac,
        runtime_mac,
        ipam_type,
        prev_result,
    })
}

/// `owner`/`group` as the original's Go `int` with `os.Chown`: unset or null → `default`, -1 → leave unchanged,
/// 0..=2^32-2 → that id. Other values (which Go would truncate into some other id) are refused.
fn tap_id(v: Option<&Value>, field: &str, default: u32) -> Result<Option<u32>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(Some(default)),
        Some(v) => match v.as_i64() {
            Some(-1) => Ok(None),
            Some(n) if (0..i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
            _ => Err(CniError::config(format!(
                "{field} must be a numeric uid/gid, or -1 to leave it unchanged; got {v}"
            ))),
        },
    }
}

fn nested<'a>(
    m: &'a Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<&'a Value>, CniError> {
    get_folded(m, key).map_err(|a| {
        CniError::config(format!(
            "{field}: keys {:?} differ only in case; keep one",
            a.0
        ))
    })
}

fn nested_str(m: &Map<String, Value>, field: &str, key: &str) -> Result<Option<String>, CniError> {
    opt_str(nested(m, field, key)?, field)
}

/// A plugin name must not walk out of `CNI_PATH`.
fn valid_plugin_name(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".."
}

fn opt_str(v: Option<&Value>, field: &str) -> Result<Option<String>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(CniError::config(format!(
            "{field} must be a string, got {v}"
        ))),
    }
}

fn opt_mac(s: Option<String>, field: &str) -> Result<Option<[u8; 6]>, CniError> {
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => parse_unicast_mac(&s).map(Some).ok_or_else(|| {
            CniError::config(format!("{field} {s:?} is not a valid unicast MAC address"))
        }),
    }
}

/// A MAC usable on a link: 6 bytes, not multicast, not all-zero.
pub fn parse_unicast_mac(s: &str) -> Option<[u8; 6]> {
    let mac = macvtap_link::parse_mac(s)?;
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// Parsed `CNI_ARGS` (`K=V;K=V`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pairs: BTreeMap<String, String>,
}

impl CniArgs {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.get(k).map(String::as_str)
    }

    /// `MAC=` (Multus' network-selection MAC). Error 4 names CNI_ARGS when malformed.
    pub fn mac(&self) -> Result<Option<[u8; 6]>, CniError> {
        match self.get("MAC") {
            None | Some("") => Ok(None),
            Some(s) => parse_unicast_mac(s).map(Some).ok_or_else(|| {
                CniError::new(
                    Code::InvalidEnv,
                    format!("CNI_ARGS MAC {s:?} is not a valid unicast MAC address"),
                    "",
                )
            }),
        }
    }
}

/// Parse `CNI_ARGS`. Empty is fine; a pair without `=` is error 4.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, CniError> {
    let mut args = CniArgs::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS: invalid pair {pair:?} (expected K=V)"),
                "",
            ));
        };
        args.pairs.insert(k.to_string(), v.to_string());
    }
    Ok(args)
}

/// The MAC before IPAM has spoken: `runtimeConfig.mac` > `CNI_ARGS MAC=` > config `mac`. An IPAM-returned MAC
/// overrides all of these (kube-ovn allocates MACs centrally).
pub fn requested_mac(conf: &NetConf, args: &CniArgs) -> Result<Option<[u8; 6]>, CniError> {
    let from_args = args.mac()?;
    Ok(conf.runtime_mac.or(from_args).or(conf.mac))
}

/// The config handed to an IPAM delegate: the full config minus `deviceID`/`pciBusID` (kube-ovn reads a
/// top-level `deviceID` as an SR-IOV VF on DEL) and minus `runtimeConfig.deviceID`; in any letter case, since Go
/// IPAM plugins read them case-insensitively.
pub fn ipam_stdin(conf: &NetConf) -> Vec<u8> {
    let mut m = conf.raw.clone();
    remove_folded(&mut m, "deviceID");
    remove_folded(&mut m, "pciBusID");
    for (k, v) in m.iter_mut() {
        if let (true, Value::Object(rc)) = (crate::keys::folds_to(k, "runtimeConfig"), v) {
            remove_folded(rc, "deviceID");
        }
    }
    serde_json::to_vec(&Value::Object(m)).expect("a JSON map serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> Result<NetConf, CniError> {
        parse_config(s.as_bytes())
    }

    #[test]
    fn parses_the_originals_keys() {
        let c = conf(
            r#"{"cniVersion":"0.3.1","name":"n","type":"macvtap","deviceID":"dpMvp1","mtu":1400,
                "promiscMode":true,"owner":1000,"group":1001,"mac":"02:00:00:00:00:01"}"#,
        )
        .unwrap();
        assert_eq!(c.device_id.as_deref(), Some("dpMvp1"));
        assert_eq!(
            (c.mtu, c.promisc, c.owner, c.group),
            (Some(1400), true, Some(1000), Some(1001))
        );
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.cni_version.to_string(), "0.3.1");
    }

    #[test]
    fn defaults() {
        let c = conf(r#"{"cniVersion":"1.0.0","deviceID":"a"}"#).unwrap();
        assert_eq!(
            (c.mtu, c.promisc, c.owner, c.group),
            (None, false, Some(107), Some(107))
        );
        assert_eq!(c.ipam_type, None);
    }

    /// The original (Go `int`, `if mtu != 0`) and the reference plugins treat 0 as "not set".
    #[test]
    fn mtu_zero_or_null_is_unset() {
        for m in ["0", "null"] {
            let c = conf(&format!(
                r#"{{"cniVersion":"0.3.1","deviceID":"a","mtu":{m}}}"#
            ))
            .unwrap();
            assert_eq!(c.mtu, None, "mtu {m}");
        }
    }

    /// Keys the original read through Go's encoding/json match in any letter case; the last one wins.
    #[test]
    fn keys_match_like_gos_encoding_json() {
        let c = conf(
            r#"{"CNIVersion":"0.3.1","Name":"n","DeviceID":"dpMvp1","MTU":1400,"promiscmode":true,
                "OWNER":1000,"Group":1001,"Mac":"02:00:00:00:00:01","IPAM":{"Type":"host-local"},
                "RuntimeConfig":{"MAC":"02:00:00:00:00:03"}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version.to_string(), "0.3.1");
        assert_eq!(c.name.as_deref(), Some("n"));
        assert_eq!(c.device_id.as_deref(), Some("dpMvp1"));
        assert_eq!(
            (c.mtu, c.promisc, c.owner, c.group),
            (Some(1400), true, Some(1000), Some(1001))
        );
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.runtime_mac, Some([2, 0, 0, 0, 0, 3]));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        // Document order decides, as in Go: the later key overwrites the earlier.
        let c =
            conf(r#"{"cniVersion":"1.0.0","mtu":1400,"MTU":1300,"deviceID":"a","DEVICEID":"b"}"#)
                .unwrap();
        assert_eq!((c.mtu, c.device_id.as_deref()), (Some(1300), Some("b")));
        let c = conf(r#"{"cniVersion":"1.0.0","MTU":1300,"mtu":1400}"#).unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(
            declared_version(&parse_stdin(br#"{"CniVersion":"0.4.0"}"#).unwrap()).as_deref(),
            Some("0.4.0")
        );
    }

    /// owner/group as the original's Go ints handed to os.Chown: unset/null → 107, -1 → unchanged, 0 → root.
    #[test]
    fn owner_and_group_like_the_original() {
        let c = conf(r#"{"cniVersion":"1.0.0","owner":null,"group":null}"#).unwrap();
        assert_eq!((c.owner, c.group), (Some(107), Some(107)));
        let c = conf(r#"{"cniVersion":"1.0.0","owner":0,"group":-1}"#).unwrap();
        assert_eq!((c.owner, c.group), (Some(0), None));
        let c = conf(r#"{"cniVersion":"1.0.0","owner":-1,"group":0}"#).unwrap();
        assert_eq!((c.owner, c.group), (None, Some(0)));
    }

    #[test]
    fn runtime_config_device_id_wins() {
        let c = conf(r#"{"cniVersion":"1.0.0","deviceID":"a","runtimeConfig":{"deviceID":"b"}}"#)
            .unwrap();
        assert_eq!(c.device_id.as_deref(), Some("b"));
    }

    #[test]
    fn errors_name_the_field_and_use_the_right_code() {
        let cases: &[(&str, u32, &str)] = &[
            ("{", 6, "decode"),
            ("[]", 6, "object"),
            (r#"{"deviceID":"a"}"#, 1, "cniVersion"),
            (r#"{"cniVersion":"0.2.0"}"#, 1, "0.2.0"),
            (r#"{"cniVersion":"9.9.9"}"#, 1, "9.9.9"),
            (r#"{"cniVersion":1}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"1.0.0","mtu":"1500"}"#, 7, "mtu"),
            (r#"{"cniVersion":"1.0.0","mtu":70000}"#, 7, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","promiscMode":"yes"}"#,
                7,
                "promiscMode",
            ),
            (r#"{"cniVersion":"1.0.0","owner":-2}"#, 7, "owner"),
            (r#"{"cniVersion":"1.0.0","group":4294967295}"#, 7, "group"),
            (r#"{"cniVersion":"1.0.0","owner":107.5}"#, 7, "owner"),
            (r#"{"cniVersion":"1.0.0","owner":"107"}"#, 7, "owner"),
            (r#"{"cniVersion":"1.0.0","mtu":-1}"#, 7, "mtu"),
            (r#"{"cniVersion":"1.0.0","mtu":67}"#, 7, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","runtimeConfig":{"MAC":"02:00:00:00:00:01","Mac":"02:00:00:00:00:02"}}"#,
                7,
                "runtimeConfig.mac",
            ),
            (r#"{"cniVersion":"1.0.0","mac":"zz"}"#, 7, "mac"),
            (
                r#"{"cniVersion":"1.0.0","mac":"01:00:5e:00:00:01"}"#,
                7,
                "mac",
            ),
            (
                r#"{"cniVersion":"1.0.0","runtimeConfig":{"mac":"nope"}}"#,
                7,
                "runtimeConfig.mac",
            ),
            (r#"{"cniVersion":"1.0.0","deviceID":5}"#, 7, "deviceID"),
            (r#"{"cniVersion":"1.0.0","deviceID":""}"#, 7, "deviceID"),
            (r#"{"cniVersion":"1.0.0","ipam":{}}"#, 0, ""),
            (
                r#"{"cniVersion":"1.0.0","ipam":{"subnet":"x"}}"#,
                7,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","ipam":{"type":"../x"}}"#,
                7,
                "ipam.type",
            ),
        ];
        for (input, code, word) in cases {
            match conf(input) {
                Ok(_) => assert_eq!(*code, 0, "{input} parsed"),
                Err(e) => {
                    assert_eq!(e.code, *code, "{input}: {e:?}");
                    assert!(
                        e.msg.contains(word),
                        "{input}: {:?} does not name {word}",
                        e.msg
                    );
                }
            }
        }
    }

    #[test]
    fn cni_args() {
        let a =
            parse_cni_args("IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;MAC=0a:58:00:00:00:05;EMPTY=")
                .unwrap();
        assert_eq!(a.get("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(a.mac().unwrap(), Some([0x0a, 0x58, 0, 0, 0, 5]));
        assert_eq!(a.get("EMPTY"), Some(""));
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(parse_cni_args("novalue").unwrap_err().code, 4);
        let bad = parse_cni_args("MAC=xx").unwrap().mac().unwrap_err();
        assert_eq!(bad.code, 4);
        assert!(bad.msg.contains("MAC"));
    }

    #[test]
    fn mac_precedence_before_ipam() {
        let all = conf(
            r#"{"cniVersion":"1.0.0","mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}}"#,
        )
        .unwrap();
        let args = parse_cni_args("MAC=02:00:00:00:00:02").unwrap();
        assert_eq!(
            requested_mac(&all, &args).unwrap(),
            Some([2, 0, 0, 0, 0, 3])
        );
        let no_rc = conf(r#"{"cniVersion":"1.0.0","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(
            requested_mac(&no_rc, &args).unwrap(),
            Some([2, 0, 0, 0, 0, 2])
        );
        assert_eq!(
            requested_mac(&no_rc, &CniArgs::default()).unwrap(),
            Some([2, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn ipam_stdin_strips_device_ids_in_any_case() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","DeviceID":"a","PCIBusID":"b","RuntimeConfig":{"deviceid":"c"},"ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&ipam_stdin(&c)).unwrap();
        let m = v.as_object().unwrap();
        assert!(m.keys().all(|k| !k.eq_ignore_ascii_case("deviceid") && !k.eq_ignore_ascii_case("pcibusid")));
        assert_eq!(v["RuntimeConfig"], serde_json::json!({}));
    }

    #[test]
    fn ipam_stdin_strips_device_ids() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","deviceID":"a","pciBusID":"b","runtimeConfig":{"deviceID":"c","mac":"02:00:00:00:00:01"},"ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&ipam_stdin(&c)).unwrap();
        assert!(v.get("deviceID").is_none() && v.get("pciBusID").is_none());
        assert!(v["runtimeConfig"].get("deviceID").is_none());
        assert_eq!(v["runtimeConfig"]["mac"], "02:00:00:00:00:01");
        assert_eq!(v["ipam"]["type"], "host-local");
    }

    /// A cheap in-tree stand-in for the fuzz target: byte-level mutations of a full config never panic the parser
    /// and whatever parses keeps the invariants the verbs rely on.
    #[test]
    fn mutated_configs_keep_invariants() {
        let seed = br#"{"cniVersion":"0.3.1","name":"n","type":"macvtap","deviceID":"dpMvp1","pciBusID":"x","mtu":1400,"promiscMode":true,"owner":1,"group":2,"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03","deviceID":"d"},"ipam":{"type":"host-local"}}"#;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut input = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % input.len();
                input[i] = b" \"{}:,0123456789.-abcdefxyz"[(next() % 27) as usize];
            }
            if let Ok(c) = parse_config(&input) {
                parsed += 1;
                assert!(crate::version::SUPPORTED.contains(&c.cni_version.to_string().as_str()));
                assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                assert!(c.mac.is_none_or(|m| m[0] & 1 == 0));
                let v: Value = serde_json::from_slice(&ipam_stdin(&c)).unwrap();
                let m = v.as_object().unwrap();
                assert!(m.keys().all(|k| !crate::keys::folds_to(k, "deviceID")
                    && !crate::keys::folds_to(k, "pciBusID")));
                assert!(c.owner.is_none_or(|o| o != u32::MAX));
            }
            let args = String::from_utf8_lossy(&input)
                .replace(',', ";")
                .replace(':', "=");
            let _ = parse_cni_args(&args).map(|a| a.mac());
        }
        assert!(
            parsed > 100,
            "mutations too destructive to exercise the accepting paths: {parsed}"
        );
    }
}
