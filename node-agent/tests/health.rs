//! The agent's probes and reports say the truth: `/readyz` waits for every registration, `/healthz` fails while
//! the netlink monitor or a plugin server is down (and both recover), cleanup skipped for lack of PodResources is
//! visible, and a kubelet that died leaving its socket behind makes the agent unready until a kubelet answers again.

mod common;

use std::time::Duration;

use common::*;
use macvtap_agent::config::ConfigSource;
use macvtap_e2e::kubelet::{HEALTHY, healthy_count};

const T: Duration = Duration::from_secs(10);

/// Waits until `path` answers `code` with a body containing `needle`; panics with the last answer otherwise.
async fn probe_until(node: &Node, path: &str, code: u16, needle: &str) -> String {
    let mut last = None;
    let ok = eventually(Duration::from_secs(15), || {
        last = node.http_get(path);
        last.as_ref()
            .is_some_and(|(c, body)| *c == code && body.contains(needle))
    })
    .await;
    assert!(
        ok,
        "{path}: wanted {code} with {needle:?}, last {last:?}\n{}",
        node.log()
    );
    last.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_every_registration_and_healthz_for_every_plugin_server() {
    require_root();
    let mut node = Node::new("agent-probes").await;
    // A kubelet that refuses registrations: serving, so live; not registered, so not ready.
    node.kubelet.refuse_registrations(true);
    node.start_agent_with_file(
        r#"[{"name":"a","lowerDevice":"lower0","capacity":2},{"name":"b","lowerDevice":"lower0","capacity":2}]"#,
        &[],
    );
    let body = probe_until(&node, "/readyz", 503, "not registered with the kubelet").await;
    assert!(
        body.contains("resource a") && body.contains("resource b"),
        "{body}"
    );
    probe_until(&node, "/healthz", 200, "ok").await;

    // The kubelet accepts again: ready once both are registered (the agent retries with backoff up to 5 s).
    node.kubelet.refuse_registrations(false);
    for r in ["a", "b"] {
        node.wait_for_healthy(&resource(r), 2).await;
    }
    probe_until(&node, "/readyz", 200, "ok").await;

    // b's server cannot serve: its socket path is taken by a directory. Not live (a restart may fix what the agent
    // cannot), not ready; a is unaffected.
    let sock = node.device_plugin_dir().join("macvtap-b.sock");
    std::fs::remove_file(&sock).unwrap();
    std::fs::create_dir(&sock).unwrap();
    let body = probe_until(
        &node,
        "/healthz",
        503,
        "resource b: device plugin server not serving",
    )
    .await;
    assert!(body.contains("is not a socket"), "{body}");
    assert!(!body.contains("resource a"), "{body}");
    probe_until(&node, "/readyz", 503, "resource b").await;
    assert_eq!(node.kubelet.devices(&resource("a")).len(), 2);

    // The path is free again: b serves, registers, and both probes pass.
    std::fs::remove_dir(&sock).unwrap();
    probe_until(&node, "/healthz", 200, "ok").await;
    node.wait_for_healthy(&resource("b"), 2).await;
    probe_until(&node, "/readyz", 200, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_netlink_subscription_is_resubscribed_and_health_recovers() {
    require_root();
    let node = Node::new("agent-netlink").await;
    node.write_config(r#"[{"name":"dp","lowerDevice":"lower0","capacity":3}]"#);
    let mut opts = node.agent_options(ConfigSource::File {
        path: node.config_file(),
        poll: Duration::from_millis(200),
    });
    let (fault, fault_rx) = tokio::sync::watch::channel(false);
    opts.netlink_fault = Some(fault_rx);
    let agent = InProcessAgent::start(node.netns.path(), opts);
    let res = resource("dp");
    node.kubelet
        .wait_for_resource(&res, T, |d| healthy_count(d) == 3)
        .await
        .unwrap();
    probe_until(&node, "/healthz", 200, "ok").await;
    probe_until(&node, "/readyz", 200, "ok").await;

    // The event stream ends (the test hook drops the subscription, as a failed socket does) and stays down.
    fault.send_replace(true);
    probe_until(&node, "/healthz", 503, "netlink link monitor").await;
    probe_until(&node, "/readyz", 503, "netlink link monitor").await;
    // A change while unsubscribed is not seen yet...
    node.ip(&["link", "set", "lower0", "down"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(healthy_count(&node.kubelet.devices(&res)), 3);

    // ...the monitor subscribes again: health recovers, the table is re-read (the missed change shows), and new
    // events arrive on the new subscription.
    fault.send_replace(false);
    probe_until(&node, "/healthz", 200, "ok").await;
    node.kubelet
        .wait_for_resource(&res, T, |d| !d.is_empty() && healthy_count(d) == 0)
        .await
        .unwrap();
    node.ip(&["link", "set", "lower0", "up"]);
    node.kubelet
        .wait_for_resource(&res, T, |d| {
            d.iter().all(|x| x.health == HEALTHY) && d.len() == 3
        })
        .await
        .unwrap();
    assert_eq!(
        node.metric("macvtap_agent_netlink_resubscriptions_total"),
        Some(1.0)
    );
    probe_until(&node, "/readyz", 200, "ok").await;
    agent.stop().unwrap();
    assert_eq!(sockets_in(&node.device_plugin_dir()), ["kubelet.sock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_skipped_without_pod_resources_is_counted_and_nothing_is_removed() {
    require_root();
    let mut node = Node::new("agent-nopr").await;
    node.start_agent_with_file(
        r#"[{"name":"dp","lowerDevice":"lower0","capacity":2}]"#,
        &[],
    );
    let res = resource("dp");
    node.wait_for_healthy(&res, 2).await;
    assert!(
        eventually(T, || node.metric("macvtap_agent_cleanup_active")
            == Some(1.0))
        .await,
        "{:?}",
        node.http_get("/metrics")
    );
    // An orphan: allocated, its pod gone.
    node.kubelet
        .start_pod("ns", "vm", "c", &res, 1)
        .await
        .unwrap();
    node.kubelet.release_pod("ns", "vm").await;
    let orphan = macvtap_core::device::host_link_name("dpMvp0");

    node.kubelet.stop_pod_resources().await;
    let skipped = "macvtap_agent_cleanup_skipped_total{reason=\"pod_resources_unreachable\"}";
    assert!(
        eventually(T, || node.metric(skipped).unwrap_or(0.0) >= 2.0
            && node.metric("macvtap_agent_cleanup_active") == Some(0.0))
        .await,
        "{:?}",
        node.http_get("/metrics")
    );
    // Well past the grace period: still there, nothing is removed on a guess.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(node.link(&orphan).is_some(), "removed without PodResources");
    assert!(
        node.log().contains("link cleanup skipped"),
        "{}",
        node.log()
    );

    node.kubelet.start_pod_resources().await.unwrap();
    assert!(node.link_removed(&orphan).await, "{}", node.log());
    assert_eq!(node.metric("macvtap_agent_cleanup_active"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_kubelet_that_leaves_its_socket_makes_the_agent_unready_until_one_answers_again() {
    require_root();
    let mut node = Node::new("agent-kdead").await;
    node.start_agent_with_file(r#"[{"name":"a","lowerDevice":"lower0","capacity":2}]"#, &[]);
    let res = resource("a");
    node.wait_for_healthy(&res, 2).await;
    probe_until(&node, "/readyz", 200, "ok").await;
    let kubelet_sock = node.kubelet.kubelet_socket();
    let plugin_sock = node.device_plugin_dir().join("macvtap-a.sock");
    for round in 0..3 {
        let before = node.kubelet.registrations(&res);

        // The kubelet process dies; its socket file stays.
        node.kubelet.die().await;
        let died = std::time::Instant::now();
        assert!(kubelet_sock.exists(), "round {round}: kubelet.sock left");
        let body = probe_until(
            &node,
            "/readyz",
            503,
            "resource a: not registered with the kubelet: kubelet not answering on",
        )
        .await;
        let unready_after = died.elapsed();
        assert!(
            body.contains(&kubelet_sock.display().to_string())
                && body.contains("Connection refused"),
            "round {round}: {body}"
        );
        // Unready, not unhealthy: our server still serves, a restart of the agent would not help.
        probe_until(&node, "/healthz", 200, "ok").await;
        assert!(plugin_sock.exists(), "round {round}: plugin socket kept");
        assert_eq!(node.kubelet.registrations(&res), before, "round {round}");

        // A new kubelet listens on the same path (the plugins' sockets untouched): registered again, ready.
        node.kubelet.come_back().await.unwrap();
        let listening = std::time::Instant::now();
        node.kubelet
            .wait_for_resource(&res, Duration::from_secs(15), |d| healthy_count(d) == 2)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", node.log()));
        let registered_after = listening.elapsed();
        assert_eq!(
            node.kubelet.registrations(&res),
            before + 1,
            "round {round}"
        );
        probe_until(&node, "/readyz", 200, "ok").await;
        eprintln!(
            "round {round}: kubelet died -> /readyz 503 after {unready_after:?}; \
             kubelet listening -> re-registered and ListAndWatch open after {registered_after:?}"
        );
    }
    // The dead kubelets' ListAndWatch streams ended with their connections: one open stream, no leak.
    let streams_ok = eventually(T, || {
        node.metric("macvtap_agent_list_and_watch_streams{resource=\"a\"}") == Some(1.0)
    })
    .await;
    assert!(streams_ok, "{:?}", node.http_get("/metrics"));
}
