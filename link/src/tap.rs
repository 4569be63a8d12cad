// Over 400 lines only by its unit tests (fake /dev and /sys trees for every refusal).
//! The tap character device of a macvtap link, `/dev/tap<ifindex>`, and the proof that a node is that link's.
//!
//! Why a proof is needed: the kernel names the node after the link's ifindex *in the link's current netns*, but
//! devtmpfs is one per machine. When two macvtaps in different namespaces share an ifindex, only the first gets the
//! node (the second's creation fails silently, and it has no node at all once the first goes); and a netns move
//! re-creates the node under the index the link has there. So `/dev/tapN` may be another link's, or missing.
//!
//! What identifies the owner from any netns: sysfs' `/sys/dev/char/<major>:<minor>` is not per-netns, and its link
//! target names the owning device, `../../devices/virtual/net/<ifname>/macvtap/tap<ifindex>`. A node is this link's
//! when its device number leads there, and no other macvtap has the same name and index (which would make the
//! match ambiguous).
//!
//! The node is opened with `O_PATH` (never the driver's `open`, which would attach a queue to the tap), checked on
//! that descriptor, and chowned through it.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};

/// Why a tap node is not usable as a link's tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("{} is not a character device", path.display())]
    NotCharDevice { path: PathBuf },
    #[error("{} is the tap of another device ({owner})", path.display())]
    OtherDevice { path: PathBuf, owner: String },
    #[error(
        "{count} macvtap links named {name} with ifindex {index} exist in different network namespaces: cannot tell whose {} is",
        path.display()
    )]
    Ambiguous {
        path: PathBuf,
        name: String,
        index: u32,
        count: usize,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `/dev/tap<index>`, checked to be the tap of one macvtap link, held open (`O_PATH`) for [`TapNode::chown`].
#[derive(Debug)]
pub struct TapNode {
    path: PathBuf,
    file: File,
    major: u64,
    minor: u64,
    /// The inode of its `/sys/dev/char` entry: a new device (even one given the same number) gets a new one.
    sysfs_node: u64,
}

impl TapNode {
    /// Open `/dev/tap<index>` and check that it is the tap of the macvtap link currently named `name` with ifindex
    /// `index` (in whatever netns that link is), and that no other macvtap has that name and index.
    pub fn verify(name: &str, index: u32) -> Result<Self, TapError> {
        Self::verify_in(Path::new("/dev"), Path::new("/sys"), name, index)
    }

    /// [`TapNode::verify`] with other roots for `/dev` and `/sys` (tests).
    pub fn verify_in(dev: &Path, sys: &Path, name: &str, index: u32) -> Result<Self, TapError> {
        let path = dev.join(format!("tap{index}"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TapError::Io { path, source }
        };
        // Not std's OpenOptions: on musl it masks O_PATH out of custom flags (musl's O_ACCMODE includes O_SEARCH =
        // O_PATH), and the node would be opened through the driver after all.
        use nix::fcntl::OFlag;
        let opened = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        let file = match opened {
            Ok(fd) => File::from(fd),
            Err(nix::errno::Errno::ENOENT) => return Err(TapError::Missing { path }),
            // O_NOFOLLOW on a symlink with O_PATH opens the link itself; other errors are real.
            Err(e) => return Err(io(&path)(e.into())),
        };
        let md = file.metadata().map_err(io(&path))?;
        if !md.file_type().is_char_device() {
            return Err(TapError::NotCharDevice { path });
        }
        let (maj, min) = (major(md.rdev()), minor(md.rdev()));
        let char_dir = sys.join("dev/char");
        let suffix = owner_suffix(name, index);
        let entry = char_dir.join(format!("{maj}:{min}"));
        let owner = std::fs::read_link(&entry)
            .map_err(io(&char_dir))?
            .to_string_lossy()
            .into_owned();
        let sysfs_node = std::fs::symlink_metadata(&entry)
            .map_err(io(&char_dir))?
            .ino();
        if !owner.ends_with(&suffix) {
            return Err(TapError::OtherDevice { path, owner });
        }
        // Same name and index in another netns: both point at the same node name, only one has it.
        let prefix = format!("{maj}:");
        let mut count = 0;
        for entry in std::fs::read_dir(&char_dir).map_err(io(&char_dir))? {
            let entry = entry.map_err(io(&char_dir))?;
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            match std::fs::read_link(entry.path()) {
                Ok(t) if t.to_string_lossy().ends_with(&suffix) => count += 1,
                // A device that went away while we looked is no contender.
                _ => {}
            }
        }
        if count != 1 {
            return Err(TapError::Ambiguous {
                path,
                name: name.to_string(),
                index,
                count,
            });
        }
        Ok(Self {
            path,
            file,
            major: maj,
            minor: min,
            sysfs_node,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's device number (major, minor).
    pub fn device(&self) -> (u64, u64) {
        (self.major, self.minor)
    }

    /// The inode of the device's `/sys/dev/char` entry ([`TapDevice::sysfs_node`]).
    pub fn sysfs_node(&self) -> u64 {
        self.sysfs_node
    }

    /// Change the node's owner and group; `None` leaves that one as it is.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), TapError> {
        nix::unistd::fchownat(
            &self.file,
            "",
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| TapError::Io {
            path: self.path.clone(),
            source: e.into(),
        })
    }
}

/// How a `/sys/dev/char` link target of the tap of macvtap `name` with ifindex `index` ends.
fn owner_suffix(name: &str, index: u32) -> String {
    format!("/net/{name}/macvtap/tap{index}")
}

/// A macvtap's tap as `/sys/dev/char` shows it: the link's name and ifindex in its own netns, the device number,
/// and the inode of the entry (what tells this device from a later one given the same number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TapDevice {
    pub ifname: String,
    pub index: u32,
    /// (major, minor).
    pub device: (u64, u64),
    pub sysfs_node: u64,
}

/// `<major>:<minor>`, a `/sys/dev/char` entry's name.
fn parse_device(name: &std::ffi::OsStr) -> Option<(u64, u64)> {
    let (maj, min) = name.to_str()?.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The tap entry `entry` (a `/sys/dev/char` directory entry) names, if it is a macvtap's.
fn tap_of(entry: &std::fs::DirEntry) -> Option<TapDevice> {
    use std::os::unix::fs::DirEntryExt;
    let device = parse_device(&entry.file_name())?;
    // A device that went away while we looked has no tap any more.
    let target = std::fs::read_link(entry.path()).ok()?;
    let (ifname, index) = parse_tap_target(&target.to_string_lossy())?;
    Some(TapDevice {
        ifname,
        index,
        device,
        sysfs_node: entry.ino(),
    })
}

/// The device number of the tap of macvtap `name` with ifindex `index` in the netns whose sysfs is `sys` (its
/// `class/net` shows only that netns's links); `None` when there is no such link or tap there.
pub fn tap_device_in_netns(
    sys: &Path,
    name: &str,
    index: u32,
) -> std::io::Result<Option<(u64, u64)>> {
    let path = sys.join(format!("class/net/{name}/macvtap/tap{index}/dev"));
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(parse_device(std::ffi::OsStr::new(s.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every macvtap tap on this machine, in any netns, from one read of `<sys>/dev/char` (not per-netns, unlike
/// `/sys/class/macvtap`). What the agent asks before it hands out or creates a tap index: whether some link,
/// wherever it is, already has it.
pub fn tap_devices(sys: &Path) -> std::io::Result<Vec<TapDevice>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sys.join("dev/char"))? {
        out.extend(tap_of(&entry?));
    }
    out.sort();
    Ok(out)
}

/// [`tap_devices`] for a long-running caller (the agent asks on every Allocate): remembers what each
/// `/sys/dev/char` entry points at, keyed by its name and inode, and reads only the links it has not seen. A new
/// device gets a new sysfs node (a new inode), so a reused device number never answers from the cache.
#[derive(Debug)]
pub struct TapScanner {
    sys: PathBuf,
    seen: std::collections::HashMap<std::ffi::OsString, (u64, Option<TapDevice>)>,
}

impl TapScanner {
    pub fn new(sys: PathBuf) -> Self {
        Self {
            sys,
            seen: Default::default(),
        }
    }

    /// The sysfs it reads.
    pub fn sys(&self) -> &Path {
        &self.sys
    }

    /// Every macvtap tap on this machine now.
    pub fn scan(&mut self) -> std::io::Result<Vec<TapDevice>> {
        use std::os::unix::fs::DirEntryExt;
        let mut next = std::collections::HashMap::with_capacity(self.seen.len());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.sys.join("dev/char"))? {
            let entry = entry?;
            let (name, ino) = (entry.file_name(), entry.ino());
            let tap = match self.seen.remove(&name) {
                Some((seen_ino, tap)) if seen_ino == ino => tap,
                _ => tap_of(&entry),
            };
            out.extend(tap.clone());
            next.insert(name, (ino, tap));
        }
        self.seen = next;
        out.sort();
        Ok(out)
    }
}

/// `../../devices/virtual/net/<ifname>/macvtap/tap<index>` → its name and index.
fn parse_tap_target(target: &str) -> Option<(String, u32)> {
    let (rest, tap) = target.rsplit_once("/macvtap/tap")?;
    let index = tap.parse().ok()?;
    let (_, ifname) = rest.rsplit_once("/net/")?;
    (!ifname.contains('/')).then(|| (ifname.to_string(), index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake `/dev` + `/sys/dev/char` pair; nodes are real character devices (needs root for mknod).
    struct Roots {
        dir: tempfile::TempDir,
    }

    impl Roots {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("dev")).unwrap();
            std::fs::create_dir_all(dir.path().join("sys/dev/char")).unwrap();
            Self { dir }
        }
        fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }
        fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }
        fn node(&self, index: u32, maj: u64, min: u64) {
            nix::sys::stat::mknod(
                &self.dev().join(format!("tap{index}")),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(maj, min),
            )
            .expect("mknod needs root");
        }
        fn sysfs(&self, maj: u64, min: u64, name: &str, index: u32) {
            symlink(
                format!("../../devices/virtual/net/{name}/macvtap/tap{index}"),
                self.sys().join(format!("dev/char/{maj}:{min}")),
            )
            .unwrap();
        }
        fn verify(&self, name: &str, index: u32) -> Result<TapNode, TapError> {
            TapNode::verify_in(&self.dev(), &self.sys(), name, index)
        }
    }

    #[test]
    fn the_links_own_node_is_accepted_and_chowned() {
        let r = Roots::new();
        r.node(7, 246, 3);
        r.sysfs(246, 3, "mvt0123456789ab", 7);
        r.sysfs(246, 4, "mvtfedcba987654", 8);
        r.sysfs(10, 3, "something", 7);
        let tap = r.verify("mvt0123456789ab", 7).unwrap();
        assert_eq!(tap.device(), (246, 3));
        assert_eq!(
            tap.sysfs_node(),
            std::fs::symlink_metadata(r.sys().join("dev/char/246:3"))
                .unwrap()
                .ino()
        );
        // Held with O_PATH: the driver's open (which attaches a queue to a real tap) never ran.
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&tap.file)
        ))
        .unwrap();
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(flags & nix::libc::O_PATH as u32, 0, "{fdinfo}");
        tap.chown(Some(4242), None).unwrap();
        let md = std::fs::metadata(r.dev().join("tap7")).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 0), "None leaves the group");
        tap.chown(None, Some(4343)).unwrap();
        let md = std::fs::metadata(r.dev().join("tap7")).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 4343));
    }

    #[test]
    fn tap_devices_lists_every_macvtap_tap_once() {
        let r = Roots::new();
        r.sysfs(246, 3, "mvt0123456789ab", 7);
        r.sysfs(246, 4, "net1", 1_900_000_001);
        symlink(
            "../../devices/virtual/misc/tun",
            r.sys().join("dev/char/10:200"),
        )
        .unwrap();
        std::fs::write(r.sys().join("dev/char/not-a-link"), "").unwrap();
        let taps = tap_devices(&r.sys()).unwrap();
        let got: Vec<(&str, u32)> = taps.iter().map(|t| (t.ifname.as_str(), t.index)).collect();
        assert_eq!(got, [("mvt0123456789ab", 7), ("net1", 1_900_000_001)]);
        assert_eq!(
            parse_tap_target("../../devices/virtual/net/a/macvtap/tapx"),
            None
        );
        assert_eq!(taps[1].device, (246, 4));
        let ino = std::fs::symlink_metadata(r.sys().join("dev/char/246:4"))
            .unwrap()
            .ino();
        assert_eq!(taps[1].sysfs_node, ino);
        assert!(tap_devices(Path::new("/nonexistent")).is_err());
        // The scanner answers the same, and sees a replaced entry (same name, new inode) afresh.
        let mut scanner = TapScanner::new(r.sys());
        assert_eq!(scanner.scan().unwrap(), taps);
        assert_eq!(scanner.scan().unwrap(), taps);
        // (Made beside the old one, then renamed over it: a new inode, as sysfs gives a new device.)
        symlink(
            "../../devices/virtual/net/net2/macvtap/tap1900000002",
            r.sys().join("dev/char/new"),
        )
        .unwrap();
        std::fs::rename(r.sys().join("dev/char/new"), r.sys().join("dev/char/246:4")).unwrap();
        let again = scanner.scan().unwrap();
        let indices: Vec<u32> = again.iter().map(|t| t.index).collect();
        assert_eq!(indices, [7, 1_900_000_002]);
        assert_ne!(again[1].sysfs_node, ino, "a new entry, a new inode");
        // One netns's own view: its class/net.
        let dir = r.sys().join("class/net/mvt0/macvtap/tap7");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dev"), "246:3\n").unwrap();
        assert_eq!(
            tap_device_in_netns(&r.sys(), "mvt0", 7).unwrap(),
            Some((246, 3))
        );
        assert_eq!(tap_device_in_netns(&r.sys(), "mvt0", 8).unwrap(), None);
        assert_eq!(tap_device_in_netns(&r.sys(), "other", 7).unwrap(), None);
    }

    #[test]
    fn refusals() {
        let r = Roots::new();
        assert!(matches!(r.verify("a", 1), Err(TapError::Missing { .. })));
        std::fs::write(r.dev().join("tap2"), "").unwrap();
        assert!(matches!(
            r.verify("a", 2),
            Err(TapError::NotCharDevice { .. })
        ));
        // A symlink to a real node is not followed.
        r.node(30, 246, 30);
        r.sysfs(246, 30, "a", 3);
        symlink(r.dev().join("tap30"), r.dev().join("tap3")).unwrap();
        assert!(matches!(
            r.verify("a", 3),
            Err(TapError::NotCharDevice { .. })
        ));
        // The node of another link with the same index (it got the devtmpfs name first).
        r.node(4, 246, 40);
        r.sysfs(246, 40, "other", 4);
        r.sysfs(246, 41, "a", 4);
        match r.verify("a", 4) {
            Err(TapError::OtherDevice { owner, .. }) => {
                assert!(owner.ends_with("/other/macvtap/tap4"), "{owner}")
            }
            other => panic!("{other:?}"),
        }
        // The node left over from this link's old index in another netns is not its tap now.
        r.node(5, 246, 50);
        r.sysfs(246, 50, "a", 6);
        assert!(matches!(
            r.verify("a", 5),
            Err(TapError::OtherDevice { .. })
        ));
        // Same name, same index, two namespaces: ambiguous, even though the node matches.
        r.node(9, 246, 90);
        r.sysfs(246, 90, "twin", 9);
        r.sysfs(246, 91, "twin", 9);
        assert!(matches!(
            r.verify("twin", 9),
            Err(TapError::Ambiguous { count: 2, .. })
        ));
        // A prefix of the name is not the name.
        r.node(11, 246, 110);
        r.sysfs(246, 110, "xtwin", 11);
        assert!(matches!(
            r.verify("twin", 11),
            Err(TapError::OtherDevice { .. })
        ));
    }
}
