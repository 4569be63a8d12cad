//! Moving the host link into the pod and configuring it there, so that the pod's link keeps the ifindex the device
//! plugin announced (`/dev/tap<ifindex>`), that node is proven to be this link's tap before it is chowned, and any
//! failure puts the link back on the host as it was.
//!
//! Steps: move under the host name with `IFLA_NEW_IFINDEX` = the host ifindex (the kernel refuses when the index is
//! taken in the pod: nothing moved) → in the pod: check the index (kernels without the attribute renumber
//! silently) → [`macvtap_link::tap::TapNode::verify`] and chown it → rename to `CNI_IFNAME`, marker for an adopted
//! original link, MTU/MAC/promisc, `arp_notify`/`ndisc_notify`, up, addresses, routes. The move carries no rename:
//! with one in the same request the kernel moves first and may fail the rename afterwards, leaving the link
//! stranded in the pod.

use std::fs::File;

use macvtap_link::tap::TapNode;
use macvtap_link::{LinkChange, LinkInfo, Netlink, format_mac, ownership_alias};

use crate::error::{CniError, Code};
use crate::host_link::HostLink;
use crate::netns::{Runtime, sys};
use crate::pod_side::{PodTarget, add_addresses_and_routes, notify_sysctls};
use crate::result::{ParsedResult, PodInterface};

pub(crate) struct AttachPlan<'a> {
    pub pod: PodTarget<'a>,
    pub host: &'a HostLink,
    pub host_ns: &'a File,
    pub mac: Option<[u8; 6]>,
    pub ipam: Option<&'a ParsedResult>,
}

/// Move and configure; on failure the link is back on the host under its name, index, MTU, MAC, alias and up
/// state (best effort when even that fails: logged).
pub(crate) fn attach(rt: &Runtime, p: &AttachPlan) -> Result<PodInterface, CniError> {
    let index = p.host.link.index;
    let host_name = p.host.link.name.clone();
    rt.netlink(
        async |nl| match nl.move_to_netns_keeping_index(index, p.pod.netns).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_busy() => Err(CniError::new(
                Code::TapMismatch,
                format!(
                    "ifindex {index} of {host_name} (the device plugin announced /dev/tap{index}) is taken in CNI_NETNS; the link stays on the host"
                ),
                e.to_string(),
            )),
            Err(e) if e.is_exists() => Err(CniError::new(
                Code::InterfaceExists,
                format!(
                    "a link named {host_name} already exists in CNI_NETNS; the link stays on the host"
                ),
                e.to_string(),
            )),
            Err(e) => Err(CniError::system("moving the link into CNI_NETNS", e)),
        },
    )?;
    rt.netlink_in(p.pod.netns_path, async |nl| {
        let moved = nl
            .find_link(&host_name)
            .await
            .map_err(sys("finding the moved link"))?
            .ok_or_else(|| CniError::system("the moved link vanished", &host_name))?;
        match settle(nl, p, &moved).await {
            Ok(iface) => Ok(iface),
            Err(e) => {
                if let Err(re) = send_back(nl, p, &moved).await {
                    eprintln!("macvtap: could not return {host_name} to the host: {re}");
                }
                Err(e)
            }
        }
    })
    .inspect_err(|_| {
        // The move took the link down; bring it back up on the host if it was (best effort).
        if p.host.link.admin_up {
            let _ = rt.netlink(async |nl| {
                if let Ok(Some(l)) = nl.find_link(&host_name).await {
                    let up = LinkChange {
                        up: Some(true),
                        ..Default::default()
                    };
                    let _ = nl.set_link(l.index, &up).await;
                }
                Ok(())
            });
        }
    })
}

/// In the pod: the index the device plugin announced, its tap proven and chowned, then [`configure`].
async fn settle(
    nl: &Netlink,
    p: &AttachPlan<'_>,
    moved: &LinkInfo,
) -> Result<PodInterface, CniError> {
    let announced = p.host.link.index;
    if moved.index != announced {
        return Err(CniError::new(
            Code::TapMismatch,
            format!(
                "the kernel renumbered {} from ifindex {announced} to {} in CNI_NETNS, so /dev/tap{announced} would not be its tap; the link went back to the host",
                moved.name, moved.index
            ),
            "this kernel ignores IFLA_NEW_IFINDEX (Linux < 5.17)",
        ));
    }
    let tap = TapNode::verify(&moved.name, moved.index).map_err(|e| {
        CniError::new(
            Code::TapMismatch,
            format!(
                "/dev/tap{announced} is not the tap of {} (deviceID {:?}); the link went back to the host",
                moved.name, p.pod.device_id
            ),
            e.to_string(),
        )
    })?;
    // Moving netns re-created the node root-owned: hand it to the VM's user (the original's owner/group rules).
    tap.chown(p.pod.conf.owner, p.pod.conf.group)
        .map_err(|e| CniError::system(format!("chown {}", tap.path().display()), e))?;
    configure(nl, p, moved.index).await
}

/// Inside the pod netns: name, marker (adopted original link), MTU, MAC, promisc, notify sysctls, up, addresses,
/// routes.
async fn configure(nl: &Netlink, p: &AttachPlan<'_>, index: u32) -> Result<PodInterface, CniError> {
    let pod = &p.pod;
    let rename = LinkChange {
        name: Some(pod.ifname.to_string()),
        ..Default::default()
    };
    nl.set_link(index, &rename).await.map_err(|e| {
        if e.is_exists() {
            CniError::new(
                Code::InterfaceExists,
                format!("CNI_IFNAME {} already exists in CNI_NETNS", pod.ifname),
                "",
            )
        } else {
            CniError::system(format!("renaming the link to {}", pod.ifname), e)
        }
    })?;
    let change = LinkChange {
        mtu: pod.conf.mtu,
        mac: p.mac,
        promisc: pod.conf.promisc.then_some(true),
        // From now on DEL and CHECK know an adopted original link as ours.
        alias: p.host.original.then(|| ownership_alias(pod.device_id)),
        ..Default::default()
    };
    nl.set_link(index, &change)
        .await
        .map_err(sys("setting MTU/MAC/promisc"))?;
    // Announce the (possibly new) MAC as soon as the link comes up.
    notify_sysctls(pod.ifname)?;
    nl.set_link(
        index,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .await
    .map_err(sys("bringing the link up"))?;
    if let Some(ipam) = p.ipam {
        add_addresses_and_routes(nl, index, ipam).await?;
    }
    let link = nl
        .link_by_index(index)
        .await
        .map_err(sys("reading the link back"))?
        .ok_or_else(|| CniError::system("the link vanished", pod.ifname))?;
    Ok(PodInterface {
        name: link.name.clone(),
        mac: link.mac.as_deref().map(format_mac).unwrap_or_default(),
        mtu: link.mtu,
        sandbox: pod.netns_path.to_string(),
    })
}

/// Undo [`configure`] and move the link back to the host under its old ifindex (any index if that one was taken
/// meanwhile: better than stranding it in the pod).
async fn send_back(
    nl: &Netlink,
    p: &AttachPlan<'_>,
    moved: &LinkInfo,
) -> Result<(), macvtap_link::Error> {
    let index = moved.index;
    // Renames are refused while a link is up: down first.
    nl.set_link(
        index,
        &LinkChange {
            up: Some(false),
            ..Default::default()
        },
    )
    .await?;
    let undo = LinkChange {
        name: Some(p.host.link.name.clone()),
        mtu: Some(moved.mtu),
        mac: moved.mac.as_deref().and_then(|m| m.try_into().ok()),
        promisc: Some(moved.promisc),
        up: Some(false),
        // An adopted original link leaves without our marker, as it came.
        alias: p.host.original.then(String::new),
    };
    nl.set_link(index, &undo).await?;
    match nl
        .move_to_netns_with_index(index, p.host_ns, p.host.link.index)
        .await
    {
        Err(e) if e.is_busy() || e.is_exists() => {
            eprintln!(
                "macvtap: ifindex {} was taken on the host meanwhile; {} returns under a new one",
                p.host.link.index, p.host.link.name
            );
            nl.move_to_netns(index, p.host_ns, None).await
        }
        other => other,
    }
}
