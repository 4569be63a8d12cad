//! The node-level configuration the agent serves, whichever source it came from (a `MacvtapNodeState` written by
//! the operator, or the legacy `DP_MACVTAP_CONF`), and the checks every source passes before it is served.

use crate::mode::MacvtapMode;
use crate::names::{NameError, validate_ifname, validate_resource_name};

/// Upper bound of `capacity`: device IDs are synthetic slots, and the kubelet keeps every one in memory.
pub const MAX_CAPACITY: u32 = 4096;
/// The original's default capacity.
pub const DEFAULT_CAPACITY: u32 = 100;

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

/// Why a node configuration cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeConfig {
    #[error("resource {resource:?}: name {source}")]
    ResourceName { resource: String, source: NameError },
    #[error("resource {resource:?}: lowerDevice {source}")]
    LowerDevice { resource: String, source: NameError },
    #[error("resource {resource:?}: capacity {capacity} is outside 1..={MAX_CAPACITY}")]
    Capacity { resource: String, capacity: u32 },
    #[error("resource {0:?} is listed twice")]
    Duplicate(String),
    #[error("discovery capacity {0} is outside 1..={MAX_CAPACITY}")]
    DiscoveryCapacity(u32),
}

/// Whether `capacity` slots can be advertised.
pub fn capacity_ok(capacity: u32) -> bool {
    (1..=MAX_CAPACITY).contains(&capacity)
}

/// Checks what the CRD schema cannot: unique names, valid resource names and kernel-acceptable interface names,
/// capacities in range. The legacy parser applies the same rules entry by entry (with its own messages).
pub fn validate(cfg: &NodeConfig) -> Result<(), InvalidNodeConfig> {
    let mut seen = std::collections::BTreeSet::new();
    for r in &cfg.resources {
        validate_resource_name(&r.name).map_err(|source| InvalidNodeConfig::ResourceName {
            resource: r.name.clone(),
            source,
        })?;
        validate_ifname(&r.lower_device).map_err(|source| InvalidNodeConfig::LowerDevice {
            resource: r.name.clone(),
            source,
        })?;
        if !capacity_ok(r.capacity) {
            return Err(InvalidNodeConfig::Capacity {
                resource: r.name.clone(),
                capacity: r.capacity,
            });
        }
        if !seen.insert(r.name.as_str()) {
            return Err(InvalidNodeConfig::Duplicate(r.name.clone()));
        }
    }
    if let Some(d) = &cfg.discovery
        && !capacity_ok(d.capacity)
    {
        return Err(InvalidNodeConfig::DiscoveryCapacity(d.capacity));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, lower: &str, capacity: u32) -> ResourceConfig {
        ResourceConfig {
            name: name.into(),
            lower_device: lower.into(),
            mode: MacvtapMode::Bridge,
            capacity,
            pool: None,
        }
    }

    fn err(resources: Vec<ResourceConfig>, discovery: Option<u32>) -> String {
        let cfg = NodeConfig {
            resources,
            discovery: discovery.map(|capacity| DiscoveryConfig {
                mode: MacvtapMode::Bridge,
                capacity,
                pool: None,
            }),
        };
        validate(&cfg).unwrap_err().to_string()
    }

    #[test]
    fn validation_names_the_problem() {
        validate(&NodeConfig {
            resources: vec![res("a", "eth0", 1), res("b", "eth0", 4096)],
            discovery: Some(DiscoveryConfig {
                mode: MacvtapMode::Vepa,
                capacity: 4096,
                pool: None,
            }),
        })
        .unwrap();
        assert_eq!(
            err(vec![res("a", "eth0", 1), res("a", "eth1", 1)], None),
            "resource \"a\" is listed twice"
        );
        assert_eq!(
            err(vec![res("a", "eth0:1", 1)], None),
            "resource \"a\": lowerDevice \"eth0:1\" is not a valid interface name: no '/', ':', whitespace, and not '.' or '..'"
        );
        assert_eq!(
            err(vec![res("-a", "eth0", 1)], None),
            "resource \"-a\": name \"-a\" is not a valid resource name: use letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        );
        assert_eq!(
            err(vec![res("a", "eth0", 0)], None),
            "resource \"a\": capacity 0 is outside 1..=4096"
        );
        assert_eq!(
            err(vec![res("a", "eth0", 4097)], None),
            "resource \"a\": capacity 4097 is outside 1..=4096"
        );
        assert_eq!(
            err(vec![], Some(0)),
            "discovery capacity 0 is outside 1..=4096"
        );
    }
}
