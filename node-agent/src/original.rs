//! Links left behind by the original (kubevirt/macvtap-cni), adopted as ours.
//!
//! The original creates its host links in the host network namespace on the resource's lower device and sets no
//! ifalias. Its releases up to v0.13.1 (the latest) name a link after the device ID itself (`dataplaneMvp19`); its
//! main branch since then as we do (`mvt` + 12 hex digits of XXH64(deviceID)). After an upgrade such a link
//! would otherwise block its slot for good: Allocate would refuse to replace a link that is not ours, cleanup would
//! never remove it, and preferred allocation would keep offering the slot.
//!
//! The rule: a link in the agent's (host) network namespace is *the original's link for one of our slots*, and is
//! adopted, when all of these hold:
//! - its kind is `macvtap`;
//! - its name is exactly `host_link_name(id)` or `id` itself, for a device ID `id` of a resource served now
//!   (`<name>Mvp<slot>`, slot below the capacity);
//! - its parent is that resource's lower device, in this namespace (`IFLA_LINK` is the lower device's ifindex,
//!   no `IFLA_LINK_NETNSID`);
//! - it has no ifalias at all (the original never sets one; any alias, ours for another device included, means
//!   someone else's link).
//!
//! Adopting sets our marker (`macvtap-operator:<id>`) on the link, and renames a v0.13.1 link to `host_link_name(id)`
//! (same link, ifindex and tap; the kernel renames only a link that is down, so a link in use by a device-plugin-only
//! pod drops frames for the moment between the two requests); from then on it is ours by the usual strict check and
//! follows the usual rules: Allocate recreates it (as the original itself does on Allocate), cleanup removes it
//! only when no pod holds its device for the grace period. Nothing else is ever touched: other names, other kinds,
//! other lower devices, links with any alias, our scheme's name for a slot we do not serve.

use std::collections::{BTreeMap, HashMap};

use macvtap_core::ResourceConfig;
use macvtap_core::device::{host_link_name, ownership_alias, released_original_link_name};
use macvtap_link::LinkInfo;

use crate::link_writer::WriteTurn;
use crate::metrics::Metrics;

/// The original's link for `device_id` of a resource whose lower device is `lower`: see the module rule.
pub fn is_originals_link(link: &LinkInfo, device_id: &str, lower: Option<&LinkInfo>) -> bool {
    // Kind, name and no alias: the link crate's rule for the original's links; the parent is this module's.
    link.is_unmarked_original(device_id)
        && link.parent_netnsid.is_none()
        && lower.is_some_and(|l| link.parent_index == Some(l.index))
}

/// A slot of a served resource, by the name of its host link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub device_id: String,
    pub lower_device: String,
}

/// Every slot of the served resources by the names the original gives its host link, ours and v0.13.1's (at
/// most a few thousand names, hashed per pass).
pub fn slots_by_link_name(resources: &BTreeMap<String, ResourceConfig>) -> HashMap<String, Slot> {
    resources
        .values()
        .flat_map(|r| {
            (0..r.capacity).flat_map(move |i| {
                let device_id = macvtap_core::device::device_id(&r.name, i);
                let slot = Slot {
                    device_id: device_id.clone(),
                    lower_device: r.lower_device.clone(),
                };
                let released =
                    released_original_link_name(&device_id).map(|n| (n.to_string(), slot.clone()));
                std::iter::once((host_link_name(&device_id), slot)).chain(released)
            })
        })
        .collect()
}

/// The links in `links` that are the original's for one of `slots`, with their device IDs.
pub fn find_adoptable<'a>(
    links: &'a BTreeMap<String, LinkInfo>,
    slots: &HashMap<String, Slot>,
) -> Vec<(&'a LinkInfo, String)> {
    links
        .values()
        .filter_map(|l| {
            let slot = slots.get(&l.name)?;
            is_originals_link(l, &slot.device_id, links.get(&slot.lower_device))
                .then(|| (l, slot.device_id.clone()))
        })
        .collect()
}

/// Adopts the host link `name` if it is the original's link for `slot`: the one way Allocate and cleanup adopt.
/// Both the link and the lower device are read again here, in the writer's turn, because they may have changed since
/// the caller looked and a link someone else made is changed only as it is now. A failed read or adoption counts as
/// "not adopted" (logged): the caller goes on as it would for a link that is not the original's.
pub async fn adopt_if_originals(
    turn: &WriteTurn<'_>,
    name: &str,
    slot: &Slot,
    metrics: &Metrics,
) -> bool {
    let (Ok(Some(link)), Ok(lower)) = (
        turn.find_link(name).await,
        turn.find_link(&slot.lower_device).await,
    ) else {
        return false;
    };
    if !is_originals_link(&link, &slot.device_id, lower.as_ref()) {
        return false;
    }
    match adopt(turn, &link, &slot.device_id).await {
        Ok(()) => {
            metrics.links_adopted.inc();
            true
        }
        Err(e) => {
            tracing::warn!(device = %slot.device_id, link = %name, "adopting the original's link: {e}");
            false
        }
    }
}

/// Sets our marker on the original's link `link` for `device_id`, renamed to our name if v0.13.1 named it: it is
/// ours from now on.
async fn adopt(
    netlink: &macvtap_link::Netlink,
    link: &LinkInfo,
    device_id: &str,
) -> Result<(), macvtap_link::Error> {
    let ours = host_link_name(device_id);
    let mut change = macvtap_link::LinkChange {
        alias: Some(ownership_alias(device_id)),
        ..Default::default()
    };
    if link.name != ours {
        // The kernel renames only a link that is down (EBUSY otherwise): down, then name, marker and up again.
        if link.admin_up {
            let down = macvtap_link::LinkChange {
                up: Some(false),
                ..Default::default()
            };
            netlink.set_link(link.index, &down).await?;
        }
        change.name = Some(ours.clone());
        change.up = link.admin_up.then_some(true);
        if let Err(e) = netlink.set_link(link.index, &change).await {
            if link.admin_up {
                let up = macvtap_link::LinkChange {
                    up: Some(true),
                    ..Default::default()
                };
                let _ = netlink.set_link(link.index, &up).await;
            }
            return Err(e);
        }
    } else {
        netlink.set_link(link.index, &change).await?;
    }
    tracing::info!(device = %device_id, link = %link.name, renamed_to = %ours, ifindex = link.index,
        "adopted the original macvtap-cni's link for this slot (ownership marker set)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::tests::link;

    fn macvtap(name: &str, index: u32, parent: u32, alias: Option<&str>) -> LinkInfo {
        let mut l = link(index, name, Some("macvtap"));
        l.parent_index = Some(parent);
        l.alias = alias.map(String::from);
        l
    }

    #[test]
    fn only_the_originals_link_for_a_served_slot_is_adoptable() {
        let resources: BTreeMap<String, ResourceConfig> = [(
            "dp".to_string(),
            ResourceConfig {
                name: "dp".into(),
                lower_device: "eth1".into(),
                mode: Default::default(),
                capacity: 4,
                pool: None,
            },
        )]
        .into();
        let slots = slots_by_link_name(&resources);
        assert_eq!(slots.len(), 8, "each slot under our name and v0.13.1's");
        let name = |id: &str| host_link_name(id);
        let eth1 = link(2, "eth1", None);
        let eth2 = link(3, "eth2", None);
        let original = macvtap(&name("dpMvp1"), 10, 2, None);
        let mut in_other_ns = macvtap(&name("dpMvp0"), 11, 2, None);
        in_other_ns.parent_netnsid = Some(1);
        let other_lower = macvtap(&name("dpMvp2"), 12, 3, None);
        let aliased = macvtap(&name("dpMvp3"), 13, 2, Some("someone-else"));
        let mut veth = link(14, &name("dpMvp3"), Some("veth"));
        veth.parent_index = Some(2);
        let beyond_capacity = macvtap(&name("dpMvp4"), 15, 2, None);
        let other_name = macvtap("mvtforeign00001", 16, 2, None);
        let ours_already = macvtap(&name("dpMvp0"), 17, 2, Some("macvtap-operator:dpMvp0"));
        for l in [&in_other_ns, &other_lower, &aliased, &veth, &ours_already] {
            let id = &slots[&l.name].device_id;
            assert!(!is_originals_link(l, id, Some(&eth1)), "{l:?}");
        }
        // Names of slots not served (beyond the capacity) or of no slot at all are not in the slot index.
        assert!(
            !slots.contains_key(&beyond_capacity.name) && !slots.contains_key(&other_name.name)
        );
        assert!(is_originals_link(&original, "dpMvp1", Some(&eth1)));
        // v0.13.1's name for a slot: the device ID; another slot's ID is no match.
        let released = macvtap("dpMvp2", 18, 2, None);
        assert_eq!(slots["dpMvp2"].device_id, "dpMvp2");
        assert!(is_originals_link(&released, "dpMvp2", Some(&eth1)));
        assert!(!is_originals_link(&released, "dpMvp1", Some(&eth1)));
        assert!(!is_originals_link(
            &macvtap("dpMvp2", 18, 2, Some("someone-else")),
            "dpMvp2",
            Some(&eth1)
        ));
        assert!(
            !is_originals_link(&original, "dpMvp1", None),
            "no lower device"
        );
        assert!(
            !is_originals_link(&original, "dpMvp2", Some(&eth1)),
            "another slot's name"
        );

        let all: BTreeMap<String, LinkInfo> = [
            eth1,
            eth2,
            original.clone(),
            other_lower,
            aliased,
            beyond_capacity,
            other_name,
            released.clone(),
            macvtap("dpMvp4", 19, 2, None),
        ]
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
        let mut found: Vec<(String, String)> = find_adoptable(&all, &slots)
            .into_iter()
            .map(|(l, id)| (l.name.clone(), id))
            .collect();
        found.sort();
        let mut want = vec![
            (original.name.clone(), "dpMvp1".to_string()),
            ("dpMvp2".to_string(), "dpMvp2".to_string()),
        ];
        want.sort();
        assert_eq!(found, want, "dpMvp4 is beyond the capacity");
    }
}
