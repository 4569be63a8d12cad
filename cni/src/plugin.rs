//! The verbs. Host-side netlink runs on the calling thread (the runtime starts us in the host netns); pod-side
//! netlink runs on a dedicated thread that entered `CNI_NETNS` ([`macvtap_link::in_netns`]).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use macvtap_link::{
    LinkChange, Netlink, block_on, format_mac, host_link_name, in_netns, valid_ifname,
};
use serde_json::Value;

use crate::config::{NetConf, ipam_stdin, parse_cni_args, requested_mac};
use crate::env::{Env, Request};
use crate::error::{CniError, Code};
use crate::ipam;
use crate::result::{ParsedResult, PodInterface, parse_result, render};

fn sys(msg: impl Into<String>) -> impl FnOnce(macvtap_link::Error) -> CniError {
    let msg = msg.into();
    move |e| CniError::system(msg, e)
}

/// Run async netlink work on a current-thread runtime in the current thread's netns.
fn netlink<T>(f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError>) -> Result<T, CniError> {
    block_on(async {
        let nl = Netlink::new().map_err(sys("opening netlink"))?;
        f(&nl).await
    })
    .map_err(sys("starting a runtime"))?
}

/// Run `f` with netlink inside the netns at `path` (on its own thread).
fn netlink_in<T: Send>(
    path: &str,
    f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    in_netns(path, || netlink(f)).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("CNI_NETNS {path}: cannot enter the network namespace"),
            e.to_string(),
        )
    })?
}

fn open_netns(path: &str) -> Result<File, CniError> {
    let f = File::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("CNI_NETNS {path}: network namespace not found"),
            e.to_string(),
        )
    })?;
    let (mine, theirs) = (std::fs::metadata("/proc/self/ns/net"), f.metadata());
    if let (Ok(a), Ok(b)) = (mine, theirs)
        && (a.dev(), a.ino()) == (b.dev(), b.ino())
    {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {path} is the plugin's own network namespace"),
            "",
        ));
    }
    Ok(f)
}

/// The host link of `device_id`, checked to be ours, and the lower device's MTU.
async fn host_link(
    nl: &Netlink,
    device_id: &str,
) -> Result<(macvtap_link::LinkInfo, u32), CniError> {
    let name = host_link_name(device_id);
    let Some(link) = nl
        .find_link(&name)
        .await
        .map_err(sys("looking up the host link"))?
    else {
        // A deviceID naming some other interface (eth0, lo, a veth...) is refused outright.
        if valid_ifname(device_id) && nl.find_link(device_id).await.ok().flatten().is_some() {
            return Err(CniError::new(
                Code::NotOurs,
                format!(
                    "deviceID {device_id:?} names an interface that is not a macvtap created by macvtap-operator; refusing it"
                ),
                "",
            ));
        }
        return Err(CniError::new(
            Code::DeviceNotFound,
            format!(
                "deviceID {device_id:?}: host link {name} not found (not allocated by the device plugin, or already in a pod)"
            ),
            "",
        ));
    };
    if let Some(reason) = link.not_ours_reason(device_id) {
        return Err(CniError::new(
            Code::NotOurs,
            format!(
                "deviceID {device_id:?}: link {name} is not a macvtap created by macvtap-operator; refusing it"
            ),
            reason,
        ));
    }
    let lower_mtu = match link.parent_index {
        Some(p) => nl
            .link_by_index(p)
            .await
            .map_err(sys("looking up the lower device"))?
            .map(|l| l.mtu),
        None => None,
    };
    // A macvtap cannot exceed its lower device: without one, fall back to the link's own current MTU.
    Ok((link.clone(), lower_mtu.unwrap_or(link.mtu)))
}

fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}

/// ADD: see the crate docs for the sequence.
pub fn add(req: &Request, conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let args = parse_cni_args(&req.cni_args)?;
    let requested = requested_mac(conf, &args)?;
    let device_id = conf.device_id.clone().ok_or_else(|| {
        CniError::config("deviceID is required (top-level deviceID or runtimeConfig.deviceID)")
    })?;
    let netns_path = req.netns.clone().expect("validated");
    let ifname = req.ifname.clone().expect("validated");
    let netns = open_netns(&netns_path)?;
    let host_ns = File::open("/proc/self/ns/net")
        .map_err(|e| CniError::system("opening the host netns", e))?;

    let (link, lower_mtu) = netlink(async |nl| host_link(nl, &device_id).await)?;
    if let Some(mtu) = conf.mtu
        && mtu > lower_mtu
    {
        return Err(CniError::config(format!(
            "mtu {mtu} is above the lower device's MTU {lower_mtu}"
        )));
    }

    let ipam_result = match &conf.ipam_type {
        None => None,
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
                Ok(r) => Some(r),
                Err(e) => {
                    ipam_release(conf, env);
                    return Err(e);
                }
            }
        }
    };
    let mac = ipam_result
        .as_ref()
        .and_then(ParsedResult::ipam_mac)
        .or(requested);

    let attached = attach(&AttachPlan {
        conf,
        device_id: &device_id,
        host_index: link.index,
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

/// Best-effort IPAM DEL after a failed ADD, so no IP leaks.
fn ipam_release(conf: &NetConf, env: &Env) {
    if let Some(t) = &conf.ipam_type
        && let Err(e) = ipam::exec(t, "DEL", env, &ipam_stdin(conf))
    {
        eprintln!("macvtap: releasing the IP after a failed ADD: {e}");
    }
}

struct AttachPlan<'a> {
    conf: &'a NetConf,
    device_id: &'a str,
    host_index: u32,
    netns: &'a File,
    netns_path: &'a str,
    host_ns: &'a File,
    ifname: &'a str,
    mac: Option<[u8; 6]>,
    ipam: Option<&'a ParsedResult>,
}

/// Move the host link into the pod (renamed to CNI_IFNAME) and configure it there; on failure the link goes back
/// to the host under its host name with its original MAC/MTU, so the host is left as it was.
fn attach(p: &AttachPlan) -> Result<PodInterface, CniError> {
    // Move under the host name, rename inside the pod: with a rename in the same request the kernel would move
    // the link first and fail the rename afterwards, leaving it stranded in the pod.
    let host_name = host_link_name(p.device_id);
    netlink(async |nl| {
        nl.move_to_netns(p.host_index, p.netns, None)
            .await
            .map_err(sys("moving the link into CNI_NETNS"))
    })?;
    netlink_in(p.netns_path, async |nl| {
        let before = nl
            .find_link(&host_name)
            .await
            .map_err(sys("finding the moved link"))?
            .ok_or_else(|| CniError::system("the moved link vanished", &host_name))?;
        match configure(nl, p, before.index).await {
            Ok(iface) => Ok(iface),
            Err(e) => {
                let undo = LinkChange {
                    name: Some(host_name.clone()),
                    mtu: Some(before.mtu),
                    mac: before.mac.as_deref().and_then(|m| m.try_into().ok()),
                    promisc: Some(before.promisc),
                    up: Some(false),
                    alias: None,
                };
                let back = async {
                    // Renames are refused while a link is up: down first.
                    nl.set_link(
                        before.index,
                        &LinkChange {
                            up: Some(false),
                            ..Default::default()
                        },
                    )
                    .await?;
                    nl.set_link(before.index, &undo).await?;
                    nl.move_to_netns(before.index, p.host_ns, None).await?;
                    Ok::<_, macvtap_link::Error>(())
                };
                if let Err(re) = back.await {
                    eprintln!("macvtap: could not return {} to the host: {re}", p.ifname);
                }
                Err(e)
            }
        }
    })
    .inspect_err(|_| {
        // Bring the returned link up again on the host (best effort; the host netns is the caller's).
        let name = host_link_name(p.device_id);
        let _ = netlink(async |nl| {
            if let Ok(Some(l)) = nl.find_link(&name).await {
                let _ = nl
                    .set_link(
                        l.index,
                        &LinkChange {
                            up: Some(true),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            Ok(())
        });
    })
}

/// Inside the pod netns: MTU, MAC, promisc, notify sysctls, up, addresses, routes.
async fn configure(nl: &Netlink, p: &AttachPlan<'_>, index: u32) -> Result<PodInterface, CniError> {
    let rename = LinkChange {
        name: Some(p.ifname.to_string()),
        ..Default::default()
    };
    nl.set_link(index, &rename).await.map_err(|e| {
        if e.is_exists() {
            CniError::new(
                Code::InterfaceExists,
                format!("CNI_IFNAME {} already exists in CNI_NETNS", p.ifname),
                "",
            )
        } else {
            CniError::system(format!("renaming the link to {}", p.ifname), e)
        }
    })?;
    // Moving netns re-registers the link, and macvtap re-creates its tap device then (named after the ifindex in
    // the pod, root-owned): chown after the move, as the original does. A missing node is not an error.
    let tap = format!("/dev/tap{index}");
    match std::os::unix::fs::chown(&tap, Some(p.conf.owner), Some(p.conf.group)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(CniError::system(format!("chown {tap}"), e));
        }
        _ => {}
    }
    let change = LinkChange {
        mtu: p.conf.mtu,
        mac: p.mac,
        promisc: p.conf.promisc.then_some(true),
        ..Default::default()
    };
    nl.set_link(index, &change)
        .await
        .map_err(sys("setting MTU/MAC/promisc"))?;
    // Announce the (possibly new) MAC as soon as the link comes up.
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/arp_notify", p.ifname),
        "1",
    )
    .map_err(|e| CniError::system("setting arp_notify", e))?;
    match write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{}/ndisc_notify", p.ifname),
        "1",
    ) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(CniError::system("setting ndisc_notify", e));
        }
        _ => {}
    }
    nl.set_link(
        index,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .await
    .map_err(sys("bringing the link up"))?;
    if let Some(ipam) = p.ipam {
        for ip in &ipam.ips {
            match nl.add_address(index, ip.ip, ip.prefix_len).await {
                Err(e) if !e.is_exists() => {
                    return Err(CniError::system(
                        format!("adding address {}/{}", ip.ip, ip.prefix_len),
                        e,
                    ));
                }
                _ => {}
            }
        }
        let gw_of = |v4: bool| {
            ipam.ips
                .iter()
                .find(|i| i.ip.is_ipv4() == v4)
                .and_then(|i| i.gateway)
        };
        for r in &ipam.routes {
            let gw: Option<IpAddr> = r.gw.or_else(|| gw_of(r.dst.is_ipv4()));
            nl.add_route(r.dst, r.dst_len, gw, index)
                .await
                .map_err(sys(format!(
                    "adding route {}/{} via {gw:?}",
                    r.dst, r.dst_len
                )))?;
        }
    }
    let link = nl
        .link_by_index(index)
        .await
        .map_err(sys("reading the link back"))?
        .ok_or_else(|| CniError::system("the link vanished", p.ifname))?;
    Ok(PodInterface {
        name: link.name.clone(),
        mac: link.mac.as_deref().map(format_mac).unwrap_or_default(),
        mtu: link.mtu,
        sandbox: p.netns_path.to_string(),
    })
}

/// DEL: delete the pod-side link (only a macvtap carrying our marker), then IPAM DEL. Succeeds when the netns or
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
                    if link.marker_device_id().is_none() {
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
        if link.marker_device_id().is_none() {
            return Err(failed(format!(
                "interface {ifname} is not a macvtap created by macvtap-operator"
            )));
        }
        if let Some(d) = &conf.device_id
            && link.marker_device_id() != Some(d.as_str())
        {
            return Err(failed(format!(
                "interface {ifname} belongs to another deviceID, not {d:?}"
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
