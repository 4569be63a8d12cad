//! In-place attach: a macvtap created directly inside a pod's network namespace, in one `RTM_NEWLINK`, so no link
//! ever crosses a namespace (a move costs tens of milliseconds of RCU grace periods under RTNL; a creation well
//! under one).
//!
//! The request goes out on a socket in the lower device's netns (`IFLA_LINK` is resolved there) with
//! `NLM_F_CREATE|NLM_F_EXCL`, the chosen ifindex, `IFLA_IFNAME`, `IFLA_ADDRESS`, `IFLA_MTU`, `IFLA_TXQLEN`,
//! `IFLA_LINK`, `IFLA_NET_NS_FD` and the macvtap mode; `IFF_UP`/`IFF_PROMISC` in the header are applied at
//! creation. The kernel creates `/dev/tap<ifindex>` with the link (devtmpfs is one per machine) and removes it with
//! the link. What the kernel ignores on creation (`IFLA_IFALIAS`, per-device sysctls) is not sent.

use std::os::fd::{AsFd, AsRawFd};

use macvtap_core::MacvtapMode;
use rtnetlink::LinkMacVtap;

use crate::{Error, LinkInfo, Netlink, Result};

/// A macvtap to create inside another netns.
#[derive(Debug, Clone)]
pub struct PodMacvtap<'a> {
    /// Its name there (`CNI_IFNAME`).
    pub name: &'a str,
    /// Its ifindex there: the `N` of the `/dev/tapN` announced for it.
    pub index: u32,
    /// The lower device, as read on the socket's netns (index, txqlen).
    pub lower: &'a LinkInfo,
    pub mode: MacvtapMode,
    pub mac: [u8; 6],
    /// `None`: the kernel's default, the lower device's MTU.
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub up: bool,
}

impl Netlink {
    /// Create `spec` inside the netns `netns` (an open `/proc/<pid>/ns/net` or `/run/netns/x`), in one request.
    /// The kernel refuses with `EEXIST` ([`Error::is_exists`]) when the name or the ifindex is taken there, with
    /// `EINVAL` when the MTU is above the lower device's; nothing is created then.
    pub async fn create_macvtap_in(&self, spec: &PodMacvtap<'_>, netns: &impl AsFd) -> Result<()> {
        macvtap_core::validate_ifname(spec.name)
            .map_err(|_| Error::InvalidName(spec.name.to_string()))?;
        if i32::try_from(spec.index).is_err() || spec.index == 0 {
            return Err(Error::InvalidIndex(spec.index));
        }
        let mut b = LinkMacVtap::new(
            spec.name,
            spec.lower.index,
            crate::mode::to_netlink(spec.mode),
        )
        .index(spec.index)
        .address(spec.mac.to_vec())
        .txqueuelen(spec.lower.txqlen)
        .setns_by_fd(netns.as_fd().as_raw_fd());
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        if spec.promisc {
            b = b.promiscuous(true);
        }
        if spec.up {
            b = b.up();
        }
        Ok(self.handle.link().add(b.build()).execute().await?)
    }
}
