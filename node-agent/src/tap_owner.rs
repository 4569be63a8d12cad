//! Whose tap a device's index `N` is when PreStartContainer runs (issue 20, no squatting): the kubelet hands the
//! container `/dev/tapN`, so the agent makes sure that is this device's tap before saying yes.
//!
//! What is provable from the host, and what is accepted:
//! - **our host link**: a link in the agent's (host) netns with the device's host link name, our marker, ifindex
//!   `N`, whose tap's device number (the host netns's `/sys/class/net/<name>/macvtap/tapN/dev`) is the tap at `N`
//!   in `/sys/dev/char`. An earlier PreStart made it, and checked then that no other tap had `N`.
//! - **the pod's own link, made in place by the CNI**: a tap in another netns shows only its name, index, device
//!   number and sysfs entry (that netns's links and `/sys/class/net` are not visible from the host, nor which pod
//!   it is in). So it is accepted only on the CNI's [`AttachClaim`]: the CNI checked the PodResources grant,
//!   created the link at `N` and proved `/dev/tapN` was its tap; the claim names that device (number and sysfs
//!   entry inode) in this boot, and `/dev/tapN` stays that device's node while it exists.
//! - anything else with tap `N` — a link in the host netns that is not our host link for this device, a link in
//!   another netns without the CNI's claim — is a **squatter**: refused, named (its name, and whether it is in the
//!   host netns), the tap never handed over. The pod's container cannot start until the squatter is gone; a new
//!   pod for the device gets a fresh index (Allocate skips indices some link has).
//!
//! When our tap is there and another link also has index `N` (created after ours: the kernel gave it no
//! `/dev/tapN`), ours is still what `/dev/tapN` is: accepted, the other named in a warning.

use macvtap_core::AttachClaim;
use macvtap_link::tap::TapDevice;

/// What PreStartContainer found at tap index `N`.
#[derive(Debug, PartialEq, Eq)]
pub enum TapOwner<'a> {
    /// No link has tap `N`: PreStart makes the host link there.
    Nobody,
    /// This device's tap (see the module); `others` also have index `N`, without `/dev/tapN`.
    Ours {
        tap: &'a TapDevice,
        others: Vec<&'a TapDevice>,
    },
    /// Only links that are not this device's have tap `N`.
    Squatted(Vec<&'a TapDevice>),
}

/// What is known about this device's own candidates for tap `N`.
pub struct OwnTaps<'a> {
    /// Our host link's name and its tap's device number, when the host netns has it at `N` with our marker.
    pub host_link: Option<(&'a str, (u64, u64))>,
    /// The CNI's claim for the device, if any.
    pub claim: Option<&'a AttachClaim>,
    /// This boot's ID (a claim of another boot proves nothing).
    pub boot_id: &'a str,
}

/// Whose tap `index` is among `taps` (every macvtap tap on the machine).
pub fn judge<'a>(taps: &'a [TapDevice], index: u32, own: &OwnTaps) -> TapOwner<'a> {
    let at: Vec<&TapDevice> = taps.iter().filter(|t| t.index == index).collect();
    if at.is_empty() {
        return TapOwner::Nobody;
    }
    let is_ours = |t: &TapDevice| {
        own.host_link
            .is_some_and(|(name, device)| t.ifname == name && t.device == device)
            || own
                .claim
                .is_some_and(|c| c.names(own.boot_id, index, &t.ifname, t.device, t.sysfs_node))
    };
    match at.iter().position(|t| is_ours(t)) {
        Some(i) => {
            let tap = at[i];
            let others = at.into_iter().filter(|t| *t != tap).collect();
            TapOwner::Ours { tap, others }
        }
        None => TapOwner::Squatted(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(ifname: &str, index: u32, minor: u64, node: u64) -> TapDevice {
        TapDevice {
            ifname: ifname.into(),
            index,
            device: (246, minor),
            sysfs_node: node,
        }
    }

    const N: u32 = 1_900_000_001;

    #[test]
    fn only_the_host_link_or_the_claimed_device_is_ours() {
        let claim = AttachClaim {
            tap_index: N,
            ifname: "net1".into(),
            major: 246,
            minor: 5,
            sysfs_node: 50,
            boot_id: "b".into(),
        };
        let none = OwnTaps {
            host_link: None,
            claim: None,
            boot_id: "b",
        };
        let host = OwnTaps {
            host_link: Some(("mvtabc", (246, 3))),
            ..none
        };
        let claimed = OwnTaps {
            claim: Some(&claim),
            ..none
        };
        let other_index = [tap("mvtabc", N + 1, 3, 30)];
        assert_eq!(judge(&other_index, N, &host), TapOwner::Nobody);

        let ours_on_host = [tap("mvtabc", N, 3, 30)];
        assert!(
            matches!(judge(&ours_on_host, N, &host), TapOwner::Ours { others, .. } if others.is_empty())
        );
        // The same tap without our host link at N (a squatter named like it, or none of ours): not ours.
        assert!(matches!(judge(&ours_on_host, N, &none), TapOwner::Squatted(s) if s.len() == 1));
        // A squatter with our host link's name in another netns: another device number.
        let twin = [tap("mvtabc", N, 4, 40)];
        assert!(matches!(judge(&twin, N, &host), TapOwner::Squatted(_)));

        let pods = [tap("net1", N, 5, 50)];
        assert!(matches!(judge(&pods, N, &claimed), TapOwner::Ours { .. }));
        // No claim, or a claim that names another device, boot, name or sysfs entry: a squatter.
        for squatter in [
            tap("net1", N, 6, 50),
            tap("net1", N, 5, 51),
            tap("eth0", N, 5, 50),
        ] {
            let taps = [squatter];
            assert!(matches!(judge(&taps, N, &claimed), TapOwner::Squatted(_)));
        }
        assert!(matches!(judge(&pods, N, &none), TapOwner::Squatted(_)));
        let other_boot = OwnTaps {
            boot_id: "a",
            ..claimed
        };
        assert!(matches!(
            judge(&pods, N, &other_boot),
            TapOwner::Squatted(_)
        ));

        // Ours and a later link at N (no /dev/tapN for it): ours, the other named.
        let both = [tap("net1", N, 5, 50), tap("evil", N, 9, 90)];
        match judge(&both, N, &claimed) {
            TapOwner::Ours { tap, others } => {
                assert_eq!(tap.ifname, "net1");
                assert_eq!(others.len(), 1);
                assert_eq!(others[0].ifname, "evil");
            }
            other => panic!("{other:?}"),
        }
    }
}
