//! Errors of the link crate, with the kernel's errno where there is one.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("joining the rtnetlink link multicast group: {0}")]
    Subscribe(#[source] std::io::Error),
    #[error("building a tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("lower device {0:?} not found")]
    LowerDeviceNotFound(String),
    #[error("link {name:?} exists but is not ours ({reason})")]
    NotOurs { name: String, reason: String },
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid route {0}")]
    InvalidRoute(String),
    #[error("invalid ifindex {0}")]
    InvalidIndex(u32),
}

impl Error {
    /// The errno of a kernel netlink error (positive), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink(rtnetlink::Error::NetlinkError(m)) => {
                Some(m.raw_code().abs()).filter(|c| *c != 0)
            }
            _ => None,
        }
    }

    /// True for "no such device" from the kernel.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(nix::libc::ENODEV)
    }

    /// True for "file exists" from the kernel (name taken, address present...).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
    }

    /// True for "busy" from the kernel: e.g. the ifindex asked by [`Netlink::move_to_netns_keeping_index`] is taken
    /// in the target netns.
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(nix::libc::EBUSY)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
