//! MAC addresses as text: the CNI reads them from its config and args and writes them into its result.

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
