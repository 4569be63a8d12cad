//! What the node agent and the `macvtap` CNI share about macvtap links.
//!
//! This crate stays small on purpose: no kube client, no multi-thread tokio runtime (the CNI binary links it).
//!
//! # Public API
//! Naming (pure):
//! - [`device_id`]`(resource, slot)` → `"<resource>Mvp<slot>"`, the original's synthetic device IDs.
//! - [`host_link_name`]`(device_id)` → `"mvt"` + 12 lowercase hex digits of XXH64(seed 0) of the device ID (the low
//!   48 bits, zero-padded, exactly as kubevirt/macvtap-cni `TemporaryInterfaceName` does); always fits IFNAMSIZ.
//! - [`ownership_alias`]`(device_id)` → `"macvtap-operator:<deviceID>"`, the ifalias marker set on every link the
//!   agent creates; [`device_id_from_alias`] parses it back.
//! - [`MacvtapMode`]: `bridge` (default), `vepa`, `private`, `passthru`, `source`; `FromStr`/`Display` lowercase.
//!
//! Netlink ([`Netlink`], async, usable on a current-thread runtime; the socket lives in the netns of the thread
//! that called [`Netlink::new`]):
//! - [`Netlink::create_macvtap`]`(lower, device_id, mode)` → [`LinkInfo`]: (re)creates the host link (a stale one
//!   is deleted only if it is ours), copies txqlen from the lower device, sets the marker, brings it up. The tap
//!   node is `/dev/tap<ifindex>` ([`LinkInfo::tap_path`]).
//! - [`Netlink::find_link`], [`Netlink::link_by_index`], [`Netlink::list_links`], [`Netlink::list_our_links`]
//!   (every macvtap carrying our marker, with its device ID), [`Netlink::delete_our_link`] (refuses links that are
//!   not ours), [`Netlink::lower_device_state`].
//! - [`Netlink::create_macvtap_at`]: the same with a chosen ifindex (tests use indices no one else has, so that
//!   `/dev/tap<ifindex>` is theirs on a machine shared with other namespaces).
//! - Lower-level helpers the CNI uses: [`Netlink::move_to_netns`], [`Netlink::move_to_netns_keeping_index`]
//!   (`IFLA_NEW_IFINDEX`: the link keeps its ifindex, hence its `/dev/tapN`, or does not move; also
//!   [`Netlink::move_to_netns_with_index`]),
//!   [`Netlink::set_link`] ([`LinkChange`]), [`Netlink::delete_link`], [`Netlink::addresses`],
//!   [`Netlink::add_address`], [`Netlink::add_route`], [`Netlink::routes`].
//!
//! Tap nodes ([`tap`]): [`tap::TapNode::verify`]`(name, ifindex)` proves `/dev/tap<ifindex>` is that link's tap
//! (devtmpfs is shared by all namespaces, ifindexes are not) and [`tap::TapNode::chown`] changes its owner.
//!
//! Threads and namespaces:
//! - [`block_on`]: run a future on a fresh current-thread runtime (with IO enabled).
//! - [`in_netns`]`(path, f)`: run `f` on a dedicated thread that entered the network namespace at `path`;
//!   combine with [`block_on`] + [`Netlink::new`] to do netlink work inside a pod netns.
//!
//! Ownership rule ([`LinkInfo::is_ours`]): kind `macvtap`, name == `host_link_name(id)` and alias ==
//! `ownership_alias(id)`. Once the CNI has moved and renamed a link into a pod, only kind + alias still hold:
//! [`LinkInfo::marker_device_id`]. A link the original (kubevirt/macvtap-cni) created has the same kind and name
//! but no alias at all: [`LinkInfo::is_unmarked_original`]; it needs another proof before anyone may use it.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoMacVtap, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    MacVtapMode as NlMode, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkMacVtap, LinkUnspec, RouteMessageBuilder};

pub mod tap;

/// Prefix of the ifalias marker that says "created by macvtap-operator for this device ID".
pub const ALIAS_PREFIX: &str = "macvtap-operator:";

/// Linux IFNAMSIZ minus the trailing NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// The original's synthetic device ID for capacity slot `slot` of `resource`.
pub fn device_id(resource: &str, slot: u32) -> String {
    format!("{resource}Mvp{slot}")
}

/// Name of the host-side macvtap link for a device ID: `mvt` + 12 hex digits of XXH64 (low 48 bits), the
/// original's scheme, so links survive an upgrade from kubevirt/macvtap-cni.
pub fn host_link_name(device_id: &str) -> String {
    let h = xxhash_rust::xxh64::xxh64(device_id.as_bytes(), 0);
    format!("mvt{:012x}", h & 0xffff_ffff_ffff)
}

/// The ifalias marker set on links created for `device_id`.
pub fn ownership_alias(device_id: &str) -> String {
    format!("{ALIAS_PREFIX}{device_id}")
}

/// The device ID carried by an ifalias marker, if it is ours.
pub fn device_id_from_alias(alias: &str) -> Option<&str> {
    alias.strip_prefix(ALIAS_PREFIX).filter(|id| !id.is_empty())
}

/// Whether `name` is a usable Linux interface name (what the kernel's `dev_valid_name` accepts).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// macvtap forwarding mode.
///
/// `macvtap_api::MacvtapMode` is the same set with a JSON schema for the CRDs; it is kept apart so the CNI does not
/// depend on kube. The two convert through their lowercase names (`as_str` / `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacvtapMode {
    #[default]
    Bridge,
    Vepa,
    Private,
    Passthru,
    Source,
}

impl MacvtapMode {
    pub const ALL: [MacvtapMode; 5] = [
        Self::Bridge,
        Self::Vepa,
        Self::Private,
        Self::Passthru,
        Self::Source,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Vepa => "vepa",
            Self::Private => "private",
            Self::Passthru => "passthru",
            Self::Source => "source",
        }
    }

    fn to_netlink(self) -> NlMode {
        match self {
            Self::Bridge => NlMode::Bridge,
            Self::Vepa => NlMode::Vepa,
            Self::Private => NlMode::Private,
            Self::Passthru => NlMode::Passthrough,
            Self::Source => NlMode::Source,
        }
    }

    fn from_netlink(mode: NlMode) -> Option<Self> {
        Some(match mode {
            NlMode::Bridge => Self::Bridge,
            NlMode::Vepa => Self::Vepa,
            NlMode::Private => Self::Private,
            NlMode::Passthrough => Self::Passthru,
            NlMode::Source => Self::Source,
            _ => return None,
        })
    }
}

impl fmt::Display for MacvtapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode string that is not one of the five macvtap modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown macvtap mode {0:?} (expected bridge, vepa, private, passthru or source)")]
pub struct UnknownMode(pub String);

impl FromStr for MacvtapMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("building a tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("lower device {0:?} not found")]
    LowerDeviceNotFound(String),
    #[error("link {name:?} exists but is not ours ({reason})")]
    NotOurs { name: String, reason: String },
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid route {0}")]
    InvalidRoute(String),
    #[error("invalid ifindex {0}")]
    InvalidIndex(u32),
}

impl Error {
    /// The errno of a kernel netlink error (positive), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink(rtnetlink::Error::NetlinkError(m)) => {
                Some(m.raw_code().abs()).filter(|c| *c != 0)
            }
            _ => None,
        }
    }

    /// True for "no such device" from the kernel.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(nix::libc::ENODEV)
    }

    /// True for "file exists" from the kernel (name taken, address present...).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
    }

    /// True for "busy" from the kernel: e.g. the ifindex asked by [`Netlink::move_to_netns_keeping_index`] is taken
    /// in the target netns.
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(nix::libc::EBUSY)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What we read back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"macvtap"`, `"veth"`...); `None` for physical NICs and loopback.
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub mac: Option<Vec<u8>>,
    pub mtu: u32,
    pub txqlen: u32,
    /// Parent ifindex (`IFLA_LINK`), e.g. the lower device of a macvtap (only meaningful in the parent's netns).
    pub parent_index: Option<u32>,
    pub admin_up: bool,
    pub oper_up: bool,
    pub promisc: bool,
    pub macvtap_mode: Option<MacvtapMode>,
}

impl LinkInfo {
    pub fn is_macvtap(&self) -> bool {
        self.kind.as_deref() == Some("macvtap")
    }

    /// The device ID of our marker, when this is a macvtap carrying it (any name: works inside a pod too).
    pub fn marker_device_id(&self) -> Option<&str> {
        if !self.is_macvtap() {
            return None;
        }
        device_id_from_alias(self.alias.as_deref()?)
    }

    /// Strict host-side check: macvtap, named after `device_id`, with our marker for `device_id`.
    pub fn is_ours(&self, device_id: &str) -> bool {
        self.is_macvtap()
            && self.name == host_link_name(device_id)
            && self.marker_device_id() == Some(device_id)
    }

    /// A link as the original (kubevirt/macvtap-cni) left it for `device_id`: macvtap, named after the device ID by
    /// the shared scheme, and no ifalias at all (the original never sets one; any alias is someone's marker). This is
    /// no proof of ownership by itself: the CNI also needs the kubelet's word that the pod holds the device.
    pub fn is_unmarked_original(&self, device_id: &str) -> bool {
        self.is_macvtap() && self.name == host_link_name(device_id) && self.alias.is_none()
    }

    /// Why [`LinkInfo::is_ours`] is false, for error messages.
    pub fn not_ours_reason(&self, device_id: &str) -> Option<String> {
        if !self.is_macvtap() {
            return Some(format!(
                "kind is {}, not macvtap",
                self.kind.as_deref().unwrap_or("physical/none")
            ));
        }
        if self.name != host_link_name(device_id) {
            return Some(format!("name is not {}", host_link_name(device_id)));
        }
        if self.marker_device_id() != Some(device_id) {
            return Some("ownership alias missing or for another device".to_string());
        }
        None
    }

    /// The character device of a macvtap link.
    pub fn tap_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/tap{}", self.index))
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.as_deref().map(format_mac)
    }

    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            alias: None,
            mac: None,
            mtu: 0,
            txqlen: 0,
            parent_index: None,
            admin_up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            macvtap_mode: None,
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
                LinkAttribute::OperState(s) => oper_state = Some(*s),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::MacVtap(d)) => {
                                for x in d {
                                    if let InfoMacVtap::Mode(m) = x {
                                        info.macvtap_mode = MacvtapMode::from_netlink(*m);
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
            Some(State::Unknown) => info.admin_up && msg.header.flags.contains(LinkFlags::LowerUp),
            _ => false,
        };
        info
    }
}

/// Format a MAC as lowercase colon-separated hex.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse a 6-byte MAC (`aa:bb:cc:dd:ee:ff` or with `-`); `None` if malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
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

/// One of our links found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurLink {
    pub device_id: String,
    pub link: LinkInfo,
}

/// Attribute changes for [`Netlink::set_link`]; `None` leaves a value alone.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub promisc: Option<bool>,
    pub up: Option<bool>,
    pub alias: Option<String>,
}

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

/// A netlink connection in the network namespace of the thread that created it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open a netlink socket and spawn its connection task on the current tokio runtime (current-thread is fine).
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The raw rtnetlink handle, for anything not wrapped here.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, if any.
    pub async fn find_link(&self, name: &str) -> Result<Option<LinkInfo>> {
        if !valid_ifname(name) {
            return Err(Error::InvalidName(name.to_string()));
        }
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        not_found_to_none(res.map(|m| m.map(|m| LinkInfo::from_message(&m))))
    }

    /// The link with ifindex `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let res = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        not_found_to_none(res.map(|m| m.map(|m| LinkInfo::from_message(&m))))
    }

    /// Every link of this netns.
    pub async fn list_links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// Every macvtap link of this netns that carries our marker, with its device ID.
    pub async fn list_our_links(&self) -> Result<Vec<OurLink>> {
        Ok(self
            .list_links()
            .await?
            .into_iter()
            .filter_map(|l| {
                Some(OurLink {
                    device_id: l.marker_device_id()?.to_string(),
                    link: l,
                })
            })
            .collect())
    }

    /// Index, admin/oper state and kind of the lower device `name`; `None` when it does not exist.
    pub async fn lower_device_state(&self, name: &str) -> Result<Option<LowerDeviceState>> {
        Ok(self.find_link(name).await?.map(|l| LowerDeviceState {
            index: l.index,
            admin_up: l.admin_up,
            oper_up: l.oper_up,
            kind: l.kind,
            mtu: l.mtu,
        }))
    }

    /// (Re)create the host macvtap link for `device_id` on `lower`: a stale link of that name is deleted only if it
    /// is ours; txqlen is copied from the lower device; the marker alias is set; the link is brought up.
    pub async fn create_macvtap(
        &self,
        lower: &str,
        device_id: &str,
        mode: MacvtapMode,
    ) -> Result<LinkInfo> {
        self.create_macvtap_at(lower, device_id, mode, None).await
    }

    /// [`Netlink::create_macvtap`] with the ifindex `index` when given (the kernel refuses one that is taken in this
    /// netns), else one the kernel picks.
    pub async fn create_macvtap_at(
        &self,
        lower: &str,
        device_id: &str,
        mode: MacvtapMode,
        index: Option<u32>,
    ) -> Result<LinkInfo> {
        let lower_link = self
            .find_link(lower)
            .await?
            .ok_or_else(|| Error::LowerDeviceNotFound(lower.to_string()))?;
        let name = host_link_name(device_id);
        if let Some(stale) = self.find_link(&name).await? {
            if let Some(reason) = stale.not_ours_reason(device_id) {
                return Err(Error::NotOurs { name, reason });
            }
            self.delete_link(stale.index).await?;
        }
        let mut msg = LinkMacVtap::new(&name, lower_link.index, mode.to_netlink())
            .txqueuelen(lower_link.txqlen);
        if let Some(i) = index {
            msg = msg.index(i);
        }
        let msg = msg.build();
        self.handle.link().add(msg).execute().await?;
        let created = self.find_link(&name).await?.ok_or_else(|| Error::NotOurs {
            name: name.clone(),
            reason: "vanished right after creation".into(),
        })?;
        // Marker before up: a link that is up is never without its marker.
        let change = LinkChange {
            alias: Some(ownership_alias(device_id)),
            up: Some(true),
            ..Default::default()
        };
        if let Err(e) = self.set_link(created.index, &change).await {
            let _ = self.delete_link(created.index).await;
            return Err(e);
        }
        self.link_by_index(created.index)
            .await?
            .ok_or(Error::NotOurs {
                name,
                reason: "vanished right after creation".into(),
            })
    }

    /// Delete the host link of `device_id` if it exists and is ours. `Ok(false)` when there is none; an error
    /// (and no change) when the name belongs to a link that is not ours.
    pub async fn delete_our_link(&self, device_id: &str) -> Result<bool> {
        let name = host_link_name(device_id);
        let Some(link) = self.find_link(&name).await? else {
            return Ok(false);
        };
        if let Some(reason) = link.not_ours_reason(device_id) {
            return Err(Error::NotOurs { name, reason });
        }
        match self.delete_link(link.index).await {
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
            Ok(()) => Ok(true),
        }
    }

    /// Delete a link by index (no ownership check: callers check first).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        Ok(self.handle.link().del(index).execute().await?)
    }

    /// Move link `index` into the netns `netns` (an open `/proc/<pid>/ns/net` or `/run/netns/x` file), renaming
    /// it to `new_name` at the same time when given (atomic: no window with a clashing name in either netns).
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns: &impl AsFd,
        new_name: Option<&str>,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_fd().as_raw_fd());
        if let Some(n) = new_name {
            if !valid_ifname(n) {
                return Err(Error::InvalidName(n.to_string()));
            }
            b = b.name(n.to_string());
        }
        Ok(self.handle.link().set(b.build()).execute().await?)
    }

    /// Move link `index` into the netns `netns` under the same ifindex (`IFLA_NEW_IFINDEX`, Linux >= 5.17): where
    /// that index is taken the kernel refuses ([`Error::is_busy`]) and the link stays where it was. Why: the tap node
    /// is named after the ifindex, and a renumbered link's `/dev/tapN` would name another device or none. Kernels
    /// without the attribute ignore it and may renumber: callers check the index after the move.
    pub async fn move_to_netns_keeping_index(&self, index: u32, netns: &impl AsFd) -> Result<()> {
        self.move_to_netns_with_index(index, netns, index).await
    }

    /// Move link `index` into the netns `netns`, where it gets the ifindex `new_index` (see
    /// [`Netlink::move_to_netns_keeping_index`]).
    pub async fn move_to_netns_with_index(
        &self,
        index: u32,
        netns: &impl AsFd,
        new_index: u32,
    ) -> Result<()> {
        let new = i32::try_from(new_index).map_err(|_| Error::InvalidIndex(new_index))?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .append_extra_attribute(LinkAttribute::NewIfIndex(new))
            .build();
        Ok(self.handle.link().set(msg).execute().await?)
    }

    /// Apply `change` to link `index`. The kernel applies a rename/MTU/MAC before the up flag, as `ip link` does.
    pub async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = &change.name {
            if !valid_ifname(n) {
                return Err(Error::InvalidName(n.clone()));
            }
            b = b.name(n.clone());
        }
        if let Some(m) = change.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = change.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(p) = change.promisc {
            b = b.promiscuous(p);
        }
        if let Some(a) = &change.alias {
            b = b.alias(a.clone());
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        Ok(self.handle.link().set(b.build()).execute().await?)
    }

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

fn not_found_to_none<T>(r: std::result::Result<Option<T>, rtnetlink::Error>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            let e = Error::Netlink(e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}

/// Run `fut` to completion on a fresh current-thread runtime (IO and timers enabled).
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Runtime)?;
    Ok(rt.block_on(fut))
}

/// Run `f` on a dedicated thread that first entered the network namespace at `netns` (e.g. `/run/netns/x` or
/// `/proc/<pid>/ns/net`). The thread ends afterwards, so the caller's namespace is never touched. A panic in `f`
/// is propagated.
pub fn in_netns<T: Send>(netns: impl AsRef<Path>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns.as_ref();
    let ns_err = |source| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(ns_err)?;
    std::thread::scope(|s| {
        let t = s.spawn(|| -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err(std::io::Error::from(e)))?;
            Ok(f())
        });
        match t.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_name_matches_the_original_scheme() {
        // Fixed vector computed once with xxhash-rust (low 48 bits of XXH64("dataplaneMvp0", seed 0)).
        let h = xxhash_rust::xxh64::xxh64(b"dataplaneMvp0", 0);
        assert_eq!(
            host_link_name("dataplaneMvp0"),
            format!("mvt{:012x}", h & 0xffff_ffff_ffff)
        );
        assert_eq!(host_link_name("dataplaneMvp0"), FIXED_VECTOR);
    }

    const FIXED_VECTOR: &str = "mvtcc7b47d9091b";

    #[test]
    fn host_link_names_fit_ifnamsiz_and_differ() {
        let names: std::collections::HashSet<_> = (0..1000)
            .map(|i| host_link_name(&device_id("pool", i)))
            .collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            assert_eq!(n.len(), 15);
            assert!(valid_ifname(n));
            assert!(
                n[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }

    #[test]
    fn device_ids_are_the_originals() {
        assert_eq!(device_id("dataplane", 0), "dataplaneMvp0");
        assert_eq!(device_id("eth0", 99), "eth0Mvp99");
    }

    #[test]
    fn alias_round_trips() {
        assert_eq!(
            device_id_from_alias(&ownership_alias("aMvp3")),
            Some("aMvp3")
        );
        assert_eq!(device_id_from_alias("something else"), None);
        assert_eq!(device_id_from_alias(ALIAS_PREFIX), None);
    }

    #[test]
    fn modes_parse_and_print_lowercase() {
        for m in MacvtapMode::ALL {
            assert_eq!(m.to_string().parse::<MacvtapMode>().unwrap(), m);
            assert_eq!(MacvtapMode::from_netlink(m.to_netlink()), Some(m));
        }
        assert_eq!(
            "passthru".parse::<MacvtapMode>().unwrap(),
            MacvtapMode::Passthru
        );
        assert!("Bridge".parse::<MacvtapMode>().is_err());
        assert!("passthrough".parse::<MacvtapMode>().is_err());
        assert_eq!(MacvtapMode::default(), MacvtapMode::Bridge);
    }

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(
            parse_mac("0A:58:0a:f4:00:01"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0, 1])
        );
        assert_eq!(
            parse_mac("0a-58-0a-f4-00-01"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0, 1])
        );
        for bad in [
            "",
            "0a:58:0a:f4:00",
            "0a:58:0a:f4:00:01:02",
            "0a:58:0a:f4:00:1",
            "zz:58:0a:f4:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 0xff, 1, 2]),
            "0a:58:00:ff:01:02"
        );
    }

    #[test]
    fn ifname_validation() {
        for ok in ["eth0", "net1", "a", "mvt0123456789ab"] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "0123456789abcdef"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }
}
