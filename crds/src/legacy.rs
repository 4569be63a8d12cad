//! The original device plugin's `DP_MACVTAP_CONF`: a JSON array of `{name, lowerDevice, mode, capacity}`.
//!
//! Same fields and defaults as the original (capacity <= 0 or missing -> 100, mode missing or "" -> bridge,
//! `[]` -> one resource per discovered physical link or bond). The value itself is read as the original's
//! `json.Unmarshal` into a list does: `[]` and `null` mean discovery, an empty or blank value is not JSON and is an
//! error (the original exits with "unexpected end of JSON input"); an unset variable is the caller's business (the
//! original exits, the agent serves its MacvtapNodeState instead). Unlike the original, entries that cannot work
//! are rejected with an error naming the entry: duplicate names, an empty or invalid lower device, a name that
//! cannot be a resource name, an unknown mode, a capacity above the maximum. Unknown keys are ignored, as before.

use serde::Deserialize;

use macvtap_core::{
    DEFAULT_CAPACITY, DiscoveryConfig, MAX_CAPACITY, MacvtapMode, NameError, NodeConfig,
    ResourceConfig, UnknownMode, validate_ifname, validate_resource_name,
};

/// The environment variable the original read.
pub const ENV_VAR: &str = "DP_MACVTAP_CONF";

/// One entry as written by users of the original.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEntry {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub lower_device: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub capacity: i64,
}

/// Why a `DP_MACVTAP_CONF` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyConfigError {
    #[error("{var} is not a JSON array of {{name, lowerDevice, mode, capacity}} entries: {0}", var = ENV_VAR)]
    Json(String),
    #[error("{var} entry {index} ({name:?}): name {source}", var = ENV_VAR)]
    Name {
        index: usize,
        name: String,
        source: NameError,
    },
    #[error("{var} entry {index} ({name:?}): lowerDevice {source}", var = ENV_VAR)]
    LowerDevice {
        index: usize,
        name: String,
        source: NameError,
    },
    #[error("{var} entry {index} ({name:?}): {source}", var = ENV_VAR)]
    Mode {
        index: usize,
        name: String,
        source: UnknownMode,
    },
    #[error("{var} entry {index} ({name:?}): capacity {capacity} is above the maximum {max}", var = ENV_VAR, max = MAX_CAPACITY)]
    Capacity {
        index: usize,
        name: String,
        capacity: i64,
    },
    #[error("{var} entries {first} and {second} both use the name {name:?}", var = ENV_VAR)]
    Duplicate {
        first: usize,
        second: usize,
        name: String,
    },
}

/// Parses a `DP_MACVTAP_CONF` value into the node configuration the agent serves. `[]` and `null` mean discovery
/// (Go decodes `null` into an empty list); an empty or blank value is an error, as it is for the original.
pub fn parse(value: &str) -> Result<NodeConfig, LegacyConfigError> {
    let entries: Vec<LegacyEntry> = serde_json::from_str::<Option<Vec<LegacyEntry>>>(value)
        .map_err(|e| LegacyConfigError::Json(e.to_string()))?
        .unwrap_or_default();
    if entries.is_empty() {
        return Ok(NodeConfig {
            resources: Vec::new(),
            discovery: Some(DiscoveryConfig {
                mode: MacvtapMode::Bridge,
                capacity: DEFAULT_CAPACITY,
                pool: None,
            }),
        });
    }
    let mut resources: Vec<ResourceConfig> = Vec::with_capacity(entries.len());
    for (index, e) in entries.into_iter().enumerate() {
        let name = e.name.clone();
        validate_resource_name(&e.name).map_err(|source| LegacyConfigError::Name {
            index,
            name: name.clone(),
            source,
        })?;
        validate_ifname(&e.lower_device).map_err(|source| LegacyConfigError::LowerDevice {
            index,
            name: name.clone(),
            source,
        })?;
        let mode = if e.mode.is_empty() {
            MacvtapMode::Bridge
        } else {
            e.mode.parse().map_err(|source| LegacyConfigError::Mode {
                index,
                name: name.clone(),
                source,
            })?
        };
        let capacity = match e.capacity {
            c if c <= 0 => DEFAULT_CAPACITY,
            c if c > i64::from(MAX_CAPACITY) => {
                return Err(LegacyConfigError::Capacity {
                    index,
                    name,
                    capacity: c,
                });
            }
            c => c as u32,
        };
        if let Some(first) = resources.iter().position(|r| r.name == e.name) {
            return Err(LegacyConfigError::Duplicate {
                first,
                second: index,
                name,
            });
        }
        resources.push(ResourceConfig {
            name: e.name,
            lower_device: e.lower_device,
            mode,
            capacity,
            pool: None,
        });
    }
    Ok(NodeConfig {
        resources,
        discovery: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_readme_example_with_defaults() {
        let cfg = parse(
            r#"[{"name":"dataplane","lowerDevice":"eth0","mode":"bridge","capacity":50},
                {"name":"other","lowerDevice":"eth1"},
                {"name":"neg","lowerDevice":"eth2","mode":"","capacity":-3}]"#,
        )
        .unwrap();
        assert_eq!(cfg.discovery, None);
        let r: Vec<_> = cfg
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.lower_device.as_str(), r.mode, r.capacity))
            .collect();
        assert_eq!(
            r,
            vec![
                ("dataplane", "eth0", MacvtapMode::Bridge, 50),
                ("other", "eth1", MacvtapMode::Bridge, 100),
                ("neg", "eth2", MacvtapMode::Bridge, 100),
            ]
        );
    }

    #[test]
    fn empty_list_and_null_mean_discovery() {
        for v in ["[]", " [ ]\n", "null"] {
            let cfg = parse(v).unwrap();
            assert!(cfg.resources.is_empty());
            assert_eq!(
                cfg.discovery,
                Some(DiscoveryConfig {
                    mode: MacvtapMode::Bridge,
                    capacity: 100,
                    pool: None
                })
            );
        }
    }

    #[test]
    fn modes_are_parsed() {
        let cfg = parse(r#"[{"name":"a","lowerDevice":"eth0","mode":"vepa"},{"name":"b","lowerDevice":"eth0","mode":"passthru","capacity":1}]"#).unwrap();
        assert_eq!(cfg.resources[0].mode, MacvtapMode::Vepa);
        assert_eq!(cfg.resources[1].mode, MacvtapMode::Passthru);
    }

    fn err(v: &str) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn bad_entries_are_named() {
        let e = err(r#"[{"name":"a","lowerDevice":"eth0"},{"name":"a","lowerDevice":"eth1"}]"#);
        assert!(e.contains("entries 0 and 1") && e.contains("\"a\""), "{e}");
        let e = err(r#"[{"name":"dp","lowerDevice":""}]"#);
        assert!(
            e.contains("entry 0 (\"dp\")") && e.contains("lowerDevice must not be empty"),
            "{e}"
        );
        let e = err(r#"[{"name":"dp","lowerDevice":"way-too-long-ifname"}]"#);
        assert!(
            e.contains("lowerDevice") && e.contains("longer than 15"),
            "{e}"
        );
        let e =
            err(r#"[{"name":"ok","lowerDevice":"eth0"},{"name":"bad/name","lowerDevice":"eth0"}]"#);
        assert!(
            e.contains("entry 1 (\"bad/name\")") && e.contains("not a valid resource name"),
            "{e}"
        );
        let e = err(r#"[{"name":"","lowerDevice":"eth0"}]"#);
        assert!(
            e.contains("entry 0") && e.contains("name must not be empty"),
            "{e}"
        );
        let e = err(r#"[{"name":"dp","lowerDevice":"eth0","mode":"bridged"}]"#);
        assert!(
            e.contains("entry 0 (\"dp\")") && e.contains("unknown macvtap mode \"bridged\""),
            "{e}"
        );
        let e = err(r#"[{"name":"dp","lowerDevice":"eth0","capacity":100000}]"#);
        assert!(
            e.contains("capacity 100000 is above the maximum 4096"),
            "{e}"
        );
    }

    #[test]
    fn not_json_is_an_error() {
        // An empty or blank value too: the original's json.Unmarshal fails on it and the plugin exits.
        for v in [
            "{",
            r#"{"name":"x"}"#,
            r#"[{"name":1}]"#,
            "eth0",
            "",
            "  \n",
        ] {
            let e = err(v);
            assert!(
                e.starts_with("DP_MACVTAP_CONF is not a JSON array"),
                "{v}: {e}"
            );
        }
    }
}
