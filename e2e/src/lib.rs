//! Test harness shared by every crate's tests: a local control plane (real etcd + kube-apiserver), a real
//! multi-node cluster on this machine (kubelet + containerd + runc per node, see [`cluster`]), network namespaces,
//! a local OCI registry, a kubelet stand-in for the agent's protocol tests, kube-ovn (real, and a daemon stand-in for CNI faults), VM pods
//! (QEMU guests on the pod's tap, see [`vm_pod`]).
//!
//! And the one copy of what every crate's tests do again and again: polling until something holds ([`wait`]),
//! owning child processes ([`process`]), the node agent's command line on a test node ([`agent`]), ServiceAccount
//! tokens ([`control_plane::ControlPlane::request_token`]).

pub mod agent;
pub mod apply;
pub mod cluster;
pub mod cni_timing;
pub mod control_plane;
pub mod forward;
pub mod kube_ovn;
pub mod kubelet;
pub mod netns;
pub mod process;
pub mod registry;
pub mod tap;
pub mod test_pods;
pub mod tools;
pub mod vm_pod;
pub mod wait;
pub mod workspace;
