//! Name rules: interface names (what the kernel accepts) and resource names (what the kubelet accepts as the part
//! after `macvtap.network.kubevirt.io/`, which also prefixes device IDs).

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest resource (pool) name: the part after `/` of an extended resource name is a qualified-name part.
pub const MAX_RESOURCE_NAME_LEN: usize = 63;

/// Prefix of every extended resource the agent advertises (`macvtap.network.kubevirt.io/<name>`; the original's
/// too, so pods and NADs written for it keep working). The API group of the CRDs is the same string.
pub const RESOURCE_PREFIX: &str = "macvtap.network.kubevirt.io/";

/// The kubelet's extended-resource name of resource (pool) `name`.
pub fn extended_resource_name(name: &str) -> String {
    format!("{RESOURCE_PREFIX}{name}")
}

/// The resource (pool) name of an extended resource of ours; `None` for anyone else's.
pub fn resource_of(extended: &str) -> Option<&str> {
    extended.strip_prefix(RESOURCE_PREFIX)
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

/// Checks an interface name the way the kernel's `dev_valid_name` does: not empty, shorter than IFNAMSIZ (16
/// bytes), not `.` or `..`, no `/`, `:` or whitespace. NUL is refused too: the kernel would read the name only up
/// to it.
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
            .any(|b| b == b'/' || b == b':' || b == 0 || kernel_isspace(b))
    {
        return Err(NameError::BadIfName(name.to_string()));
    }
    Ok(())
}

/// The kernel's `isspace` (lib/ctype.c): `\t`, `\n`, `\v`, `\f`, `\r`, space, and the Latin-1 no-break space 0xA0
/// (a byte of some UTF-8 characters). Rust's `is_ascii_whitespace` misses `\v` and 0xA0.
fn kernel_isspace(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ' | 0xa0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_resources_round_trip() {
        assert_eq!(
            extended_resource_name("dataplane"),
            "macvtap.network.kubevirt.io/dataplane"
        );
        assert_eq!(
            resource_of("macvtap.network.kubevirt.io/dataplane"),
            Some("dataplane")
        );
        assert_eq!(resource_of("intel.com/sriov"), None);
    }

    #[test]
    fn resource_names() {
        for ok in ["dataplane", "eth0", "p4p1", "a", "bond0.100", "my_pool-1"] {
            validate_resource_name(ok).unwrap();
        }
        for bad in ["", "-x", "x-", "a/b", "with space", "ünï", &"x".repeat(64)] {
            assert!(validate_resource_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_resource_name(&"x".repeat(63)).unwrap();
    }

    #[test]
    fn interface_names() {
        for ok in [
            "eth0",
            "ens5f0np0",
            "bond0.100",
            "x",
            "net1",
            "a",
            "mvt0123456789ab",
            "fifteen-chars-x",
            "ü",
        ] {
            validate_ifname(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\x0bb",
            "a\x0cb",
            "a\rb",
            "a\0b",
            "\0",
            // U+00E0 is C3 A0 in UTF-8: the kernel's isspace(0xA0) refuses it.
            "à",
            "sixteen-chars-xx",
            "0123456789abcdef",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn name_errors_say_what_is_wrong() {
        assert_eq!(validate_ifname(""), Err(NameError::Empty));
        assert_eq!(
            validate_ifname("way-too-long-ifname")
                .unwrap_err()
                .to_string(),
            "\"way-too-long-ifname\" is longer than 15 characters"
        );
        assert!(matches!(
            validate_ifname("a:b"),
            Err(NameError::BadIfName(n)) if n == "a:b"
        ));
        assert!(matches!(
            validate_resource_name("a/b"),
            Err(NameError::BadResourceName(_))
        ));
    }
}
