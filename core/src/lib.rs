//! The rules every part of macvtap-operator shares, defined once: the API (CRDs, legacy config), the agent, the
//! link crate and the CNI all use these. No kube, no tokio, no netlink (the link crate converts to netlink values).
//!
//! - [`mode`]: the macvtap mode ([`MacvtapMode`]) and its lowercase names.
//! - [`names`]: interface names ([`validate_ifname`], the kernel's `dev_valid_name`), resource names
//!   ([`validate_resource_name`]) and the extended resources they become ([`RESOURCE_PREFIX`],
//!   [`extended_resource_name`], [`resource_of`]).
//! - [`device`]: the device-ID scheme `<resource>Mvp<slot>` and its syntax ([`validate_device_id`]), the host link name `mvt` + 12 hex digits of XXH64, and
//!   the ownership marker (ifalias) set on links the agent creates.
//! - [`node_config`]: what one node serves ([`NodeConfig`]) and its validation.
//! - [`cni_node_file`]: the CNI's node file `macvtap-node.json` ([`CniNodeFile`]): the agent writes it, the CNI
//!   reads it.
//! - [`allocation`]: what `Allocate` tells the CNI about a device ([`AllocationRecord`]) and where it is kept.
//! - [`attach_claim`]: the CNI's word that the tap at a device's index is the link it made for it
//!   ([`AttachClaim`]), what PreStartContainer accepts a tap in another netns by.
//! - [`reservation`]: the kernel-wide tap-index reservations ([`TapReservations`]).
//! - [`durable`]: how the state directory's files are written so a crash at any instant leaves the old or the new
//!   content.

pub mod allocation;
pub mod attach_claim;
pub mod cni_node_file;
pub mod device;
pub mod durable;
pub mod mode;
pub mod names;
pub mod node_config;
pub mod reservation;

pub use allocation::{AllocationError, AllocationRecord, is_tap_index};
pub use attach_claim::AttachClaim;
pub use cni_node_file::{CniNodeFile, InvalidCniNodeFile, OutsideKubernetes};
pub use device::{DeviceIdError, validate_device_id};
pub use mode::{MacvtapMode, UnknownMode};
pub use names::{
    MAX_IFNAME_LEN, MAX_RESOURCE_NAME_LEN, NameError, RESOURCE_PREFIX, extended_resource_name,
    resource_of, validate_ifname, validate_resource_name,
};
pub use node_config::{
    DEFAULT_CAPACITY, DiscoveryConfig, InvalidNodeConfig, MAX_CAPACITY, NodeConfig, ResourceConfig,
};
pub use reservation::TapReservations;
