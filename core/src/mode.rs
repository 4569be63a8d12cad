//! The macvtap mode: one type for the API (CRD field, legacy `mode`), the agent and the link crate, which converts
//! it to netlink's value.

use std::fmt;
use std::str::FromStr;

/// macvtap mode, as `ip link add ... type macvtap mode <mode>` names it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_unknown_is_named() {
        for m in MacvtapMode::ALL {
            assert_eq!(m.as_str().parse::<MacvtapMode>().unwrap(), m);
            assert_eq!(m.to_string().parse::<MacvtapMode>().unwrap(), m);
        }
        let err = "bridged".parse::<MacvtapMode>().unwrap_err();
        assert!(err.to_string().contains("\"bridged\""), "{err}");
        assert_eq!(MacvtapMode::default(), MacvtapMode::Bridge);
    }

    #[test]
    fn modes_parse_and_print_lowercase() {
        assert_eq!(
            "passthru".parse::<MacvtapMode>().unwrap(),
            MacvtapMode::Passthru
        );
        assert!("Bridge".parse::<MacvtapMode>().is_err());
        assert!("passthrough".parse::<MacvtapMode>().is_err());
    }
}
