//! Defaults and the CEL rules of the MacvtapPool schema, evaluated client-side with kube's CEL evaluator. The same
//! rules are checked against a real API server in the e2e tests.

use kube::core::cel::validate_cel;
use macvtap_api::{MacvtapMode, MacvtapPool, MacvtapPoolSpec};
use serde_json::json;

fn pool(name: &str, spec: serde_json::Value) -> MacvtapPool {
    serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1",
        "kind": "MacvtapPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn rejected(p: &MacvtapPool) -> String {
    match validate_cel(p) {
        Ok(()) => panic!("accepted: {:?}", p.spec),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_bridge_and_100() {
    let p = pool("dataplane", json!({"lowerDevice": "eth0"}));
    assert_eq!(p.spec.mode, MacvtapMode::Bridge);
    assert_eq!(p.spec.capacity, 100);
    assert_eq!(p.resource_name().as_deref(), Some("dataplane"));
    validate_cel(&p).unwrap();
}

#[test]
fn explicit_and_discovery_pools_are_valid() {
    for spec in [
        json!({"lowerDevice": "eth0", "mode": "vepa", "capacity": 50}),
        json!({"lowerDevice": "bond0.100", "resourceName": "Data_Plane.1"}),
        json!({"discovery": {}}),
        json!({"lowerDevice": "eth0", "mode": "passthru", "capacity": 1}),
        json!({"lowerDevice": "eth1", "lowerDeviceOverrides": [
            {"nodeSelector": {"matchLabels": {"a": "b"}}, "lowerDevice": "ens5"}]}),
    ] {
        let p = pool("p", spec.clone());
        validate_cel(&p).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    let d = pool("d", json!({"discovery": {}}));
    assert_eq!(d.resource_name(), None);
}

#[test]
fn lower_device_xor_discovery() {
    let e = rejected(&pool("p", json!({})));
    assert!(
        e.contains("exactly one of spec.lowerDevice or spec.discovery"),
        "{e}"
    );
    let e = rejected(&pool("p", json!({"lowerDevice": "eth0", "discovery": {}})));
    assert!(
        e.contains("exactly one of spec.lowerDevice or spec.discovery"),
        "{e}"
    );
}

#[test]
fn discovery_excludes_resource_name_and_overrides() {
    let e = rejected(&pool("p", json!({"discovery": {}, "resourceName": "x"})));
    assert!(
        e.contains("spec.resourceName cannot be used with spec.discovery"),
        "{e}"
    );
    let e = rejected(&pool(
        "p",
        json!({"discovery": {}, "lowerDeviceOverrides": [{"nodeSelector": {}, "lowerDevice": "x"}]}),
    ));
    assert!(
        e.contains("spec.lowerDeviceOverrides cannot be used with spec.discovery"),
        "{e}"
    );
}

#[test]
fn passthru_needs_capacity_one() {
    let e = rejected(&pool(
        "p",
        json!({"lowerDevice": "eth0", "mode": "passthru"}),
    ));
    assert!(e.contains("capacity must be 1 in passthru mode"), "{e}");
}

#[test]
fn interface_and_resource_names() {
    for bad in ["a/b", "a:b", "a b", ".."] {
        let e = rejected(&pool("p", json!({"lowerDevice": bad})));
        assert!(e.contains("valid interface name"), "{bad}: {e}");
    }
    for bad in ["-x", "x-", "a/b"] {
        let e = rejected(&pool(
            "p",
            json!({"lowerDevice": "eth0", "resourceName": bad}),
        ));
        assert!(e.contains("letters, digits"), "{bad}: {e}");
    }
}

#[test]
fn long_pool_names_need_a_resource_name() {
    let long = "p".repeat(64);
    let e = rejected(&pool(&long, json!({"lowerDevice": "eth0"})));
    assert!(e.contains("at most 63 characters"), "{e}");
    validate_cel(&pool(
        &long,
        json!({"lowerDevice": "eth0", "resourceName": "short"}),
    ))
    .unwrap();
    validate_cel(&pool(&long, json!({"discovery": {}}))).unwrap();
}

#[test]
fn spec_round_trips_without_nulls() {
    let p = pool("p", json!({"lowerDevice": "eth0"}));
    let v = serde_json::to_value(&p.spec).unwrap();
    assert_eq!(
        v,
        json!({"lowerDevice": "eth0", "mode": "bridge", "capacity": 100})
    );
    let back: MacvtapPoolSpec = serde_json::from_value(v).unwrap();
    assert_eq!(back, p.spec);
}
