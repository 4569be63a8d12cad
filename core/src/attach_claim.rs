//! The CNI's word that the tap at a device's index is the link it created in place for that device: what lets
//! PreStartContainer tell the pod's own tap from a squatter's (issue 20).
//!
//! Why it is needed: from the host, a tap in another netns shows only as `/sys/dev/char/<major>:<minor>` →
//! `…/net/<ifname>/macvtap/tap<ifindex>` (that netns's `/sys/class/net` is not visible, nor its links over host
//! netlink, nor which pod it is). A pod with `CAP_NET_ADMIN` can create a macvtap at any index in its own netns, so
//! "some link has tap N" proves nothing. The CNI, after it created the pod's link at index N, checked the
//! PodResources grant and proved `/dev/tapN` is that link's tap ([`crate::allocation`]'s record names N), writes
//! this claim: the tap's device number and the inode of its `/sys/dev/char` entry (a later device given the same
//! number gets a new entry) and the boot. `/dev/tapN` stays that device's node while the device exists (devtmpfs
//! removes a node only with its own device), so PreStart accepts a tap in another netns only when it is the very
//! device claimed.
//!
//! `<node_dir>/attached/<deviceID>.json`, written with [`Sync::ThisBoot`]: a claim means nothing after a reboot (the
//! link is gone; its boot ID says so), so the CNI's ADD does not wait for the disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::allocation::{AllocationError, io_at, record_path};
use crate::durable::{self, Sync};

/// What the CNI proved about the tap it made for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachClaim {
    pub tap_index: u32,
    /// The link's name in the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// `/dev/tap<tapIndex>`'s device number.
    pub major: u64,
    pub minor: u64,
    /// The inode of `/sys/dev/char/<major>:<minor>` when the CNI proved it.
    pub sysfs_node: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was written.
    pub boot_id: String,
}

/// `<node_dir>/attached`.
pub fn claims_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("attached")
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

impl AttachClaim {
    /// Write the claim of `device_id` (replacing an older one).
    pub fn write(&self, node_dir: &Path, device_id: &str) -> Result<PathBuf, AllocationError> {
        let dir = claims_dir(node_dir);
        let path = record_path(&dir, device_id)?;
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let json = serde_json::to_vec(self).expect("plain data serialises");
        durable::replace_as(
            &dir,
            &format!("{device_id}.json"),
            &json,
            0o644,
            Sync::ThisBoot,
        )
        .map_err(io_at(&path))
    }

    /// The claim of `device_id`; `None` when there is none or it cannot be parsed (then it proves nothing).
    pub fn read(node_dir: &Path, device_id: &str) -> Result<Option<Self>, AllocationError> {
        let path = record_path(&claims_dir(node_dir), device_id)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Remove the claim of `device_id`, if any.
    pub fn remove(node_dir: &Path, device_id: &str) -> Result<(), AllocationError> {
        let path = record_path(&claims_dir(node_dir), device_id)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Whether this claim, made in boot `boot_id`, names the tap `index`/`ifname`/`device`/`sysfs_node` as the
    /// `/sys/dev/char` entry shows it now.
    pub fn names(
        &self,
        boot_id: &str,
        index: u32,
        ifname: &str,
        device: (u64, u64),
        sysfs_node: u64,
    ) -> bool {
        self.boot_id == boot_id
            && self.tap_index == index
            && self.ifname == ifname
            && (self.major, self.minor) == device
            && self.sysfs_node == sysfs_node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_one_device_of_one_boot() {
        let dir = tempfile::tempdir().unwrap();
        let c = AttachClaim {
            tap_index: 1_900_000_007,
            ifname: "net1".into(),
            major: 246,
            minor: 3,
            sysfs_node: 4242,
            boot_id: "b1".into(),
        };
        assert_eq!(AttachClaim::read(dir.path(), "dpMvp0").unwrap(), None);
        c.write(dir.path(), "dpMvp0").unwrap();
        assert_eq!(
            AttachClaim::read(dir.path(), "dpMvp0").unwrap(),
            Some(c.clone())
        );
        let json = fs::read_to_string(dir.path().join("attached/dpMvp0.json")).unwrap();
        assert_eq!(
            json,
            r#"{"tapIndex":1900000007,"ifname":"net1","major":246,"minor":3,"sysfsNode":4242,"bootId":"b1"}"#
        );
        assert!(c.names("b1", 1_900_000_007, "net1", (246, 3), 4242));
        for (boot, index, name, dev, node) in [
            ("b2", 1_900_000_007, "net1", (246, 3), 4242),
            ("b1", 1_900_000_008, "net1", (246, 3), 4242),
            ("b1", 1_900_000_007, "net2", (246, 3), 4242),
            ("b1", 1_900_000_007, "net1", (246, 4), 4242),
            ("b1", 1_900_000_007, "net1", (246, 3), 4243),
        ] {
            assert!(
                !c.names(boot, index, name, dev, node),
                "{boot} {index} {name} {dev:?} {node}"
            );
        }
        fs::write(dir.path().join("attached/dpMvp0.json"), "").unwrap();
        assert_eq!(
            AttachClaim::read(dir.path(), "dpMvp0").unwrap(),
            None,
            "garbage proves nothing"
        );
        AttachClaim::remove(dir.path(), "dpMvp0").unwrap();
        AttachClaim::remove(dir.path(), "dpMvp0").unwrap();
        assert!(AttachClaim::read(dir.path(), "../x").is_err());
        assert!(boot_id().unwrap().len() >= 32);
    }
}
