//! Which links are ours. The names and the marker are `macvtap-core`'s device scheme; the rule over link state:
//!
//! - ours ([`LinkInfo::is_ours`]): kind `macvtap`, name == `host_link_name(id)` and alias == `ownership_alias(id)`;
//!   which device a link is ours for: [`LinkInfo::our_device_id`];
//! - once the CNI has moved and renamed a link into a pod, only kind + alias still hold:
//!   [`LinkInfo::marker_device_id`];
//! - a link the original (kubevirt/macvtap-cni) created has the same kind and name but no alias at all:
//!   [`LinkInfo::is_unmarked_original`]; it needs another proof before anyone may use it;
//! - a link created in place in a pod (no alias: the kernel ignores one on creation) has an ifindex of the reserved
//!   tap-index range, which no other link gets: [`LinkInfo::is_in_place`]. In a pod, ours is either
//!   ([`LinkInfo::is_ours_in_pod`]).

use macvtap_core::device::{device_id_from_alias, host_link_name, released_original_link_name};
use macvtap_core::is_tap_index;

use crate::LinkInfo;

/// One of our links found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurLink {
    pub device_id: String,
    pub link: LinkInfo,
}

impl LinkInfo {
    /// The device ID of our marker, when this is a macvtap carrying it (any name: works inside a pod too).
    pub fn marker_device_id(&self) -> Option<&str> {
        if !self.is_macvtap() {
            return None;
        }
        device_id_from_alias(self.alias.as_deref()?)
    }

    /// A macvtap created in place by the CNI (or on the host by the agent for a device-plugin-only pod): its ifindex is
    /// in the reserved tap-index range.
    pub fn is_in_place(&self) -> bool {
        self.is_macvtap() && is_tap_index(self.index)
    }

    /// Pod-side check (DEL, CHECK): a macvtap carrying our marker (moved in), or one created in place.
    pub fn is_ours_in_pod(&self) -> bool {
        self.marker_device_id().is_some() || self.is_in_place()
    }

    /// Strict host-side check: macvtap, named after `device_id`, with our marker for `device_id`.
    pub fn is_ours(&self, device_id: &str) -> bool {
        self.is_macvtap()
            && self.name == host_link_name(device_id)
            && self.marker_device_id() == Some(device_id)
    }

    /// The device ID of a host link that is ours by the strict check ([`LinkInfo::is_ours`]), read off the link
    /// itself: for walking a link table without knowing which device each link is for.
    pub fn our_device_id(&self) -> Option<&str> {
        self.marker_device_id().filter(|id| self.is_ours(id))
    }

    /// A link as the original (kubevirt/macvtap-cni) left it for `device_id`: macvtap, named after the device ID by
    /// the shared scheme or, as its releases up to v0.13.1 do, the device ID itself, and no ifalias at all (the
    /// original never sets one; any alias is someone's marker). This is no proof of ownership by itself: the CNI
    /// also needs the kubelet's word that the pod holds the device.
    pub fn is_unmarked_original(&self, device_id: &str) -> bool {
        self.is_macvtap()
            && (self.name == host_link_name(device_id)
                || Some(self.name.as_str()) == released_original_link_name(device_id))
            && self.alias.is_none()
    }

    /// Why [`LinkInfo::is_ours`] is false, for error messages.
    pub fn not_ours_reason(&self, device_id: &str) -> Option<String> {
        if !self.is_macvtap() {
            return Some(format!(
                "kind is {}, not macvtap",
                self.kind.as_deref().unwrap_or("physical/none")
            ));
        }
        if self.name != host_link_name(device_id) {
            return Some(format!("name is not {}", host_link_name(device_id)));
        }
        if self.marker_device_id() != Some(device_id) {
            return Some("ownership alias missing or for another device".to_string());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use macvtap_core::device::ownership_alias;

    use super::*;

    fn macvtap(name: &str, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 10,
            name: name.into(),
            kind: Some("macvtap".into()),
            alias: alias.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn ours_needs_kind_name_and_marker() {
        let id = "dpMvp1";
        let name = host_link_name(id);
        let ours = macvtap(&name, Some(&ownership_alias(id)));
        assert!(ours.is_ours(id));
        assert_eq!(ours.our_device_id(), Some(id));
        assert_eq!(ours.marker_device_id(), Some(id));
        assert_eq!(ours.not_ours_reason(id), None);
        assert!(!ours.is_unmarked_original(id));

        let in_pod = macvtap("net1", Some(&ownership_alias(id)));
        assert_eq!(
            in_pod.marker_device_id(),
            Some(id),
            "the marker survives a rename"
        );
        assert!(!in_pod.is_ours(id));
        assert_eq!(in_pod.our_device_id(), None, "not under our host name");
        assert!(
            in_pod
                .not_ours_reason(id)
                .unwrap()
                .starts_with("name is not mvt")
        );

        let original = macvtap(&name, None);
        assert!(original.is_unmarked_original(id));
        assert!(!original.is_ours(id));
        assert_eq!(original.our_device_id(), None);
        assert!(!macvtap(&name, Some("someone-else")).is_unmarked_original(id));
        // v0.13.1 names the link after the device ID; only the device's own ID counts.
        assert!(macvtap(id, None).is_unmarked_original(id));
        assert!(!macvtap(id, None).is_ours(id));
        assert!(!macvtap(id, Some("someone-else")).is_unmarked_original(id));
        assert!(!macvtap("dpMvp2", None).is_unmarked_original(id));

        assert!(in_pod.is_ours_in_pod() && !in_pod.is_in_place());
        let in_place = LinkInfo {
            index: macvtap_core::allocation::TAP_INDEX_FIRST + 3,
            ..macvtap("net1", None)
        };
        assert!(in_place.is_in_place() && in_place.is_ours_in_pod());
        assert!(
            !macvtap("net1", None).is_ours_in_pod(),
            "low index, no marker"
        );

        let veth = LinkInfo {
            kind: Some("veth".into()),
            ..ours.clone()
        };
        assert_eq!(veth.marker_device_id(), None);
        let veth_high = LinkInfo {
            index: macvtap_core::allocation::TAP_INDEX_FIRST,
            alias: None,
            ..veth.clone()
        };
        assert!(!veth_high.is_ours_in_pod(), "only a macvtap");
        assert_eq!(
            veth.not_ours_reason(id).as_deref(),
            Some("kind is veth, not macvtap")
        );
        let other = macvtap(&name, Some(&ownership_alias("dpMvp2")));
        assert_eq!(
            other.not_ours_reason(id).as_deref(),
            Some("ownership alias missing or for another device")
        );
    }
}
