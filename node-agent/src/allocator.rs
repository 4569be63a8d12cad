//! Allocation: which slots GetPreferredAllocation offers first, and what Allocate does for one device ID.
//!
//! Allocate (re)creates the host macvtap link of the device ID on the resource's lower device (a stale link of
//! ours is replaced; the original macvtap-cni's link for the slot is adopted first, see [`crate::original`]) and
//! answers the `/dev/tapN` of exactly the link it left in place: it changes links only in its turn
//! ([`LinkWriter`]), as cleanup does. Every Allocate is noted in [`RecentAllocations`], which cleanup's grace
//! period reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use macvtap_api::ResourceConfig;
use macvtap_core::device::slot_of;
use tokio::sync::watch;
use tonic::Status;

use crate::cleanup::CleanupReport;
use crate::link_writer::{LinkWriter, WriteTurn};
use crate::metrics::Metrics;
use crate::netmon::{self, LinkSnapshot};
use crate::original;

/// Device ID -> its last Allocate (since this process started), for cleanup's grace period.
#[derive(Clone)]
pub struct RecentAllocations(Arc<watch::Sender<HashMap<String, Instant>>>);

impl Default for RecentAllocations {
    fn default() -> Self {
        Self(Arc::new(watch::channel(HashMap::new()).0))
    }
}

impl RecentAllocations {
    pub fn note(&self, device_id: &str) {
        self.0.send_modify(|m| {
            m.insert(device_id.to_string(), Instant::now());
        });
    }

    /// When the device was last allocated.
    pub fn last(&self, device_id: &str) -> Option<Instant> {
        self.0.borrow().get(device_id).copied()
    }

    pub fn forget_older_than(&self, age: Duration) {
        self.0.send_if_modified(|m| {
            let before = m.len();
            m.retain(|_, t| t.elapsed() < age);
            m.len() != before
        });
    }
}

/// Allocate for every resource of the node: changes host links in its turn, notes each allocation.
#[derive(Clone)]
pub struct Allocator {
    pub writer: Arc<LinkWriter>,
    pub recent: RecentAllocations,
    pub metrics: Arc<Metrics>,
}

impl Allocator {
    /// Allocate of one device ID: creates (or recreates) its host link; returns its `/dev/tapN`.
    pub async fn allocate(
        &self,
        cfg: &ResourceConfig,
        id: &str,
        mode: macvtap_link::MacvtapMode,
    ) -> Result<String, Status> {
        match slot_of(&cfg.name, id) {
            Some(slot) if slot < cfg.capacity => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "device {id:?} is not one of resource {}'s {} devices",
                    cfg.name, cfg.capacity
                )));
            }
        }
        // One link change at a time (Allocate, adoption, cleanup): the tap answered is the link left in place.
        let turn = self.writer.turn().await;
        // Recorded before the link exists: cleanup must not race a link that is being created.
        self.recent.note(id);
        let started = Instant::now();
        let mut result = turn.create_macvtap(&cfg.lower_device, id, mode).await;
        if let Err(macvtap_link::Error::NotOurs { .. }) = &result
            && self.adopt_originals_link(&turn, cfg, id).await
        {
            // Ours now: recreated like any stale link of ours, as the original does on Allocate.
            result = turn.create_macvtap(&cfg.lower_device, id, mode).await;
        }
        let link = result.map_err(|e| match e {
            macvtap_link::Error::LowerDeviceNotFound(_) => Status::failed_precondition(format!(
                "resource {}: lower device {:?} does not exist on this node",
                cfg.name, cfg.lower_device
            )),
            macvtap_link::Error::NotOurs { .. } => {
                Status::already_exists(format!("resource {}, device {id}: {e}", cfg.name))
            }
            other => Status::internal(format!(
                "resource {}, device {id}: creating the {mode} macvtap link on {}: {other}",
                cfg.name, cfg.lower_device
            )),
        })?;
        self.recent.note(id);
        tracing::info!(resource = %cfg.name, device = %id, link = %link.name, ifindex = link.index,
            elapsed_us = started.elapsed().as_micros() as u64, "allocated");
        Ok(link.tap_path().display().to_string())
    }

    /// Adopts the host link named for `id` if it is the original's link for it (see [`crate::original`]).
    async fn adopt_originals_link(
        &self,
        turn: &WriteTurn<'_>,
        cfg: &ResourceConfig,
        id: &str,
    ) -> bool {
        let handle = turn.handle();
        let name = macvtap_link::host_link_name(id);
        let (Ok(Some(link)), Ok(lower)) = (
            netmon::read_link(handle, &name).await,
            netmon::read_link(handle, &cfg.lower_device).await,
        ) else {
            return false;
        };
        if !original::is_originals_link(&link, id, lower.as_ref()) {
            return false;
        }
        match original::adopt(turn, &link, id).await {
            Ok(()) => {
                self.metrics.links_adopted.inc();
                true
            }
            Err(e) => {
                tracing::warn!(resource = %cfg.name, device = %id, "adopting the original's link: {e}");
                false
            }
        }
    }
}

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
    let link = links.get(&macvtap_link::host_link_name(id));
    match link {
        Some(l)
            if crate::cleanup::our_device_id(l) != Some(id)
                && !original::is_originals_link(l, id, links.get(&cfg.lower_device)) =>
        {
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
    use crate::netmon::HostLink;
    use crate::netmon::tests::link;
    use std::collections::BTreeMap;

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
        let macvtap = |id: &str, index: u32, alias: Option<String>| HostLink {
            index,
            name: macvtap_link::host_link_name(id),
            kind: Some("macvtap".into()),
            parent_index: Some(2),
            alias,
            ..eth1.clone()
        };
        let mut links = BTreeMap::new();
        // dpMvp0: the original's link; dpMvp1: ours, stale; dpMvp2: a foreign link with our scheme name.
        for l in [
            macvtap("dpMvp0", 10, None),
            macvtap("dpMvp1", 11, Some(macvtap_link::ownership_alias("dpMvp1"))),
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
