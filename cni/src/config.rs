//! Network config (stdin) and `CNI_ARGS` parsing. Pure functions, also the fuzz target's entry points.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{CniError, Code};
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
    pub owner: u32,
    pub group: u32,
    /// Config `mac`.
    pub mac: Option<[u8; 6]>,
    /// `runtimeConfig.mac` (Multus, when the NAD declares `capabilities.mac`).
    pub runtime_mac: Option<[u8; 6]>,
    /// `ipam.type`, when an `ipam` section is present.
    pub ipam_type: Option<String>,
    pub prev_result: Option<Value>,
}

/// Parse the stdin config. Errors: 6 for undecodable JSON, 1 for a missing/unsupported `cniVersion`, 7 for a bad
/// field (the message names it).
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            "failed to decode network config",
            e.to_string(),
        )
    })?;
    let Value::Object(raw) = value else {
        return Err(CniError::new(
            Code::Decode,
            "network config is not a JSON object",
            "",
        ));
    };
    let cni_version = match raw.get("cniVersion") {
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
    let runtime = match raw.get("runtimeConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(CniError::config("runtimeConfig must be an object")),
    };
    let device_id = match opt_str(&runtime, "runtimeConfig.deviceID", "deviceID")? {
        Some(d) => Some(d),
        None => opt_str(&raw, "deviceID", "deviceID")?,
    };
    if let Some(d) = &device_id
        && (d.is_empty() || d.len() > 253 || d.chars().any(|c| c.is_control()))
    {
        return Err(CniError::config(format!(
            "deviceID {d:?} is not a valid device ID"
        )));
    }
    let mtu = match raw.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            _ => {
                return Err(CniError::config(format!(
                    "mtu {v} is not an integer between 68 and 65535"
                )));
            }
        },
    };
    // The original accepts 0 as "unset".
    let mtu = mtu.filter(|m| *m != 0);
    let promisc = match raw.get("promiscMode") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(CniError::config(format!(
                "promiscMode must be a boolean, got {v}"
            )));
        }
    };
    let owner = opt_id(&raw, "owner")?.unwrap_or(DEFAULT_OWNER);
    let group = opt_id(&raw, "group")?.unwrap_or(DEFAULT_GROUP);
    let mac = opt_mac(&raw, "mac", "mac")?;
    let runtime_mac = opt_mac(&runtime, "runtimeConfig.mac", "mac")?;
    let ipam_type = match raw.get("ipam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(Value::Object(m)) => match m.get("type") {
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
    let name = opt_str(&raw, "name", "name")?;
    let prev_result = raw.get("prevResult").filter(|v| !v.is_null()).cloned();
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

/// A plugin name must not walk out of `CNI_PATH`.
fn valid_plugin_name(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".."
}

fn opt_str(m: &Map<String, Value>, field: &str, key: &str) -> Result<Option<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(CniError::config(format!(
            "{field} must be a string, got {v}"
        ))),
    }
}

fn opt_id(m: &Map<String, Value>, key: &str) -> Result<Option<u32>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(CniError::config(format!(
                "{key} must be a numeric uid/gid, got {v}"
            ))),
        },
    }
}

fn opt_mac(m: &Map<String, Value>, field: &str, key: &str) -> Result<Option<[u8; 6]>, CniError> {
    match opt_str(m, field, key)? {
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
/// top-level `deviceID` as an SR-IOV VF on DEL) and minus `runtimeConfig.deviceID`.
pub fn ipam_stdin(conf: &NetConf) -> Vec<u8> {
    let mut m = conf.raw.clone();
    m.remove("deviceID");
    m.remove("pciBusID");
    if let Some(Value::Object(rc)) = m.get_mut("runtimeConfig") {
        rc.remove("deviceID");
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
            (Some(1400), true, 1000, 1001)
        );
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.cni_version.to_string(), "0.3.1");
    }

    #[test]
    fn defaults() {
        let c = conf(r#"{"cniVersion":"1.0.0","deviceID":"a"}"#).unwrap();
        assert_eq!(
            (c.mtu, c.promisc, c.owner, c.group),
            (None, false, 107, 107)
        );
        assert_eq!(c.ipam_type, None);
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
            (r#"{"cniVersion":"1.0.0","owner":-1}"#, 7, "owner"),
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
                assert!(v.get("deviceID").is_none() && v.get("pciBusID").is_none());
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
