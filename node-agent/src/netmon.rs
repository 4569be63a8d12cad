//! Host links as netlink reports them, pushed on change: the link crate's subscription to link changes
//! ([`macvtap_link::LinkSubscription`]) wakes a task that re-reads the link table and publishes a snapshot when it
//! differs. Re-reading the whole table (a few dozen links on a node) instead of applying single events keeps
//! renames, lost events (socket overrun) and ordering trivially right.
//!
//! The subscription is kept up: when the event stream ends (the socket failed, the connection task died) the
//! monitor says so ([`Monitor::subscribed`] goes false, `/healthz` fails) and subscribes again with backoff, then
//! re-reads the table so nothing that happened in between is missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use macvtap_link::{LinkInfo, LinkSubscription, Netlink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// All links of the agent's network namespace by name, as the link crate reads them ([`LinkInfo::healthy`]: usable
/// as a lower device).
pub type LinkSnapshot = Arc<BTreeMap<String, LinkInfo>>;

/// Subscribes to link changes, then reads the table on that socket (a change in between is both in the table and an
/// event).
async fn subscribe() -> Result<(LinkSubscription, BTreeMap<String, LinkInfo>), macvtap_link::Error>
{
    let sub = Netlink::subscribe_links()?;
    let links = by_name(sub.links().await?);
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
) -> Result<Monitor, macvtap_link::Error> {
    let (mut sub, first) = subscribe().await?;
    let (tx, links) = watch::channel(Arc::new(first));
    let (subscribed_tx, subscribed) = watch::channel(true);
    let mut fault = fault;
    let publish = move |links: BTreeMap<String, LinkInfo>| {
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
                    changed = sub.changed() => {
                        if !changed {
                            tracing::error!("netlink event stream ended; subscribing again");
                            break;
                        }
                    }
                }
                match sub.links().await {
                    Ok(links) => publish(by_name(links)),
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

/// Every link of the namespace, read now, by name.
pub async fn link_table(
    netlink: &Netlink,
) -> Result<BTreeMap<String, LinkInfo>, macvtap_link::Error> {
    Ok(by_name(netlink.list_links().await?))
}

fn by_name(links: Vec<LinkInfo>) -> BTreeMap<String, LinkInfo> {
    links.into_iter().map(|l| (l.name.clone(), l)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An up, non-loopback link without master or alias, for the unit tests of the modules that read links.
    pub(crate) fn link(index: u32, name: &str, kind: Option<&str>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: kind.map(Into::into),
            admin_up: true,
            oper_up: true,
            ..Default::default()
        }
    }
}
