//! What the node agent and the `macvtap` CNI share about macvtap links, split by concern as containernetworking's
//! `pkg/ip` is.
//!
//! This crate stays small on purpose: no kube client, no multi-thread tokio runtime (the CNI binary links it). The
//! pure rules (macvtap mode, interface names, device IDs, host link names, the ownership marker) are
//! `macvtap-core`'s, re-exported here; this crate turns them into netlink.
//!
//! | module | what |
//! |---|---|
//! | [`info`] | [`LinkInfo`], the one parser of link messages (the agent's link monitor publishes it too) |
//! | [`ownership`] | which links are ours: [`LinkInfo::is_ours`], [`LinkInfo::our_device_id`], [`LinkInfo::marker_device_id`], [`LinkInfo::is_unmarked_original`] |
//! | [`links`] | [`Netlink`]: find, list, create the host macvtap of a device ID, delete, move to a netns, [`LinkChange`] |
//! | [`monitor`] | [`Netlink::subscribe_links`]: a [`LinkSubscription`] that wakes when a link of the netns changed |
//! | [`in_place`] | [`Netlink::create_macvtap_in`]: a macvtap created inside a pod netns in one request ([`PodMacvtap`]) |
//! | [`addr_route`] | addresses and routes of a link |
//! | [`netns`] | [`block_on`] (a fresh current-thread runtime), [`in_netns`] (a thread inside another netns) |
//! | [`mac`] | MAC text: [`format_mac`], [`parse_mac`]; [`random_local_mac`] |
//! | [`tap`] | tap nodes: [`tap::TapNode::verify`] proves `/dev/tap<ifindex>` is that link's, [`tap::TapNode::chown`] |
//! | [`error`] | [`Error`], with the kernel's errno |
//!
//! The netlink socket of a [`Netlink`] lives in the netns of the thread that called [`Netlink::new`]: combine
//! [`in_netns`] + [`block_on`] + [`Netlink::new`] to do netlink work inside a pod netns.
//! [`Netlink::create_macvtap`]`(lower, device_id, mode)` (re)creates the host link (a stale one is deleted only if
//! it is ours), copies txqlen from the lower device, sets the marker, brings it up; its tap node is
//! `/dev/tap<ifindex>` ([`LinkInfo::tap_path`]). [`Netlink::create_macvtap_at`] picks the ifindex (tests use indices
//! no one else has). [`Netlink::move_to_netns_keeping_index`] moves a link with `IFLA_NEW_IFINDEX`: it keeps its
//! ifindex, hence its `/dev/tapN`, or does not move.

pub mod addr_route;
pub mod error;
pub mod in_place;
pub mod info;
pub mod links;
pub mod mac;
mod mode;
pub mod monitor;
pub mod netns;
pub mod ownership;
pub mod tap;

pub use addr_route::{LinkAddress, Route};
pub use error::{Error, Result};
pub use in_place::PodMacvtap;
pub use info::{LinkInfo, LowerDeviceState};
pub use links::{LinkChange, Netlink};
pub use mac::{format_mac, parse_mac, random_local_mac};
pub use macvtap_core::device::{
    ALIAS_PREFIX, device_id, device_id_from_alias, host_link_name, ownership_alias,
    released_original_link_name,
};
pub use macvtap_core::{MAX_IFNAME_LEN, MacvtapMode};
pub use monitor::LinkSubscription;
pub use netns::{block_on, in_netns, in_netns_here};
pub use ownership::OurLink;
