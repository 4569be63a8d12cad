//! The Multus network-selection annotations of a pod, parsed as Multus reads them: which
//! NetworkAttachmentDefinitions the pod attaches, once per attachment.
//!
//! `k8s.v1.cni.cncf.io/networks` is either a comma list of `[namespace/]name[@interface]` or a JSON list of
//! objects (`{"name", "namespace"?, "interface"?, ...}`); `v1.multus-cni.io/default-network` names one NAD
//! (`[namespace/]name`). A reference without a namespace is in the pod's namespace. Pure: no API calls.

use serde::Deserialize;

/// The annotation naming the pod's additional networks.
pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// The annotation replacing the pod's cluster network (Multus' `defaultNetworks` override).
pub const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";

/// One attachment the pod asks for: the NAD it names (namespace resolved).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NadRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for NadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an annotation could not be read. The pod is then admitted unchanged with this as a warning: Multus will
/// refuse it with its own error, which we must not hide behind ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{annotation}: not a JSON list of networks: {reason}")]
    Json {
        annotation: &'static str,
        reason: String,
    },
    #[error("{annotation}: {entry:?} is not [namespace/]name[@interface]")]
    Entry {
        annotation: &'static str,
        entry: String,
    },
}

#[derive(Deserialize)]
struct JsonSelection {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Every attachment of the pod in annotation order (the default network first), one entry per attachment: a NAD
/// named twice appears twice.
pub fn attachments(
    annotations: &std::collections::BTreeMap<String, String>,
    pod_namespace: &str,
) -> (Vec<NadRef>, Vec<ParseError>) {
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    if let Some(v) = annotations.get(DEFAULT_NETWORK) {
        match parse_entry(DEFAULT_NETWORK, v.trim(), pod_namespace) {
            Ok(r) => refs.push(r),
            Err(e) => errors.push(e),
        }
    }
    if let Some(v) = annotations.get(NETWORKS) {
        match parse_networks(v, pod_namespace) {
            Ok(mut r) => refs.append(&mut r),
            Err(e) => errors.push(e),
        }
    }
    (refs, errors)
}

/// The value of `k8s.v1.cni.cncf.io/networks`.
pub fn parse_networks(value: &str, pod_namespace: &str) -> Result<Vec<NadRef>, ParseError> {
    let value = value.trim();
    if value.starts_with('[') {
        let list: Vec<JsonSelection> =
            serde_json::from_str(value).map_err(|e| ParseError::Json {
                annotation: NETWORKS,
                reason: e.to_string(),
            })?;
        return list
            .into_iter()
            .map(|s| {
                let namespace = s
                    .namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| pod_namespace.to_string());
                if s.name.is_empty() {
                    return Err(ParseError::Entry {
                        annotation: NETWORKS,
                        entry: String::new(),
                    });
                }
                Ok(NadRef {
                    namespace,
                    name: s.name,
                })
            })
            .collect();
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| parse_entry(NETWORKS, e, pod_namespace))
        .collect()
}

/// `[namespace/]name[@interface]`.
fn parse_entry(
    annotation: &'static str,
    entry: &str,
    pod_namespace: &str,
) -> Result<NadRef, ParseError> {
    let bad = || ParseError::Entry {
        annotation,
        entry: entry.to_string(),
    };
    // The interface name is Multus' business; only the reference decides the resource.
    let reference = match entry.split_once('@') {
        Some((r, i)) if !i.is_empty() && !i.contains('@') => r,
        Some(_) => return Err(bad()),
        None => entry,
    };
    let (namespace, name) = match reference.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => (ns, n),
        Some(_) => return Err(bad()),
        None => (pod_namespace, reference),
    };
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(NadRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn r(ns: &str, n: &str) -> NadRef {
        NadRef {
            namespace: ns.into(),
            name: n.into(),
        }
    }

    #[test]
    fn comma_list_with_namespaces_and_interfaces() {
        assert_eq!(
            parse_networks("dataplane", "default").unwrap(),
            [r("default", "dataplane")]
        );
        assert_eq!(
            parse_networks(" dataplane , other/p4p1@eth7,dataplane@net9 ,", "team").unwrap(),
            [
                r("team", "dataplane"),
                r("other", "p4p1"),
                r("team", "dataplane")
            ]
        );
    }

    #[test]
    fn json_list_counts_every_attachment() {
        let v = r#"[{"name":"dataplane","mac":"02:00:00:00:00:01"},
                    {"name":"dataplane","interface":"net2"},
                    {"name":"p4p1","namespace":"other","ips":["10.0.0.1/24"]},
                    {"name":"x","namespace":""}]"#;
        assert_eq!(
            parse_networks(v, "default").unwrap(),
            [
                r("default", "dataplane"),
                r("default", "dataplane"),
                r("other", "p4p1"),
                r("default", "x")
            ]
        );
    }

    #[test]
    fn broken_values_are_errors_naming_the_annotation() {
        for bad in ["a/b/c", "/x", "x/", "x@", "a@b@c", "two words"] {
            let e = parse_networks(bad, "default").unwrap_err();
            assert!(
                matches!(
                    e,
                    ParseError::Entry {
                        annotation: NETWORKS,
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        let e = parse_networks("[{\"nam\":1}]", "default").unwrap_err();
        assert!(e.to_string().starts_with(NETWORKS), "{e}");
        assert!(matches!(
            parse_networks(r#"[{"name":""}]"#, "d"),
            Err(ParseError::Entry { .. })
        ));
    }

    #[test]
    fn default_network_comes_first_and_errors_do_not_hide_the_rest() {
        let a: BTreeMap<String, String> = [
            (DEFAULT_NETWORK.to_string(), "kube-ovn/p4p1".to_string()),
            (NETWORKS.to_string(), "dataplane".to_string()),
        ]
        .into();
        let (refs, errors) = attachments(&a, "default");
        assert_eq!(refs, [r("kube-ovn", "p4p1"), r("default", "dataplane")]);
        assert!(errors.is_empty());

        let a: BTreeMap<String, String> = [
            (DEFAULT_NETWORK.to_string(), "a/b/c".to_string()),
            (NETWORKS.to_string(), "dataplane".to_string()),
        ]
        .into();
        let (refs, errors) = attachments(&a, "default");
        assert_eq!(refs, [r("default", "dataplane")]);
        assert_eq!(errors.len(), 1);
        assert!(attachments(&BTreeMap::new(), "d").0.is_empty());
    }
}
