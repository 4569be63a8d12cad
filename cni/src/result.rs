//! CNI results: parsing what an IPAM delegate (or `prevResult`) says, and printing ours in the shape of each
//! spec version.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::error::{CniError, Code};
use crate::version::Version;

/// An address from a result, `ips[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// `ips[].interface` (an index into `interfaces`), when given.
    pub interface: Option<usize>,
}

/// A route from a result, `routes[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpAddr,
    pub dst_len: u8,
    pub gw: Option<IpAddr>,
}

/// An interface from a result, `interfaces[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
}

/// A parsed result of any supported version (also the abbreviated IPAM form, and kube-ovn's full form).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedResult {
    pub interfaces: Vec<InterfaceConfig>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: Option<Value>,
}

impl ParsedResult {
    /// A MAC chosen by the IPAM delegate: kube-ovn reports the centrally allocated MAC on its interface entry.
    pub fn ipam_mac(&self) -> Option<[u8; 6]> {
        self.interfaces
            .iter()
            .find_map(|i| i.mac.as_deref().and_then(crate::config::parse_unicast_mac))
    }
}

/// Parse `a.b.c.d/nn` or `x::y/nn`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn bad(what: impl Into<String>) -> CniError {
    CniError::new(Code::IpamResult, what, "")
}

/// Parse a result object (IPAM stdout or `prevResult`).
pub fn parse_result(v: &Value) -> Result<ParsedResult, CniError> {
    let Some(obj) = v.as_object() else {
        return Err(bad("result is not a JSON object"));
    };
    let mut out = ParsedResult::default();
    for i in obj
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.interfaces.push(InterfaceConfig {
            name: i
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            mac: i
                .get("mac")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
        });
    }
    for ip in obj
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addr = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (ip_addr, prefix_len) =
            parse_cidr(addr).ok_or_else(|| bad(format!("ips[].address {addr:?} is not a CIDR")))?;
        let gateway = optional_ip(ip, "gateway", "ips[].gateway").map_err(bad)?;
        let interface = ip
            .get("interface")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        out.ips.push(IpConfig {
            ip: ip_addr,
            prefix_len,
            gateway,
            interface,
        });
    }
    for r in obj
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
        let (dst, dst_len) =
            parse_cidr(dst).ok_or_else(|| bad(format!("routes[].dst {dst:?} is not a CIDR")))?;
        let gw = optional_ip(r, "gw", "routes[].gw").map_err(bad)?;
        out.routes.push(RouteConfig { dst, dst_len, gw });
    }
    out.dns = obj
        .get("dns")
        .filter(|d| d.as_object().is_some_and(|m| !m.is_empty()))
        .cloned();
    Ok(out)
}

/// An address field that may be absent or empty; `what` names it in the error.
fn optional_ip(obj: &Value, key: &str, what: &str) -> Result<Option<IpAddr>, String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty())
        .map(|g| g.parse().map_err(|_| format!("{what} {g:?} is not an IP")))
        .transpose()
}

/// The interface we configured, for our result.
#[derive(Debug, Clone)]
pub struct PodInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub sandbox: String,
}

/// Our ADD result for `version`: one interface (the pod-side macvtap), the IPAM addresses pointing at it, the
/// IPAM routes and DNS. 0.3.x/0.4.0 carry `ips[].version`; 1.1.0 adds the interface `mtu`.
pub fn render(version: Version, iface: &PodInterface, ipam: Option<&ParsedResult>) -> Value {
    let mut i = Map::new();
    i.insert("name".into(), json!(iface.name));
    i.insert("mac".into(), json!(iface.mac));
    if version.has_status_gc() {
        i.insert("mtu".into(), json!(iface.mtu));
    }
    i.insert("sandbox".into(), json!(iface.sandbox));
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version.to_string()));
    out.insert("interfaces".into(), json!([Value::Object(i)]));
    let ipam = ipam.cloned().unwrap_or_default();
    let ips: Vec<Value> = ipam
        .ips
        .iter()
        .map(|c| {
            let mut m = Map::new();
            if version.has_ip_version() {
                m.insert(
                    "version".into(),
                    json!(if c.ip.is_ipv4() { "4" } else { "6" }),
                );
            }
            m.insert("interface".into(), json!(0));
            m.insert(
                "address".into(),
                json!(format!("{}/{}", c.ip, c.prefix_len)),
            );
            if let Some(g) = c.gateway {
                m.insert("gateway".into(), json!(g.to_string()));
            }
            Value::Object(m)
        })
        .collect();
    if !ips.is_empty() {
        out.insert("ips".into(), json!(ips));
    }
    let routes: Vec<Value> = ipam
        .routes
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("dst".into(), json!(format!("{}/{}", r.dst, r.dst_len)));
            if let Some(g) = r.gw {
                m.insert("gw".into(), json!(g.to_string()));
            }
            Value::Object(m)
        })
        .collect();
    if !routes.is_empty() {
        out.insert("routes".into(), json!(routes));
    }
    out.insert("dns".into(), ipam.dns.unwrap_or_else(|| json!({})));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> PodInterface {
        PodInterface {
            name: "net1".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            sandbox: "/run/netns/x".into(),
        }
    }

    #[test]
    fn parses_host_local_and_kube_ovn_shapes() {
        let host_local: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1"}],
                "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        let r = parse_result(&host_local).unwrap();
        assert_eq!(r.ips[0].ip, "10.1.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.ips[0].prefix_len, 24);
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns, None);
        assert_eq!(r.ipam_mac(), None);

        let kube_ovn: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"","mac":"0a:58:0a:10:00:05","sandbox":"/run/netns/p"}],
                "ips":[{"interface":0,"address":"10.16.0.5/16","gateway":"10.16.0.1"}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.16.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}"#,
        )
        .unwrap();
        let r = parse_result(&kube_ovn).unwrap();
        assert_eq!(r.ipam_mac(), Some([0x0a, 0x58, 0x0a, 0x10, 0, 5]));
        assert_eq!(r.routes[0].gw, Some("10.16.0.1".parse().unwrap()));
        assert!(r.dns.is_some());
    }

    #[test]
    fn rejects_malformed_results() {
        for bad in [
            r#"[]"#,
            r#"{"ips":[{"address":"10.0.0.1"}]}"#,
            r#"{"ips":[{"address":"10.0.0.1/33"}]}"#,
            r#"{"ips":[{"address":"10.0.0.1/24","gateway":"x"}]}"#,
            r#"{"routes":[{"dst":"nope"}]}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert_eq!(parse_result(&v).unwrap_err().code, 103, "{bad}");
        }
    }

    #[test]
    fn render_shapes_per_version() {
        let ipam = ParsedResult {
            ips: vec![IpConfig {
                ip: "10.1.0.2".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: None,
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0".parse().unwrap(),
                dst_len: 0,
                gw: Some("10.1.0.1".parse().unwrap()),
            }],
            ..Default::default()
        };
        for v in crate::version::SUPPORTED {
            let ver = Version::parse_supported(v).unwrap();
            let out = render(ver, &iface(), Some(&ipam));
            assert_eq!(out["cniVersion"], v);
            assert_eq!(out["interfaces"].as_array().unwrap().len(), 1);
            assert_eq!(out["interfaces"][0]["sandbox"], "/run/netns/x");
            assert_eq!(out["ips"][0]["interface"], 0);
            assert_eq!(out["ips"][0]["address"], "10.1.0.2/24");
            assert_eq!(
                out["ips"][0].get("version").is_some(),
                v.starts_with("0."),
                "{v}"
            );
            assert_eq!(
                out["interfaces"][0].get("mtu").is_some(),
                v == "1.1.0",
                "{v}"
            );
            assert_eq!(out["routes"][0]["dst"], "0.0.0.0/0");
            // Round trip through our own parser.
            let back = parse_result(&out).unwrap();
            assert_eq!(back.ips[0].interface, Some(0));
            assert_eq!(back.interfaces[0].name, "net1");
        }
        let l2 = render(Version::V1_0_0, &iface(), None);
        assert!(l2.get("ips").is_none());
        assert_eq!(l2["dns"], json!({}));
    }
}
