//! GetPreferredAllocation: which slots are offered first — free ones before slots whose host link is still there,
//! held or blocked ones last, lowest slot first within a rank.

use macvtap_core::ResourceConfig;
use macvtap_core::device::{host_link_name, released_original_link_name, slot_of};

use crate::cleanup::CleanupReport;
use crate::netmon::LinkSnapshot;
use crate::original;

/// How willing GetPreferredAllocation is to offer a slot, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotRank {
    /// No host link for it and no pod holding it.
    Free,
    /// A host link of ours or the original's is still there: a stale one, or an Allocate whose pod has not been
    /// set up yet. Allocate would replace it, so it is offered only after free slots.
    LinkPresent,
    /// PodResources says a pod holds it (the kubelet offered it anyway, e.g. after losing track).
    Held,
    /// Its host link name is taken by a link that is not ours: Allocate would refuse it.
    Blocked,
}

/// The rank of `id` of `cfg` given the host links and the latest cleanup report.
pub fn slot_rank(
    cfg: &ResourceConfig,
    id: &str,
    links: &LinkSnapshot,
    cleanup: &CleanupReport,
) -> SlotRank {
    let lower = links.get(&cfg.lower_device);
    // v0.13.1's link for the slot, until cleanup adopts it under our name: Allocate removes it, it blocks nothing.
    let released = released_original_link_name(id)
        .and_then(|n| links.get(n))
        .filter(|l| original::is_originals_link(l, id, lower));
    let link = links.get(&host_link_name(id)).or(released);
    match link {
        Some(l) if !l.is_ours(id) && !original::is_originals_link(l, id, lower) => {
            SlotRank::Blocked
        }
        _ if cleanup.is_held(&cfg.name, id) => SlotRank::Held,
        Some(_) => SlotRank::LinkPresent,
        None => SlotRank::Free,
    }
}

/// GetPreferredAllocation: the required IDs first, then by [`SlotRank`] (free slots before slots whose host link
/// is still there, held or blocked ones last), lowest slot first within a rank, so allocations stay compact and
/// predictable and a slot whose link may be in use is not offered while others are free.
pub fn preferred(
    resource: &str,
    available: &[String],
    must: &[String],
    size: usize,
    rank: impl Fn(&str) -> SlotRank,
) -> Vec<String> {
    let mut out: Vec<String> = must.iter().take(size).cloned().collect();
    let mut rest: Vec<(SlotRank, u32, &String)> = available
        .iter()
        .filter(|id| !out.contains(id))
        .filter_map(|id| slot_of(resource, id).map(|s| (rank(id), s, id)))
        .collect();
    rest.sort();
    out.extend(
        rest.into_iter()
            .map(|(_, _, id)| id.clone())
            .take(size.saturating_sub(out.len())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::tests::link;
    use macvtap_core::device::ownership_alias;
    use macvtap_link::LinkInfo;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn preferred_takes_required_then_lowest() {
        let avail: Vec<String> = ["dpMvp10", "dpMvp2", "dpMvp7", "dpMvp3"]
            .map(String::from)
            .into();
        let got = preferred("dp", &avail, &["dpMvp7".into()], 3, |_| SlotRank::Free);
        assert_eq!(got, vec!["dpMvp7", "dpMvp2", "dpMvp3"]);
    }

    #[test]
    fn preferred_offers_slots_with_a_lingering_link_last() {
        let cfg = ResourceConfig {
            name: "dp".into(),
            lower_device: "eth1".into(),
            mode: Default::default(),
            capacity: 6,
            pool: None,
        };
        let mut eth1 = link(2, "eth1", None);
        let macvtap = |id: &str, index: u32, alias: Option<String>| LinkInfo {
            index,
            name: host_link_name(id),
            kind: Some("macvtap".into()),
            parent_index: Some(2),
            alias,
            ..eth1.clone()
        };
        let mut links = BTreeMap::new();
        // dpMvp0: the original's link; dpMvp1: ours, stale; dpMvp2: a foreign link with our scheme name.
        for l in [
            macvtap("dpMvp0", 10, None),
            macvtap("dpMvp1", 11, Some(ownership_alias("dpMvp1"))),
            macvtap("dpMvp2", 12, Some("someone-else".into())),
        ] {
            links.insert(l.name.clone(), l);
        }
        eth1.index = 2;
        links.insert("eth1".into(), eth1);
        let links: LinkSnapshot = Arc::new(links);
        let cleanup = CleanupReport {
            held: Some([("dp".to_string(), ["dpMvp3".to_string()].into())].into()),
            skipped: None,
        };
        let rank = |id: &str| slot_rank(&cfg, id, &links, &cleanup);
        assert_eq!(rank("dpMvp0"), SlotRank::LinkPresent);
        assert_eq!(rank("dpMvp1"), SlotRank::LinkPresent);
        assert_eq!(rank("dpMvp2"), SlotRank::Blocked);
        assert_eq!(rank("dpMvp3"), SlotRank::Held);
        assert_eq!(rank("dpMvp4"), SlotRank::Free);
        let all: Vec<String> = (0..6).map(|i| format!("dpMvp{i}")).collect();
        assert_eq!(
            preferred("dp", &all, &[], 6, rank),
            ["dpMvp4", "dpMvp5", "dpMvp0", "dpMvp1", "dpMvp3", "dpMvp2"]
        );
        assert_eq!(preferred("dp", &all, &[], 1, rank), ["dpMvp4"]);
    }
}
