//! Allocation: what Allocate does for one device ID, and what PreStartContainer does (the host link for a pod
//! that has no network of ours; no tap handed over that is not the device's). Which slots GetPreferredAllocation
//! offers first is [`crate::preferred`].
//!
//! In-place attach (who does what): Allocate creates no link. It removes a stale host link of the device (a
//! device-plugin-only pod's, or the original macvtap-cni's, adopted first, see [`crate::original`]), assigns the
//! device its tap index `N` and writes the allocation record ([`crate::records`]), and answers `/dev/tapN`. The
//! CNI's ADD, in the pod's sandbox, creates the macvtap right inside the pod's netns with index `N`. The kubelet
//! calls PreStartContainer after the sandbox exists, before each container starts: if no link has tap `N` by then
//! (the pod has no network of ours), the agent creates the host link at index `N` so `/dev/tapN` is there when the
//! runtime makes the container's device node. Host links change only in the writer's turn ([`LinkWriter`]), as
//! cleanup's do. Every Allocate is noted in [`RecentAllocations`] ([`crate::recent`]), which cleanup's grace period
//! reads; the original's links are adopted by [`original::adopt_if_originals`], as cleanup adopts them.

use std::sync::Arc;
use std::time::Instant;

use macvtap_core::ResourceConfig;
use macvtap_core::device::{host_link_name, released_original_link_name, slot_of};
use tokio::sync::watch;
use tonic::Status;

use crate::link_writer::{LinkWriter, WriteTurn};
use crate::metrics::Metrics;
use crate::netmon::LinkSnapshot;
use crate::original::{self, Slot};
use crate::recent::RecentAllocations;
use crate::records::NodeRecords;
use crate::tap_owner::{self, OwnTaps, TapOwner};
use macvtap_link::tap::TapDevice;

/// Allocate and PreStartContainer for every resource of the node: changes host links in its turn, notes each
/// allocation.
#[derive(Clone)]
pub struct Allocator {
    pub writer: Arc<LinkWriter>,
    /// The link monitor's table: whether the lower device exists, without asking the kernel each time.
    pub links: watch::Receiver<LinkSnapshot>,
    pub recent: RecentAllocations,
    pub metrics: Arc<Metrics>,
    pub records: Arc<NodeRecords>,
}

fn refuse_unknown(cfg: &ResourceConfig, id: &str) -> Result<(), Status> {
    match slot_of(&cfg.name, id) {
        Some(slot) if slot < cfg.capacity => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "device {id:?} is not one of resource {}'s {} devices",
            cfg.name, cfg.capacity
        ))),
    }
}

fn internal(cfg: &ResourceConfig, id: &str, what: &str, e: &dyn std::fmt::Display) -> Status {
    Status::internal(format!("resource {}, device {id}: {what}: {e}", cfg.name))
}

fn lower_missing(cfg: &ResourceConfig) -> Status {
    Status::failed_precondition(format!(
        "resource {}: lower device {:?} does not exist on this node",
        cfg.name, cfg.lower_device
    ))
}

impl Allocator {
    /// Allocate of one device ID: its tap index assigned and recorded for the CNI; returns its `/dev/tapN`.
    pub async fn allocate(&self, cfg: &ResourceConfig, id: &str) -> Result<String, Status> {
        refuse_unknown(cfg, id)?;
        // One link change at a time (Allocate, PreStart, adoption, cleanup).
        let turn = self.writer.turn().await;
        // Noted before anything changes: cleanup must not drop what is being allocated.
        self.recent.note(id);
        let started = Instant::now();
        self.remove_stale_host_link(&turn, cfg, id).await?;
        self.check_lower_device(&turn, cfg).await?;
        let index = self.records.assign(cfg, id).map_err(|e| {
            Status::internal(format!(
                "resource {}, device {id}: recording the allocation: {e}",
                cfg.name
            ))
        })?;
        tracing::info!(resource = %cfg.name, device = %id, tap_index = index,
            elapsed_us = started.elapsed().as_micros() as u64, "allocated");
        Ok(format!("/dev/tap{index}"))
    }

    /// The lower device must exist. The monitor's table answers when it has the device; only a device it has not
    /// seen (yet: an event still in flight, e.g. a lower device made just before its pool) is looked up over
    /// netlink, so a fresh device is not refused and a missing one still is. A device deleted a moment ago may still
    /// be in the table: the CNI's ADD then fails on it, as it would had it gone right after Allocate.
    async fn check_lower_device(
        &self,
        turn: &WriteTurn<'_>,
        cfg: &ResourceConfig,
    ) -> Result<(), Status> {
        if self.links.borrow().contains_key(&cfg.lower_device) {
            return Ok(());
        }
        match turn.find_link(&cfg.lower_device).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(lower_missing(cfg)),
            Err(e) => Err(Status::internal(format!(
                "resource {}: reading lower device {}: {e}",
                cfg.name, cfg.lower_device
            ))),
        }
    }

    /// A host link of `id` left from an earlier holder goes: the kubelet allocates only devices no pod holds. The
    /// original's link for the slot is adopted first; a link with our name that is not ours blocks the slot.
    async fn remove_stale_host_link(
        &self,
        turn: &WriteTurn<'_>,
        cfg: &ResourceConfig,
        id: &str,
    ) -> Result<(), Status> {
        // v0.13.1's link for the slot (named after the device ID) is adopted first, which renames it to our name,
        // so that the deletion below finds it.
        let slot = Slot {
            device_id: id.to_string(),
            lower_device: cfg.lower_device.clone(),
        };
        if let Some(name) = released_original_link_name(id) {
            original::adopt_if_originals(turn, name, &slot, &self.metrics).await;
        }
        let mut removed = turn.delete_our_link(id).await;
        if let Err(macvtap_link::Error::NotOurs { .. }) = &removed
            && original::adopt_if_originals(turn, &host_link_name(id), &slot, &self.metrics).await
        {
            removed = turn.delete_our_link(id).await;
        }
        match removed {
            Ok(_) => Ok(()),
            Err(e @ macvtap_link::Error::NotOurs { .. }) => Err(Status::already_exists(format!(
                "resource {}, device {id}: {e}",
                cfg.name
            ))),
            Err(e) => Err(Status::internal(format!(
                "resource {}, device {id}: removing its stale host link: {e}",
                cfg.name
            ))),
        }
    }

    /// PreStartContainer of one device ID: when no link has its tap index yet (no CNI ADD made one in the pod),
    /// the host link is created at that index, so the pod's `/dev/tapN` exists. A tap at the index is accepted only
    /// when it is provably this device's ([`crate::tap_owner`]); a squatter's is refused, named, never handed over.
    /// Devices without a record (allocated by an agent before in-place attach) already have their host link.
    pub async fn pre_start(&self, cfg: &ResourceConfig, id: &str) -> Result<(), Status> {
        refuse_unknown(cfg, id)?;
        let Some(record) = self
            .records
            .record_for(cfg, id)
            .map_err(|e| internal(cfg, id, "reading its allocation record", &e))?
        else {
            return Ok(());
        };
        let index = record.tap_index;
        if self.tap_is_ours(cfg, id, index).await? {
            return Ok(());
        }
        let turn = self.writer.turn().await;
        self.recent.note(id);
        // Looked at again in our turn: another PreStart of this pod may have just made it.
        if self.tap_is_ours(cfg, id, index).await? {
            return Ok(());
        }
        let link = turn
            .create_macvtap_at(&record.lower_device, id, record.mode, Some(index))
            .await
            .map_err(|e| match e {
                macvtap_link::Error::LowerDeviceNotFound(_) => lower_missing(cfg),
                other => internal(
                    cfg,
                    id,
                    &format!(
                        "creating the {} host link at index {index} on {}",
                        record.mode, record.lower_device
                    ),
                    &other,
                ),
            })?;
        // The kernel gives the new link no /dev/tapN if another link (in another netns) took the index meanwhile.
        let taps = self
            .records
            .taps()
            .map_err(|e| internal(cfg, id, "listing taps", &e))?;
        let owners: Vec<_> = taps.iter().filter(|t| t.index == index).collect();
        if owners.len() != 1 || owners[0].ifname != link.name {
            let _ = turn.delete_link(link.index).await;
            return Err(Status::unavailable(format!(
                "resource {}, device {id}: tap index {index} is taken by another link; retry",
                cfg.name
            )));
        }
        tracing::info!(resource = %cfg.name, device = %id, link = %link.name, tap_index = index,
            "host link created for a pod without a network of ours");
        Ok(())
    }

    /// Whether tap `index` is this device's now: `Ok(false)` when no link has it (the host link is to be made),
    /// an error naming the squatter when only links that are not this device's have it.
    async fn tap_is_ours(
        &self,
        cfg: &ResourceConfig,
        id: &str,
        index: u32,
    ) -> Result<bool, Status> {
        let taps = self
            .records
            .taps()
            .map_err(|e| internal(cfg, id, "listing taps", &e))?;
        if !taps.iter().any(|t| t.index == index) {
            return Ok(false);
        }
        let host_name = host_link_name(id);
        let host_link = match self.writer.reader().find_link(&host_name).await {
            Ok(Some(l)) if l.index == index && l.is_ours(id) => self
                .records
                .host_tap_device(&host_name, index)
                .map_err(|e| internal(cfg, id, "reading its host link's tap", &e))?,
            Ok(_) => None,
            Err(e) => return Err(internal(cfg, id, "reading its host link", &e)),
        };
        let claim = self
            .records
            .claim(id)
            .map_err(|e| internal(cfg, id, "reading the CNI's attach claim", &e))?;
        let own = OwnTaps {
            host_link: host_link.map(|d| (host_name.as_str(), d)),
            claim: claim.as_ref(),
            boot_id: self.records.boot_id(),
        };
        match tap_owner::judge(&taps, index, &own) {
            TapOwner::Nobody => Ok(false),
            TapOwner::Ours { tap, others } => {
                if !others.is_empty() {
                    tracing::warn!(resource = %cfg.name, device = %id, tap_index = index, tap = %tap.ifname,
                        others = %self.describe(&others), "other links also have this device's tap index (without /dev/tapN); the device's own tap is handed over");
                }
                Ok(true)
            }
            TapOwner::Squatted(squatters) => {
                let who = self.describe(&squatters);
                tracing::warn!(resource = %cfg.name, device = %id, tap_index = index, squatters = %who,
                    "tap index squatted: /dev/tapN is not handed over");
                Err(Status::failed_precondition(format!(
                    "resource {}, device {id}: tap index {index} is held by {who}, which is not this device's \
                     (neither its host link nor the link the CNI made for it): /dev/tap{index} is not handed \
                     over; the container cannot start while that link has the index",
                    cfg.name
                )))
            }
        }
    }

    /// `link <name> (tap <major>:<minor>) in the host network namespace | in another network namespace`, joined.
    fn describe(&self, taps: &[&TapDevice]) -> String {
        taps.iter()
            .map(|t| {
                let on_host = self
                    .records
                    .host_tap_device(&t.ifname, t.index)
                    .is_ok_and(|d| d == Some(t.device));
                let (maj, min) = t.device;
                let ns = if on_host {
                    "in the host network namespace"
                } else {
                    "in another network namespace (a pod's)"
                };
                format!("link {} (tap {maj}:{min}) {ns}", t.ifname)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
