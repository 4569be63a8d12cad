//! What the agent's `Allocate` tells the CNI about one device, and the tap index it reserved for it.
//!
//! In-place attach: `Allocate` creates no link. It reserves a tap index `N` (the ifindex the pod's macvtap will have,
//! so its character device is `/dev/tapN`), answers `/dev/tapN`, and writes an [`AllocationRecord`]; the CNI's ADD
//! reads the record and creates the macvtap directly in the pod's netns with index `N`.
//!
//! Files, under one state directory on the host ([`DEFAULT_STATE_DIR`], a hostPath):
//! - `nodes/<node>/<deviceID>.json`: the record of a device of that node ([`record_path`]); per node because several
//!   nodes may share one kernel and one state directory (the e2e cluster does), and device IDs repeat across nodes;
//! - `taps/<N>`: the reservation of tap index `N` ([`TapReservations`]), created with `O_EXCL`, holding its owner
//!   `<node>/<deviceID>`. One directory per kernel: `/dev/tapN` is one name for the whole machine, and two macvtaps
//!   with one ifindex (in different netns) leave the second without a tap node, silently.
//!
//! Tap indices come from a dedicated range ([`TAP_INDEX_FIRST`], [`TAP_INDEX_COUNT`]) far above what the kernel
//! numbers links with: it picks ifindexes per netns, counting up from 1, so no veth, loopback or other link created
//! in a pod or on the host can take a reserved index before the CNI or the agent creates the macvtap there. The range
//! also tells our in-place links apart from any other link without an alias (the kernel ignores `IFLA_IFALIAS` on
//! creation): see [`is_tap_index`].
//!
//! The state directory is on disk (not `/run`), like the kubelet's device checkpoint: after a node reboot the kubelet
//! restarts a pod's containers with the `/dev/tapN` it checkpointed, without a new `Allocate`, and the record must
//! still be there for the CNI to recreate that tap.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mode::MacvtapMode;
use crate::names::{validate_ifname, validate_resource_name};

/// Where agent and CNI keep records and reservations unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/macvtap-operator";
/// First tap index handed out (1.9e9: above the kernel's own picks and the test suites' fixed indices, below
/// `INT_MAX`).
pub const TAP_INDEX_FIRST: u32 = 1_900_000_000;
/// How many tap indices the range holds (2^24).
pub const TAP_INDEX_COUNT: u32 = 1 << 24;
/// How many taken indices [`TapReservations::reserve`] skips before giving up (a full range would need millions of
/// devices on one machine; this bounds the work when something is badly wrong).
const MAX_PROBES: u32 = 65_536;

/// Whether `index` is in the range in-place links are created with.
pub fn is_tap_index(index: u32) -> bool {
    (TAP_INDEX_FIRST..TAP_INDEX_FIRST + TAP_INDEX_COUNT).contains(&index)
}

/// What `Allocate` decided for one device ID, read by the CNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRecord {
    /// The resource name (the part after `macvtap.network.kubevirt.io/`).
    pub resource: String,
    /// The host interface the macvtap is created on.
    pub lower_device: String,
    pub mode: MacvtapMode,
    /// The ifindex of the pod's macvtap, hence its `/dev/tap<tapIndex>`.
    pub tap_index: u32,
}

/// Why a record or a reservation cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("{0:?} cannot be a file name in the state directory")]
    BadName(String),
    #[error("allocation record {}: {why}", path.display())]
    BadRecord { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free tap index in {} after {MAX_PROBES} tries", dir.display())]
    Exhausted { dir: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AllocationError + '_ {
    move |source| AllocationError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A node name or device ID used as a file name: letters, digits, `-`, `_`, `.`, starting with a letter or digit
/// (device IDs come from a NetworkAttachmentDefinition: no `/`, no `..`, no hidden temporary names).
fn check_component(name: &str) -> Result<(), AllocationError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AllocationError::BadName(name.to_string()))
    }
}

/// `<state>/nodes/<node>`: the directory of one node's records (the CNI is told this one, never the others).
pub fn node_dir(state_dir: &Path, node: &str) -> Result<PathBuf, AllocationError> {
    check_component(node)?;
    Ok(state_dir.join("nodes").join(node))
}

/// `<state>/taps`: the reservations of every agent on this kernel.
pub fn taps_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("taps")
}

/// `<node_dir>/<deviceID>.json`.
pub fn record_path(node_dir: &Path, device_id: &str) -> Result<PathBuf, AllocationError> {
    check_component(device_id)?;
    Ok(node_dir.join(format!("{device_id}.json")))
}

impl AllocationRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }

    /// Parse and check a record: names the kernel and kubelet accept, an index of the range.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let r: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        validate_resource_name(&r.resource).map_err(|e| format!("resource {e}"))?;
        validate_ifname(&r.lower_device).map_err(|e| format!("lowerDevice {e}"))?;
        if !is_tap_index(r.tap_index) {
            return Err(format!(
                "tapIndex {} is outside {TAP_INDEX_FIRST}..{}",
                r.tap_index,
                TAP_INDEX_FIRST + TAP_INDEX_COUNT
            ));
        }
        Ok(r)
    }

    /// The record of `device_id` in `node_dir`; `Ok(None)` when there is none (a device allocated before in-place
    /// attach existed, or by an agent that does not write records).
    pub fn read(node_dir: &Path, device_id: &str) -> Result<Option<Self>, AllocationError> {
        let path = record_path(node_dir, device_id)?;
        match fs::read(&path) {
            Ok(bytes) => Self::from_json(&bytes)
                .map(Some)
                .map_err(|why| AllocationError::BadRecord { path, why }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Write the record of `device_id` atomically (temporary file, then rename): a reader sees the old record or the
    /// new one, never half of one.
    pub fn write(&self, node_dir: &Path, device_id: &str) -> Result<PathBuf, AllocationError> {
        let path = record_path(node_dir, device_id)?;
        fs::create_dir_all(node_dir).map_err(io_at(node_dir))?;
        let tmp = node_dir.join(format!(".{device_id}.tmp"));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(self.to_json().as_bytes())?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io_at(&path))?;
        Ok(path)
    }

    /// Remove the record of `device_id`; `Ok(false)` when there was none.
    pub fn remove(node_dir: &Path, device_id: &str) -> Result<bool, AllocationError> {
        let path = record_path(node_dir, device_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }
}

/// The tap-index reservations of one kernel: one file `taps/<N>` per index, created with `O_EXCL` so two agents
/// (or two Allocates) never get one index, holding its owner `<node>/<deviceID>`.
#[derive(Debug, Clone)]
pub struct TapReservations {
    dir: PathBuf,
}

/// The owner string of a reservation.
pub fn owner(node: &str, device_id: &str) -> String {
    format!("{node}/{device_id}")
}

impl TapReservations {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: taps_dir(state_dir),
        }
    }

    /// Reservations kept in `dir` instead of `<state>/taps` (a test or a machine whose agents do not share one
    /// state directory but share one kernel).
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`TapReservations::reserve`] seeded by the owner's name, so a device tends to get the index it had before.
    pub fn reserve_for(
        &self,
        owner: &str,
        in_use: impl FnMut(u32) -> bool,
    ) -> Result<u32, AllocationError> {
        self.reserve(owner, Self::seed(owner), in_use)
    }

    /// The seed [`TapReservations::reserve_for`] uses for `owner`.
    pub fn seed(owner: &str) -> u64 {
        xxhash_rust::xxh64::xxh64(owner.as_bytes(), 0)
    }

    /// The indices to try for `seed`, in order: a start in the range picked by the seed, then the following ones,
    /// wrapping around.
    pub fn candidates(seed: u64) -> impl Iterator<Item = u32> {
        let start = (seed % u64::from(TAP_INDEX_COUNT)) as u32;
        (0..TAP_INDEX_COUNT).map(move |i| TAP_INDEX_FIRST + (start + i) % TAP_INDEX_COUNT)
    }

    /// Reserve a free index for `owner`: the first candidate of `seed` that `in_use` does not reject and whose file
    /// does not exist yet. `in_use` is the caller's look at the kernel (an index some link already has).
    pub fn reserve(
        &self,
        owner: &str,
        seed: u64,
        mut in_use: impl FnMut(u32) -> bool,
    ) -> Result<u32, AllocationError> {
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        for index in Self::candidates(seed).take(MAX_PROBES as usize) {
            if in_use(index) {
                continue;
            }
            let path = self.path(index);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(owner.as_bytes()) {
                        let _ = fs::remove_file(&path);
                        return Err(io_at(&path)(e));
                    }
                    return Ok(index);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        Err(AllocationError::Exhausted {
            dir: self.dir.clone(),
        })
    }

    /// The owner of reservation `index`, if it exists. An empty owner is a reservation being written.
    pub fn owner_of(&self, index: u32) -> Result<Option<String>, AllocationError> {
        let path = self.path(index);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Remove reservation `index` if `owner` holds it (never another owner's). `Ok(false)` when it is not `owner`'s.
    pub fn release(&self, index: u32, owner: &str) -> Result<bool, AllocationError> {
        if self.owner_of(index)?.as_deref() != Some(owner) {
            return Ok(false);
        }
        let path = self.path(index);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Every reservation whose owner starts with `<node>/`, as (index, device ID).
    pub fn of_node(&self, node: &str) -> Result<Vec<(u32, String)>, AllocationError> {
        let prefix = format!("{node}/");
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(&self.dir))?;
            let Some(index) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Released meanwhile by someone else: not ours to list.
            if let Ok(Some(o)) = self.owner_of(index)
                && let Some(id) = o.strip_prefix(&prefix)
            {
                out.push((index, id.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn path(&self, index: u32) -> PathBuf {
        self.dir.join(index.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u32) -> AllocationRecord {
        AllocationRecord {
            resource: "dataplane".into(),
            lower_device: "eth0".into(),
            mode: MacvtapMode::Vepa,
            tap_index: index,
        }
    }

    #[test]
    fn record_json_is_pinned_and_checked() {
        let r = record(TAP_INDEX_FIRST + 5);
        let json = r.to_json();
        assert_eq!(
            json,
            r#"{"resource":"dataplane","lowerDevice":"eth0","mode":"vepa","tapIndex":1900000005}"#
        );
        assert_eq!(AllocationRecord::from_json(json.as_bytes()).unwrap(), r);
        for (bad, why) in [
            (record(7).to_json(), "tapIndex 7 is outside"),
            (
                record(TAP_INDEX_FIRST + TAP_INDEX_COUNT).to_json(),
                "is outside",
            ),
            (
                r#"{"resource":"dp","lowerDevice":"a/b","mode":"bridge","tapIndex":1900000000}"#
                    .into(),
                "lowerDevice",
            ),
            (
                r#"{"resource":"-dp","lowerDevice":"eth0","mode":"bridge","tapIndex":1900000000}"#
                    .into(),
                "resource",
            ),
            (
                r#"{"resource":"dp","lowerDevice":"eth0","mode":"bridged","tapIndex":1900000000}"#
                    .into(),
                "unknown variant",
            ),
            ("{".into(), "EOF"),
        ] {
            let e = AllocationRecord::from_json(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn paths_refuse_names_that_leave_the_directory() {
        let state = Path::new("/s");
        assert_eq!(
            node_dir(state, "node-1.example").unwrap(),
            Path::new("/s/nodes/node-1.example")
        );
        assert_eq!(
            record_path(Path::new("/s/nodes/n"), "dataplaneMvp3").unwrap(),
            Path::new("/s/nodes/n/dataplaneMvp3.json")
        );
        assert_eq!(taps_dir(state), Path::new("/s/taps"));
        for bad in ["", "..", ".", "a/b", "../x", ".hidden", "a b", "a\0b"] {
            assert!(record_path(state, bad).is_err(), "{bad:?}");
            assert!(node_dir(state, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_are_written_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let nd = node_dir(dir.path(), "n1").unwrap();
        assert_eq!(AllocationRecord::read(&nd, "dpMvp0").unwrap(), None);
        let r = record(TAP_INDEX_FIRST);
        r.write(&nd, "dpMvp0").unwrap();
        assert_eq!(AllocationRecord::read(&nd, "dpMvp0").unwrap(), Some(r));
        let r2 = record(TAP_INDEX_FIRST + 1);
        r2.write(&nd, "dpMvp0").unwrap();
        assert_eq!(AllocationRecord::read(&nd, "dpMvp0").unwrap(), Some(r2));
        assert_eq!(
            fs::read_dir(&nd).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::write(nd.join("bad.json"), "{}").unwrap();
        assert!(matches!(
            AllocationRecord::read(&nd, "bad"),
            Err(AllocationError::BadRecord { .. })
        ));
        assert!(AllocationRecord::remove(&nd, "dpMvp0").unwrap());
        assert!(!AllocationRecord::remove(&nd, "dpMvp0").unwrap());
        assert_eq!(AllocationRecord::read(&nd, "dpMvp0").unwrap(), None);
    }

    #[test]
    fn candidates_stay_in_the_range_and_wrap() {
        assert!(!is_tap_index(TAP_INDEX_FIRST - 1));
        assert!(is_tap_index(TAP_INDEX_FIRST));
        assert!(is_tap_index(TAP_INDEX_FIRST + TAP_INDEX_COUNT - 1));
        assert!(!is_tap_index(TAP_INDEX_FIRST + TAP_INDEX_COUNT));
        assert!(TAP_INDEX_FIRST + TAP_INDEX_COUNT <= i32::MAX as u32);
        let c: Vec<u32> = TapReservations::candidates(u64::from(TAP_INDEX_COUNT) - 2)
            .take(4)
            .collect();
        let last = TAP_INDEX_FIRST + TAP_INDEX_COUNT - 1;
        assert_eq!(
            c,
            [last - 1, last, TAP_INDEX_FIRST, TAP_INDEX_FIRST + 1],
            "wraps around"
        );
        assert_eq!(
            TapReservations::candidates(u64::MAX).count(),
            TAP_INDEX_COUNT as usize
        );
    }

    #[test]
    fn an_index_is_reserved_once_and_released_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let taps = TapReservations::new(dir.path());
        let a = taps.reserve(&owner("n1", "dpMvp0"), 7, |_| false).unwrap();
        assert_eq!(a, TAP_INDEX_FIRST + 7);
        // Same seed: the reserved index and the ones `in_use` rejects are skipped.
        let b = taps
            .reserve(&owner("n2", "dpMvp0"), 7, |i| i == TAP_INDEX_FIRST + 8)
            .unwrap();
        assert_eq!(b, TAP_INDEX_FIRST + 9);
        assert_eq!(taps.owner_of(a).unwrap().as_deref(), Some("n1/dpMvp0"));
        assert_eq!(
            taps.of_node("n1").unwrap(),
            [(a, "dpMvp0".to_string())],
            "n2's reservation is not n1's"
        );
        assert!(!taps.release(a, "n2/dpMvp0").unwrap(), "not n2's");
        assert!(taps.release(a, "n1/dpMvp0").unwrap());
        assert!(!taps.release(a, "n1/dpMvp0").unwrap());
        assert_eq!(taps.owner_of(a).unwrap(), None);
        assert!(matches!(
            taps.reserve("x", 0, |_| true),
            Err(AllocationError::Exhausted { .. })
        ));
    }

    #[test]
    fn concurrent_reservations_never_share_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let got: Vec<u32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let taps = TapReservations::new(dir.path());
                    s.spawn(move || {
                        (0..50)
                            .map(|i| {
                                taps.reserve(
                                    &owner("n", &format!("dpMvp{}", t * 50 + i)),
                                    0,
                                    |_| false,
                                )
                                .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 400);
        assert_eq!(
            TapReservations::new(dir.path()).of_node("n").unwrap().len(),
            400
        );
    }
}
