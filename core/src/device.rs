//! Device IDs and the host links made for them, as kubevirt/macvtap-cni named them (links survive an upgrade from
//! the original because both sides keep its scheme):
//!
//! - device ID of slot `i` of resource `name`: `<name>Mvp<i>` (the original's `fmt.Sprint(name, "Mvp", i)`);
//! - host link of a device ID: `mvt` + 12 lowercase hex digits, the low 48 bits of XXH64 (seed 0) of the device ID,
//!   zero-padded (the original's `TemporaryInterfaceName`, on its main branch after v0.13.1): always 15 characters,
//!   fits IFNAMSIZ. The original's releases up to v0.13.1 (its latest) name the link after the device ID itself
//!   ([`released_original_link_name`]): links of a running v0.13.1 are recognised by that name and renamed to ours
//!   when adopted;
//! - ownership marker: the ifalias `macvtap-operator:<deviceID>` the agent sets on every link it creates (the
//!   original sets none).

/// Between a resource name and the slot number in a device ID.
const SLOT_SEPARATOR: &str = "Mvp";

/// Prefix of the ifalias marker that says "created by macvtap-operator for this device ID".
pub const ALIAS_PREFIX: &str = "macvtap-operator:";

/// Longest device ID of ours: it names files in the state directory (`<id>.json`, and temporaries around that name)
/// within the file system's 255 bytes.
pub const MAX_DEVICE_ID_LEN: usize = 200;
/// Longest device ID the CNI carries at all (another plugin's ID: a message names it, nothing is made of it).
pub const MAX_ANY_DEVICE_ID_LEN: usize = 253;

/// Why a string is not a device ID of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// No device plugin's ID: empty, over [`MAX_ANY_DEVICE_ID_LEN`] bytes, or with a control character (the CNI's
    /// config refuses it).
    #[error("{0:?} is not a valid device ID")]
    Malformed(String),
    /// Could be another device plugin's ID, but the agent never hands it out: only letters, digits, `-`, `_`, `.`,
    /// starting with a letter or digit, at most [`MAX_DEVICE_ID_LEN`] bytes (it names files: no `/`, no `..`, no
    /// hidden temporary names).
    #[error("{0:?} is not a device ID of macvtap-operator")]
    NotOurs(String),
}

/// The one device-ID syntax rule, for every side: `Ok` for an ID the agent could have handed out; otherwise whether
/// it is malformed for anyone or only not ours (see [`DeviceIdError`]).
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() || id.len() > MAX_ANY_DEVICE_ID_LEN || id.chars().any(char::is_control) {
        return Err(DeviceIdError::Malformed(id.to_string()));
    }
    if !crate::allocation::file_name_safe(id, MAX_DEVICE_ID_LEN) {
        return Err(DeviceIdError::NotOurs(id.to_string()));
    }
    Ok(())
}

/// The original's synthetic device ID for capacity slot `slot` of `resource`.
pub fn device_id(resource: &str, slot: u32) -> String {
    format!("{resource}{SLOT_SEPARATOR}{slot}")
}

/// The slot of `device_id` in `resource`, if it is one of its IDs (`<name>Mvp<i>`, no leading zeros): the inverse
/// of [`device_id`].
pub fn slot_of(resource: &str, device_id: &str) -> Option<u32> {
    let rest = device_id
        .strip_prefix(resource)?
        .strip_prefix(SLOT_SEPARATOR)?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Name of the host-side macvtap link for a device ID: `mvt` + 12 hex digits of XXH64 (low 48 bits), the
/// original's scheme.
pub fn host_link_name(device_id: &str) -> String {
    let h = xxhash_rust::xxh64::xxh64(device_id.as_bytes(), 0);
    format!("mvt{:012x}", h & 0xffff_ffff_ffff)
}

/// The host link name kubevirt/macvtap-cni's releases up to v0.13.1 give `device_id`'s link: the device ID itself
/// (its Allocate creates the link named so). `None` when the ID is no valid interface name: the original cannot
/// have made such a link.
pub fn released_original_link_name(device_id: &str) -> Option<&str> {
    crate::names::validate_ifname(device_id)
        .is_ok()
        .then_some(device_id)
}

/// The ifalias marker set on links created for `device_id`.
pub fn ownership_alias(device_id: &str) -> String {
    format!("{ALIAS_PREFIX}{device_id}")
}

/// The device ID carried by an ifalias marker, if it is ours.
pub fn device_id_from_alias(alias: &str) -> Option<&str> {
    alias.strip_prefix(ALIAS_PREFIX).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::validate_ifname;

    /// Device IDs and host link names pinned to the original's formula. The expected names were computed once,
    /// independently of this crate, with a pure-Python XXH64 written from the xxHash spec (checked against the
    /// reference vectors XXH64("") = ef46db3751d8e999, XXH64("a") = d24ec4f1a98c6e5b, XXH64("abc") =
    /// 44bc2cf5ad770999): `"mvt%012x" % (xxh64(("%sMvp%d" % (name, i)).encode(), 0) & 0xffffffffffff)`. The last
    /// case is longer than 32 bytes, which takes XXH64's other (striped) path.
    #[test]
    fn device_ids_and_host_link_names_are_the_originals() {
        for (resource, slot, id, link) in [
            ("dataplane", 0, "dataplaneMvp0", "mvtcc7b47d9091b"),
            ("dataplane", 1, "dataplaneMvp1", "mvtf59cb72cf412"),
            ("eth0", 99, "eth0Mvp99", "mvt20074e9ae08d"),
            ("pool", 4095, "poolMvp4095", "mvtcae040f9ae5a"),
            (
                "a-very-long-resource-name-for-the-thirty-two-byte-path",
                7,
                "a-very-long-resource-name-for-the-thirty-two-byte-pathMvp7",
                "mvtc6dcc8b9914b",
            ),
        ] {
            assert_eq!(device_id(resource, slot), id);
            assert_eq!(slot_of(resource, id), Some(slot));
            assert_eq!(host_link_name(id), link, "{id}");
        }
    }

    /// What kubevirt/macvtap-cni v0.13.1 names a link (seen on the real cluster: `dataplaneMvp19`), and an ID too
    /// long to be an interface name, for which its Allocate could make no link.
    #[test]
    fn released_originals_name_its_links_after_the_device_id() {
        assert_eq!(
            released_original_link_name("dataplaneMvp19"),
            Some("dataplaneMvp19")
        );
        assert_eq!(
            released_original_link_name(&device_id("datapl", 4095)),
            Some("dataplMvp4095")
        );
        assert_eq!(
            released_original_link_name("dataplaneMvp100"),
            Some("dataplaneMvp100")
        );
        assert_eq!(released_original_link_name("dataplane01Mvp10"), None);
    }

    #[test]
    fn host_link_names_fit_ifnamsiz_and_differ() {
        let names: std::collections::HashSet<_> = (0..1000)
            .map(|i| host_link_name(&device_id("pool", i)))
            .collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            assert_eq!(n.len(), 15);
            assert!(validate_ifname(n).is_ok());
            assert!(
                n[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }

    #[test]
    fn device_id_syntax() {
        for ours in ["dpMvp0", "dataplaneMvp4095", "0000-03", &"x".repeat(200)] {
            assert_eq!(validate_device_id(ours), Ok(()), "{ours}");
        }
        // Other plugins' IDs (an SR-IOV PCI address) and IDs too long for a file name: carried, never ours.
        for foreign in [
            "0000:03:00.1",
            ".hidden",
            "../x",
            "a b",
            &"x".repeat(201),
            &"x".repeat(253),
        ] {
            assert!(
                matches!(validate_device_id(foreign), Err(DeviceIdError::NotOurs(_))),
                "{foreign}"
            );
        }
        for malformed in ["", "a\nb", "a\0b", &"x".repeat(254)] {
            assert!(
                matches!(
                    validate_device_id(malformed),
                    Err(DeviceIdError::Malformed(_))
                ),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn slots_are_parsed_back_strictly() {
        assert_eq!(slot_of("dp", "dpMvp0"), Some(0));
        assert_eq!(slot_of("dp", "dpMvp17"), Some(17));
        assert_eq!(slot_of("dp", "dpMvp017"), None);
        assert_eq!(slot_of("dp", "dpMvp"), None);
        assert_eq!(slot_of("dp", "otherMvp1"), None);
        assert_eq!(slot_of("dp", "dpMvp-1"), None);
    }

    #[test]
    fn alias_round_trips() {
        assert_eq!(
            device_id_from_alias(&ownership_alias("aMvp3")),
            Some("aMvp3")
        );
        assert_eq!(device_id_from_alias("something else"), None);
        assert_eq!(device_id_from_alias(ALIAS_PREFIX), None);
    }
}
