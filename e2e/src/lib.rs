//! Test harness shared by every crate's tests: a local control plane (real etcd + kube-apiserver), network
//! namespaces acting as nodes and pods, a kubelet stand-in, a kube-ovn daemon stand-in, and the sandbox cluster
//! that puts them together with the chart, the operator and the agents.

pub mod apply;
pub mod control_plane;
pub mod forward;
pub mod kube_ovn;
pub mod kubelet;
pub mod netns;
pub mod node_exec;
pub mod process;
pub mod registry;
pub mod sandbox;
pub mod tap;
pub mod tools;
pub mod workspace;
