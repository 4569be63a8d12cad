//! The node-level configuration the agent serves, whichever source it came from (a `MacvtapNodeState` written by
//! the operator, or the legacy `DP_MACVTAP_CONF`), and the name rules every source is checked against.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest resource (pool) name: the part after `/` of an extended resource name is a qualified-name part.
pub const MAX_RESOURCE_NAME_LEN: usize = 63;
/// Upper bound of `capacity`: device IDs are synthetic slots, and the kubelet keeps every one in memory.
pub const MAX_CAPACITY: u32 = 4096;
/// The original's default capacity.
pub const DEFAULT_CAPACITY: u32 = 100;

/// macvtap mode, as `ip link add ... type macvtap mode <mode>` names it.
#[derive(
    Serialize,
    Deserialize,
    JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum MacvtapMode {
    /// Endpoints on the same lower device talk to each other directly (the default).
    #[default]
    Bridge,
    /// All traffic goes out through the lower device; the adjacent switch must hairpin.
    Vepa,
    /// Like vepa, but frames between endpoints on the same lower device are dropped.
    Private,
    /// One endpoint takes over the lower device entirely (capacity is effectively 1).
    Passthru,
    /// Source-MAC filtered mode.
    Source,
}

impl MacvtapMode {
    pub const ALL: [MacvtapMode; 5] = [
        Self::Bridge,
        Self::Vepa,
        Self::Private,
        Self::Passthru,
        Self::Source,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Vepa => "vepa",
            Self::Private => "private",
            Self::Passthru => "passthru",
            Self::Source => "source",
        }
    }
}

impl fmt::Display for MacvtapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown mode string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown macvtap mode {0:?} (expected one of bridge, vepa, private, passthru, source)")]
pub struct UnknownMode(pub String);

impl FromStr for MacvtapMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// One kubelet resource `macvtap.network.kubevirt.io/<name>` served on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Resource name (the part after `macvtap.network.kubevirt.io/`).
    pub name: String,
    /// Host interface the macvtap links are created on.
    pub lower_device: String,
    pub mode: MacvtapMode,
    /// Number of device IDs (`<name>Mvp0` .. `<name>Mvp<capacity-1>`) advertised to the kubelet.
    pub capacity: u32,
    /// The pool this came from (None for the legacy config).
    pub pool: Option<String>,
}

/// "One resource per suitable host link (physical links and bonds), named after the link".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub mode: MacvtapMode,
    pub capacity: u32,
    pub pool: Option<String>,
}

/// Everything one node's agent serves. Explicit resources win over discovered links of the same name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub resources: Vec<ResourceConfig>,
    pub discovery: Option<DiscoveryConfig>,
}

/// Why a resource or interface name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is longer than {1} characters")]
    TooLong(String, usize),
    #[error(
        "{0:?} is not a valid resource name: use letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    )]
    BadResourceName(String),
    #[error("{0:?} is not a valid interface name: no '/', ':', whitespace, and not '.' or '..'")]
    BadIfName(String),
}

/// Checks a resource name: it becomes `macvtap.network.kubevirt.io/<name>` (a qualified name part) and the prefix
/// of device IDs `<name>Mvp<i>`.
pub fn validate_resource_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_RESOURCE_NAME_LEN {
        return Err(NameError::TooLong(name.to_string(), MAX_RESOURCE_NAME_LEN));
    }
    let ok_inner = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok_inner || !ends_ok(name.bytes().next()) || !ends_ok(name.bytes().last()) {
        return Err(NameError::BadResourceName(name.to_string()));
    }
    Ok(())
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_ifname(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(NameError::TooLong(name.to_string(), MAX_IFNAME_LEN));
    }
    if name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err(NameError::BadIfName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_unknown_is_named() {
        for m in MacvtapMode::ALL {
            assert_eq!(m.as_str().parse::<MacvtapMode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        let err = "bridged".parse::<MacvtapMode>().unwrap_err();
        assert!(err.to_string().contains("\"bridged\""), "{err}");
        assert_eq!(MacvtapMode::default(), MacvtapMode::Bridge);
    }

    #[test]
    fn resource_names() {
        for ok in ["dataplane", "eth0", "p4p1", "a", "bond0.100", "my_pool-1"] {
            validate_resource_name(ok).unwrap();
        }
        for bad in ["", "-x", "x-", "a/b", "with space", "ünï", &"x".repeat(64)] {
            assert!(validate_resource_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "ens5f0np0", "bond0.100", "x"] {
            validate_ifname(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }
}
