//! Addresses and routes: what the CNI puts on the pod's interface after IPAM, and reads back for CHECK.

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use crate::{Error, Netlink, Result};

/// An IP address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// A route read back from the kernel (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

impl Netlink {
    /// Addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<LinkAddress>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some(LinkAddress {
                    ip,
                    prefix_len: m.header.prefix_len,
                })
            })
            .collect())
    }

    /// Add `ip/prefix_len` to link `index`.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        Ok(self
            .handle
            .address()
            .add(index, ip, prefix_len)
            .execute()
            .await?)
    }

    /// Add a route to `dst/dst_len` via `gateway` (or on-link without one) out of link `oif`.
    pub async fn add_route(
        &self,
        dst: IpAddr,
        dst_len: u8,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<()> {
        fn inv(e: impl fmt::Display) -> Error {
            Error::InvalidRoute(e.to_string())
        }
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, dst_len)
            .map_err(inv)?;
        b = match gateway {
            Some(gw) => b.gateway(gw).map_err(inv)?,
            None => b.scope(RouteScope::Link),
        };
        let msg = b.output_interface(oif).build();
        Ok(self.handle.route().add(msg).execute().await?)
    }

    /// Unicast routes of the main table, both families.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(family)
                .execute()
                .try_collect()
                .await?;
            out.extend(msgs.iter().filter_map(route_from_message));
        }
        Ok(out)
    }
}

fn route_from_message(m: &RouteMessage) -> Option<Route> {
    if m.header.kind != RouteType::Unicast || m.header.table != 254 {
        return None;
    }
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    let dst = match dst {
        Some(d) => d,
        None if m.header.address_family == netlink_packet_route::AddressFamily::Inet6 => {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        }
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    Some(Route {
        dst,
        dst_len: m.header.destination_prefix_length,
        gateway,
        oif,
    })
}
