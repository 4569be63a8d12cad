//! Link state: [`LinkInfo`], and the one parser of rtnetlink link messages into it. The agent's link monitor
//! publishes this type too, so a link reads the same to the agent, the CNI and the tests.

use std::path::PathBuf;

use macvtap_core::MacvtapMode;
use netlink_packet_route::link::{
    InfoData, InfoMacVtap, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, State,
};

use crate::mac::format_mac;

/// What we read back about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"macvtap"`, `"veth"`...); `None` for physical NICs and loopback.
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub mac: Option<Vec<u8>>,
    pub mtu: u32,
    pub txqlen: u32,
    /// Parent ifindex (`IFLA_LINK`), e.g. the lower device of a macvtap (only meaningful in the parent's netns:
    /// see [`LinkInfo::parent_netnsid`]).
    pub parent_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the parent lives in another network namespace.
    pub parent_netnsid: Option<i32>,
    /// Index of the master (bond, bridge) this link is enslaved to (`IFLA_MASTER`).
    pub master: Option<u32>,
    pub admin_up: bool,
    /// Operationally up (or "unknown" with the lower layer up, as links without carrier detection report).
    pub oper_up: bool,
    pub loopback: bool,
    pub promisc: bool,
    pub macvtap_mode: Option<MacvtapMode>,
}

impl LinkInfo {
    pub fn is_macvtap(&self) -> bool {
        self.kind.as_deref() == Some("macvtap")
    }

    /// Usable as a lower device: exists and is operationally up.
    pub fn healthy(&self) -> bool {
        self.oper_up
    }

    /// The character device of a macvtap link.
    pub fn tap_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/tap{}", self.index))
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.as_deref().map(format_mac)
    }

    /// Parses an `RTM_NEWLINK` message (a dump answer or a multicast event).
    pub fn from_message(msg: &LinkMessage) -> Self {
        let flags = msg.header.flags;
        let mut info = LinkInfo {
            index: msg.header.index,
            admin_up: flags.contains(LinkFlags::Up),
            loopback: flags.contains(LinkFlags::Loopback),
            promisc: flags.contains(LinkFlags::Promisc),
            ..Default::default()
        };
        let mut oper_state = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a.clone()),
                LinkAttribute::Address(a) => info.mac = Some(a.clone()),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::TxQueueLen(q) => info.txqlen = *q,
                LinkAttribute::Link(p) => info.parent_index = Some(*p),
                LinkAttribute::LinkNetNsId(n) => info.parent_netnsid = Some(*n),
                LinkAttribute::Controller(m) => info.master = Some(*m),
                LinkAttribute::OperState(s) => oper_state = Some(*s),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::MacVtap(d)) => {
                                for x in d {
                                    if let InfoMacVtap::Mode(m) = x {
                                        info.macvtap_mode = crate::mode::from_netlink(*m);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // Links without carrier detection (veth peers in some states, lo) report "unknown" while working.
        info.oper_up = match oper_state {
            Some(State::Up) => true,
            Some(State::Unknown) => info.admin_up && flags.contains(LinkFlags::LowerUp),
            _ => false,
        };
        info
    }
}

/// State of a pool's lower device, for health reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerDeviceState {
    pub index: u32,
    pub admin_up: bool,
    pub oper_up: bool,
    pub kind: Option<String>,
    pub mtu: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoKind, MacVtapMode as NlMode};

    fn message(flags: LinkFlags, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = flags;
        msg.attributes = attributes;
        msg
    }

    #[test]
    fn a_macvtap_message_is_read_whole() {
        let msg = message(
            LinkFlags::Up | LinkFlags::Promisc,
            vec![
                LinkAttribute::IfName("mvt0123456789ab".into()),
                LinkAttribute::IfAlias("macvtap-operator:dpMvp0".into()),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
                LinkAttribute::Mtu(1400),
                LinkAttribute::TxQueueLen(500),
                LinkAttribute::Link(2),
                LinkAttribute::LinkNetNsId(1),
                LinkAttribute::Controller(9),
                LinkAttribute::OperState(State::Up),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::MacVtap),
                    NlLinkInfo::Data(InfoData::MacVtap(vec![InfoMacVtap::Mode(NlMode::Vepa)])),
                ]),
            ],
        );
        assert_eq!(
            LinkInfo::from_message(&msg),
            LinkInfo {
                index: 7,
                name: "mvt0123456789ab".into(),
                kind: Some("macvtap".into()),
                alias: Some("macvtap-operator:dpMvp0".into()),
                mac: Some(vec![2, 0, 0, 0, 0, 1]),
                mtu: 1400,
                txqlen: 500,
                parent_index: Some(2),
                parent_netnsid: Some(1),
                master: Some(9),
                admin_up: true,
                oper_up: true,
                loopback: false,
                promisc: true,
                macvtap_mode: Some(MacvtapMode::Vepa),
            }
        );
    }

    #[test]
    fn unknown_oper_state_counts_as_up_only_with_the_lower_layer_up() {
        let unknown = |flags| {
            let msg = message(
                flags,
                vec![
                    LinkAttribute::IfName("lo".into()),
                    LinkAttribute::IfAlias(String::new()),
                    LinkAttribute::OperState(State::Unknown),
                ],
            );
            LinkInfo::from_message(&msg)
        };
        let lo = unknown(LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Loopback);
        assert!(lo.oper_up && lo.loopback && lo.healthy());
        assert_eq!(lo.alias, None, "an empty alias is no alias");
        assert_eq!(lo.kind, None);
        assert!(!unknown(LinkFlags::Up).oper_up);
        assert!(!unknown(LinkFlags::LowerUp).oper_up);
        let down = LinkInfo::from_message(&message(
            LinkFlags::Up | LinkFlags::LowerUp,
            vec![LinkAttribute::OperState(State::Down)],
        ));
        assert!(!down.oper_up && !down.healthy());
    }
}
