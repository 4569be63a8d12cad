//! What Multus says about the pod's networks, as a launcher inside the pod can read it: the
//! `k8s.v1.cni.cncf.io/network-status` annotation through a downward API file of the pod's annotations.
//!
//! The kubelet writes that file as `key="value"` lines, the value quoted as Go's `strconv.Quote` does. Multus sets
//! the annotation during the sandbox's CNI ADD, while the volume may already be written: the file can lack it at
//! first and the kubelet fills it in on a later sync, so the caller polls (see `main.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The annotation Multus writes after CNI ADD.
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("downward API annotations, line {line}: {what}")]
    Annotations { line: usize, what: String },
    #[error("{NETWORK_STATUS} is not a JSON list of network statuses: {0}")]
    Json(String),
    #[error("no network named {wanted:?} in {NETWORK_STATUS} (networks: {have:?})")]
    NoSuchNetwork { wanted: String, have: Vec<String> },
    #[error(
        "{NETWORK_STATUS} lists {0:?} besides the cluster network: name the VM's network (--network / VM_NETWORK)"
    )]
    Ambiguous(Vec<String>),
    #[error(
        "{NETWORK_STATUS} lists no network besides the cluster network: the pod has no macvtap network"
    )]
    NoSecondaryNetwork,
}

/// One entry of the network status.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct NetworkStatus {
    /// `<namespace>/<NAD name>` (the cluster network: its own name).
    pub name: String,
    /// The interface in the pod (`net1`, ...).
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// The cluster network.
    #[serde(default)]
    pub default: bool,
}

/// Parses a downward API annotations file into key → value.
pub fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |what: &str| Error::Annotations {
            line: i + 1,
            what: what.into(),
        };
        let (key, quoted) = line.split_once('=').ok_or_else(|| err("no '='"))?;
        out.insert(key.to_string(), unquote(quoted).map_err(err)?);
    }
    Ok(out)
}

/// The inverse of Go's `strconv.Quote` (what the kubelet writes): `"..."` with `\"`, `\\`, `\n`, `\t`, `\r`, `\a`,
/// `\b`, `\f`, `\v`, `\xNN`, `\uNNNN`, `\UNNNNNNNN` escapes.
fn unquote(s: &str) -> Result<String, &'static str> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or("the value is not a quoted string")?;
    let mut out = String::with_capacity(inner.len());
    let mut bytes = Vec::new(); // \xNN escapes are bytes of UTF-8
    let mut chars = inner.chars();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let e = match chars.next().ok_or("a trailing backslash")? {
            'x' => {
                bytes.push(hex(&mut chars, 2)? as u8);
                continue;
            }
            'u' => char::from_u32(hex(&mut chars, 4)?).ok_or("a bad \\u escape")?,
            'U' => char::from_u32(hex(&mut chars, 8)?).ok_or("a bad \\U escape")?,
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            c @ ('\\' | '"' | '\'') => c,
            _ => return Err("an unknown escape"),
        };
        flush(&mut bytes, &mut out);
        out.push(e);
    }
    flush(&mut bytes, &mut out);
    Ok(out)
}

fn hex(chars: &mut std::str::Chars<'_>, n: usize) -> Result<u32, &'static str> {
    let digits: String = chars.take(n).collect();
    if digits.len() != n {
        return Err("a short escape");
    }
    u32::from_str_radix(&digits, 16).map_err(|_| "a bad hex escape")
}

/// The network status from the annotations, or None while Multus has not written it (yet).
pub fn network_status(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Vec<NetworkStatus>>, Error> {
    annotations
        .get(NETWORK_STATUS)
        .map(|v| serde_json::from_str(v).map_err(|e| Error::Json(e.to_string())))
        .transpose()
}

/// The VM's network: the one named `wanted` (`<ns>/<name>` or just `<name>`), else the only one besides the
/// cluster network.
pub fn choose<'a>(
    statuses: &'a [NetworkStatus],
    wanted: Option<&str>,
) -> Result<&'a NetworkStatus, Error> {
    let secondary: Vec<&NetworkStatus> = statuses.iter().filter(|s| !s.default).collect();
    match wanted {
        Some(w) => secondary
            .iter()
            .find(|s| s.name == w || s.name.rsplit('/').next() == Some(w))
            .copied()
            .ok_or_else(|| Error::NoSuchNetwork {
                wanted: w.into(),
                have: statuses.iter().map(|s| s.name.clone()).collect(),
            }),
        None => match secondary[..] {
            [one] => Ok(one),
            [] => Err(Error::NoSecondaryNetwork),
            _ => Err(Error::Ambiguous(
                secondary.iter().map(|s| s.name.clone()).collect(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kubelet wrote for a pod of the e2e suite (Multus thin plugin, our CNI with static IPAM).
    const FILE: &str = concat!(
        "k8s.v1.cni.cncf.io/network-status=\"[{\\n    \\\"name\\\": \\\"cluster\\\",\\n    \\\"interface\\\": ",
        "\\\"eth0\\\",\\n    \\\"ips\\\": [\\n        \\\"198.19.0.5\\\"\\n    ],\\n    \\\"mac\\\": ",
        "\\\"8a:4e:11:22:33:44\\\",\\n    \\\"default\\\": true,\\n    \\\"dns\\\": {}\\n},{\\n    \\\"name\\\": ",
        "\\\"default/dataplane-ips\\\",\\n    \\\"interface\\\": \\\"net1\\\",\\n    \\\"ips\\\": [\\n        ",
        "\\\"10.200.0.10\\\"\\n    ],\\n    \\\"mac\\\": \\\"02:00:0a:c8:00:0a\\\",\\n    \\\"dns\\\": {}\\n}]\"\n",
        "k8s.v1.cni.cncf.io/networks=\"[{\\\"name\\\":\\\"dataplane-ips\\\",\\\"mac\\\":\\\"02:00:0a:c8:00:0a\\\"}]\"\n",
        "kubernetes.io/config.seen=\"2026-12-01T18:00:00.000000000Z\"\n",
    );

    #[test]
    fn reads_the_network_status_from_the_downward_api_file() {
        let a = parse_annotations(FILE).unwrap();
        assert_eq!(a.len(), 3);
        let st = network_status(&a).unwrap().unwrap();
        assert_eq!(st.len(), 2);
        let vm = choose(&st, None).unwrap();
        assert_eq!(vm.name, "default/dataplane-ips");
        assert_eq!(vm.interface.as_deref(), Some("net1"));
        assert_eq!(vm.mac.as_deref(), Some("02:00:0a:c8:00:0a"));
        assert_eq!(vm.ips, ["10.200.0.10"]);
        assert!(st[0].default);
        assert_eq!(choose(&st, Some("dataplane-ips")).unwrap(), vm);
        assert_eq!(choose(&st, Some("default/dataplane-ips")).unwrap(), vm);
        assert!(matches!(
            choose(&st, Some("other")),
            Err(Error::NoSuchNetwork { .. })
        ));
    }

    #[test]
    fn no_status_yet_is_not_an_error() {
        let a = parse_annotations("kubernetes.io/config.seen=\"x\"\n").unwrap();
        assert_eq!(network_status(&a).unwrap(), None);
        assert_eq!(parse_annotations("").unwrap().len(), 0);
    }

    #[test]
    fn go_quote_escapes() {
        assert_eq!(unquote(r#""a\"b\\c\n\t""#).unwrap(), "a\"b\\c\n\t");
        assert_eq!(unquote(r#""\u00e9\U0001F600\xc3\xa9""#).unwrap(), "é😀é");
        assert!(unquote("unquoted").is_err());
        assert!(unquote(r#""\q""#).is_err());
        assert!(unquote(r#""\u12""#).is_err());
        assert!(matches!(
            parse_annotations("novalue\n"),
            Err(Error::Annotations { line: 1, .. })
        ));
    }

    #[test]
    fn the_vm_network_must_be_clear() {
        let s = |name: &str, default| NetworkStatus {
            name: name.into(),
            interface: None,
            ips: vec![],
            mac: None,
            default,
        };
        assert_eq!(
            choose(&[s("cluster", true)], None),
            Err(Error::NoSecondaryNetwork)
        );
        assert!(matches!(
            choose(
                &[s("cluster", true), s("a/x", false), s("a/y", false)],
                None
            ),
            Err(Error::Ambiguous(_))
        ));
        assert!(
            choose(
                &[s("cluster", true), s("a/x", false), s("a/y", false)],
                Some("y")
            )
            .is_ok()
        );
    }
}
