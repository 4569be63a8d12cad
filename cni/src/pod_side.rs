//! What both ADD paths (moved in: [`crate::attach`]; created in place: [`crate::in_place`]) do with the pod: the
//! target they attach to ([`PodTarget`]), the notify sysctls and the IPAM result's addresses and routes.

use std::fs::File;
use std::io;
use std::net::IpAddr;

use macvtap_link::Netlink;

use crate::config::NetConf;
use crate::error::CniError;
use crate::netns::sys;
use crate::result::ParsedResult;

/// The pod end of one ADD: its netns, the link's name there, and the config the link is made by.
pub(crate) struct PodTarget<'a> {
    pub conf: &'a NetConf,
    pub device_id: &'a str,
    pub netns: &'a File,
    pub netns_path: &'a str,
    pub ifname: &'a str,
}

/// `arp_notify` (and `ndisc_notify` where IPv6 is on), as every ADD sets them: a later MAC change is announced.
/// Called on a thread inside the pod's netns (`/proc/sys/net` is per netns).
pub(crate) fn notify_sysctls(ifname: &str) -> Result<(), CniError> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify"), "1")
        .map_err(|e| CniError::system("setting arp_notify", e))?;
    match std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify"),
        "1",
    ) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(CniError::system("setting ndisc_notify", e))
        }
        _ => Ok(()),
    }
}

/// The IPAM result's addresses and routes on link `index` (a route without a gateway takes the first address's of
/// its family).
pub(crate) async fn add_addresses_and_routes(
    nl: &Netlink,
    index: u32,
    ipam: &ParsedResult,
) -> Result<(), CniError> {
    for ip in &ipam.ips {
        match nl.add_address(index, ip.ip, ip.prefix_len).await {
            Err(e) if !e.is_exists() => {
                return Err(CniError::system(
                    format!("adding address {}/{}", ip.ip, ip.prefix_len),
                    e,
                ));
            }
            _ => {}
        }
    }
    let gw_of = |v4: bool| {
        ipam.ips
            .iter()
            .find(|i| i.ip.is_ipv4() == v4)
            .and_then(|i| i.gateway)
    };
    for r in &ipam.routes {
        let gw: Option<IpAddr> = r.gw.or_else(|| gw_of(r.dst.is_ipv4()));
        nl.add_route(r.dst, r.dst_len, gw, index)
            .await
            .map_err(sys(format!(
                "adding route {}/{} via {gw:?}",
                r.dst, r.dst_len
            )))?;
    }
    Ok(())
}
