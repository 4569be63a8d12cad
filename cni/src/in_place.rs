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

use std::path::Path;

use macvtap_core::attach_claim::boot_id;
use macvtap_core::{AllocationRecord, AttachClaim};
use macvtap_link::tap::TapNode;
use macvtap_link::{LinkInfo, Netlink, PodMacvtap, format_mac, random_local_mac};

use crate::error::{CniError, Code};
use crate::ipam::Ipam;
use crate::netns::{Runtime, enter_failed, sys};
use crate::pod_side::{PodTarget, add_addresses_and_routes, notify_sysctls};
use crate::result::{ParsedResult, PodInterface};

pub(crate) struct InPlace<'a> {
    pub pod: PodTarget<'a>,
    /// Where the record is, and the claim goes ([`AttachClaim`]).
    pub node_dir: &'a Path,
    pub record: &'a AllocationRecord,
    /// The MAC asked for in the config or args.
    pub requested_mac: Option<[u8; 6]>,
}

/// Create the pod's macvtap; IPAM ADD runs between the lower device's check and the creation (its MAC is used),
/// and its address is released when anything fails after it.
pub(crate) fn attach(
    rt: &Runtime,
    p: &InPlace,
    ipam: Option<&Ipam>,
) -> Result<(PodInterface, Option<ParsedResult>), CniError> {
    let index = p.record.tap_index;
    let pod = &p.pod;
    let mut leased = None;
    let created = rt
        .netlink(async |nl| {
            let lower = lower_device(nl, p).await?;
            leased = ipam.map(Ipam::add).transpose()?;
            let mac = leased
                .as_ref()
                .and_then(ParsedResult::ipam_mac)
                .or(p.requested_mac)
                .unwrap_or_else(random_local_mac);
            let spec = PodMacvtap {
                name: pod.ifname,
                index,
                lower: &lower,
                mode: p.record.mode,
                mac,
                mtu: pod.conf.mtu,
                promisc: pod.conf.promisc,
                up: true,
            };
            // A refusal is named after this work ends: naming it looks into the pod.
            Ok(nl
                .create_macvtap_in(&spec, pod.netns)
                .await
                .map(|()| (lower.mtu, mac)))
        })
        .and_then(|created| created.map_err(|e| creation_error(rt, p, &e)));
    let settled = created.and_then(|(lower_mtu, mac)| {
        settle(rt, p, leased.as_ref())
            .inspect_err(|_| {
                if let Err(de) = delete_created(rt, p) {
                    eprintln!(
                        "macvtap: could not delete {} (ifindex {index}) after a failed ADD: {de}",
                        pod.ifname
                    );
                }
            })
            .map(|()| (lower_mtu, mac))
    });
    match settled {
        Ok((lower_mtu, mac)) => Ok((
            PodInterface {
                name: pod.ifname.to_string(),
                mac: format_mac(&mac),
                mtu: pod.conf.mtu.unwrap_or(lower_mtu),
                sandbox: pod.netns_path.to_string(),
            },
            leased,
        )),
        Err(e) => {
            if let (Some(ipam), Some(_)) = (ipam, &leased) {
                ipam.release();
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
                    p.pod.device_id, p.record.lower_device, p.record.resource
                ),
                "",
            )
        })?;
    if let Some(mtu) = p.pod.conf.mtu
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
fn creation_error(rt: &Runtime, p: &InPlace, e: &macvtap_link::Error) -> CniError {
    let index = p.record.tap_index;
    let pod = &p.pod;
    if !e.is_exists() {
        return CniError::system(
            format!(
                "creating {} (ifindex {index}) on {} in CNI_NETNS",
                pod.ifname, p.record.lower_device
            ),
            e,
        );
    }
    let name_taken = rt
        .netlink_in(pod.netns_path, async |nl| {
            Ok(nl.find_link(pod.ifname).await.ok().flatten().is_some())
        })
        .unwrap_or(false);
    if name_taken {
        CniError::new(
            Code::InterfaceExists,
            format!("CNI_IFNAME {} already exists in CNI_NETNS", pod.ifname),
            "",
        )
    } else {
        CniError::new(
            Code::TapMismatch,
            format!(
                "ifindex {index} (the device plugin announced /dev/tap{index} for deviceID {:?}) is taken in CNI_NETNS; nothing was created",
                pod.device_id
            ),
            e.to_string(),
        )
    }
}

/// The tap proven and chowned, then the pod side: notify sysctls, addresses, routes.
fn settle(rt: &Runtime, p: &InPlace, ipam: Option<&ParsedResult>) -> Result<(), CniError> {
    let index = p.record.tap_index;
    let pod = &p.pod;
    let tap = TapNode::verify(pod.ifname, index).map_err(|e| {
        CniError::new(
            Code::TapMismatch,
            format!(
                "/dev/tap{index} is not the tap of the new {} (deviceID {:?}): another macvtap on this machine has ifindex {index}; the link was deleted, retry once it is gone",
                pod.ifname, pod.device_id
            ),
            e.to_string(),
        )
    })?;
    tap.chown(pod.conf.owner, pod.conf.group)
        .map_err(|e| CniError::system(format!("chown {}", tap.path().display()), e))?;
    // The agent's PreStartContainer hands /dev/tapN to the containers only on this word (a tap at N made by anyone
    // else is a squatter's).
    let (major, minor) = tap.device();
    let claim = AttachClaim {
        tap_index: index,
        ifname: pod.ifname.to_string(),
        major,
        minor,
        sysfs_node: tap.sysfs_node(),
        boot_id: boot_id().map_err(|e| CniError::system("reading the boot ID", e))?,
    };
    claim
        .write(p.node_dir, pod.device_id)
        .map_err(|e| CniError::system("writing the attach claim", e))?;
    match ipam {
        // Addresses need a netlink socket in the pod; the sysctls are set from the same thread.
        Some(ipam) => rt.netlink_in(pod.netns_path, async |nl| {
            notify_sysctls(pod.ifname)?;
            add_addresses_and_routes(nl, index, ipam).await
        }),
        None => macvtap_link::in_netns_here(pod.netns_path, || notify_sysctls(pod.ifname))
            .map_err(|e| enter_failed(pod.netns_path, e))?,
    }
}

/// Delete the link this ADD created: the one at the record's index in the pod, if it is a macvtap with our name.
fn delete_created(rt: &Runtime, p: &InPlace) -> Result<(), CniError> {
    let pod = &p.pod;
    rt.netlink_in(pod.netns_path, async |nl| {
        let index = p.record.tap_index;
        match nl.link_by_index(index).await.map_err(sys("looking up"))? {
            Some(l) if l.is_macvtap() && l.name == pod.ifname => nl
                .delete_link(index)
                .await
                .map_err(sys(format!("deleting {}", pod.ifname))),
            _ => Ok(()),
        }
    })
}
