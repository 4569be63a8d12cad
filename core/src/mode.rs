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

    /// Whether one endpoint takes the lower device whole (passthru: the kernel refuses a second macvtap on it). Such
    /// a pool has capacity 1 and shares its lower device with no other pool.
    pub fn takes_device_whole(self) -> bool {
        self == Self::Passthru
    }

    /// Whether pools in modes `self` and `other` may share one lower device: the same mode, and not one that takes
    /// the device whole.
    pub fn can_share_lower_device(self, other: Self) -> bool {
        self == other && !self.takes_device_whole()
    }

    /// The CEL rule (on a pool's spec) and its message for the capacity of the modes that take a device whole, built
    /// from [`Self::takes_device_whole`]: the API server refuses what the operator would otherwise have to.
    pub fn whole_device_capacity_rule() -> (String, String) {
        let modes = Self::ALL.into_iter().filter(|m| m.takes_device_whole());
        let quoted: Vec<_> = modes.clone().map(|m| format!("'{m}'")).collect();
        let named: Vec<_> = modes.map(Self::as_str).collect();
        (
            format!(
                "!(self.mode in [{}]) || self.capacity == 1",
                quoted.join(", ")
            ),
            format!(
                "spec.capacity must be 1 in {} mode: one endpoint takes the whole lower device",
                named.join(" or ")
            ),
        )
    }

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
    fn only_passthru_takes_the_device_whole_and_shares_nothing() {
        for a in MacvtapMode::ALL {
            assert_eq!(a.takes_device_whole(), a == MacvtapMode::Passthru);
            for b in MacvtapMode::ALL {
                assert_eq!(
                    a.can_share_lower_device(b),
                    a == b && a != MacvtapMode::Passthru,
                    "{a} with {b}"
                );
            }
        }
        let (rule, message) = MacvtapMode::whole_device_capacity_rule();
        assert_eq!(rule, "!(self.mode in ['passthru']) || self.capacity == 1");
        assert!(
            message.contains("capacity must be 1 in passthru mode"),
            "{message}"
        );
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
