//! A device belongs to the pod the kubelet allocated it to: ADD asks PodResources, refuses everyone else with the
//! link untouched, and fails closed (11) when the kubelet cannot be asked or stays rate-limited. Outside Kubernetes
//! the node decides.

mod common;

use common::pod_resources::{GetMode, RateLimit};
use common::*;
use macvtap_link::device_id;
use serde_json::json;

#[test]
fn another_pods_device_is_refused_and_left_alone() {
    let f = Fixture::new();
    let mine = device_id("own", 0);
    let victims = device_id("own", 1);
    let pending = device_id("own", 2);
    f.alloc(&mine);
    f.alloc_for("victim", &victims);
    // Device-plugin only: the link exists (Allocate ran, or a retry left it), no pod holds it.
    f.create_link(&pending);
    // The pod holds it, but in a resource that is not macvtap's.
    let gpu = device_id("own", 3);
    f.create_link(&gpu);
    f.kubelet
        .grant(NAMESPACE, &f.pod_name, "example.com/gpu", &gpu);
    let before = node_state(&f);
    let pod_before = f.pod.link_names().unwrap();
    for id in [&victims, &pending, &gpu] {
        // A NAD naming the literal deviceID, top-level or as runtimeConfig, in any letter case.
        for c in [
            conf("1.0.0", id, json!({})),
            json!({"cniVersion": "0.3.1", "type": "macvtap", "DeviceID": id}),
            json!({"cniVersion": "1.0.0", "type": "macvtap", "deviceID": mine, "runtimeConfig": {"deviceID": id}}),
        ] {
            let msg = f.call("ADD", "net1").run(&c).err(107);
            assert!(
                msg.contains(id.as_str()) && msg.contains(&f.pod_name),
                "{msg}"
            );
            assert_eq!(node_state(&f), before, "{id}: node changed");
            assert_eq!(f.pod.link_names().unwrap(), pod_before, "{id}: pod changed");
        }
    }
    // The refusal names what the pod does hold (its own business), never the victim's.
    let r = f
        .call("ADD", "net1")
        .run(&conf("1.0.0", &victims, json!({})));
    let details = r.json()["details"].as_str().unwrap().to_string();
    assert!(
        details.contains(&mine) && !details.contains("victim"),
        "{details}"
    );
    // Its own device is fine, and the victim's is still there for the victim.
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &mine, json!({})))
        .ok();
    let victim_ns = macvtap_e2e::netns::Netns::new("cni-victim").unwrap();
    f.call_as("victim", &victim_ns, "ADD", "net1")
        .run(&conf("1.0.0", &victims, json!({})))
        .ok();
}

/// `Get` where the kubelet has it, `List` where it refuses `Get` (older kubelet, gate off).
#[test]
fn get_or_list_like_the_kubelet_allows() {
    let f = Fixture::new();
    for (i, (mode, calls)) in [
        (GetMode::Answer, vec!["Get"]),
        (GetMode::Unimplemented, vec!["Get", "List"]),
        (GetMode::Disabled, vec!["Get", "List"]),
    ]
    .into_iter()
    .enumerate()
    {
        f.kubelet.set_get(mode);
        let id = device_id("getlist", i as u32);
        f.alloc(&id);
        f.kubelet.take_calls();
        f.call("ADD", "net1")
            .run(&conf("1.0.0", &id, json!({})))
            .ok();
        assert_eq!(f.kubelet.take_calls(), calls, "{mode:?}");
        f.call("DEL", "net1")
            .run(&conf("1.0.0", &id, json!({})))
            .ok();
        assert!(f.kubelet.take_calls().is_empty(), "DEL asks nobody");
        // And a refusal through either path.
        let other = device_id("getlist", 10 + i as u32);
        f.alloc_for("someone", &other);
        f.call("ADD", "net1")
            .run(&conf("1.0.0", &other, json!({})))
            .err(107);
    }
}

/// Fails closed: no socket, a socket nobody answers on properly → 11, link untouched.
#[test]
fn kubelet_unreachable_is_try_again_later() {
    let f = Fixture::new();
    let id = device_id("down", 0);
    f.alloc(&id);
    let before = node_state(&f);
    let c = conf("1.0.0", &id, json!({}));

    let gone = f.other_node_config(
        "gone.json",
        json!({"podResourcesSocket": f.dir.path().join("nobody.sock")}),
    );
    let msg = f
        .call("ADD", "net1")
        .env(NODE_CONFIG_ENV, gone.to_str().unwrap())
        .run(&c)
        .err(11);
    assert!(msg.contains("nobody.sock") && msg.contains(&id), "{msg}");
    assert_eq!(node_state(&f), before);

    // Something listens but speaks no HTTP/2: it accepts and hangs up.
    let sock = f.dir.path().join("broken.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for c in listener.incoming().take(1) {
            drop(c);
        }
    });
    let broken = f.other_node_config("broken.json", json!({"podResourcesSocket": sock}));
    f.call("ADD", "net1")
        .env(NODE_CONFIG_ENV, broken.to_str().unwrap())
        .run(&c)
        .err(11);
    server.join().unwrap();
    assert_eq!(node_state(&f), before);

    f.call("ADD", "net1").run(&c).ok();
}

/// A kubelet whose rate limit never lets a call through: after the back-off's budget, 11 saying "rate-limited" and
/// how many attempts, nothing created. Each attempt was one `Get`: busy is not "no Get here", so never `List`, even
/// from a kubelet that would refuse `Get` once past the limiter.
#[test]
fn a_kubelet_rate_limiting_every_call_is_try_again_later() {
    let f = Fixture::new();
    let id = device_id("busy", 0);
    f.record(&id);
    f.grant(&f.pod_name.clone(), &id);
    let before = node_state(&f);
    f.kubelet.set_get(GetMode::Unimplemented);
    f.kubelet.set_rate_limit(Some(RateLimit::EXHAUSTED));
    let msg = f
        .call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .err(11);
    let refused = f.kubelet.take_refused();
    assert!(
        msg.contains("rate-limited") && msg.contains(&id) && msg.contains(&f.pod_name),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{} attempts", refused.len())),
        "the message counts the calls the kubelet refused ({}): {msg}",
        refused.len()
    );
    assert!(refused.len() > 3, "retried: {refused:?}");
    assert!(refused.iter().all(|m| *m == "Get"), "{refused:?}");
    assert!(
        f.kubelet.take_calls().is_empty(),
        "nothing got past the limit"
    );
    assert_eq!(node_state(&f), before);
    assert!(f.pod_link("net1").is_none(), "nothing in the pod");
    // The kubelet's usual limit again: the same ADD goes through.
    f.kubelet.set_get(GetMode::Answer);
    f.kubelet.set_rate_limit(Some(RateLimit::KUBELET));
    f.call("ADD", "net1")
        .run(&conf("1.0.0", &id, json!({})))
        .ok();
}

#[test]
fn a_half_pod_identity_is_refused() {
    let f = Fixture::new();
    let id = device_id("half", 0);
    f.alloc(&id);
    let before = node_state(&f);
    for args in [
        "IgnoreUnknown=true;K8S_POD_NAME=vm",
        "IgnoreUnknown=true;K8S_POD_NAMESPACE=default",
        "IgnoreUnknown=true;K8S_POD_UID=u1",
    ] {
        let msg = f
            .call("ADD", "net1")
            .env("CNI_ARGS", args)
            .run(&conf("1.0.0", &id, json!({})))
            .err(4);
        assert!(msg.contains("K8S_POD_NAME"), "{msg}");
        assert_eq!(node_state(&f), before);
    }
}

/// Outside Kubernetes (no K8S_* in CNI_ARGS): refused unless the node config allows it; then only marked links.
#[test]
fn outside_kubernetes_the_node_decides() {
    let f = Fixture::new();
    let id = device_id("direct", 0);
    f.create_link(&id);
    let c = conf("1.0.0", &id, json!({}));
    let before = node_state(&f);
    let msg = f.call("ADD", "net1").env("CNI_ARGS", "").run(&c).err(4);
    assert!(msg.contains("K8S_POD_NAME"), "{msg}");
    assert_eq!(node_state(&f), before);

    let allow = f.other_node_config("allow.json", json!({"outsideKubernetes": "allow"}));
    let direct = |cmd: &str, ifname: &str| {
        f.call(cmd, ifname)
            .env("CNI_ARGS", "")
            .env(NODE_CONFIG_ENV, allow.to_str().unwrap())
    };
    f.kubelet.take_calls();
    let res = direct("ADD", "net1").run(&c).ok();
    assert_eq!(res["interfaces"][0]["name"], "net1");
    assert!(f.kubelet.take_calls().is_empty(), "no pod, nobody asked");
    let tap = f.pod_tap("net1");
    assert_eq!(tap.node_dev, tap.sysfs_dev);
    direct("DEL", "net1").run(&c).ok();

    // An unmarked link of the original: nothing proves whose it is without the kubelet.
    let orig = device_id("direct", 1);
    let name = macvtap_link::host_link_name(&orig);
    f.node
        .ip(&[
            "link", "add", "link", "lower0", "name", &name, "type", "macvtap",
        ])
        .unwrap();
    let before = node_state(&f);
    let msg = direct("ADD", "net2")
        .run(&conf("1.0.0", &orig, json!({})))
        .err(101);
    assert!(msg.contains("unmarked"), "{msg}");
    assert_eq!(node_state(&f), before);
}

#[test]
fn an_unusable_node_config_makes_the_plugin_unavailable() {
    let f = Fixture::new();
    let id = device_id("nodecfg", 0);
    f.alloc(&id);
    let before = node_state(&f);
    let c = conf("1.0.0", &id, json!({}));
    let bad = f.dir.path().join("bad.json");
    for content in [
        "{",
        r#"{"outsideKubernets":"allow"}"#,
        r#"{"podResourcesSocket":"relative.sock"}"#,
    ] {
        std::fs::write(&bad, content).unwrap();
        let msg = f
            .call("ADD", "net1")
            .env(NODE_CONFIG_ENV, bad.to_str().unwrap())
            .run(&c)
            .err(50);
        assert!(msg.contains("bad.json"), "{content}: {msg}");
    }
    let msg = f
        .call("ADD", "net1")
        .env(
            NODE_CONFIG_ENV,
            f.dir.path().join("missing.json").to_str().unwrap(),
        )
        .run(&c)
        .err(50);
    assert!(msg.contains("missing.json"), "{msg}");
    assert_eq!(node_state(&f), before);
}
