//! ADD for a device the agent allocated in place: its [`AllocationRecord`] names the lower device, the mode and the
//! tap index `N` it answered as `/dev/tapN`; the pod's macvtap is created right inside `CNI_NETNS`, already named
//! `CNI_IFNAME`, with index `N`, MAC, MTU, promisc and up, in one request ([`macvtap_link::PodMacvtap`]). No link
//! crosses a namespace.
//!
//! Steps (after the PodResources check): lower device by name on the host socket (its index for `IFLA_LINK`, its MTU
//! for the `mtu` check and the result) → IPAM ADD (its MAC goes into the creation) → create → prove `/dev/tapN` is
//! the new link's tap ([`TapNode::verify`]) and chown it → in the pod: `arp_notify`/`ndisc_notify`, addresses and
//! routes; then the [`AttachClaim`] (the agent's PreStartContainer hands the tap over only on it). A taken name or
//! index creates nothing; any failure after the creation deletes the new link (never
//! another: it is found by the index only this ADD could create there) and releases the IP.

use std::fs::File;
use std::io;

use macvtap_core::attach_claim::boot_id;
use macvtap_core::{AllocationRecord, AttachClaim};
use macvtap_link::tap::TapNode;
use macvtap_link::{LinkInfo, Netlink, PodMacvtap, format_mac, random_local_mac};

use crate::config::NetConf;
use crate::error::{CniError, Code};
use crate::netns::{netlink, netlink_in, sys};
use crate::result::{ParsedResult, PodInterface};

pub(crate) struct InPlace<'a> {
    pub conf: &'a NetConf,
    pub device_id: &'a str,
    /// Where the record is, and the claim goes ([`AttachClaim`]).
    pub node_dir: &'a std::path::Path,
    pub record: &'a AllocationRecord,
    pub netns: &'a File,
    pub netns_path: &'a str,
    pub ifname: &'a str,
    /// The MAC asked for in the config or args.
    pub requested_mac: Option<[u8; 6]>,
}

/// Create the pod's macvtap; `ipam_add` runs between the lower device's check and the creation (its MAC is used),
/// `ipam_release` when anything fails after it succeeded.
pub(crate) fn attach(
    p: &InPlace,
    ipam_add: impl FnOnce() -> Result<Option<ParsedResult>, CniError>,
    ipam_release: impl Fn(),
) -> Result<(PodInterface, Option<ParsedResult>), CniError> {
    let index = p.record.tap_index;
    let mut ipam = None;
    let created = netlink(async |nl| {
        let lower = lower_device(nl, p).await?;
        ipam = ipam_add()?;
        let mac = ipam
            .as_ref()
            .and_then(ParsedResult::ipam_mac)
            .or(p.requested_mac)
            .unwrap_or_else(random_local_mac);
        let spec = PodMacvtap {
            name: p.ifname,
            index,
            lower: &lower,
            mode: p.record.mode,
            mac,
            mtu: p.conf.mtu,
            promisc: p.conf.promisc,
            up: true,
        };
        // A refusal is named after this runtime ends: naming it looks into the pod.
        Ok(nl
            .create_macvtap_in(&spec, p.netns)
            .await
            .map(|()| (lower.mtu, mac)))
    })
    .and_then(|created| created.map_err(|e| creation_error(p, &e)));
    let settled = created.and_then(|(lower_mtu, mac)| {
        settle(p, ipam.as_ref())
            .inspect_err(|_| {
                if let Err(de) = delete_created(p) {
                    eprintln!(
                        "macvtap: could not delete {} (ifindex {index}) after a failed ADD: {de}",
                        p.ifname
                    );
                }
            })
            .map(|()| (lower_mtu, mac))
    });
    match settled {
        Ok((lower_mtu, mac)) => Ok((
            PodInterface {
                name: p.ifname.to_string(),
                mac: format_mac(&mac),
                mtu: p.conf.mtu.unwrap_or(lower_mtu),
                sandbox: p.netns_path.to_string(),
            },
            ipam,
        )),
        Err(e) => {
            if ipam.is_some() {
                ipam_release();
            }
            Err(e)
        }
    }
}

/// The record's lower device on the host, checked against the config's `mtu`.
async fn lower_device(nl: &Netlink, p: &InPlace<'_>) -> Result<LinkInfo, CniError> {
    let lower = nl
        .find_link(&p.record.lower_device)
        .await
        .map_err(sys("looking up the lower device"))?
        .ok_or_else(|| {
            CniError::new(
                Code::DeviceNotFound,
                format!(
                    "deviceID {:?}: lower device {} of resource {} not found on this node",
                    p.device_id, p.record.lower_device, p.record.resource
                ),
                "",
            )
        })?;
    if let Some(mtu) = p.conf.mtu
        && mtu > lower.mtu
    {
        return Err(CniError::config(format!(
            "mtu {mtu} is above the lower device's MTU {}",
            lower.mtu
        )));
    }
    Ok(lower)
}

/// A refused creation, named: the kernel says `EEXIST` for a taken name and a taken index alike.
fn creation_error(p: &InPlace, e: &macvtap_link::Error) -> CniError {
    let index = p.record.tap_index;
    if !e.is_exists() {
        return CniError::system(
            format!(
                "creating {} (ifindex {index}) on {} in CNI_NETNS",
                p.ifname, p.record.lower_device
            ),
            e,
        );
    }
    let name_taken = netlink_in(p.netns_path, async |nl| {
        Ok(nl.find_link(p.ifname).await.ok().flatten().is_some())
    })
    .unwrap_or(false);
    if name_taken {
        CniError::new(
            Code::InterfaceExists,
            format!("CNI_IFNAME {} already exists in CNI_NETNS", p.ifname),
            "",
        )
    } else {
        CniError::new(
            Code::TapMismatch,
            format!(
                "ifindex {index} (the device plugin announced /dev/tap{index} for deviceID {:?}) is taken in CNI_NETNS; nothing was created",
                p.device_id
            ),
            e.to_string(),
        )
    }
}

/// The tap proven and chowned, then the pod side: notify sysctls, addresses, routes.
fn settle(p: &InPlace, ipam: Option<&ParsedResult>) -> Result<(), CniError> {
    let index = p.record.tap_index;
    let tap = TapNode::verify(p.ifname, index).map_err(|e| {
        CniError::new(
            Code::TapMismatch,
            format!(
                "/dev/tap{index} is not the tap of the new {} (deviceID {:?}): another macvtap on this machine has ifindex {index}; the link was deleted, retry once it is gone",
                p.ifname, p.device_id
            ),
            e.to_string(),
        )
    })?;
    tap.chown(p.conf.owner, p.conf.group)
        .map_err(|e| CniError::system(format!("chown {}", tap.path().display()), e))?;
    // The agent's PreStartContainer hands /dev/tapN to the containers only on this word (a tap at N made by anyone
    // else is a squatter's).
    let (major, minor) = tap.device();
    let claim = AttachClaim {
        tap_index: index,
        ifname: p.ifname.to_string(),
        major,
        minor,
        sysfs_node: tap.sysfs_node(),
        boot_id: boot_id().map_err(|e| CniError::system("reading the boot ID", e))?,
    };
    claim
        .write(p.node_dir, p.device_id)
        .map_err(|e| CniError::system("writing the attach claim", e))?;
    match ipam {
        // Addresses need a netlink socket in the pod; the sysctls are set from the same thread.
        Some(ipam) => netlink_in(p.netns_path, async |nl| {
            notify_sysctls(p.ifname)?;
            crate::attach::add_addresses_and_routes(nl, index, ipam).await
        }),
        None => {
            macvtap_link::in_netns_here(p.netns_path, || notify_sysctls(p.ifname)).map_err(|e| {
                CniError::new(
                    Code::UnknownContainer,
                    format!(
                        "CNI_NETNS {}: cannot enter the network namespace",
                        p.netns_path
                    ),
                    e.to_string(),
                )
            })?
        }
    }
}

/// `arp_notify` (and `ndisc_notify` where IPv6 is on), as every ADD sets them: a later MAC change is announced.
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

/// Delete the link this ADD created: the one at the record's index in the pod, if it is a macvtap with our name.
fn delete_created(p: &InPlace) -> Result<(), CniError> {
    netlink_in(p.netns_path, async |nl| {
        let index = p.record.tap_index;
        match nl.link_by_index(index).await.map_err(sys("looking up"))? {
            Some(l) if l.is_macvtap() && l.name == p.ifname => nl
                .delete_link(index)
                .await
                .map_err(sys(format!("deleting {}", p.ifname))),
            _ => Ok(()),
        }
    })
}
