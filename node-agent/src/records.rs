//! This node's allocation records and tap-index reservations (in-place attach, see [`macvtap_core::allocation`]):
//! which index `Allocate` hands out for a device, whether a tap index is some link's right now, and which records
//! and reservations cleanup may drop.
//!
//! A device keeps its index while its record lives, so a pod restarted after a node reboot gets the `/dev/tapN` the
//! kubelet checkpointed. Allocate hands out a fresh index instead when a link still has the old one (the device's
//! previous pod is still being torn down: the kernel would give the new link no `/dev/tapN`); the superseded
//! reservation is released by cleanup once its tap is gone.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use macvtap_api::ResourceConfig;
use macvtap_core::MacvtapMode;
use macvtap_core::allocation::{
    self, AllocationError, AllocationRecord, TapReservations, node_dir, owner,
};
use std::sync::Mutex;

use macvtap_link::tap::{TapDevice, TapScanner};

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
    /// Over `/sys` (tests point it elsewhere).
    taps: Mutex<TapScanner>,
}

impl NodeRecords {
    pub fn new(dirs: &StateDirs, node: &str) -> Result<Self, AllocationError> {
        Ok(Self {
            node: node.to_string(),
            node_dir: node_dir(&dirs.state_dir, node)?,
            reservations: match &dirs.taps_dir {
                Some(d) => TapReservations::in_dir(d.clone()),
                None => TapReservations::new(&dirs.state_dir),
            },
            taps: Mutex::new(TapScanner::new(PathBuf::from("/sys"))),
        })
    }

    /// The directory the CNI reads this node's records from.
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// Every macvtap tap on the machine (any netns).
    pub fn taps(&self) -> io::Result<Vec<TapDevice>> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).scan()
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
        let kept = match self.record(device_id) {
            Ok(Some(r))
                if !in_use.contains(&r.tap_index)
                    && self.reservations.owner_of(r.tap_index)?.as_deref()
                        == Some(owner.as_str()) =>
            {
                Some(r)
            }
            // A record that cannot be read is replaced, like a missing one.
            Ok(_) | Err(AllocationError::BadRecord { .. }) => None,
            Err(e) => return Err(e),
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
                .reserve_for(&owner, |i| in_use.contains(&i))?,
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
            let current = matches!(self.record(&device_id), Ok(Some(r)) if r.tap_index == index);
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
            AllocationRecord::remove(&self.node_dir, &r.device_id)?;
        }
        self.reservations
            .release(r.index, &owner(&self.node, &r.device_id))?;
        Ok(())
    }

    #[cfg(test)]
    fn with_sys(mut self, sys: PathBuf) -> Self {
        self.taps = Mutex::new(TapScanner::new(sys));
        self
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
            let dirs = StateDirs {
                state_dir: self.dir.path().join("state"),
                taps_dir: Some(self.dir.path().join("taps")),
            };
            NodeRecords::new(&dirs, node)
                .unwrap()
                .with_sys(self.dir.path().join("sys"))
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
        let first = TapReservations::candidates(TapReservations::seed("node-c/dpMvp0"))
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

    #[test]
    fn a_bad_record_is_replaced() {
        let f = Fixture::new();
        let a = f.records("node-a");
        std::fs::create_dir_all(a.node_dir()).unwrap();
        std::fs::write(a.node_dir().join("dpMvp1.json"), "{not json").unwrap();
        let n = a
            .assign(&cfg("eth1"), "dpMvp1", MacvtapMode::Bridge)
            .unwrap();
        assert_eq!(a.record("dpMvp1").unwrap().unwrap().tap_index, n);
        assert!(NodeRecords::new(&StateDirs::default(), "../x").is_err());
    }
}
