//! The one writer of host links: Allocate (create/recreate), adoption of the original's links and cleanup
//! (delete) take turns, so the tap Allocate answers is always that of the link it left in place, and cleanup
//! never deletes a link an Allocate is creating. Reading links needs no turn.

use macvtap_link::Netlink;
use tokio::sync::{Mutex, MutexGuard};

pub struct LinkWriter {
    netlink: Netlink,
    turn: Mutex<()>,
}

/// A turn to change host links; the netlink socket to do it with. Others wait until it is dropped.
pub struct WriteTurn<'a> {
    netlink: &'a Netlink,
    _turn: MutexGuard<'a, ()>,
}

impl std::ops::Deref for WriteTurn<'_> {
    type Target = Netlink;
    fn deref(&self) -> &Netlink {
        self.netlink
    }
}

impl LinkWriter {
    pub fn new(netlink: Netlink) -> Self {
        Self {
            netlink,
            turn: Mutex::new(()),
        }
    }

    /// For reads (link table dumps, one link's attributes): they need no turn.
    pub fn reader(&self) -> &Netlink {
        &self.netlink
    }

    /// Waits for this task's turn to change links.
    pub async fn turn(&self) -> WriteTurn<'_> {
        WriteTurn {
            netlink: &self.netlink,
            _turn: self.turn.lock().await,
        }
    }
}
