//! Which resources a node serves: the configuration's explicit ones, plus (with discovery) one per suitable host
//! link not already named. Pure rules over a configuration and a link table, recomputed on every change of either.

use std::collections::BTreeMap;

use macvtap_core::{NodeConfig, ResourceConfig, validate_resource_name};
use macvtap_link::LinkInfo;

/// The resources to serve: explicit ones, plus (with discovery) one per suitable link not already named.
pub fn effective_resources(
    cfg: &NodeConfig,
    links: &BTreeMap<String, LinkInfo>,
    extra_kinds: &[String],
) -> BTreeMap<String, ResourceConfig> {
    let mut out: BTreeMap<String, ResourceConfig> = cfg
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    if let Some(d) = &cfg.discovery {
        for l in links.values() {
            if out.contains_key(&l.name)
                || !suitable_for_discovery(l, links, extra_kinds)
                || validate_resource_name(&l.name).is_err()
            {
                continue;
            }
            out.insert(
                l.name.clone(),
                ResourceConfig {
                    name: l.name.clone(),
                    lower_device: l.name.clone(),
                    mode: d.mode,
                    capacity: d.capacity,
                    pool: d.pool.clone(),
                },
            );
        }
    }
    out
}

/// Whether `link` is a lower device that `[]` discovery serves: a physical link or a bond, not loopback, not a
/// bond member; `extra_kinds` adds link kinds (e.g. `veth` in test nodes, `team` on some hosts).
pub fn suitable_for_discovery(
    link: &LinkInfo,
    links: &BTreeMap<String, LinkInfo>,
    extra_kinds: &[String],
) -> bool {
    if link.loopback {
        return false;
    }
    let kind_ok = match link.kind.as_deref() {
        None => true,
        Some("bond") => true,
        Some(k) => extra_kinds.iter().any(|e| e == k),
    };
    if !kind_ok {
        return false;
    }
    // Bond members carry no traffic of their own: the bond is the lower device.
    let enslaved_to_bond = link.master.is_some_and(|m| {
        links
            .values()
            .any(|l| l.index == m && l.kind.as_deref() == Some("bond"))
    });
    !enslaved_to_bond
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::tests::link;
    use macvtap_core::{DiscoveryConfig, MacvtapMode};

    #[test]
    fn explicit_resources_win_over_discovered_names() {
        let links: BTreeMap<_, _> = [link(2, "eth0", None), link(3, "eth1", None)]
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        let cfg = NodeConfig {
            resources: vec![ResourceConfig {
                name: "eth0".into(),
                lower_device: "eth1".into(),
                mode: MacvtapMode::Vepa,
                capacity: 5,
                pool: None,
            }],
            discovery: Some(DiscoveryConfig {
                mode: MacvtapMode::Bridge,
                capacity: 7,
                pool: Some("p".into()),
            }),
        };
        let got = effective_resources(&cfg, &links, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(got["eth0"].lower_device, "eth1");
        assert_eq!(got["eth0"].capacity, 5);
        assert_eq!(got["eth1"].lower_device, "eth1");
        assert_eq!(got["eth1"].capacity, 7);
        assert_eq!(got["eth1"].pool.as_deref(), Some("p"));
    }

    #[test]
    fn discovery_takes_physical_links_and_bonds_only() {
        let mut lo = link(1, "lo", None);
        lo.loopback = true;
        let eth0 = link(2, "eth0", None);
        let bond = link(3, "bond0", Some("bond"));
        let mut member = link(4, "eth1", None);
        member.master = Some(3);
        let br = link(5, "br0", Some("bridge"));
        let mut bridged = link(6, "eth2", None);
        bridged.master = Some(5);
        let veth = link(7, "veth0", Some("veth"));
        let mvt = link(8, "mvt0123", Some("macvtap"));
        let all: BTreeMap<_, _> = [&lo, &eth0, &bond, &member, &br, &bridged, &veth, &mvt]
            .into_iter()
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        let pick = |extra: &[String]| -> Vec<&str> {
            all.values()
                .filter(|l| suitable_for_discovery(l, &all, extra))
                .map(|l| l.name.as_str())
                .collect()
        };
        // A link enslaved to a bridge is still a physical NIC; only bond members are skipped.
        assert_eq!(pick(&[]), vec!["bond0", "eth0", "eth2"]);
        assert_eq!(
            pick(&["veth".into()]),
            vec!["bond0", "eth0", "eth2", "veth0"]
        );
    }
}
