//! The wires between the nodes of a test cluster: two L2 segments (a bridge each, in a "switch" network
//! namespace of their own) and one address plan.
//!
//! - segment 0 carries each node's `eth0`: the node IP (what the kubelet registers, what the API server dials for
//!   logs and exec) and the lower device of the `dataplane` examples, as on a host with one NIC;
//! - segment 1 carries each node's `p4p1`: no addresses, the lower device of the kube-ovn examples;
//! - the host (where etcd, the API server, the controllers and the image registry run) has a veth into segment 0
//!   with the first address of the node subnet. Nodes have no default route, so nothing they send can leave
//!   the machine.
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, set aside for testing): cluster slot `k` (one per cluster
//! running on the machine, see [`ClusterSlot`]) uses 198.18.k.0/24 for nodes, 198.18.(64+k).0/24 for Services
//! and 198.19.(8k+n).0/24 as the pod network of node `n`.
//!
//! Each node's links get ifindexes from a range of their own (`(n+1) * 1000` on): all nodes share one kernel,
//! and a macvtap's `/dev/tapN` is named after its ifindex in one global `/dev`. On real, separate hosts two
//! nodes' `tap12` never meet; here they would, and the second would silently get no device node (or a pod the
//! other node's). The kernel numbers new links from a per-namespace hint that only automatic numbering moves, so
//! a node's namespace is made to number from its base by creating that many idle bridges (`ifbumpN`, about
//! 0.7 ms each); they are never deleted one by one (about 40 ms each under RTNL) but go with the namespace.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::netns::Netns;

/// Most clusters at once on one machine, and most nodes in one.
pub const MAX_SLOTS: u8 = 32;
pub const MAX_NODES: usize = 8;

/// Lower devices every node has, in segment order: `eth0` (node IP, `dataplane` examples), `p4p1` (kube-ovn
/// examples).
pub const LOWER_DEVICES: [&str; 2] = ["eth0", "p4p1"];

/// A cluster's claim on one address slot, held (by a file lock) while the cluster lives.
#[derive(Debug)]
pub struct ClusterSlot {
    index: u8,
    path: std::path::PathBuf,
    _lock: Flock<File>,
}

impl ClusterSlot {
    /// The first free slot; locks live in `dir` (e.g. `/run/macvtap-e2e`).
    pub fn claim(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for index in 0..MAX_SLOTS {
            let path = dir.join(format!("slot-{index}.lock"));
            let file = File::create(&path)?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(Self {
                    index,
                    path,
                    _lock: lock,
                });
            }
        }
        Err(io::Error::other(format!(
            "all {MAX_SLOTS} cluster slots in {} are taken",
            dir.display()
        )))
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The lock file this cluster holds.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }

    /// The host's address on segment 0: API server, registry.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 1)
    }

    /// Node `n`'s address on segment 0.
    pub fn node_ip(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 11 + n as u8)
    }

    pub fn node_prefix_len(&self) -> u8 {
        24
    }

    pub fn service_cidr(&self) -> String {
        format!("198.18.{}.0/24", 64 + self.index)
    }

    /// The `kubernetes` Service's ClusterIP.
    pub fn service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 64 + self.index, 1)
    }

    /// All pod networks of this cluster.
    pub fn cluster_cidr(&self) -> String {
        format!("198.19.{}.0/21", 8 * self.index)
    }

    /// Node `n`'s pod network.
    pub fn pod_cidr(&self, n: usize) -> String {
        format!("198.19.{}.0/24", 8 * self.index as usize + n)
    }
}

/// First ifindex of node `n`'s range.
pub fn ifindex_base(n: usize) -> u32 {
    (n as u32 + 1) * 1_000
}

/// The switch: a network namespace with one bridge per segment, and the host's port on segment 0.
#[derive(Debug)]
pub struct Segments {
    pub switch: Netns,
    host_link: String,
}

impl Segments {
    pub fn create(slot: &ClusterSlot) -> io::Result<Self> {
        let switch = Netns::new("mvt-switch")?;
        for b in 0..LOWER_DEVICES.len() {
            switch.ip(&["link", "add", &format!("br{b}"), "type", "bridge"])?;
            switch.ip(&["link", "set", &format!("br{b}"), "up"])?;
        }
        let host_link = format!("mvte2e{}", slot.index());
        let segments = Self { switch, host_link };
        run_ip(&[
            "link",
            "add",
            &segments.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            segments.switch.name(),
        ])?;
        segments
            .switch
            .ip(&["link", "set", "host", "master", "br0"])?;
        segments.switch.ip(&["link", "set", "host", "up"])?;
        let addr = format!("{}/{}", slot.host_ip(), slot.node_prefix_len());
        run_ip(&["addr", "add", &addr, "dev", &segments.host_link])?;
        run_ip(&["link", "set", &segments.host_link, "up"])?;
        Ok(segments)
    }

    /// The host's veth on segment 0 (deleted with the switch namespace).
    pub fn host_link(&self) -> &str {
        &self.host_link
    }

    /// Wires a node namespace: `eth0` with `ip/prefix`, `p4p1`, both on their segments; then moves the node's
    /// ifindex numbering to its range (see the module doc).
    pub fn attach(&self, node: &Netns, n: usize, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        for (b, lower) in LOWER_DEVICES.iter().enumerate() {
            let port = format!("n{n}-{lower}");
            node.add_veth_to(lower, &self.switch, &port)?;
            self.switch
                .ip(&["link", "set", &port, "master", &format!("br{b}")])?;
        }
        node.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"])?;
        let batch: String = (0..ifindex_base(n))
            .map(|i| format!("link add ifbump{i} type bridge\n"))
            .collect();
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), batch)?;
        node.ip(&["-batch", &file.path().display().to_string()])?;
        Ok(())
    }
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan_keeps_slots_and_nodes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterSlot::claim(dir.path()).unwrap();
        let b = ClusterSlot::claim(dir.path()).unwrap();
        assert_ne!(a.index(), b.index());
        assert_ne!(a.host_ip(), b.host_ip());
        assert_ne!(a.pod_cidr(0), a.pod_cidr(1));
        assert_ne!(a.pod_cidr(MAX_NODES - 1), b.pod_cidr(0));
        assert_ne!(a.service_cidr(), b.service_cidr());
        assert!(ifindex_base(1) >= ifindex_base(0) + 1000);
        drop(a);
        // A released slot is free again.
        let c = ClusterSlot::claim(dir.path()).unwrap();
        assert_ne!(c.index(), b.index());
    }
}
