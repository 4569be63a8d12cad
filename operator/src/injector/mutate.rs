//! What the injector does to one pod, as a pure function: from the pod and the NetworkAttachmentDefinitions it
//! names to a JSON patch of its first container's resources, plus the warnings the user sees.
//!
//! One device per attachment: a pod naming one macvtap NAD twice gets 2 (Multus asks the kubelet for one device
//! ID per attachment). A value the user wrote is never lowered, only raised to the count; requests and limits end
//! up equal, as the API server demands of extended resources. The first container is the one KubeVirt's
//! virt-launcher (`compute`) and Multus' own injector use.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

use super::annotations::{self, NadRef};

/// The NAD annotation naming the device resource Multus asks the kubelet about.
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";

/// Which resource names are ours to inject (prefixes such as `macvtap.network.kubevirt.io/`).
#[derive(Debug, Clone)]
pub struct ResourceFilter {
    prefixes: Vec<String>,
}

/// The default: the resources our agents serve.
pub const DEFAULT_PREFIX: &str = macvtap_core::RESOURCE_PREFIX;

impl Default for ResourceFilter {
    fn default() -> Self {
        Self::new(vec![DEFAULT_PREFIX.to_string()])
    }
}

impl ResourceFilter {
    pub fn new(prefixes: Vec<String>) -> Self {
        Self { prefixes }
    }

    pub fn is_ours(&self, resource: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| resource.starts_with(p.as_str()))
    }
}

/// What is known of a NAD the pod names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NadLookup {
    Missing,
    /// Found; its `resourceName` annotation, if any.
    Found(Option<String>),
}

/// The injector's answer for one pod.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation {
    /// JSON patch operations (RFC 6902) on the pod; empty: admit unchanged.
    pub patch: Vec<Value>,
    pub warnings: Vec<String>,
    /// Resource → the value now set on the first container (only those this pod needed).
    pub resources: BTreeMap<String, i64>,
}

/// The mutation of `pod` (in `namespace`) given what `lookup` knows of each NAD.
pub fn mutate(
    pod: &Pod,
    namespace: &str,
    filter: &ResourceFilter,
    lookup: impl Fn(&NadRef) -> NadLookup,
) -> Mutation {
    let mut out = Mutation::default();
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let (refs, errors) = annotations::attachments(pod_annotations, namespace);
    out.warnings
        .extend(errors.iter().map(|e| format!("macvtap injector: {e}")));

    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for r in &refs {
        match lookup(r) {
            NadLookup::Missing => out.warnings.push(format!(
                "macvtap injector: NetworkAttachmentDefinition {r} not found; no device resource added for it"
            )),
            NadLookup::Found(Some(resource)) if filter.is_ours(&resource) => {
                *wanted.entry(resource).or_default() += 1;
            }
            NadLookup::Found(_) => {}
        }
    }
    if wanted.is_empty() {
        return out;
    }
    let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
        return out;
    };
    let resources = container.resources.clone().unwrap_or_default();
    let mut requests = resources.requests.clone().unwrap_or_default();
    let mut limits = resources.limits.clone().unwrap_or_default();
    let mut changed = false;
    for (resource, count) in wanted {
        let set = [requests.get(&resource), limits.get(&resource)];
        let mut highest = count;
        let mut unreadable = false;
        for q in set.into_iter().flatten() {
            match q.0.trim().parse::<i64>() {
                Ok(v) => highest = highest.max(v),
                Err(_) => unreadable = true,
            }
        }
        if unreadable {
            out.warnings.push(format!(
                "macvtap injector: {resource} in container {:?} is not a whole number; left as written",
                container.name
            ));
            continue;
        }
        let value = Quantity(highest.to_string());
        for map in [&mut requests, &mut limits] {
            if map.get(&resource) != Some(&value) {
                map.insert(resource.clone(), value.clone());
                changed = true;
            }
        }
        out.resources.insert(resource, highest);
    }
    if changed {
        // One `add` of the whole resources object: it creates or replaces the member, keeps every other field
        // (claims, other resources) as written, and needs no per-key escaping.
        let mut new = serde_json::to_value(&resources).unwrap_or_else(|_| json!({}));
        new["requests"] = serde_json::to_value(&requests).unwrap_or_default();
        new["limits"] = serde_json::to_value(&limits).unwrap_or_default();
        out.patch
            .push(json!({"op": "add", "path": "/spec/containers/0/resources", "value": new}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RES: &str = "macvtap.network.kubevirt.io/dataplane";

    fn pod(annotations: Value, resources: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [
                {"name": "first", "image": "busybox", "resources": resources},
                {"name": "second", "image": "busybox"}
            ]}
        }))
        .unwrap()
    }

    fn nads(r: &NadRef) -> NadLookup {
        match (r.namespace.as_str(), r.name.as_str()) {
            ("default", "dataplane") => NadLookup::Found(Some(RES.into())),
            ("other", "p4p1") => NadLookup::Found(Some("macvtap.network.kubevirt.io/p4p1".into())),
            ("default", "sriov") => NadLookup::Found(Some("intel.com/sriov".into())),
            ("default", "plain") => NadLookup::Found(None),
            _ => NadLookup::Missing,
        }
    }

    fn patched(p: &Pod, m: &Mutation) -> Value {
        let mut v = serde_json::to_value(p).unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(m.patch.clone())).unwrap();
        json_patch::patch(&mut v, &patch).unwrap();
        v["spec"]["containers"][0]["resources"].clone()
    }

    #[test]
    fn one_device_per_attachment_on_the_first_container() {
        let p = pod(
            json!({annotations::NETWORKS: "dataplane,dataplane@net2,other/p4p1,sriov,plain"}),
            json!(null),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(
            patched(&p, &m),
            json!({
                "requests": {RES: "2", "macvtap.network.kubevirt.io/p4p1": "1"},
                "limits": {RES: "2", "macvtap.network.kubevirt.io/p4p1": "1"}
            })
        );
    }

    #[test]
    fn never_lowers_what_the_user_set_and_keeps_other_resources() {
        let p = pod(
            json!({annotations::NETWORKS: "dataplane"}),
            json!({"limits": {RES: "3", "memory": "64Mi"}, "requests": {"cpu": "10m"}}),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert_eq!(
            patched(&p, &m),
            json!({"limits": {RES: "3", "memory": "64Mi"}, "requests": {RES: "3", "cpu": "10m"}})
        );
        // Already what it needs: no patch at all.
        let p = pod(
            json!({annotations::NETWORKS: "dataplane"}),
            json!({"limits": {RES: "1"}, "requests": {RES: "1"}}),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert!(m.patch.is_empty());
        assert_eq!(m.resources, BTreeMap::from([(RES.to_string(), 1)]));
        // Two attachments raise a user's 1 to 2.
        let p = pod(
            json!({annotations::NETWORKS: "dataplane,dataplane"}),
            json!({"limits": {RES: "1"}}),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert_eq!(
            patched(&p, &m),
            json!({"limits": {RES: "2"}, "requests": {RES: "2"}})
        );
    }

    #[test]
    fn missing_nads_and_broken_annotations_admit_unchanged_with_a_warning() {
        let p = pod(
            json!({annotations::NETWORKS: "nope,other/gone"}),
            json!(null),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert!(m.patch.is_empty());
        assert_eq!(m.warnings.len(), 2);
        assert!(
            m.warnings[0].contains("default/nope not found"),
            "{:?}",
            m.warnings
        );
        assert!(m.warnings[1].contains("other/gone"), "{:?}", m.warnings);

        let p = pod(json!({annotations::NETWORKS: "[{"}), json!(null));
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert!(m.patch.is_empty());
        assert!(
            m.warnings[0].contains(annotations::NETWORKS),
            "{:?}",
            m.warnings
        );

        let p = pod(
            json!({annotations::NETWORKS: "dataplane"}),
            json!({"limits": {RES: "1k"}}),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert!(m.patch.is_empty());
        assert!(
            m.warnings[0].contains("not a whole number"),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn default_network_and_a_wider_filter() {
        let p = pod(
            json!({annotations::DEFAULT_NETWORK: "other/p4p1", annotations::NETWORKS: "sriov"}),
            json!({}),
        );
        let m = mutate(&p, "default", &ResourceFilter::default(), nads);
        assert_eq!(
            m.resources,
            BTreeMap::from([("macvtap.network.kubevirt.io/p4p1".to_string(), 1)])
        );
        let wide = ResourceFilter::new(vec![DEFAULT_PREFIX.into(), "intel.com/".into()]);
        let m = mutate(&p, "default", &wide, nads);
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.resources["intel.com/sriov"], 1);
    }

    #[test]
    fn pods_without_networks_are_untouched() {
        let p = pod(json!({"other": "x"}), json!(null));
        assert_eq!(
            mutate(&p, "default", &ResourceFilter::default(), nads),
            Mutation::default()
        );
    }
}
