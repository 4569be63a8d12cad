//! The verbs. ADD's host side is [`crate::host_link`] (which link, on whose word), its two paths
//! [`crate::in_place`] and [`crate::attach`] (what both do in the pod: [`crate::pod_side`]); netns plumbing and the
//! invocation's one runtime are [`crate::netns`], the IPAM delegate [`crate::ipam`].

use std::fs::File;
use std::path::Path;

use macvtap_core::{AllocationError, AllocationRecord, OutsideKubernetes};
use serde_json::Value;

use crate::attach::{AttachPlan, attach};
use crate::config::{NetConf, parse_cni_args, requested_mac};
use crate::env::{Env, Request};
use crate::error::{CniError, Code};
use crate::host_link::{self, Proof};
use crate::in_place::{self, InPlace};
use crate::ipam::Ipam;
use crate::netns::{Runtime, open_netns, sys};
use crate::node_file;
use crate::pod_resources::{self, PodRef};
use crate::pod_side::PodTarget;
use crate::result::{ParsedResult, parse_result, render};

/// ADD: see the crate docs for the sequence.
pub fn add(req: &Request, conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let args = parse_cni_args(&req.cni_args)?;
    let requested = requested_mac(conf, &args)?;
    let device_id = conf.device_id.as_deref().ok_or_else(|| {
        CniError::config("deviceID is required (top-level deviceID or runtimeConfig.deviceID)")
    })?;
    let node = node_file::load(env)?;
    let pod = PodRef::from_args(&args)?;
    let netns_path = req.netns.as_deref().expect("validated");
    let ifname = req.ifname.as_deref().expect("validated");
    let netns = open_netns(netns_path)?;
    // One runtime for everything async in this ADD: the kubelet's question, host and pod netlink.
    let rt = Runtime::new()?;
    let ipam = Ipam::of(conf, env);

    // Whose device is it? Asked before anything about the link is looked at or touched.
    let proof = match (&pod, node.settings.outside_kubernetes) {
        (Some(pod), _) => {
            pod_resources::check(&rt, &node.settings.pod_resources_socket, pod, device_id)?;
            Proof::Allocated
        }
        (None, OutsideKubernetes::Allow) => Proof::Unchecked,
        (None, OutsideKubernetes::Refuse) => {
            return Err(CniError::new(
                Code::InvalidEnv,
                "CNI_ARGS has no K8S_POD_NAMESPACE/K8S_POD_NAME: this node attaches macvtap devices only to Kubernetes pods the kubelet allocated them to",
                format!(
                    "node config {}: outsideKubernetes is \"refuse\"",
                    node.source
                        .as_deref()
                        .map_or("(defaults)".to_string(), |p| p.display().to_string())
                ),
            ));
        }
    };
    let target = PodTarget {
        conf,
        device_id,
        netns: &netns,
        netns_path,
        ifname,
    };
    // Allocated in place (the agent's record): the pod's link is created in the pod. Else a host link the agent made
    // before in-place attach existed (or the original's): moved in.
    let node_dir = node.settings.allocation_dir.as_deref();
    if let Some(node_dir) = node_dir
        && let Some(record) = read_record(Some(node_dir), device_id)?
    {
        let plan = InPlace {
            pod: target,
            node_dir,
            record: &record,
            requested_mac: requested,
        };
        let (iface, leased) = in_place::attach(&rt, &plan, ipam.as_ref())?;
        return Ok(render(conf.cni_version, &iface, leased.as_ref()));
    }
    let host_ns = File::open("/proc/self/ns/net")
        .map_err(|e| CniError::system("opening the host netns", e))?;
    let host = rt.netlink(async |nl| host_link::find(nl, device_id, &proof).await)?;
    if let Some(mtu) = conf.mtu
        && mtu > host.lower_mtu
    {
        return Err(CniError::config(format!(
            "mtu {mtu} is above the lower device's MTU {}",
            host.lower_mtu
        )));
    }
    let leased = ipam.as_ref().map(Ipam::add).transpose()?;
    let mac = leased
        .as_ref()
        .and_then(ParsedResult::ipam_mac)
        .or(requested);
    let plan = AttachPlan {
        pod: target,
        host: &host,
        host_ns: &host_ns,
        mac,
        ipam: leased.as_ref(),
    };
    match attach(&rt, &plan) {
        Ok(iface) => Ok(render(conf.cni_version, &iface, leased.as_ref())),
        Err(e) => {
            if let (Some(ipam), Some(_)) = (&ipam, &leased) {
                ipam.release();
            }
            Err(e)
        }
    }
}

/// The agent's allocation record of `device_id` in `allocation_dir` (the node file's), when there is one. A device
/// ID that cannot be a record's name is 101, an unreadable or invalid record 11 (fuzzed).
pub fn read_record(
    allocation_dir: Option<&Path>,
    device_id: &str,
) -> Result<Option<AllocationRecord>, CniError> {
    let Some(dir) = allocation_dir else {
        return Ok(None);
    };
    AllocationRecord::read(dir, device_id).map_err(|e| match e {
        AllocationError::BadName(_) => CniError::new(
            Code::NotOurs,
            format!("deviceID {device_id:?} is not a device ID of macvtap-operator"),
            e.to_string(),
        ),
        // Left unreadable by a crash: the agent re-derives it (each cleanup pass, or the device's next Allocate or
        // PreStartContainer); the kubelet retries the sandbox.
        AllocationError::BadRecord { .. } => CniError::new(
            Code::TryAgainLater,
            format!(
                "the allocation record of deviceID {device_id:?} cannot be read; the node agent repairs it, retry"
            ),
            e.to_string(),
        ),
        _ => CniError::system(format!("reading the allocation record of {device_id:?}"), e),
    })
}

/// DEL: delete the pod-side link (only a macvtap carrying our marker, or one created in place: an index of the
/// reserved tap range), then IPAM DEL. Succeeds when the netns or
/// the link is already gone.
pub fn del(req: &Request, conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let ifname = req.ifname.clone().expect("validated");
    if let Some(path) = &req.netns {
        match File::open(path) {
            Err(e) => {
                eprintln!("macvtap: DEL: CNI_NETNS {path} is gone ({e}); nothing to delete there")
            }
            Ok(_) => {
                let r = Runtime::new()?.netlink_in(path, async |nl| {
                    let Some(link) = nl
                        .find_link(&ifname)
                        .await
                        .map_err(sys("looking up CNI_IFNAME"))?
                    else {
                        return Ok(());
                    };
                    if !link.is_ours_in_pod() {
                        eprintln!(
                            "macvtap: DEL: {ifname} is not a macvtap of ours; leaving it alone"
                        );
                        return Ok(());
                    }
                    match nl.delete_link(link.index).await {
                        Err(e) if !e.is_not_found() => {
                            Err(CniError::system(format!("deleting {ifname}"), e))
                        }
                        _ => Ok(()),
                    }
                });
                match r {
                    Err(e) if e.code == Code::UnknownContainer as u32 => {
                        eprintln!("macvtap: DEL: {e}")
                    }
                    other => other?,
                }
            }
        }
    }
    if let Some(ipam) = Ipam::of(conf, env) {
        ipam.del()?;
    }
    Ok(())
}

/// CHECK: the interface from `prevResult` is in the pod, ours, with the MAC, MTU and addresses it should have;
/// then IPAM CHECK.
pub fn check(req: &Request, conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let ifname = req.ifname.clone().expect("validated");
    let netns_path = req.netns.clone().expect("validated");
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult is required for CHECK"))?;
    let prev =
        parse_result(prev).map_err(|e| CniError::config(format!("prevResult: {}", e.msg)))?;
    let failed = |msg: String| CniError::new(Code::CheckFailed, msg, "");
    let (idx, want) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref().is_none_or(|s| s == netns_path))
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {ifname} in {netns_path}"
            ))
        })?;
    let want_ips: Vec<_> = prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|n| n == idx))
        .cloned()
        .collect();
    if let Some(ipam) = Ipam::of(conf, env) {
        ipam.check()?;
    }
    open_netns(&netns_path)?;
    let want_mac = want.mac.clone();
    Runtime::new()?.netlink_in(&netns_path, async |nl| {
        let link = nl
            .find_link(&ifname)
            .await
            .map_err(sys("looking up CNI_IFNAME"))?
            .ok_or_else(|| failed(format!("interface {ifname} not found in CNI_NETNS")))?;
        if !link.is_ours_in_pod() {
            return Err(failed(format!(
                "interface {ifname} is not a macvtap created by macvtap-operator"
            )));
        }
        // Moved in: the marker names the device. In place: the device's record names the index.
        let belongs = match (&conf.device_id, link.marker_device_id()) {
            (None, _) => true,
            (Some(d), Some(m)) => m == d,
            (Some(d), None) => {
                let node = node_file::load(env)?;
                read_record(node.settings.allocation_dir.as_deref(), d)?
                    .is_some_and(|r| r.tap_index == link.index)
            }
        };
        if !belongs {
            return Err(failed(format!(
                "interface {ifname} belongs to another deviceID, not {:?}",
                conf.device_id.as_deref().unwrap_or_default()
            )));
        }
        let have_mac = link.mac_string().unwrap_or_default();
        if let Some(m) = &want_mac
            && !m.eq_ignore_ascii_case(&have_mac)
        {
            return Err(failed(format!(
                "interface {ifname} has MAC {have_mac}, prevResult says {m}"
            )));
        }
        if let Some(mtu) = conf.mtu
            && link.mtu != mtu
        {
            return Err(failed(format!(
                "interface {ifname} has MTU {}, config says {mtu}",
                link.mtu
            )));
        }
        let addrs = nl
            .addresses(link.index)
            .await
            .map_err(sys("listing addresses"))?;
        for ip in &want_ips {
            if !addrs
                .iter()
                .any(|a| a.ip == ip.ip && a.prefix_len == ip.prefix_len)
            {
                return Err(failed(format!(
                    "interface {ifname} lacks address {}/{}",
                    ip.ip, ip.prefix_len
                )));
            }
        }
        Ok(())
    })
}

/// STATUS: ready unless the IPAM delegate says otherwise.
pub fn status(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    if let Some(ipam) = Ipam::of(conf, env) {
        ipam.status()?;
    }
    Ok(())
}

/// GC: our pod-side links die with their netns and host links belong to the agent, so only IPAM has work.
pub fn gc(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    if let Some(ipam) = Ipam::of(conf, env) {
        ipam.gc()?;
    }
    Ok(())
}
