//! This node's allocation records and tap-index reservations (in-place attach, see [`macvtap_core::allocation`]):
//! which index `Allocate` hands out for a device, whether a tap index is some link's right now, and which records
//! and reservations cleanup may drop.
//!
//! A device keeps its index while its record lives, so a pod restarted after a node reboot gets the `/dev/tapN` the
//! kubelet checkpointed. Allocate hands out a fresh index instead when a link still has the old one (the device's
//! previous pod is still being torn down: the kernel would give the new link no `/dev/tapN`); the superseded
//! reservation is released by cleanup once its tap is gone.
//!
//! Durable state (issue 24): records and reservations are written so a crash leaves the old or the new file
//! ([`macvtap_core::durable`]). What a crash (or an older agent) can still leave is repaired, never fatal, and
//! said (a warning and `macvtap_agent_state_repaired_total{what}`, see [`Repair`]): at start, temporary files are
//! swept and reservations without an owner reclaimed; a record that cannot be parsed is re-derived (lower device
//! and mode from the configuration, tap index from the reservation that names the device) wherever it is read
//! (Allocate, PreStartContainer, each cleanup pass), or removed when nothing names its index.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use macvtap_core::AttachClaim;
use macvtap_core::ResourceConfig;
use macvtap_core::allocation::{self, AllocationError, AllocationRecord, node_dir};
use macvtap_core::attach_claim;
use macvtap_core::reservation::{TapReservations, owner};
use macvtap_link::tap::{TapDevice, TapScanner};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::WhatLabel;
use crate::tap_index_key::TapIndexKey;

/// Where the records and reservations live.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// `<state>`: records under `nodes/<node>/`.
    pub state_dir: PathBuf,
    /// The kernel-wide reservations; `<state>/taps` when `None`.
    pub taps_dir: Option<PathBuf>,
}

impl Default for StateDirs {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(allocation::DEFAULT_STATE_DIR),
            taps_dir: None,
        }
    }
}

/// The node name records are kept under: `name`, or the machine's hostname when none is configured (an agent run
/// by hand with `DP_MACVTAP_CONF`); `install-cni` picks the same.
pub fn node_or_hostname(name: &str) -> String {
    if !name.is_empty() {
        return name.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// One reservation of this node as cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub index: u32,
    pub device_id: String,
    /// Whether it is the index the device's record names (else a superseded one).
    pub current: bool,
}

/// The records and reservations of one node.
#[derive(Debug)]
pub struct NodeRecords {
    node: String,
    node_dir: PathBuf,
    reservations: TapReservations,
    /// Orders each device's candidate indices.
    key: TapIndexKey,
    /// Over `/sys` (tests point it elsewhere).
    taps: Mutex<TapScanner>,
    /// This boot's ID: a CNI's attach claim of another boot proves nothing.
    boot_id: String,
    repaired: Family<WhatLabel, Counter>,
}

impl NodeRecords {
    /// The records of `node`, its state directory repaired of what a crash left (nothing of this node is being
    /// written yet): `repaired` counts what was done.
    pub fn open(
        dirs: &StateDirs,
        node: &str,
        repaired: Family<WhatLabel, Counter>,
    ) -> Result<Self, AllocationError> {
        Self::open_over(dirs, node, repaired, PathBuf::from("/sys"))
    }

    fn open_over(
        dirs: &StateDirs,
        node: &str,
        repaired: Family<WhatLabel, Counter>,
        sys: PathBuf,
    ) -> Result<Self, AllocationError> {
        let node_dir = node_dir(&dirs.state_dir, node)?;
        let (key, origin) =
            TapIndexKey::load(&dirs.state_dir).map_err(|source| AllocationError::Io {
                path: dirs.state_dir.join(crate::tap_index_key::FILE),
                source,
            })?;
        let records = Self {
            node: node.to_string(),
            node_dir,
            reservations: match &dirs.taps_dir {
                Some(d) => TapReservations::in_dir(d.clone()),
                None => TapReservations::new(&dirs.state_dir),
            },
            key,
            taps: Mutex::new(TapScanner::new(sys)),
            boot_id: attach_claim::boot_id().map_err(|source| AllocationError::Io {
                path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
                source,
            })?,
            repaired,
        };
        records.start_up(origin);
        Ok(records)
    }

    /// The candidate seed of `device_id` of this node (keyed: see [`crate::tap_index_key`]).
    pub fn seed(&self, device_id: &str) -> u64 {
        self.key.seed(&owner(&self.node, device_id))
    }

    /// The directory the CNI reads this node's records from.
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// Every macvtap tap on the machine (any netns).
    pub fn taps(&self) -> io::Result<Vec<TapDevice>> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).scan()
    }

    /// The device number of the tap of host link `name` at ifindex `index`, if this (the host) netns has it.
    pub fn host_tap_device(&self, name: &str, index: u32) -> io::Result<Option<(u64, u64)>> {
        let sys = self
            .taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sys()
            .to_path_buf();
        macvtap_link::tap::tap_device_in_netns(&sys, name, index)
    }

    /// The CNI's attach claim for `device_id` (see [`crate::tap_owner`]).
    pub fn claim(&self, device_id: &str) -> Result<Option<AttachClaim>, AllocationError> {
        AttachClaim::read(&self.node_dir, device_id)
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The tap indices some macvtap has now.
    pub fn taps_in_use(&self) -> io::Result<BTreeSet<u32>> {
        Ok(self.taps()?.into_iter().map(|t| t.index).collect())
    }

    pub fn record(&self, device_id: &str) -> Result<Option<AllocationRecord>, AllocationError> {
        AllocationRecord::read(&self.node_dir, device_id)
    }

    /// The tap index of `device_id` for a new pod, its record written: the index it has if it is still reserved
    /// for it and no link has it, else a fresh reservation.
    pub fn assign(&self, cfg: &ResourceConfig, device_id: &str) -> Result<u32, AllocationError> {
        let owner = owner(&self.node, device_id);
        let in_use = self.taps_in_use().map_err(|source| AllocationError::Io {
            path: PathBuf::from("/sys/dev/char"),
            source,
        })?;
        let wanted = AllocationRecord {
            resource: cfg.name.clone(),
            lower_device: cfg.lower_device.clone(),
            mode: cfg.mode,
            tap_index: 0,
        };
        let kept = match self.record_for(cfg, device_id)? {
            Some(r)
                if !in_use.contains(&r.tap_index)
                    && self.reservations.owner_of(r.tap_index)?.as_deref()
                        == Some(owner.as_str()) =>
            {
                Some(r)
            }
            _ => None,
        };
        let index = match kept {
            Some(r)
                if r == (AllocationRecord {
                    tap_index: r.tap_index,
                    ..wanted.clone()
                }) =>
            {
                return Ok(r.tap_index);
            }
            Some(r) => r.tap_index,
            None => self
                .reservations
                .reserve(&owner, self.seed(device_id), |i| in_use.contains(&i))?,
        };
        let record = AllocationRecord {
            tap_index: index,
            ..wanted
        };
        if let Err(e) = record.write(&self.node_dir, device_id) {
            let _ = self.reservations.release(index, &owner);
            return Err(e);
        }
        Ok(index)
    }

    /// This node's reservations, each marked current or superseded by its device's record.
    pub fn reservations(&self) -> Result<Vec<Reservation>, AllocationError> {
        let mut out = Vec::new();
        for (index, device_id) in self.reservations.of_node(&self.node)? {
            // A record that cannot be read keeps its reservations (current) until it is repaired.
            let current = match self.record(&device_id) {
                Ok(Some(r)) => r.tap_index == index,
                Ok(None) => false,
                Err(_) => true,
            };
            out.push(Reservation {
                index,
                device_id,
                current,
            });
        }
        // A record whose reservation is gone (removed by hand, or by an agent that took its owner for its own) is
        // listed as current all the same, so cleanup drops it once no pod holds the device; releasing the missing
        // reservation is then a no-op.
        for device_id in AllocationRecord::device_ids(&self.node_dir)? {
            if let Ok(Some(r)) = self.record(&device_id)
                && !out.iter().any(|o| o.current && o.device_id == device_id)
            {
                out.push(Reservation {
                    index: r.tap_index,
                    device_id,
                    current: true,
                });
            }
        }
        Ok(out)
    }

    /// Drop a reservation; for the current one also the record (first: a record never names an index nobody
    /// reserved).
    pub fn forget(&self, r: &Reservation) -> Result<(), AllocationError> {
        if r.current {
            AttachClaim::remove(&self.node_dir, &r.device_id)?;
            AllocationRecord::remove(&self.node_dir, &r.device_id)?;
        }
        self.reservations
            .release(r.index, &owner(&self.node, &r.device_id))?;
        Ok(())
    }
}

mod repair;
#[cfg(test)]
mod tests;

pub use repair::{Repair, UNOWNED_MIN_AGE};
