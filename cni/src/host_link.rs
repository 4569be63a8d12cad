//! Which host link ADD may take for `deviceID`, and on whose word.
//!
//! The link is named `host_link_name(deviceID)` (the original's scheme; its releases up to v0.13.1 name it
//! `deviceID` itself, also found here when unmarked) and must be a macvtap. Two kinds pass:
//! - **ours**: it carries the agent's marker for this device ID. Taken when the kubelet says the pod holds the
//!   device, or, outside Kubernetes, when the node allows unchecked calls.
//! - **the original's** (upgrade from kubevirt/macvtap-cni): no ifalias at all. The marker is missing, so the only
//!   proof is the kubelet's: taken only for a pod PodResources shows holding the device, never outside
//!   Kubernetes. A tenant cannot create host links, so an unmarked macvtap of this exact name in the host netns was
//!   made by the original's device plugin (or the node's admin) for this device ID.
//!
//! Anything else under that name, or a `deviceID` naming another interface (`eth0`, `lo`, a veth), is refused with
//! the link untouched.

use macvtap_core::validate_ifname;
use macvtap_link::{LinkInfo, Netlink, host_link_name};

use crate::error::{CniError, Code};
use crate::netns::sys;

/// On whose word ADD may take a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The kubelet (PodResources) says the pod holds the device.
    Allocated,
    /// Not a Kubernetes pod, and the node config allows such calls: only the marker speaks for the link.
    Unchecked,
}

/// The host link ADD will move.
#[derive(Debug, Clone)]
pub(crate) struct HostLink {
    pub link: LinkInfo,
    /// The lower device's MTU (the link's own when the lower device is not visible).
    pub lower_mtu: u32,
    /// An unmarked link of the original: ADD sets our marker on it in the pod (so DEL and CHECK know it), and
    /// clears it again when the link goes back to the host.
    pub original: bool,
}

/// The host link of `device_id`, checked against `proof`.
pub(crate) async fn find(
    nl: &Netlink,
    device_id: &str,
    proof: &Proof,
) -> Result<HostLink, CniError> {
    let mut name = host_link_name(device_id);
    let mut found = nl
        .find_link(&name)
        .await
        .map_err(sys("looking up the host link"))?;
    if found.is_none() && validate_ifname(device_id).is_ok() {
        // kubevirt/macvtap-cni up to v0.13.1 names its link after the device ID: a device it allocated before the
        // upgrade is attached like the original's link under our name (same checks below).
        found = nl
            .find_link(device_id)
            .await
            .ok()
            .flatten()
            .filter(|l| l.is_unmarked_original(device_id));
        if found.is_some() {
            name = device_id.to_string();
        }
    }
    let Some(link) = found else {
        if validate_ifname(device_id).is_ok()
            && nl.find_link(device_id).await.ok().flatten().is_some()
        {
            return Err(CniError::new(
                Code::NotOurs,
                format!(
                    "deviceID {device_id:?} names an interface that is not a macvtap created by macvtap-operator; refusing it"
                ),
                "",
            ));
        }
        return Err(CniError::new(
            Code::DeviceNotFound,
            format!(
                "deviceID {device_id:?}: host link {name} not found (not allocated by the device plugin, or already in a pod)"
            ),
            "",
        ));
    };
    let original = if link.is_ours(device_id) {
        false
    } else if link.is_unmarked_original(device_id) {
        if *proof != Proof::Allocated {
            return Err(CniError::new(
                Code::NotOurs,
                format!(
                    "deviceID {device_id:?}: link {name} is an unmarked macvtap (kubevirt/macvtap-cni's); only a Kubernetes pod the kubelet allocated it to may take it"
                ),
                "no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS",
            ));
        }
        true
    } else {
        return Err(CniError::new(
            Code::NotOurs,
            format!(
                "deviceID {device_id:?}: link {name} is not a macvtap created by macvtap-operator or kubevirt/macvtap-cni; refusing it"
            ),
            link.not_ours_reason(device_id).unwrap_or_default(),
        ));
    };
    let lower_mtu = match link.parent_index {
        Some(p) => nl
            .link_by_index(p)
            .await
            .map_err(sys("looking up the lower device"))?
            .map(|l| l.mtu),
        None => None,
    };
    // A macvtap cannot exceed its lower device: without one, fall back to the link's own current MTU.
    Ok(HostLink {
        lower_mtu: lower_mtu.unwrap_or(link.mtu),
        link,
        original,
    })
}
