//! Warnings for a NetworkAttachmentDefinition of `"type": "macvtap"`, as a pure function of the NAD and the
//! resources our pools serve. Never a refusal: NADs written for the original must keep applying, and a pool may
//! well be created after its NAD.
//!
//! A webhook rather than a ValidatingAdmissionPolicy: "names a resource no pool serves" needs the pools, which
//! CEL cannot read; the rest would fit CEL, but one place for all NAD warnings reads better.

use std::collections::BTreeSet;

use macvtap_api::MacvtapMode;
use serde_json::Value;

use super::mutate::{RESOURCE_NAME, ResourceFilter};

/// What is known of the pools when a NAD is checked.
#[derive(Debug, Clone, Default)]
pub struct ServedResources {
    /// Full resource names of the named pools.
    pub names: BTreeSet<String>,
    /// A discovery pool exists: it serves one resource per host link, unknown here.
    pub discovery: bool,
}

/// The warnings for a NAD given as JSON (its `metadata.annotations` and `spec.config`).
pub fn nad_warnings(nad: &Value, served: &ServedResources, filter: &ResourceFilter) -> Vec<String> {
    let Some(config) = nad["spec"]["config"].as_str() else {
        return Vec::new();
    };
    let Ok(config) = serde_json::from_str::<Value>(config) else {
        // Not ours to judge: Multus reports unreadable configs when a pod uses them.
        return Vec::new();
    };
    // A single plugin, or a conflist with plugins[].
    let macvtap = std::iter::once(&config)
        .chain(config["plugins"].as_array().into_iter().flatten())
        .find(|c| c["type"] == "macvtap");
    let Some(macvtap) = macvtap else {
        return Vec::new();
    };
    let mut w = Vec::new();
    match nad["metadata"]["annotations"][RESOURCE_NAME].as_str() {
        None | Some("") => w.push(format!(
            "macvtap NAD without the {RESOURCE_NAME} annotation: Multus gets no device for its pods and the CNI \
             refuses them (\"deviceID is required\"); set it to macvtap.network.kubevirt.io/<pool>"
        )),
        Some(r) if filter.is_ours(r) && !served.discovery && !served.names.contains(r) => w.push(format!(
            "{RESOURCE_NAME} {r}: no MacvtapPool serves this resource (yet); pods using this NAD stay Pending \
             until one does"
        )),
        Some(_) => {}
    }
    // Keys match in any letter case, as the CNI (Go's encoding/json) reads them.
    let key = |k: &str| {
        macvtap.as_object().and_then(|o| {
            o.iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
                .next_back()
        })
    };
    if let Some(mtu) = key("mtu") {
        let ok = mtu
            .as_i64()
            .is_some_and(|m| m == 0 || (68..=65535).contains(&m));
        if !ok {
            w.push(format!(
                "mtu {mtu}: must be a whole number from 68 to 65535 (0: not set); the CNI refuses this NAD's pods"
            ));
        }
    }
    if let Some(mode) = key("mode") {
        let ok = mode
            .as_str()
            .is_some_and(|m| m.parse::<MacvtapMode>().is_ok());
        if !ok {
            w.push(format!(
                "mode {mode}: not a macvtap mode (bridge, vepa, private, passthru, source); the mode is the \
                 MacvtapPool's spec.mode"
            ));
        }
    }
    if let Some(id) = key("deviceID") {
        w.push(format!(
            "deviceID {id} names one device for every pod of this NAD: remove it, Multus passes the device the \
             kubelet allocated to each pod (a device another pod holds is refused)"
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(resource: Option<&str>, config: Value) -> Value {
        let mut n = json!({"metadata": {"name": "n", "annotations": {}}, "spec": {"config": config.to_string()}});
        if let Some(r) = resource {
            n["metadata"]["annotations"][RESOURCE_NAME] = r.into();
        }
        n
    }

    fn served() -> ServedResources {
        ServedResources {
            names: ["macvtap.network.kubevirt.io/dataplane".to_string()].into(),
            discovery: false,
        }
    }

    fn check(n: &Value) -> Vec<String> {
        nad_warnings(n, &served(), &ResourceFilter::default())
    }

    #[test]
    fn the_original_nad_is_fine() {
        let n = nad(
            Some("macvtap.network.kubevirt.io/dataplane"),
            json!({"cniVersion": "0.3.1", "name": "dataplane", "type": "macvtap", "mtu": 1500}),
        );
        assert!(check(&n).is_empty());
        // Not macvtap, or not JSON: none of our business.
        assert!(check(&nad(None, json!({"type": "bridge", "mtu": 1}))).is_empty());
        let mut broken = nad(None, json!({}));
        broken["spec"]["config"] = "{".into();
        assert!(check(&broken).is_empty());
    }

    #[test]
    fn each_problem_is_one_warning() {
        let n = nad(None, json!({"type": "macvtap"}));
        assert!(check(&n)[0].contains("without the k8s.v1.cni.cncf.io/resourceName"));
        let n = nad(
            Some("macvtap.network.kubevirt.io/nope"),
            json!({"type": "macvtap"}),
        );
        assert!(
            check(&n)[0].contains("no MacvtapPool serves"),
            "{:?}",
            check(&n)
        );
        let with_discovery = ServedResources {
            discovery: true,
            ..served()
        };
        assert!(nad_warnings(&n, &with_discovery, &ResourceFilter::default()).is_empty());
        let n = nad(Some("intel.com/x"), json!({"type": "macvtap"}));
        assert!(
            check(&n).is_empty(),
            "not our resource: not our pools to know"
        );

        let n = nad(
            Some("macvtap.network.kubevirt.io/dataplane"),
            json!({"type": "macvtap", "MTU": 40, "mode": "bridged", "deviceID": "dataplaneMvp0"}),
        );
        let w = check(&n);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("mtu 40"), "{w:?}");
        assert!(w[1].starts_with("mode \"bridged\""), "{w:?}");
        assert!(w[2].starts_with("deviceID \"dataplaneMvp0\""), "{w:?}");
        for ok in [json!(0), json!(68), json!(9000)] {
            let n = nad(
                Some("macvtap.network.kubevirt.io/dataplane"),
                json!({"type": "macvtap", "mtu": ok, "mode": "vepa"}),
            );
            assert!(check(&n).is_empty());
        }
        for bad in [json!("1500"), json!(65536), json!(1.5)] {
            let n = nad(
                Some("macvtap.network.kubevirt.io/dataplane"),
                json!({"type": "macvtap", "mtu": bad}),
            );
            assert_eq!(check(&n).len(), 1, "{bad}");
        }
    }

    #[test]
    fn a_conflist_is_checked_too() {
        let n = nad(
            None,
            json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "macvtap"}, {"type": "tuning"}]}),
        );
        assert_eq!(check(&n).len(), 1);
    }
}
