//! The pod's macvtap as QEMU needs it: its `/dev/tapN`, its MAC, its addresses, and one open file per queue.
//!
//! - **Which tap**: a macvtap's character device is `/dev/tap<ifindex>`; the device plugin's Allocate put it into
//!   the container's `/dev`, and the CNI created the link inside the pod at that ifindex (a device allocated before
//!   an upgrade: moved in, keeping it). So the tap of the pod
//!   interface `net1` is `/dev/tap<ifindex of net1>`, and its device number is the one sysfs lists under
//!   `/sys/class/net/net1/macvtap/tap<ifindex>/dev`: checked, so the tap is proven to be that interface's.
//! - **Which MAC**: the guest's NIC must carry the macvtap's own MAC (a macvtap delivers only frames for it), read
//!   from sysfs; Multus's network status says the same.
//! - **Queues**: every `open()` of a macvtap's `/dev/tapN` is a queue of its own, with `IFF_TAP | IFF_NO_PI |
//!   IFF_VNET_HDR` already set (what libvirt sets with `TUNSETIFF`; `IFF_MULTI_QUEUE` is only recorded by a
//!   macvtap, unlike a tun device). So the launcher opens the device once per queue and needs no ioctl and no
//!   `unsafe`. The files are opened without `O_CLOEXEC`: QEMU, exec'd next, inherits them as `fd=`/`fds=`.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("opening {path} (queue {queue}): {source}")]
    Open {
        path: PathBuf,
        queue: usize,
        source: nix::Error,
    },
    #[error("reading the pod's addresses: {0}")]
    Addresses(nix::Error),
}

/// The pod interface and its tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTap {
    pub interface: String,
    pub ifindex: u32,
    pub mac: String,
    /// `/dev/tap<ifindex>`.
    pub device: PathBuf,
}

fn read(path: PathBuf) -> Result<String, Error> {
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Read { path, source })
}

/// Finds the tap of `interface` from `sys` (`/sys/class/net`) and `dev` (`/dev`), and checks that the device file
/// is that macvtap's character device.
pub fn find(sys_class_net: &Path, dev: &Path, interface: &str) -> Result<PodTap, Error> {
    let link = sys_class_net.join(interface);
    let ifindex: u32 = read(link.join("ifindex"))?
        .parse()
        .map_err(|_| Error::Invalid(format!("{interface}: ifindex is not a number")))?;
    let mac = read(link.join("address"))?;
    let tap_name = format!("tap{ifindex}");
    let dev_numbers = read(link.join("macvtap").join(&tap_name).join("dev")).map_err(|e| {
        Error::Invalid(format!(
            "{interface} is not a macvtap with tap {tap_name} ({e})"
        ))
    })?;
    let device = dev.join(&tap_name);
    check_device(&device, &dev_numbers)?;
    Ok(PodTap {
        interface: interface.into(),
        ifindex,
        mac,
        device,
    })
}

/// `path` is a character device with the `major:minor` sysfs gives.
pub fn check_device(path: &Path, major_minor: &str) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let invalid = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    if !meta.file_type().is_char_device() {
        return Err(invalid("not a character device".into()));
    }
    let (major, minor) = major_minor
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| invalid(format!("sysfs device number {major_minor:?}")))?;
    let rdev = meta.rdev();
    let (have_major, have_minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if (have_major, have_minor) != (major, minor) {
        return Err(invalid(format!(
            "device {have_major}:{have_minor}, but the interface's tap is {major}:{minor}"
        )));
    }
    Ok(())
}

/// Opens the tap once per queue, read-write, inheritable across exec.
pub fn open_queues(device: &Path, queues: usize) -> Result<Vec<OwnedFd>, Error> {
    (0..queues)
        .map(|queue| {
            nix::fcntl::open(device, OFlag::O_RDWR, Mode::empty()).map_err(|source| Error::Open {
                path: device.into(),
                queue,
                source,
            })
        })
        .collect()
}

/// The IPv4 addresses of `interface` with their prefix length (`a.b.c.d/len`), as IPAM gave them to the pod.
pub fn ipv4_addresses(interface: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().map_err(Error::Addresses)? {
        if a.interface_name != interface {
            continue;
        }
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
        ) else {
            continue;
        };
        out.push(cidr(addr.ip(), mask.ip()));
    }
    Ok(out)
}

fn cidr(ip: Ipv4Addr, mask: Ipv4Addr) -> String {
    format!("{ip}/{}", u32::from(mask).count_ones())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(dir: &Path, ifname: &str, ifindex: u32, dev: &str) {
        let l = dir.join(ifname);
        std::fs::create_dir_all(l.join(format!("macvtap/tap{ifindex}"))).unwrap();
        std::fs::write(l.join("ifindex"), format!("{ifindex}\n")).unwrap();
        std::fs::write(l.join("address"), "02:00:0a:c8:00:0a\n").unwrap();
        std::fs::write(
            l.join(format!("macvtap/tap{ifindex}/dev")),
            format!("{dev}\n"),
        )
        .unwrap();
    }

    #[test]
    fn finds_the_interfaces_tap_and_checks_its_device_number() {
        let t = tempfile::tempdir().unwrap();
        let (sysdir, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        // /dev/null (1:3) stands in for the character device: making a real one needs mknod.
        std::os::unix::fs::symlink("/dev/null", dev.join("tap1003")).unwrap();
        sys(&sysdir, "net1", 1003, "1:3");
        let tap = find(&sysdir, &dev, "net1").unwrap();
        assert_eq!(
            tap,
            PodTap {
                interface: "net1".into(),
                ifindex: 1003,
                mac: "02:00:0a:c8:00:0a".into(),
                device: dev.join("tap1003"),
            }
        );

        // Another device under the tap's name: refused.
        sys(&sysdir, "net2", 1004, "246:7");
        std::os::unix::fs::symlink("/dev/null", dev.join("tap1004")).unwrap();
        let e = find(&sysdir, &dev, "net2").unwrap_err().to_string();
        assert!(e.contains("246:7"), "{e}");
        // Not a macvtap (no macvtap/tapN in sysfs), or no device in /dev: refused.
        std::fs::create_dir_all(sysdir.join("eth0")).unwrap();
        std::fs::write(sysdir.join("eth0/ifindex"), "2").unwrap();
        std::fs::write(sysdir.join("eth0/address"), "02:00:00:00:00:02").unwrap();
        assert!(
            find(&sysdir, &dev, "eth0")
                .unwrap_err()
                .to_string()
                .contains("not a macvtap")
        );
        sys(&sysdir, "net3", 1005, "246:8");
        assert!(find(&sysdir, &dev, "net3").is_err());
        assert!(find(&sysdir, &dev, "missing").is_err());
    }

    #[test]
    fn a_regular_file_is_no_tap() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(
            check_device(f.path(), "1:3")
                .unwrap_err()
                .to_string()
                .contains("not a character device")
        );
        assert!(check_device(Path::new("/dev/null"), "1:3").is_ok());
        assert!(check_device(Path::new("/dev/null"), "junk").is_err());
    }

    #[test]
    fn one_open_file_per_queue_inherited_across_exec() {
        let fds = open_queues(Path::new("/dev/null"), 2).unwrap();
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_eq!(flags & nix::libc::FD_CLOEXEC, 0, "QEMU must inherit it");
        }
        assert!(open_queues(Path::new("/nonexistent/tap1"), 1).is_err());
    }

    #[test]
    fn prefix_from_netmask() {
        assert_eq!(
            cidr(
                Ipv4Addr::new(10, 200, 0, 10),
                Ipv4Addr::new(255, 255, 255, 0)
            ),
            "10.200.0.10/24"
        );
        assert_eq!(
            cidr(
                Ipv4Addr::new(172, 17, 100, 30),
                Ipv4Addr::new(255, 255, 0, 0)
            ),
            "172.17.100.30/16"
        );
        let lo = ipv4_addresses("lo").unwrap();
        assert!(lo.iter().all(|a| a.starts_with("127.")), "{lo:?}");
    }
}
