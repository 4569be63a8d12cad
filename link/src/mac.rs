//! MAC addresses as text: the CNI reads them from its config and args and writes them into its result.

/// A random unicast, locally administered MAC (what the kernel would pick for a new macvtap), chosen by the caller
/// so that it is known without reading the link back. Randomness: std's per-process random hash keys (seeded from
/// the OS), mixed with the time.
pub fn random_local_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let b = h.finish().to_le_bytes();
    // Locally administered (bit 1), unicast (bit 0 clear).
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Format a MAC as lowercase colon-separated hex.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse a 6-byte MAC (`aa:bb:cc:dd:ee:ff` or with `-`); `None` if malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let macs: std::collections::HashSet<_> = (0..100).map(|_| random_local_mac()).collect();
        assert!(macs.len() > 95);
        for m in macs {
            assert_eq!(m[0] & 0x03, 0x02, "{m:02x?}");
        }
    }

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(
            parse_mac("0A:58:0a:f4:00:01"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0, 1])
        );
        assert_eq!(
            parse_mac("0a-58-0a-f4-00-01"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0, 1])
        );
        for bad in [
            "",
            "0a:58:0a:f4:00",
            "0a:58:0a:f4:00:01:02",
            "0a:58:0a:f4:00:1",
            "zz:58:0a:f4:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 0xff, 1, 2]),
            "0a:58:00:ff:01:02"
        );
    }
}
