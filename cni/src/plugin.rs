//! The verbs. ADD's host side is [`crate::host_link`] (which link, on whose word), its pod side [`crate::attach`];
//! netns plumbing is [`crate::netns`].

use std::fs::File;

use macvtap_core::{AllocationError, AllocationRecord};
use serde_json::Value;

use crate::attach::{AttachPlan, attach};
use crate::config::{NetConf, ipam_stdin, parse_cni_args, requested_mac};
use crate::env::{Env, Request};
use crate::error::{CniError, Code};
use crate::host_link::{self, Proof};
use crate::in_place::{self, InPlace};
use crate::ipam;
use crate::netns::{netlink, netlink_in, open_netns, sys};
use crate::node_config::{self, OutsideKubernetes};
use crate::pod_resources::{self, PodRef};
use crate::result::{ParsedResult, parse_result, render};

/// ADD: see the crate docs for the sequence.
pub fn add(req: &Request, conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let args = parse_cni_args(&req.cni_args)?;
    let requested = requested_mac(conf, &args)?;
    let device_id = conf.device_id.clone().ok_or_else(|| {
        CniError::config("deviceID is required (top-level deviceID or runtimeConfig.deviceID)")
    })?;
    let node = node_config::load(env)?;
    let pod = PodRef::from_args(&args)?;
    let netns_path = req.netns.clone().expect("validated");
    let ifname = req.ifname.clone().expect("validated");
    let netns = open_netns(&netns_path)?;

    // Whose device is it? Asked before anything about the link is looked at or touched.
    let proof = match (&pod, node.outside_kubernetes) {
        (Some(pod), _) => {
            pod_resources::check(&node.pod_resources_socket, pod, &device_id)?;
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
    // Allocated in place (the agent's record): the pod's link is created in the pod. Else a host link the agent made
    // before in-place attach existed (or the original's): moved in.
    if let Some(record) = read_record(&node, &device_id)?
        && let Some(node_dir) = &node.allocation_dir
    {
        let plan = InPlace {
            conf,
            device_id: &device_id,
            node_dir,
            record: &record,
            netns: &netns,
            netns_path: &netns_path,
            ifname: &ifname,
            requested_mac: requested,
        };
        let (iface, ipam_result) =
            in_place::attach(&plan, || ipam_add(conf, env), || ipam_release(conf, env))?;
        return Ok(render(conf.cni_version, &iface, ipam_result.as_ref()));
    }
    let host_ns = File::open("/proc/self/ns/net")
        .map_err(|e| CniError::system("opening the host netns", e))?;
    let host = netlink(async |nl| host_link::find(nl, &device_id, &proof).await)?;
    if let Some(mtu) = conf.mtu
        && mtu > host.lower_mtu
    {
        return Err(CniError::config(format!(
            "mtu {mtu} is above the lower device's MTU {}",
            host.lower_mtu
        )));
    }
    let ipam_result = ipam_add(conf, env)?;
    let mac = ipam_result
        .as_ref()
        .and_then(ParsedResult::ipam_mac)
        .or(requested);

    let attached = attach(&AttachPlan {
        conf,
        device_id: &device_id,
        host: &host,
        netns: &netns,
        netns_path: &netns_path,
        host_ns: &host_ns,
        ifname: &ifname,
        mac,
        ipam: ipam_result.as_ref(),
    });
    match attached {
        Ok(iface) => Ok(render(conf.cni_version, &iface, ipam_result.as_ref())),
        Err(e) => {
            if ipam_result.is_some() {
                ipam_release(conf, env);
            }
            Err(e)
        }
    }
}

/// IPAM ADD with the config minus `deviceID`/`pciBusID`; `None` without IPAM. An unusable result is released.
fn ipam_add(conf: &NetConf, env: &Env) -> Result<Option<ParsedResult>, CniError> {
    match &conf.ipam_type {
        None => Ok(None),
        Some(t) => {
            let out = ipam::exec(t, "ADD", env, &ipam_stdin(conf))?;
            let parsed = serde_json::from_slice::<Value>(&out)
                .map_err(|e| {
                    CniError::new(
                        Code::IpamResult,
                        format!("ipam {t}: result is not JSON"),
                        e.to_string(),
                    )
                })
                .and_then(|v| parse_result(&v))
                .and_then(|r| {
                    if r.ips.is_empty() {
                        Err(CniError::new(
                            Code::IpamResult,
                            format!("ipam {t}: returned no IPs"),
                            "",
                        ))
                    } else {
                        Ok(r)
                    }
                });
            match parsed {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    ipam_release(conf, env);
                    Err(e)
                }
            }
        }
    }
}

/// The agent's allocation record of `device_id`, when the node config names the directory and there is one. A
/// device ID that cannot be a record's name is 101, an unreadable or invalid record 102 (fuzzed).
pub fn read_record(
    node: &node_config::NodeConfig,
    device_id: &str,
) -> Result<Option<AllocationRecord>, CniError> {
    let Some(dir) = &node.allocation_dir else {
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

/// Best-effort IPAM DEL after a failed ADD, so no IP leaks.
fn ipam_release(conf: &NetConf, env: &Env) {
    if let Some(t) = &conf.ipam_type
        && let Err(e) = ipam::exec(t, "DEL", env, &ipam_stdin(conf))
    {
        eprintln!("macvtap: releasing the IP after a failed ADD: {e}");
    }
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
                let r = netlink_in(path, async |nl| {
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
    if let Some(t) = &conf.ipam_type {
        ipam::exec(t, "DEL", env, &ipam_stdin(conf))?;
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
    if let Some(t) = &conf.ipam_type {
        ipam::exec(t, "CHECK", env, &ipam_stdin(conf))?;
    }
    open_netns(&netns_path)?;
    let want_mac = want.mac.clone();
    netlink_in(&netns_path, async |nl| {
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
                read_record(&node_config::load(env)?, d)?.is_some_and(|r| r.tap_index == link.index)
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
    if let Some(t) = &conf.ipam_type {
        ipam::exec(t, "STATUS", env, &ipam_stdin(conf))?;
    }
    Ok(())
}

/// GC: our pod-side links die with their netns and host links belong to the agent, so only IPAM has work.
pub fn gc(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    if let Some(t) = &conf.ipam_type {
        ipam::exec(t, "GC", env, &ipam_stdin(conf))?;
    }
    Ok(())
}
