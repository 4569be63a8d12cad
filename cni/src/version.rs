//! Supported CNI spec versions and what each one allows.

use std::fmt;

use crate::error::{CniError, Code};

/// Every version this plugin speaks, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A supported spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u8, pub u8, pub u8);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);
    /// What errors report when the config's version is unknown.
    pub const LATEST: Version = Version(1, 1, 0);

    /// Parse one of [`SUPPORTED`]; anything else is error 1 (incompatible version).
    pub fn parse_supported(s: &str) -> Result<Self, CniError> {
        let parsed = SUPPORTED.contains(&s).then(|| {
            let mut it = s.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
            Version(
                it.next().unwrap_or(0),
                it.next().unwrap_or(0),
                it.next().unwrap_or(0),
            )
        });
        parsed.ok_or_else(|| {
            CniError::new(
                Code::IncompatibleVersion,
                format!("incompatible CNI versions: cniVersion {s:?} is not supported"),
                format!("supported versions: {}", supported_list()),
            )
        })
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`.
    pub fn has_ip_version(self) -> bool {
        self < Self::V1_0_0
    }
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }
    /// STATUS and GC, interface `mtu` in results.
    pub fn has_status_gc(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

pub fn supported_list() -> String {
    SUPPORTED.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_supported_round_trip_and_order() {
        let v: Vec<Version> = SUPPORTED
            .iter()
            .map(|s| Version::parse_supported(s).unwrap())
            .collect();
        for (s, v) in SUPPORTED.iter().zip(&v) {
            assert_eq!(v.to_string(), *s);
        }
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(v.iter().filter(|v| v.has_ip_version()).count(), 3);
        assert_eq!(v.iter().filter(|v| v.has_check()).count(), 3);
        assert_eq!(v.iter().filter(|v| v.has_status_gc()).count(), 1);
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0", "x"] {
            assert_eq!(Version::parse_supported(bad).unwrap_err().code, 1, "{bad}");
        }
    }
}
