//! Link events: a netlink socket joined to the rtnetlink link multicast group ([`Netlink::subscribe_links`]). The
//! agent's link monitor wakes on [`LinkSubscription::changed`] and re-reads the link table on the same socket; what
//! the events say is not parsed, since a fresh table keeps renames, lost events (socket overrun) and ordering
//! trivially right.

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::task::JoinHandle;

use crate::{Error, LinkInfo, Netlink, Result};

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// One live subscription to link changes of this netns: the connection task, and the multicast events it receives.
/// Dropping it closes the socket.
pub struct LinkSubscription {
    netlink: Netlink,
    events: Events,
    connection: JoinHandle<()>,
}

impl Drop for LinkSubscription {
    fn drop(&mut self) {
        // The socket closes with its connection task.
        self.connection.abort();
    }
}

impl Netlink {
    /// Joins the link multicast group of this netns on a socket of its own (spawned on the current tokio runtime).
    /// Read the table with [`LinkSubscription::links`] after this returns: a change in between is then both in the
    /// table and an event.
    pub fn subscribe_links() -> Result<LinkSubscription> {
        let (mut conn, handle, events) = rtnetlink::new_connection().map_err(Error::Socket)?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(Error::Subscribe)?;
        Ok(LinkSubscription {
            netlink: Netlink { handle },
            events,
            connection: tokio::spawn(conn),
        })
    }
}

impl LinkSubscription {
    /// Waits until some link of the netns changed: `true` once one has (a burst of events, as one `ip link set`
    /// emits, counts once), `false` when the subscription ended (the socket failed, its task died).
    pub async fn changed(&mut self) -> bool {
        if self.events.next().await.is_none() {
            return false;
        }
        while self.events.try_recv().is_ok() {}
        true
    }

    /// Every link of the netns, read now on the subscribed socket.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        self.netlink.list_links().await
    }
}
