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

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use macvtap_api::ResourceConfig;
use macvtap_core::AttachClaim;
use macvtap_core::MacvtapMode;
use macvtap_core::allocation::{self, AllocationError, AllocationRecord, node_dir};
use macvtap_core::attach_claim::{self, claims_dir};
use macvtap_core::device::slot_of;
use macvtap_core::durable;
use macvtap_core::reservation::{TapReservations, owner};
use macvtap_link::tap::{TapDevice, TapScanner};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::WhatLabel;
use crate::tap_index_key::{KeyOrigin, TapIndexKey};

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
    /// The tap-index key was missing-but-expected, garbage or readable by others: replaced.
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
        match origin {
            KeyOrigin::Read => {}
            KeyOrigin::Created => tracing::info!("tap-index key created in the state directory"),
            KeyOrigin::Replaced(why) => records.repaired(
                Repair::TapIndexKeyReplaced,
                format_args!("the tap-index key was unusable ({why}): a new one orders tap indices from now on"),
            ),
        }
        let claims = claims_dir(&records.node_dir);
        let swept = durable::sweep_temps(&records.node_dir, ".")
            .and_then(|mut names| {
                names.extend(durable::sweep_temps(&claims, ".")?);
                Ok(names)
            })
            .map_err(|e| AllocationError::Io {
                path: records.node_dir.clone(),
                source: e,
            })
            .and_then(|mut names| {
                names.extend(records.reservations.sweep(node)?);
                Ok(names)
            });
        match swept {
            Ok(names) => {
                for name in names {
                    records.repaired(
                        Repair::TempFileRemoved,
                        format_args!("removed {name}, left by a write a crash cut short"),
                    );
                }
            }
            Err(e) => tracing::warn!("state directory: sweeping temporary files: {e}"),
        }
        records.reclaim_unowned();
        Ok(records)
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

    /// The tap index of `device_id` for a new pod, its record written: the index it has if it is still reserved
    /// for it and no link has it, else a fresh reservation.
    pub fn assign(
        &self,
        cfg: &ResourceConfig,
        device_id: &str,
        mode: MacvtapMode,
    ) -> Result<u32, AllocationError> {
        let owner = owner(&self.node, device_id);
        let in_use = self.taps_in_use().map_err(|source| AllocationError::Io {
            path: PathBuf::from("/sys/dev/char"),
            source,
        })?;
        let wanted = AllocationRecord {
            resource: cfg.name.clone(),
            lower_device: cfg.lower_device.clone(),
            mode,
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

#[cfg(test)]
mod tests {
    use super::*;
    use macvtap_core::allocation::is_tap_index;

    fn cfg(lower: &str) -> ResourceConfig {
        ResourceConfig {
            name: "dp".into(),
            lower_device: lower.into(),
            mode: Default::default(),
            capacity: 4,
            pool: None,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("sys/dev/char")).unwrap();
            Self { dir }
        }
        fn records(&self, node: &str) -> NodeRecords {
            self.records_in(node, "state").0
        }
        /// The records of `node` over state directory `state` (the reservations shared), and its repair counter.
        fn records_in(&self, node: &str, state: &str) -> (NodeRecords, Family<WhatLabel, Counter>) {
            let dirs = StateDirs {
                state_dir: self.dir.path().join(state),
                taps_dir: Some(self.dir.path().join("taps")),
            };
            let repaired = Family::default();
            let r =
                NodeRecords::open_over(&dirs, node, repaired.clone(), self.dir.path().join("sys"))
                    .unwrap();
            (r, repaired)
        }
        /// A macvtap somewhere on the machine has tap `index`.
        fn tap(&self, minor: u32, index: u32) {
            std::os::unix::fs::symlink(
                format!("../../devices/virtual/net/net1/macvtap/tap{index}"),
                self.dir.path().join(format!("sys/dev/char/246:{minor}")),
            )
            .unwrap();
        }
        fn untap(&self, minor: u32) {
            std::fs::remove_file(self.dir.path().join(format!("sys/dev/char/246:{minor}")))
                .unwrap();
        }
    }

    #[test]
    fn a_device_keeps_its_index_until_a_link_still_has_it() {
        let f = Fixture::new();
        let a = f.records("node-a");
        let n = a
            .assign(&cfg("eth1"), "dpMvp0", MacvtapMode::Bridge)
            .unwrap();
        assert!(is_tap_index(n));
        assert_eq!(a.record("dpMvp0").unwrap().unwrap().tap_index, n);
        // Allocated again (a new pod) while no link has it: same index.
        assert_eq!(
            a.assign(&cfg("eth1"), "dpMvp0", MacvtapMode::Bridge)
                .unwrap(),
            n
        );
        // The pool moved to another lower device: same index, the record follows.
        assert_eq!(
            a.assign(&cfg("eth2"), "dpMvp0", MacvtapMode::Vepa).unwrap(),
            n
        );
        let r = a.record("dpMvp0").unwrap().unwrap();
        assert_eq!(
            (r.lower_device.as_str(), r.mode),
            ("eth2", MacvtapMode::Vepa)
        );
        // The previous pod's link still has tap n: a fresh index, the old reservation kept until it is gone.
        f.tap(1, n);
        let m = a.assign(&cfg("eth2"), "dpMvp0", MacvtapMode::Vepa).unwrap();
        assert_ne!(m, n);
        let res = a.reservations().unwrap();
        assert_eq!(res.len(), 2);
        let superseded = res.iter().find(|r| r.index == n).unwrap();
        assert!(!superseded.current);
        assert!(res.iter().any(|r| r.index == m && r.current));
        f.untap(1);
        a.forget(superseded).unwrap();
        assert_eq!(
            a.record("dpMvp0").unwrap().unwrap().tap_index,
            m,
            "record kept"
        );
        let current = a.reservations().unwrap().pop().unwrap();
        a.forget(&current).unwrap();
        assert!(a.record("dpMvp0").unwrap().is_none());
        assert!(a.reservations().unwrap().is_empty());
    }

    #[test]
    fn nodes_on_one_kernel_never_share_an_index() {
        let f = Fixture::new();
        let (a, b) = (f.records("node-a"), f.records("node-b"));
        let mut seen = BTreeSet::new();
        for i in 0..20 {
            let id = format!("dpMvp{i}");
            assert!(seen.insert(a.assign(&cfg("eth1"), &id, MacvtapMode::Bridge).unwrap()));
            assert!(seen.insert(b.assign(&cfg("eth1"), &id, MacvtapMode::Bridge).unwrap()));
        }
        // A tap some other link has is never handed out.
        let c = f.records("node-c");
        let first = TapReservations::candidates(c.seed("dpMvp0"))
            .next()
            .unwrap();
        f.tap(7, first);
        assert_ne!(
            c.assign(&cfg("eth1"), "dpMvp0", MacvtapMode::Bridge)
                .unwrap(),
            first
        );
        // Each node lists only its own reservations.
        assert_eq!(a.reservations().unwrap().len(), 20);
        assert!(a.reservations().unwrap().iter().all(|r| r.current));
    }

    fn count(repaired: &Family<WhatLabel, Counter>, what: Repair) -> u64 {
        repaired
            .get_or_create(&WhatLabel { what: what.label() })
            .get()
    }

    #[test]
    fn a_bad_record_is_rederived_from_the_config_and_its_reservation_or_removed() {
        let f = Fixture::new();
        let (a, repaired) = f.records_in("node-a", "state");
        let n = a
            .assign(&cfg("eth1"), "dpMvp1", MacvtapMode::Bridge)
            .unwrap();
        // What a power loss left of a record written without fsync: empty; then garbage.
        for content in ["", "{not json"] {
            std::fs::write(a.node_dir().join("dpMvp1.json"), content).unwrap();
            assert!(matches!(
                a.record("dpMvp1"),
                Err(AllocationError::BadRecord { .. })
            ));
            let mut vepa = cfg("eth2");
            vepa.mode = MacvtapMode::Vepa;
            let r = a.record_for(&vepa, "dpMvp1").unwrap().unwrap();
            assert_eq!(
                (r.lower_device.as_str(), r.mode, r.tap_index),
                ("eth2", MacvtapMode::Vepa, n),
                "re-derived: the configuration's lower device and mode, the reservation's index"
            );
            assert_eq!(a.record("dpMvp1").unwrap().unwrap(), r, "and written");
        }
        assert_eq!(count(&repaired, Repair::RecordRederived), 2);
        // Allocate over a bad record keeps the device's index.
        std::fs::write(a.node_dir().join("dpMvp1.json"), "").unwrap();
        assert_eq!(
            a.assign(&cfg("eth1"), "dpMvp1", MacvtapMode::Bridge)
                .unwrap(),
            n
        );
        // The cleanup pass: no resource serves it (before the config is known: left alone), no reservation names it.
        std::fs::write(a.node_dir().join("dpMvp1.json"), "").unwrap();
        std::fs::write(a.node_dir().join("otherMvp0.json"), "garbage").unwrap();
        std::fs::write(a.node_dir().join("dpMvp3.json"), "").unwrap();
        a.repair_records(&BTreeMap::new());
        assert!(
            a.record("dpMvp1").is_err(),
            "nothing done without a configuration"
        );
        a.repair_records(&[("dp".to_string(), cfg("eth1"))].into());
        assert_eq!(a.record("dpMvp1").unwrap().unwrap().tap_index, n);
        assert_eq!(a.record("otherMvp0").unwrap(), None);
        assert_eq!(a.record("dpMvp3").unwrap(), None);
        assert_eq!(count(&repaired, Repair::RecordRemoved), 2);
        assert!(NodeRecords::open(&StateDirs::default(), "../x", Family::default()).is_err());
    }

    #[test]
    fn start_up_sweeps_crash_leftovers_and_reclaims_unowned_reservations() {
        let f = Fixture::new();
        let a = f.records("node-a");
        let n = a
            .assign(&cfg("eth1"), "dpMvp0", MacvtapMode::Bridge)
            .unwrap();
        let taps = f.dir.path().join("taps");
        // A record and reservations being written when the node lost power; another node's write in flight.
        std::fs::write(a.node_dir().join(".dpMvp0.json.tmp"), "{\"res").unwrap();
        std::fs::write(taps.join(".node-a@dpMvp1.tmp"), "node-a/dp").unwrap();
        std::fs::write(taps.join(".node-b@dpMvp1.tmp"), "node-b/dpMvp1").unwrap();
        // Reservations an older agent created without writing the owner, one with a tap some link has.
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        let (empty, tapped) = (
            allocation::TAP_INDEX_FIRST + 1,
            allocation::TAP_INDEX_FIRST + 2,
        );
        for i in [empty, tapped] {
            let f = std::fs::File::create(taps.join(i.to_string())).unwrap();
            f.set_modified(old).unwrap();
        }
        f.tap(1, tapped);
        drop(a);
        let (a, repaired) = f.records_in("node-a", "state");
        assert_eq!(count(&repaired, Repair::TempFileRemoved), 2);
        assert_eq!(count(&repaired, Repair::UnownedReservationReclaimed), 1);
        assert!(!a.node_dir().join(".dpMvp0.json.tmp").exists());
        assert!(!taps.join(".node-a@dpMvp1.tmp").exists());
        assert!(taps.join(".node-b@dpMvp1.tmp").exists(), "node-b's own");
        assert!(!taps.join(empty.to_string()).exists());
        assert!(
            taps.join(tapped.to_string()).exists(),
            "its tap is some link's"
        );
        assert_eq!(
            a.record("dpMvp0").unwrap().unwrap().tap_index,
            n,
            "the record stays"
        );
        assert_eq!(count(&repaired, Repair::TapIndexKeyReplaced), 0);
    }

    #[test]
    fn nodes_with_their_own_keys_order_indices_differently() {
        let f = Fixture::new();
        let (a, _) = f.records_in("node-a", "state-a");
        let (b, _) = f.records_in("node-a", "state-b");
        let ids: Vec<String> = (0..8).map(|i| format!("dpMvp{i}")).collect();
        let seeds = |r: &NodeRecords| ids.iter().map(|id| r.seed(id)).collect::<Vec<_>>();
        assert_ne!(seeds(&a), seeds(&b), "one owner name, two keys");
        // The same agent restarted keeps its order.
        let before = seeds(&a);
        drop(a);
        assert_eq!(seeds(&f.records_in("node-a", "state-a").0), before);
    }
}
