//! Repairs of what a crash (or an older agent) left in the state directory: never fatal, always said (a warning
//! and `macvtap_agent_state_repaired_total{what}`). At start: temporary files swept, reservations without an owner
//! reclaimed, pods attached before attach claims existed claimed once. Wherever a record is read: one that cannot
//! be parsed is re-derived (lower device and mode from the configuration, tap index from the reservation that
//! names the device), or removed when nothing names its index.

use std::collections::BTreeMap;

use macvtap_core::AttachClaim;
use macvtap_core::ResourceConfig;
use macvtap_core::allocation::{AllocationError, AllocationRecord};
use macvtap_core::attach_claim::claims_dir;
use macvtap_core::device::slot_of;
use macvtap_core::durable;
use macvtap_link::tap::TapDevice;
use std::time::Duration;

use super::NodeRecords;
use crate::metrics::WhatLabel;
use crate::tap_index_key::KeyOrigin;

/// How long a reservation file without an owner is left alone before it is reclaimed: an agent before durable
/// reservations created the file and wrote the owner right after.
pub const UNOWNED_MIN_AGE: Duration = Duration::from_secs(60);

/// What was repaired in the state directory (the `what` label of `macvtap_agent_state_repaired_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// A temporary file a crash left (a record, reservation or key being written) removed.
    TempFileRemoved,
    /// A reservation with no or a garbage owner removed: its index is free again.
    UnownedReservationReclaimed,
    /// A record that could not be parsed written again from the configuration and the device's reservation.
    RecordRederived,
    /// A record that could not be parsed, with no reservation naming the device or no resource serving it, removed
    /// (the next Allocate writes a new one).
    RecordRemoved,
    /// The tap-index key was garbage, the wrong size or readable by others: replaced.
    TapIndexKeyReplaced,
}

impl Repair {
    pub fn label(self) -> &'static str {
        match self {
            Repair::TempFileRemoved => "temp_file_removed",
            Repair::UnownedReservationReclaimed => "unowned_reservation_reclaimed",
            Repair::RecordRederived => "record_rederived",
            Repair::RecordRemoved => "record_removed",
            Repair::TapIndexKeyReplaced => "tap_index_key_replaced",
        }
    }
}

impl NodeRecords {
    /// What runs once, when the records are opened (nothing of this node is being written yet).
    pub(super) fn start_up(&self, origin: KeyOrigin) {
        match origin {
            KeyOrigin::Read => {}
            KeyOrigin::Created => tracing::info!("tap-index key created in the state directory"),
            KeyOrigin::Replaced(why) => self.repaired(
                Repair::TapIndexKeyReplaced,
                format_args!("the tap-index key was unusable ({why}): a new one orders tap indices from now on"),
            ),
        }
        let claims = claims_dir(&self.node_dir);
        let swept = durable::sweep_temps(&self.node_dir, ".")
            .and_then(|mut names| {
                names.extend(durable::sweep_temps(&claims, ".")?);
                Ok(names)
            })
            .map_err(|e| AllocationError::Io {
                path: self.node_dir.clone(),
                source: e,
            })
            .and_then(|mut names| {
                names.extend(self.reservations.sweep(&self.node)?);
                Ok(names)
            });
        match swept {
            Ok(names) => {
                for name in names {
                    self.repaired(
                        Repair::TempFileRemoved,
                        format_args!("removed {name}, left by a write a crash cut short"),
                    );
                }
            }
            Err(e) => tracing::warn!("state directory: sweeping temporary files: {e}"),
        }
        self.reclaim_unowned();
        if !claims.exists() {
            self.claim_taps_attached_before_claims();
            if let Err(e) = std::fs::create_dir_all(&claims) {
                tracing::warn!("state directory: creating {}: {e}", claims.display());
            }
        }
    }

    /// The first start of an agent with attach claims on this node (no claims directory yet): the pods the CNI
    /// attached in place before it wrote claims hold links without one, and PreStartContainer would refuse their
    /// next container start. Each record whose index exactly one tap has, in another netns, gets a claim for that
    /// tap now (trusted as the CNI's: a squatter there would have made that CNI's ADD fail its tap proof). Once.
    fn claim_taps_attached_before_claims(&self) {
        let (Ok(ids), Ok(taps)) = (AllocationRecord::device_ids(&self.node_dir), self.taps())
        else {
            return;
        };
        for id in ids {
            let Ok(Some(r)) = self.record(&id) else {
                continue;
            };
            let at: Vec<&TapDevice> = taps.iter().filter(|t| t.index == r.tap_index).collect();
            let [t] = at.as_slice() else {
                continue;
            };
            if self
                .host_tap_device(&t.ifname, t.index)
                .is_ok_and(|d| d == Some(t.device))
            {
                continue;
            }
            let claim = AttachClaim {
                tap_index: t.index,
                ifname: t.ifname.clone(),
                major: t.device.0,
                minor: t.device.1,
                sysfs_node: t.sysfs_node,
                boot_id: self.boot_id.clone(),
            };
            match claim.write(&self.node_dir, &id) {
                Ok(_) => tracing::info!(device = %id, tap_index = t.index, link = %t.ifname,
                    "attach claim written for a link the CNI made before claims existed"),
                Err(e) => tracing::warn!(device = %id, "writing an attach claim: {e}"),
            }
        }
    }

    fn repaired(&self, what: Repair, detail: std::fmt::Arguments) {
        tracing::warn!(what = what.label(), node = %self.node, "state directory repaired: {detail}");
        self.repaired
            .get_or_create(&WhatLabel { what: what.label() })
            .inc();
    }

    /// Reclaims the reservations without an owner (see [`TapReservations::reclaim_unowned`]); best effort.
    pub fn reclaim_unowned(&self) {
        let tapped = match self.taps_in_use() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("state directory: listing taps before reclaiming reservations: {e}");
                return;
            }
        };
        match self
            .reservations
            .reclaim_unowned(UNOWNED_MIN_AGE, |i| tapped.contains(&i))
        {
            Ok(indices) => {
                for index in indices {
                    self.repaired(
                        Repair::UnownedReservationReclaimed,
                        format_args!("reservation of tap index {index} had no owner: removed"),
                    );
                }
            }
            Err(e) => tracing::warn!("state directory: reclaiming reservations: {e}"),
        }
    }

    /// The record of `device_id` of resource `cfg`, re-derived (or removed) when its file cannot be parsed.
    pub fn record_for(
        &self,
        cfg: &ResourceConfig,
        device_id: &str,
    ) -> Result<Option<AllocationRecord>, AllocationError> {
        match self.record(device_id) {
            Err(AllocationError::BadRecord { why, .. }) => {
                self.rederive(Some(cfg), device_id, &why)
            }
            other => other,
        }
    }

    /// Every record of this node that cannot be parsed, re-derived or removed; `served` are the resources served
    /// now (nothing is done before the configuration is known). Best effort.
    pub fn repair_records(&self, served: &BTreeMap<String, ResourceConfig>) {
        if served.is_empty() {
            return;
        }
        let ids = match AllocationRecord::device_ids(&self.node_dir) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("state directory: listing records: {e}");
                return;
            }
        };
        for id in ids {
            if let Err(AllocationError::BadRecord { why, .. }) = self.record(&id) {
                let cfg = served.values().find(|c| slot_of(&c.name, &id).is_some());
                if let Err(e) = self.rederive(cfg, &id, &why) {
                    tracing::warn!(device = %id, "state directory: repairing the record: {e}");
                }
            }
        }
    }

    /// The record of `device_id`, unparseable (`why`), written again from `cfg` and the newest reservation that
    /// names the device (the current one: Allocate reserves a fresh index last), or removed without either.
    fn rederive(
        &self,
        cfg: Option<&ResourceConfig>,
        device_id: &str,
        why: &str,
    ) -> Result<Option<AllocationRecord>, AllocationError> {
        let newest = self
            .reservations
            .of_node(&self.node)?
            .into_iter()
            .filter(|(_, id)| id == device_id)
            .map(|(index, _)| index)
            .max_by_key(|index| (self.reservations.made_at(*index), *index));
        match (cfg, newest) {
            (Some(cfg), Some(index)) => {
                let record = AllocationRecord {
                    resource: cfg.name.clone(),
                    lower_device: cfg.lower_device.clone(),
                    mode: cfg.mode,
                    tap_index: index,
                };
                record.write(&self.node_dir, device_id)?;
                self.repaired(
                    Repair::RecordRederived,
                    format_args!(
                        "the record of {device_id} could not be read ({why}): written again from resource {} \
                         (lower device {}, mode {}) and its reservation of tap index {index}",
                        cfg.name, cfg.lower_device, cfg.mode
                    ),
                );
                Ok(Some(record))
            }
            _ => {
                AllocationRecord::remove(&self.node_dir, device_id)?;
                let missing = if cfg.is_none() {
                    "no resource served serves the device"
                } else {
                    "no reservation names the device"
                };
                self.repaired(
                    Repair::RecordRemoved,
                    format_args!(
                        "the record of {device_id} could not be read ({why}) and {missing}: removed, the next \
                         Allocate writes a new one"
                    ),
                );
                Ok(None)
            }
        }
    }
}
