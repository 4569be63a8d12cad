//! Records, reservations, repairs and claims over a temporary state directory and a fake `/sys/dev/char`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use macvtap_core::MacvtapMode;
use macvtap_core::allocation::is_tap_index;
use macvtap_core::attach_claim::claims_dir;

fn cfg(lower: &str, mode: MacvtapMode) -> ResourceConfig {
    ResourceConfig {
        name: "dp".into(),
        lower_device: lower.into(),
        mode,
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
        let r = NodeRecords::open_over(&dirs, node, repaired.clone(), self.dir.path().join("sys"))
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
        std::fs::remove_file(self.dir.path().join(format!("sys/dev/char/246:{minor}"))).unwrap();
    }
}

#[test]
fn a_device_keeps_its_index_until_a_link_still_has_it() {
    let f = Fixture::new();
    let a = f.records("node-a");
    let n = a
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
        .unwrap();
    assert!(is_tap_index(n));
    assert_eq!(a.record("dpMvp0").unwrap().unwrap().tap_index, n);
    // Allocated again (a new pod) while no link has it: same index.
    assert_eq!(
        a.assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
            .unwrap(),
        n
    );
    // The pool moved to another lower device: same index, the record follows.
    assert_eq!(
        a.assign(&cfg("eth2", MacvtapMode::Vepa), "dpMvp0").unwrap(),
        n
    );
    let r = a.record("dpMvp0").unwrap().unwrap();
    assert_eq!(
        (r.lower_device.as_str(), r.mode),
        ("eth2", MacvtapMode::Vepa)
    );
    // The previous pod's link still has tap n: a fresh index, the old reservation kept until it is gone.
    f.tap(1, n);
    let m = a.assign(&cfg("eth2", MacvtapMode::Vepa), "dpMvp0").unwrap();
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
fn a_record_whose_reservation_is_gone_is_still_forgotten() {
    let f = Fixture::new();
    let a = f.records("node-a");
    let n = a
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
        .unwrap();
    std::fs::remove_file(f.dir.path().join(format!("taps/{n}"))).unwrap();
    let res = a.reservations().unwrap();
    assert_eq!(res.len(), 1);
    assert!(res[0].current && res[0].index == n && res[0].device_id == "dpMvp0");
    a.forget(&res[0]).unwrap();
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
        assert!(seen.insert(a.assign(&cfg("eth1", MacvtapMode::Bridge), &id).unwrap()));
        assert!(seen.insert(b.assign(&cfg("eth1", MacvtapMode::Bridge), &id).unwrap()));
    }
    // A tap some other link has is never handed out.
    let c = f.records("node-c");
    let first = TapReservations::candidates(c.seed("dpMvp0"))
        .next()
        .unwrap();
    f.tap(7, first);
    assert_ne!(
        c.assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
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
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp1")
        .unwrap();
    // What a power loss left of a record written without fsync: empty; then garbage.
    for content in ["", "{not json"] {
        std::fs::write(a.node_dir().join("dpMvp1.json"), content).unwrap();
        assert!(matches!(
            a.record("dpMvp1"),
            Err(AllocationError::BadRecord { .. })
        ));
        let vepa = cfg("eth2", MacvtapMode::Vepa);
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
        a.assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp1")
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
    a.repair_records(&[("dp".to_string(), cfg("eth1", MacvtapMode::Bridge))].into());
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
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
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
fn links_attached_before_claims_are_claimed_once() {
    let f = Fixture::new();
    let a = f.records("node-a");
    let n = a
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp0")
        .unwrap();
    let m = a
        .assign(&cfg("eth1", MacvtapMode::Bridge), "dpMvp1")
        .unwrap();
    // Already started once with claims: nothing is claimed on its behalf.
    f.tap(5, n);
    drop(a);
    let a = f.records("node-a");
    assert_eq!(a.claim("dpMvp0").unwrap(), None);
    // An agent before claims: no claims directory. Its pod's link (dpMvp0's index, in a pod) is claimed; an
    // index two links have (dpMvp1's) is not.
    std::fs::remove_dir(claims_dir(a.node_dir())).unwrap();
    f.tap(6, m);
    f.tap(7, m);
    drop(a);
    let a = f.records("node-a");
    let c = a.claim("dpMvp0").unwrap().expect("claimed");
    assert_eq!(
        (c.tap_index, c.ifname.as_str(), c.major, c.minor),
        (n, "net1", 246, 5)
    );
    assert_eq!(c.boot_id, a.boot_id());
    assert_eq!(a.claim("dpMvp1").unwrap(), None);
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
