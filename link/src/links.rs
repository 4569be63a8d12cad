//! Links: the netlink connection ([`Netlink`]), reading links, creating the host macvtap of a device ID, deleting,
//! moving into a network namespace, changing attributes.

use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use macvtap_core::MacvtapMode;
use macvtap_core::device::{host_link_name, ownership_alias};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkMacVtap, LinkUnspec};

use crate::{Error, LinkInfo, LowerDeviceState, OurLink, Result};

/// `name` as a kernel interface name, or [`Error::InvalidName`].
fn check_ifname(name: &str) -> Result<()> {
    macvtap_core::validate_ifname(name).map_err(|_| Error::InvalidName(name.to_string()))
}

/// Attribute changes for [`Netlink::set_link`]; `None` leaves a value alone.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub promisc: Option<bool>,
    pub up: Option<bool>,
    pub alias: Option<String>,
}

/// A netlink connection in the network namespace of the thread that created it.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    /// Open a netlink socket and spawn its connection task on the current tokio runtime (current-thread is fine).
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The link called `name`, if any.
    pub async fn find_link(&self, name: &str) -> Result<Option<LinkInfo>> {
        check_ifname(name)?;
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        not_found_to_none(res.map(|m| m.map(|m| LinkInfo::from_message(&m))))
    }

    /// The link with ifindex `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let res = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        not_found_to_none(res.map(|m| m.map(|m| LinkInfo::from_message(&m))))
    }

    /// Every link of this netns.
    pub async fn list_links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// Every macvtap link of this netns that carries our marker, with its device ID.
    pub async fn list_our_links(&self) -> Result<Vec<OurLink>> {
        Ok(self
            .list_links()
            .await?
            .into_iter()
            .filter_map(|l| {
                Some(OurLink {
                    device_id: l.marker_device_id()?.to_string(),
                    link: l,
                })
            })
            .collect())
    }

    /// Index, admin/oper state and kind of the lower device `name`; `None` when it does not exist.
    pub async fn lower_device_state(&self, name: &str) -> Result<Option<LowerDeviceState>> {
        Ok(self.find_link(name).await?.map(|l| LowerDeviceState {
            index: l.index,
            admin_up: l.admin_up,
            oper_up: l.oper_up,
            kind: l.kind,
            mtu: l.mtu,
        }))
    }

    /// (Re)create the host macvtap link for `device_id` on `lower`: a stale link of that name is deleted only if it
    /// is ours; txqlen is copied from the lower device; the marker alias is set; the link is brought up.
    pub async fn create_macvtap(
        &self,
        lower: &str,
        device_id: &str,
        mode: MacvtapMode,
    ) -> Result<LinkInfo> {
        self.create_macvtap_at(lower, device_id, mode, None).await
    }

    /// [`Netlink::create_macvtap`] with the ifindex `index` when given (the kernel refuses one that is taken in this
    /// netns), else one the kernel picks.
    pub async fn create_macvtap_at(
        &self,
        lower: &str,
        device_id: &str,
        mode: MacvtapMode,
        index: Option<u32>,
    ) -> Result<LinkInfo> {
        let lower_link = self
            .find_link(lower)
            .await?
            .ok_or_else(|| Error::LowerDeviceNotFound(lower.to_string()))?;
        let name = host_link_name(device_id);
        let add = || {
            let mut msg = LinkMacVtap::new(&name, lower_link.index, crate::mode::to_netlink(mode))
                .txqueuelen(lower_link.txqlen);
            if let Some(i) = index {
                msg = msg.index(i);
            }
            self.handle.link().add(msg.build()).execute()
        };
        // Created first, looked at only when the name (or index) is taken: the common case is one request.
        if let Err(e) = add().await {
            let e = Error::from(e);
            let Some(stale) = (if e.is_exists() {
                self.find_link(&name).await?
            } else {
                None
            }) else {
                return Err(e);
            };
            if let Some(reason) = stale.not_ours_reason(device_id) {
                return Err(Error::NotOurs { name, reason });
            }
            self.delete_link(stale.index).await?;
            add().await?;
        }
        let created = match index {
            Some(i) => i,
            None => {
                self.find_link(&name)
                    .await?
                    .ok_or_else(|| Error::NotOurs {
                        name: name.clone(),
                        reason: "vanished right after creation".into(),
                    })?
                    .index
            }
        };
        // Marker before up: a link that is up is never without its marker.
        let change = LinkChange {
            alias: Some(ownership_alias(device_id)),
            up: Some(true),
            ..Default::default()
        };
        if let Err(e) = self.set_link(created, &change).await {
            let _ = self.delete_link(created).await;
            return Err(e);
        }
        self.link_by_index(created).await?.ok_or(Error::NotOurs {
            name,
            reason: "vanished right after creation".into(),
        })
    }

    /// Delete the host link of `device_id` if it exists and is ours. `Ok(false)` when there is none; an error
    /// (and no change) when the name belongs to a link that is not ours.
    pub async fn delete_our_link(&self, device_id: &str) -> Result<bool> {
        let name = host_link_name(device_id);
        let Some(link) = self.find_link(&name).await? else {
            return Ok(false);
        };
        if let Some(reason) = link.not_ours_reason(device_id) {
            return Err(Error::NotOurs { name, reason });
        }
        match self.delete_link(link.index).await {
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
            Ok(()) => Ok(true),
        }
    }

    /// Delete a link by index (no ownership check: callers check first).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        Ok(self.handle.link().del(index).execute().await?)
    }

    /// Move link `index` into the netns `netns` (an open `/proc/<pid>/ns/net` or `/run/netns/x` file), renaming
    /// it to `new_name` at the same time when given (atomic: no window with a clashing name in either netns).
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns: &impl AsFd,
        new_name: Option<&str>,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_fd().as_raw_fd());
        if let Some(n) = new_name {
            check_ifname(n)?;
            b = b.name(n.to_string());
        }
        Ok(self.handle.link().set(b.build()).execute().await?)
    }

    /// Move link `index` into the netns `netns` under the same ifindex (`IFLA_NEW_IFINDEX`, Linux >= 5.17): where
    /// that index is taken the kernel refuses ([`Error::is_busy`]) and the link stays where it was. Why: the tap node
    /// is named after the ifindex, and a renumbered link's `/dev/tapN` would name another device or none. Kernels
    /// without the attribute ignore it and may renumber: callers check the index after the move.
    pub async fn move_to_netns_keeping_index(&self, index: u32, netns: &impl AsFd) -> Result<()> {
        self.move_to_netns_with_index(index, netns, index).await
    }

    /// Move link `index` into the netns `netns`, where it gets the ifindex `new_index` (see
    /// [`Netlink::move_to_netns_keeping_index`]).
    pub async fn move_to_netns_with_index(
        &self,
        index: u32,
        netns: &impl AsFd,
        new_index: u32,
    ) -> Result<()> {
        let new = i32::try_from(new_index).map_err(|_| Error::InvalidIndex(new_index))?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .append_extra_attribute(LinkAttribute::NewIfIndex(new))
            .build();
        Ok(self.handle.link().set(msg).execute().await?)
    }

    /// Apply `change` to link `index`. The kernel applies a rename/MTU/MAC before the up flag, as `ip link` does.
    pub async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = &change.name {
            check_ifname(n)?;
            b = b.name(n.clone());
        }
        if let Some(m) = change.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = change.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(p) = change.promisc {
            b = b.promiscuous(p);
        }
        if let Some(a) = &change.alias {
            b = b.alias(a.clone());
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        Ok(self.handle.link().set(b.build()).execute().await?)
    }
}

fn not_found_to_none<T>(r: std::result::Result<Option<T>, rtnetlink::Error>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            let e = Error::Netlink(e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}
