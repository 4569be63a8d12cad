//! What KubeVirt's virt-launcher does for a VM on a macvtap network, in small: inside the VM pod, find the tap
//! the device plugin handed out and the macvtap's MAC (the container's `/dev`, `/sys` and Multus's network
//! status), pick what the host really offers (KVM, vhost-net), open the tap once per queue and exec QEMU with a
//! virtio-net NIC on it; the guest's serial console is the pod's log.
//!
//! - [`network_status`]: the `k8s.v1.cni.cncf.io/network-status` annotation through the downward API file.
//! - [`tap`]: the pod interface's `/dev/tapN` (proven by its device number), MAC, addresses; the queue files.
//! - [`host`]: KVM only where it works, vhost only where `/dev/vhost-net` exists.
//! - [`qemu`]: the command line.
//! - [`launch`]: the steps in order, as the binary runs them.

pub mod host;
pub mod launch;
pub mod network_status;
pub mod qemu;
pub mod tap;
