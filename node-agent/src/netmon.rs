//! Host links as netlink reports them, pushed on change: a socket joined to the rtnetlink link multicast group
//! wakes a task that re-reads the link table and publishes a snapshot when it differs. Re-reading the whole table
//! (a few dozen links on a node) instead of applying single events keeps renames, lost events (socket overrun) and
//! ordering trivially right.
//!
//! The subscription is kept up: when the event stream ends (the socket failed, the connection task died) the
//! monitor says so ([`Monitor::subscribed`] goes false, `/healthz` fails) and subscribes again with backoff, then
//! re-reads the table so nothing that happened in between is missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use macvtap_link::Netlink;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One link of the agent's network namespace: the link crate's [`macvtap_link::LinkInfo`], read by its one parser
/// of link messages. [`HostLink::healthy`] says whether it can serve as a lower device.
pub use macvtap_link::LinkInfo as HostLink;

/// All links by name.
pub type LinkSnapshot = Arc<BTreeMap<String, HostLink>>;

/// Errors of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("joining the rtnetlink link multicast group: {0}")]
    Bind(#[source] std::io::Error),
    #[error("reading the link table: {0}")]
    Dump(#[from] macvtap_link::Error),
}

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// One live subscription: the connection task, its handle, and the multicast events it receives.
struct Subscription {
    handle: rtnetlink::Handle,
    events: Events,
    connection: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The socket closes with its connection task.
        self.connection.abort();
    }
}

async fn subscribe() -> Result<(Subscription, BTreeMap<String, HostLink>), Error> {
    let (mut conn, handle, events) = rtnetlink::new_connection().map_err(Error::Socket)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(Error::Bind)?;
    let sub = Subscription {
        handle,
        events,
        connection: tokio::spawn(conn),
    };
    // Read after joining the group: a change in between is both in the table and an event.
    let links = dump(&sub.handle).await?;
    Ok((sub, links))
}

/// The running link monitor's outputs.
#[derive(Clone)]
pub struct Monitor {
    /// The latest link table.
    pub links: watch::Receiver<LinkSnapshot>,
    /// True while subscribed to link events; false while resubscribing.
    pub subscribed: watch::Receiver<bool>,
}

/// How long the monitor waits between failed subscription attempts: 100 ms doubling to 5 s.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// Starts the monitor: the first snapshot is read before this returns; later ones are published as links change.
/// The task ends when `cancel` fires. `on_resubscribe` is called each time the event stream ended and the monitor
/// subscribes again. `fault` is a test hook: while it reads true the monitor drops its subscription (as a failed
/// socket would) and does not subscribe again.
pub async fn spawn(
    cancel: CancellationToken,
    on_resubscribe: impl Fn() + Send + 'static,
    fault: Option<watch::Receiver<bool>>,
) -> Result<Monitor, Error> {
    let (mut sub, first) = subscribe().await?;
    let (tx, links) = watch::channel(Arc::new(first));
    let (subscribed_tx, subscribed) = watch::channel(true);
    let mut fault = fault;
    let publish = move |links: BTreeMap<String, HostLink>| {
        tx.send_if_modified(|cur| {
            if **cur == links {
                false
            } else {
                *cur = Arc::new(links);
                true
            }
        });
    };
    tokio::spawn(async move {
        loop {
            // Follow events until the stream ends (or the test hook breaks it).
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = fault_raised(&mut fault) => {
                        tracing::warn!("test hook: dropping the netlink subscription");
                        break;
                    }
                    ev = sub.events.next() => {
                        if ev.is_none() {
                            tracing::error!("netlink event stream ended; subscribing again");
                            break;
                        }
                    }
                }
                // Coalesce a burst (one `ip link set` can emit several messages) into one re-read.
                while sub.events.try_recv().is_ok() {}
                match dump(&sub.handle).await {
                    Ok(links) => publish(links),
                    Err(e) => tracing::warn!("re-reading links after a netlink event: {e}"),
                }
            }
            subscribed_tx.send_replace(false);
            on_resubscribe();
            // The old socket goes now, not when the new one is up.
            drop(sub);
            let mut backoff = RESUBSCRIBE_BACKOFF.0;
            sub = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = fault_cleared(&mut fault) => {}
                }
                match subscribe().await {
                    Ok((new, links)) => {
                        publish(links);
                        break new;
                    }
                    Err(e) => {
                        tracing::warn!(retry_in = ?backoff, "subscribing to netlink link events: {e}");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(RESUBSCRIBE_BACKOFF.1);
                    }
                }
            };
            tracing::info!("subscribed to netlink link events again");
            subscribed_tx.send_replace(true);
        }
    });
    Ok(Monitor { links, subscribed })
}

/// Resolves when the test hook says "netlink down"; never without a hook.
async fn fault_raised(fault: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = fault
        && rx.wait_for(|down| *down).await.is_ok()
    {
        return;
    }
    *fault = None;
    std::future::pending().await
}

/// Resolves at once without a hook, else when the hook says "netlink up" (or is gone).
async fn fault_cleared(fault: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = fault
        && rx.wait_for(|down| !*down).await.is_err()
    {
        *fault = None;
    }
}

/// The link called `name`, read now; `None` when there is none.
pub async fn read_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<HostLink>, macvtap_link::Error> {
    Netlink::from_handle(handle.clone()).find_link(name).await
}

/// Every link of the namespace, by name.
pub async fn dump(handle: &rtnetlink::Handle) -> Result<BTreeMap<String, HostLink>, Error> {
    let links = Netlink::from_handle(handle.clone()).list_links().await?;
    Ok(links.into_iter().map(|l| (l.name.clone(), l)).collect())
}

/// Whether `link` is a lower device that `[]` discovery serves: a physical link or a bond, not loopback, not a
/// bond member; `extra_kinds` adds link kinds (e.g. `veth` in test nodes, `team` on some hosts).
pub fn suitable_for_discovery(
    link: &HostLink,
    links: &BTreeMap<String, HostLink>,
    extra_kinds: &[String],
) -> bool {
    if link.loopback {
        return false;
    }
    let kind_ok = match link.kind.as_deref() {
        None => true,
        Some("bond") => true,
        Some(k) => extra_kinds.iter().any(|e| e == k),
    };
    if !kind_ok {
        return false;
    }
    // Bond members carry no traffic of their own: the bond is the lower device.
    let enslaved_to_bond = link.master.is_some_and(|m| {
        links
            .values()
            .any(|l| l.index == m && l.kind.as_deref() == Some("bond"))
    });
    !enslaved_to_bond
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An up, non-loopback link without master or alias, for tests here and in `agent`.
    pub(crate) fn link(index: u32, name: &str, kind: Option<&str>) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            kind: kind.map(Into::into),
            admin_up: true,
            oper_up: true,
            ..Default::default()
        }
    }

    #[test]
    fn discovery_takes_physical_links_and_bonds_only() {
        let mut lo = link(1, "lo", None);
        lo.loopback = true;
        let eth0 = link(2, "eth0", None);
        let bond = link(3, "bond0", Some("bond"));
        let mut member = link(4, "eth1", None);
        member.master = Some(3);
        let br = link(5, "br0", Some("bridge"));
        let mut bridged = link(6, "eth2", None);
        bridged.master = Some(5);
        let veth = link(7, "veth0", Some("veth"));
        let mvt = link(8, "mvt0123", Some("macvtap"));
        let all: BTreeMap<_, _> = [&lo, &eth0, &bond, &member, &br, &bridged, &veth, &mvt]
            .into_iter()
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        let pick = |extra: &[String]| -> Vec<&str> {
            all.values()
                .filter(|l| suitable_for_discovery(l, &all, extra))
                .map(|l| l.name.as_str())
                .collect()
        };
        // A link enslaved to a bridge is still a physical NIC; only bond members are skipped.
        assert_eq!(pick(&[]), vec!["bond0", "eth0", "eth2"]);
        assert_eq!(
            pick(&["veth".into()]),
            vec!["bond0", "eth0", "eth2", "veth0"]
        );
    }
}
