//! What the agent's `Allocate` tells the CNI about one device, and the tap index it reserved for it.
//!
//! In-place attach: `Allocate` creates no link. It reserves a tap index `N` (the ifindex the pod's macvtap will have,
//! so its character device is `/dev/tapN`), answers `/dev/tapN`, and writes an [`AllocationRecord`]; the CNI's ADD
//! reads the record and creates the macvtap directly in the pod's netns with index `N`.
//!
//! Files, under one state directory on the host ([`DEFAULT_STATE_DIR`], a hostPath):
//! - `nodes/<node>/<deviceID>.json`: the record of a device of that node ([`record_path`]); per node because several
//!   nodes may share one kernel and one state directory (the e2e cluster does), and device IDs repeat across nodes;
//! - `taps/<N>`: the reservation of tap index `N` ([`crate::reservation`]), created with `O_EXCL` semantics,
//!   holding its owner `<node>/<deviceID>`. One directory per kernel: `/dev/tapN` is one name for the whole machine, and two macvtaps
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
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::mode::MacvtapMode;
use crate::names::{validate_ifname, validate_resource_name};

/// Where agent and CNI keep records and reservations unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/macvtap-operator";
/// First tap index handed out (1.9e9: above the kernel's own picks and the test suites' fixed indices, below
/// `INT_MAX`).
pub const TAP_INDEX_FIRST: u32 = 1_900_000_000;
/// How many tap indices the range holds (2^24).
pub const TAP_INDEX_COUNT: u32 = 1 << 24;
/// How many taken indices [`crate::TapReservations::reserve`] skips before giving up (a full range would need millions of
/// devices on one machine; this bounds the work when something is badly wrong).
pub(crate) const MAX_PROBES: u32 = 65_536;

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

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AllocationError + '_ {
    move |source| AllocationError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A node name used as a file name: letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most 200
/// bytes (device IDs: [`crate::validate_device_id`], the same characters).
pub(crate) fn check_component(name: &str) -> Result<(), AllocationError> {
    if file_name_safe(name, 200) {
        Ok(())
    } else {
        Err(AllocationError::BadName(name.to_string()))
    }
}

/// A device ID of ours, as the file name of its record, claim or reservation.
pub(crate) fn check_device_id(id: &str) -> Result<(), AllocationError> {
    crate::validate_device_id(id).map_err(|_| AllocationError::BadName(id.to_string()))
}

/// Letters, digits, `-`, `_`, `.`, starting with a letter or digit, 1..=`max` bytes: no `/`, no `..`, no hidden
/// temporary names.
pub(crate) fn file_name_safe(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
    check_device_id(device_id)?;
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

    /// Write the record of `device_id` durably ([`durable::replace`]): a reader, after a crash or a power loss too,
    /// sees the old record or the new one, never an empty or half-written one.
    pub fn write(&self, node_dir: &Path, device_id: &str) -> Result<PathBuf, AllocationError> {
        self.write_cut(node_dir, device_id, &mut durable::Uncut)
    }

    /// [`AllocationRecord::write`] with a [`durable::Cut`] (tests).
    pub fn write_cut(
        &self,
        node_dir: &Path,
        device_id: &str,
        cut: &mut dyn durable::Cut,
    ) -> Result<PathBuf, AllocationError> {
        let path = record_path(node_dir, device_id)?;
        fs::create_dir_all(node_dir).map_err(io_at(node_dir))?;
        let name = format!("{device_id}.json");
        durable::replace_cut(node_dir, &name, self.to_json().as_bytes(), 0o644, cut)
            .map_err(io_at(&path))
    }

    /// The device IDs of every record file in `node_dir` (readable or not), sorted.
    pub fn device_ids(node_dir: &Path) -> Result<Vec<String>, AllocationError> {
        let entries = match fs::read_dir(node_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(node_dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_at(node_dir))?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json"))
                && check_device_id(id).is_ok()
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
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
        assert_eq!(AllocationRecord::device_ids(&nd).unwrap(), ["dpMvp0"]);
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
    fn a_record_write_cut_at_any_step_leaves_the_old_or_the_new_record() {
        use crate::durable::tests::{CutAfter, REPLACE_STEPS};
        use crate::durable::{Step, sweep_temps};
        for step in REPLACE_STEPS {
            let dir = tempfile::tempdir().unwrap();
            let nd = node_dir(dir.path(), "n1").unwrap();
            let (old, new) = (record(TAP_INDEX_FIRST), record(TAP_INDEX_FIRST + 1));
            old.write(&nd, "dpMvp0").unwrap();
            let mut cut = CutAfter::new(Some(step));
            assert!(new.write_cut(&nd, "dpMvp0", &mut cut).is_err());
            let got = AllocationRecord::read(&nd, "dpMvp0").unwrap().unwrap();
            let want = if cut.seen.contains(&Step::Visible) {
                &new
            } else {
                &old
            };
            assert_eq!(&got, want, "{step:?}");
            // Start-up sweeps the temporary file; only the record is left.
            sweep_temps(&nd, ".").unwrap();
            assert_eq!(AllocationRecord::device_ids(&nd).unwrap(), ["dpMvp0"]);
            assert_eq!(fs::read_dir(&nd).unwrap().count(), 1, "{step:?}");
        }
    }
}
