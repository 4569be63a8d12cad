//! Functional tests of the agent binary in a network namespace (root), against the kubelet stand-in.
//! One test binary on purpose (each extra one is a link of the whole agent): a list of independent cases over the
//! shared `common` fixture, hence over 400 lines.

mod common;

use std::time::Duration;

use common::*;
use macvtap_e2e::kubelet::{HEALTHY, healthy_count};

const T: Duration = Duration::from_secs(10);

fn all_unhealthy(d: &[macvtap_e2e::kubelet::Device]) -> bool {
    !d.is_empty() && healthy_count(d) == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_records_pre_start_creates_the_link_and_health_follows_the_lower_device() {
    require_root();
    let mut node = Node::new("agent-alloc").await;
    node.start_agent_with_file(
        r#"[{"name":"dp","lowerDevice":"lower0","mode":"vepa","capacity":4},
            {"name":"gone","lowerDevice":"nosuch0","capacity":2}]"#,
        &[],
    );
    let res = resource("dp");
    let devices = node.wait_for_healthy(&res, 4).await;
    let ids: Vec<_> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["dpMvp0", "dpMvp1", "dpMvp2", "dpMvp3"]);
    let opts = node.kubelet.plugin(&res).unwrap().options.unwrap();
    assert!(opts.get_preferred_allocation_available);
    let opts = node.kubelet.plugin(&res).unwrap().options.unwrap();
    assert!(
        opts.pre_start_required,
        "PreStartContainer makes device-plugin-only pods' links"
    );

    // Allocate creates no link: it records the device's tap index for the CNI and answers its /dev/tapN.
    let resp = node
        .kubelet
        .allocate("default", "vm-a", "compute", &res, 1)
        .await
        .unwrap();
    assert_eq!(resp.devices.len(), 1);
    let spec = &resp.devices[0];
    assert_eq!(spec.permissions, "rw");
    assert_eq!(spec.host_path, spec.container_path);
    let id = node.kubelet.allocated(&res).into_iter().next().unwrap();
    assert_eq!(id, "dpMvp0", "preferred allocation picks the lowest slot");
    let record = node.record(&id).expect("allocation record written");
    assert_eq!(
        (record.resource.as_str(), record.lower_device.as_str()),
        ("dp", "lower0")
    );
    assert_eq!(record.mode, macvtap_core::MacvtapMode::Vepa);
    assert!(macvtap_core::allocation::is_tap_index(record.tap_index));
    assert_eq!(spec.host_path, format!("/dev/tap{}", record.tap_index));
    let name = macvtap_core::device::host_link_name(&id);
    assert!(node.link(&name).is_none(), "Allocate makes no link");

    // PreStartContainer with no CNI ADD before it (a pod without a network of ours): the host link, at the
    // announced index, with the pool's mode, the marker, up; its /dev/tapN is the announced one.
    assert!(
        node.kubelet
            .pre_start_container(&res, &[&id])
            .await
            .unwrap()
    );
    let link = node
        .link(&name)
        .expect("host link created by PreStartContainer");
    assert_eq!(link["linkinfo"]["info_kind"], "macvtap");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "vepa");
    assert_eq!(link["ifalias"], macvtap_core::device::ownership_alias(&id));
    assert_eq!(link["link"], "lower0");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(spec.host_path, format!("/dev/tap{}", ifindex_of(&link)));
    let tap = macvtap_link::tap::TapNode::verify(&name, record.tap_index)
        .unwrap_or_else(|e| panic!("/dev/tap{} is the host link's: {e}", record.tap_index));
    assert_eq!(tap.path().display().to_string(), spec.host_path);
    // Again (a container restart): nothing changes.
    node.kubelet
        .pre_start_container(&res, &[&id])
        .await
        .unwrap();
    assert_eq!(ifindex_of(&node.link(&name).unwrap()), ifindex_of(&link));

    // Allocating the same ID again (its pod is gone): the stale host link goes, the index is kept (no link has it
    // any more), the next PreStart makes the link again.
    let again = node
        .kubelet
        .allocate_ids("default", "vm-a", "compute", &res, &[&id])
        .await
        .unwrap();
    assert!(node.link(&name).is_none(), "stale host link removed");
    assert_eq!(again.devices[0].host_path, spec.host_path);
    node.kubelet
        .pre_start_container(&res, &[&id])
        .await
        .unwrap();
    assert_eq!(
        again.devices[0].host_path,
        format!("/dev/tap{}", ifindex_of(&node.link(&name).unwrap()))
    );

    // A link elsewhere (another pod's netns) with the device's tap index: a new Allocate hands out a fresh
    // index, so the new pod's link never meets the old one's /dev/tapN.
    let other = macvtap_e2e::netns::Netns::new("agent-alloc-other").unwrap();
    other.add_veth("olower0", "opeer0").unwrap();
    node.ip(&["link", "del", &name]);
    other
        .ip(&[
            "link",
            "add",
            "link",
            "olower0",
            "name",
            "net1",
            "index",
            &record.tap_index.to_string(),
            "type",
            "macvtap",
        ])
        .unwrap();
    let fresh = node
        .kubelet
        .allocate_ids("default", "vm-a", "compute", &res, &[&id])
        .await
        .unwrap();
    assert_ne!(fresh.devices[0].host_path, spec.host_path);
    let fresh_index = node.record(&id).unwrap().tap_index;
    assert_eq!(fresh.devices[0].host_path, format!("/dev/tap{fresh_index}"));
    drop(other);

    // A missing lower device: every device Unhealthy, and Allocate says why.
    let gone = resource("gone");
    node.kubelet
        .wait_for_resource(&gone, T, all_unhealthy)
        .await
        .unwrap();
    let err = node
        .kubelet
        .start_pod_ids("default", "vm-b", "c", &gone, &["goneMvp0"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nosuch0") && err.contains("does not exist on this node"),
        "{err}"
    );
    // An ID that is not one of the resource's is refused.
    let err = node
        .kubelet
        .start_pod_ids("default", "vm-b", "c", &res, &["dpMvp9"])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not one of resource dp's 4 devices"), "{err}");

    // Lower device down -> Unhealthy, up -> Healthy, removed -> Unhealthy, back -> Healthy (netlink events).
    node.ip(&["link", "set", "lower0", "down"]);
    node.kubelet
        .wait_for_resource(&res, T, all_unhealthy)
        .await
        .unwrap();
    node.ip(&["link", "set", "lower0", "up"]);
    node.kubelet
        .wait_for_resource(&res, T, |d| healthy_count(d) == 4)
        .await
        .unwrap();
    node.ip(&["link", "del", "lower0"]);
    node.kubelet
        .wait_for_resource(&res, T, all_unhealthy)
        .await
        .unwrap();
    node.netns.add_veth("lower0", "peer0").unwrap();
    node.kubelet
        .wait_for_resource(&res, T, |d| healthy_count(d) == 4)
        .await
        .unwrap();
    // The lower device appearing later makes the other resource healthy too.
    node.netns.add_veth("nosuch0", "nosuchp").unwrap();
    node.kubelet
        .wait_for_resource(&gone, T, |d| healthy_count(d) == 2)
        .await
        .unwrap();

    // Metrics.
    let m = |n: &str| node.metric(n).unwrap_or(-1.0);
    assert!(m("macvtap_agent_allocations_total{resource=\"dp\"}") >= 2.0);
    assert!(m("macvtap_agent_allocation_failures_total{resource=\"gone\"}") >= 1.0);
    assert_eq!(m("macvtap_agent_healthy_devices{resource=\"dp\"}"), 4.0);
    assert_eq!(node.http_get("/readyz").unwrap().0, 200);
    assert_eq!(node.http_get("/healthz").unwrap().0, 200);

    // Deleting the lower device took its macvtaps with it; allocate one again to see shutdown leave it alone.
    assert!(node.link(&name).is_none());
    node.kubelet
        .start_pod("default", "vm-c", "compute", &res, 1)
        .await
        .unwrap();
    let name = macvtap_core::device::host_link_name("dpMvp1");
    assert!(node.link(&name).is_some());

    // Shutdown removes the sockets and leaves the allocated link alone.
    node.agent.take().unwrap().stop(Duration::from_secs(5));
    assert_eq!(sockets_in(&node.device_plugin_dir()), ["kubelet.sock"]);
    assert!(
        node.link(&name).is_some(),
        "a link in use survives shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restarts_always_get_a_registration_back() {
    require_root();
    let mut node = Node::new("agent-restart").await;
    node.start_agent_with_file(
        r#"[{"name":"a","lowerDevice":"lower0","capacity":3},{"name":"b","lowerDevice":"lower0","capacity":2}]"#,
        &[],
    );
    let (ra, rb) = (resource("a"), resource("b"));
    for r in [&ra, &rb] {
        node.kubelet
            .wait_for_resource(r, T, |d| healthy_count(d) == d.len() && !d.is_empty())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    }
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let before = node.kubelet.registrations(&ra);
        let started = std::time::Instant::now();
        node.kubelet.restart().await.unwrap();
        for r in [&ra, &rb] {
            node.kubelet
                .wait_for_resource(r, Duration::from_secs(3), |d| {
                    !d.is_empty() && healthy_count(d) == d.len()
                })
                .await
                .unwrap_or_else(|e| panic!("restart {i}: {e}\n{}", node.log()));
        }
        assert!(node.kubelet.registrations(&ra) > before);
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(1),
            "restart {i}: re-registration took {took:?}"
        );
    }
    eprintln!("slowest re-registration of both resources after a kubelet restart: {slowest:?}");
    // No leaked streams: exactly one open ListAndWatch stream per resource after all that.
    let streams_ok = eventually(T, || {
        node.metric("macvtap_agent_list_and_watch_streams{resource=\"a\"}") == Some(1.0)
            && node.metric("macvtap_agent_list_and_watch_streams{resource=\"b\"}") == Some(1.0)
    })
    .await;
    assert!(streams_ok, "{:?}", node.http_get("/metrics"));
    assert!(
        node.metric("macvtap_agent_registrations_total{resource=\"a\"}")
            .unwrap()
            >= 21.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_restarts_without_touching_links_in_use_and_cleans_orphans() {
    require_root();
    let mut node = Node::new("agent-gc").await;
    let cfg = r#"[{"name":"dp","lowerDevice":"lower0","capacity":8}]"#;
    node.start_agent_with_file(cfg, &[]);
    let res = resource("dp");
    node.wait_for_healthy(&res, 8).await;
    // vm-a holds 2 devices, vm-b 1; vm-b then goes away (its link is an orphan).
    node.kubelet
        .start_pod("ns", "vm-a", "c", &res, 2)
        .await
        .unwrap();
    node.kubelet
        .start_pod("ns", "vm-b", "c", &res, 1)
        .await
        .unwrap();
    let held: Vec<String> = node.kubelet.allocated(&res).into_iter().collect();
    assert_eq!(held, ["dpMvp0", "dpMvp1", "dpMvp2"]);
    node.kubelet.release_pod("ns", "vm-b").await;
    // Links that are not ours, one of them with our name scheme but without the marker on another lower device
    // (not the original's link for the slot: see tests/upgrade.rs), and one with a forged marker but a foreign
    // name: never touched.
    let fake_name = macvtap_core::device::host_link_name("dpMvp5");
    node.ip(&[
        "link", "add", "link", "peer0", "name", &fake_name, "type", "macvtap",
    ]);
    node.ip(&[
        "link", "add", "link", "lower0", "name", "foreign0", "type", "macvtap",
    ]);
    node.ip(&[
        "link",
        "set",
        "foreign0",
        "alias",
        &macvtap_core::device::ownership_alias("dpMvp6"),
    ]);

    node.agent.take().unwrap().kill();
    // The orphan survives while no agent runs; sockets are left behind by the crash.
    let orphan = macvtap_core::device::host_link_name("dpMvp2");
    assert!(node.link(&orphan).is_some());
    node.start_agent_with_file(cfg, &[]);
    node.wait_for_healthy(&res, 8).await;
    let cleaned = node.link_removed(&orphan).await;
    assert!(cleaned, "orphan not removed\n{}", node.log());
    // Its allocation record and tap-index reservation go after it (no link has the tap any more); the held
    // devices keep theirs.
    let released = eventually(T, || node.record("dpMvp2").is_none()).await;
    assert!(released, "record of the orphan kept\n{}", node.log());
    let reservations = |n: &Node| {
        std::fs::read_dir(n.state_dir().join("taps"))
            .unwrap()
            .count()
    };
    assert!(node.record("dpMvp0").is_some() && node.record("dpMvp1").is_some());
    assert!(eventually(T, || reservations(&node) == 2).await);
    assert!(
        node.metric("macvtap_agent_tap_indices_released_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    for id in ["dpMvp0", "dpMvp1"] {
        assert!(
            node.link(&macvtap_core::device::host_link_name(id))
                .is_some(),
            "{id} is held by vm-a and must stay"
        );
    }
    assert!(node.link(&fake_name).is_some(), "unmarked link touched");
    assert!(node.link("foreign0").is_some(), "foreign link touched");
    // The counter moves right after the deletion the test just saw.
    let counted = eventually(Duration::from_secs(5), || {
        node.metric("macvtap_agent_links_removed_total")
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(counted, "links_removed_total not incremented");

    // A fresh Allocate whose pod the kubelet does not list (yet) is kept for the grace period.
    let resp = node
        .kubelet
        .start_pod_ids("ns", "vm-c", "c", &res, &["dpMvp3"])
        .await
        .unwrap();
    node.kubelet.release_pod("ns", "vm-c").await;
    assert!(resp.devices[0].host_path.starts_with("/dev/tap"));
    let fresh = macvtap_core::device::host_link_name("dpMvp3");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        node.link(&fresh).is_some(),
        "removed within the grace period"
    );
    assert!(node.link_removed(&fresh).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_config_changes_and_bad_updates() {
    require_root();
    let mut node = Node::new("agent-cfg").await;
    node.netns.add_veth("lower1", "peer1").unwrap();
    node.start_agent_with_file(
        r#"[{"name":"dp","lowerDevice":"lower0","capacity":2},{"name":"old","lowerDevice":"lower0","capacity":1}]"#,
        &[],
    );
    let res = resource("dp");
    node.kubelet
        .wait_for_resource(&res, T, |d| d.len() == 2 && healthy_count(d) == 2)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    node.kubelet
        .wait_for_resource(&resource("old"), T, |d| d.len() == 1)
        .await
        .unwrap();
    let registrations = node.kubelet.registrations(&res);

    // Capacity up, mode and lower device changed, "old" removed: ListAndWatch shows it, no re-registration.
    node.write_config(r#"[{"name":"dp","lowerDevice":"lower1","mode":"private","capacity":5}]"#);
    node.kubelet
        .wait_for_resource(&res, T, |d| d.len() == 5 && healthy_count(d) == 5)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert_eq!(node.kubelet.registrations(&res), registrations);
    node.kubelet
        .wait_for_unregistered(&resource("old"), T)
        .await
        .unwrap();
    assert!(
        eventually(T, || !sockets_in(&node.device_plugin_dir())
            .contains(&"macvtap-old.sock".to_string()))
        .await
    );
    node.kubelet
        .start_pod("ns", "p", "c", &res, 1)
        .await
        .unwrap();
    let link = node
        .link(&macvtap_core::device::host_link_name("dpMvp0"))
        .unwrap();
    assert_eq!(link["link"], "lower1");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "private");
    // The new lower device's state drives health now.
    node.ip(&["link", "set", "lower1", "down"]);
    node.kubelet
        .wait_for_resource(&res, T, all_unhealthy)
        .await
        .unwrap();
    node.ip(&["link", "set", "lower1", "up"]);

    // A bad update is rejected; the last good configuration keeps being served.
    node.write_config(r#"[{"name":"dp","lowerDevice":"lower0","mode":"bridged"}]"#);
    assert!(
        eventually(T, || node.metric("macvtap_agent_config_errors_total")
            == Some(1.0))
        .await
    );
    assert!(
        node.log().contains("unknown macvtap mode \\\"bridged\\\"")
            || node.log().contains("unknown macvtap mode \"bridged\""),
        "{}",
        node.log()
    );
    node.kubelet
        .wait_for_resource(&res, T, |d| d.len() == 5 && healthy_count(d) == 5)
        .await
        .unwrap();
    node.write_config("not json");
    assert!(
        eventually(T, || node.metric("macvtap_agent_config_errors_total")
            == Some(2.0))
        .await
    );
    assert_eq!(node.kubelet.devices(&res).len(), 5);
    // A good one after that applies.
    node.write_config(r#"[{"name":"dp","lowerDevice":"lower0","capacity":3}]"#);
    node.kubelet
        .wait_for_resource(&res, T, |d| {
            d.len() == 3 && d.iter().all(|x| x.health == HEALTHY)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_initial_legacy_config_is_a_clear_error() {
    require_root();
    let node = Node::new("agent-badcfg").await;
    let out = node
        .agent_command(&[])
        .env(
            macvtap_api::legacy::ENV_VAR,
            r#"[{"name":"dp","lowerDevice":"lower0"},{"name":"dp","lowerDevice":"lower0"}]"#,
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration"), "{err}");
    assert!(
        err.contains("DP_MACVTAP_CONF entries 0 and 1 both use the name \"dp\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_env_config_is_served() {
    require_root();
    let mut node = Node::new("agent-env").await;
    let cmd = {
        let mut c = node.agent_command(&[]);
        c.env(
            macvtap_api::legacy::ENV_VAR,
            r#"[{"name":"dataplane","lowerDevice":"lower0"}]"#,
        );
        c
    };
    node.spawn(cmd);
    // The original's default capacity.
    node.wait_for_healthy(&resource("dataplane"), 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_links() {
    require_root();
    let mut node = Node::new("agent-disc").await;
    // Only veths can be made here: let discovery take them like physical links.
    node.start_agent_with_file("[]", &["--discovery-include-kind", "veth"]);
    for l in ["lower0", "peer0"] {
        node.wait_for_healthy(&resource(l), 100).await;
    }
    assert!(
        node.kubelet.plugin(&resource("lo")).is_none(),
        "loopback is never a lower device"
    );
    // A link appears.
    node.netns.add_veth("new0", "new1").unwrap();
    node.kubelet
        .wait_for_resource(&resource("new0"), T, |d| healthy_count(d) == 100)
        .await
        .unwrap();
    // Renamed: the old name stops, the new one is served.
    node.ip(&["link", "set", "new0", "down"]);
    node.ip(&["link", "set", "new0", "name", "renamed0"]);
    node.ip(&["link", "set", "renamed0", "up"]);
    node.kubelet
        .wait_for_resource(&resource("renamed0"), T, |d| healthy_count(d) == 100)
        .await
        .unwrap();
    node.kubelet
        .wait_for_unregistered(&resource("new0"), T)
        .await
        .unwrap();
    // Removed (with its peer): both stop.
    node.ip(&["link", "del", "renamed0"]);
    node.kubelet
        .wait_for_unregistered(&resource("renamed0"), T)
        .await
        .unwrap();
    node.kubelet
        .wait_for_unregistered(&resource("new1"), T)
        .await
        .unwrap();
    // Our own macvtap links are never discovered as lower devices.
    node.kubelet
        .start_pod("ns", "p", "c", &resource("lower0"), 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = node.kubelet.resources().into_keys().collect();
    assert!(names.iter().all(|n| !n.contains("mvt")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_attaches_the_allocated_device_in_place() {
    require_root();
    let cni = macvtap_e2e::workspace::binary("macvtap")
        .unwrap_or_else(|e| panic!("this test runs the built macvtap CNI binary: {e}"));
    let mut node = Node::new("agent-cni").await;
    node.start_agent_with_file(
        r#"[{"name":"dp","lowerDevice":"lower0","capacity":2}]"#,
        &[],
    );
    let res = resource("dp");
    node.wait_for_healthy(&res, 2).await;
    let resp = node
        .kubelet
        .allocate("ns", "vm", "compute", &res, 1)
        .await
        .unwrap();
    let id = node.kubelet.allocated(&res).into_iter().next().unwrap();
    let host_name = macvtap_core::device::host_link_name(&id);
    let index = node.record(&id).unwrap().tap_index;
    assert_eq!(resp.devices[0].host_path, format!("/dev/tap{index}"));

    let pod = macvtap_e2e::netns::Netns::new("agent-cni-pod").unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "mvt", "type": "macvtap", "deviceID": id,
    });
    // The CNI asks the kubelet (here its stand-in, which recorded the allocation) whether pod ns/vm holds the
    // device; the node file (as install-cni writes it) names the stand-in's PodResources socket and this node's
    // allocation records.
    let node_config = node.dir.path().join("macvtap-node.json");
    let file = macvtap_core::CniNodeFile {
        pod_resources_socket: node.kubelet.pod_resources_socket().to_path_buf(),
        allocation_dir: Some(node.state_dir().join("nodes/test-node")),
        ..Default::default()
    };
    let written = macvtap_agent::install::write_node_file(&file, node.dir.path()).unwrap();
    assert_eq!(written, node_config);
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node.netns.name()])
        .arg(&cni)
        .env("MACVTAP_CNI_NODE_CONFIG", &node_config)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ctr1")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=vm",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI ADD failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Made right in the pod, at the announced index; nothing on the host.
    assert!(node.link(&host_name).is_none(), "no host link");
    let in_pod = pod.link_json("net1").unwrap().expect("net1 in the pod");
    assert_eq!(in_pod["linkinfo"]["info_kind"], "macvtap");
    assert_eq!(ifindex_of(&in_pod), u64::from(index));
    macvtap_link::tap::TapNode::verify("net1", index).expect("/dev/tapN is the pod link's tap");
    // The container starts: PreStartContainer sees the tap and makes no host link.
    node.kubelet
        .pre_start_container(&res, &[&id])
        .await
        .unwrap();
    assert!(
        node.link(&host_name).is_none(),
        "PreStart after ADD made a link"
    );

    // Cleanup passes while the pod runs never touch it (it is in the pod's namespace, and held).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(pod.link_json("net1").unwrap().is_some());
    assert!(node.agent.as_mut().unwrap().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_state_spec_edits_reach_the_kubelet_and_status_is_written() {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use macvtap_api::{MacvtapNodeState, MacvtapNodeStateSpec, NodeResource};
    use macvtap_core::MacvtapMode;

    require_root();
    let cp = macvtap_e2e::control_plane::ControlPlane::shared();
    cp.apply_crds().await.unwrap();
    let client = cp.admin_client();
    let api = Api::<MacvtapNodeState>::all(client.clone());
    let spec = |capacity: u32, mode: MacvtapMode| MacvtapNodeStateSpec {
        resources: vec![NodeResource {
            name: "crdp".into(),
            pool: "pool-a".into(),
            lower_device: "lower0".into(),
            mode,
            capacity,
        }],
        discovery: None,
    };
    let _ = api.delete("test-node", &Default::default()).await;
    api.create(
        &PostParams::default(),
        &MacvtapNodeState::new("test-node", spec(3, MacvtapMode::Bridge)),
    )
    .await
    .unwrap();

    let mut node = Node::new("agent-crd").await;
    let server: std::net::SocketAddr = cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let fwd = macvtap_e2e::forward::NetnsForward::start(node.netns.path(), 0, server).unwrap();
    let mut kc = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    for c in &mut kc.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{}", fwd.port()));
        }
    }
    let kubeconfig = node.dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, serde_json::to_vec(&kc).unwrap()).unwrap();
    let mut cmd = node.agent_command(&["--status-heartbeat-secs", "1"]);
    cmd.env("KUBECONFIG", &kubeconfig);
    node.spawn(cmd);

    let res = resource("crdp");
    node.kubelet
        .wait_for_resource(&res, Duration::from_secs(20), |d| healthy_count(d) == 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));

    // A spec edit (capacity, mode) reaches ListAndWatch without a restart.
    let registrations = node.kubelet.registrations(&res);
    api.patch(
        "test-node",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": spec(6, MacvtapMode::Vepa)})),
    )
    .await
    .unwrap();
    node.wait_for_healthy(&res, 6).await;
    assert_eq!(node.kubelet.registrations(&res), registrations);
    node.kubelet
        .start_pod("ns", "vm", "c", &res, 1)
        .await
        .unwrap();
    let link = node
        .link(&macvtap_core::device::host_link_name("crdpMvp0"))
        .unwrap();
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "vepa");

    // Status: written through the status subresource, for the generation served.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (ok, last) = loop {
        let obj = api.get("test-node").await.unwrap();
        let good = obj.status.as_ref().is_some_and(|s| {
            s.observed_generation == obj.metadata.generation
                && s.agent_version.as_deref() == Some(macvtap_agent::VERSION)
                && s.resources.len() == 1
                && s.resources[0].registered
                && s.resources[0].healthy == 6
                && s.resources[0].capacity == 6
                && s.resources[0].lower_device_present
                && s.resources[0].lower_device_up
                && s.resources[0].allocated == 1
                && s.resources[0].pool.as_deref() == Some("pool-a")
        });
        if good || std::time::Instant::now() > deadline {
            break (good, obj.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ok, "status: {last:?}\n{}", node.log());

    // Nothing changes, yet the status is written every heartbeat: the operator can tell the agent is alive.
    let written = |o: &MacvtapNodeState| o.status.as_ref().and_then(|s| s.last_update_time.clone());
    let first = written(&api.get("test-node").await.unwrap()).expect("lastUpdateTime");
    let beat = async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = written(&api.get("test-node").await.unwrap());
            if now.as_ref().is_some_and(|t| t.0 > first.0) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), beat)
        .await
        .unwrap_or_else(|_| panic!("no heartbeat write\n{}", node.log()));

    // Cleanup skipped for lack of PodResources shows in the status, with the reason; and clears when it is back.
    let cleanup = |o: &MacvtapNodeState| o.status.as_ref().and_then(|s| s.cleanup.clone());
    assert_eq!(
        cleanup(&api.get("test-node").await.unwrap()).map(|c| c.skipped),
        Some(false)
    );
    node.kubelet.stop_pod_resources().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let skipped = loop {
        let c = cleanup(&api.get("test-node").await.unwrap());
        if c.as_ref().is_some_and(|c| c.skipped) || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let skipped = skipped.unwrap_or_else(|| panic!("no cleanup status\n{}", node.log()));
    assert!(skipped.skipped, "{skipped:?}\n{}", node.log());
    assert!(
        skipped
            .message
            .as_deref()
            .is_some_and(|m| m.contains("PodResources")),
        "{skipped:?}"
    );
    node.kubelet.start_pod_resources().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = cleanup(&api.get("test-node").await.unwrap());
        if c.as_ref()
            .is_some_and(|c| !c.skipped && c.message.is_none())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{c:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A kubelet that died leaving its socket: the status says not registered, and why (the operator's pool goes
    // Degraded naming this node); registered again once a kubelet answers.
    node.kubelet.die().await;
    let died = std::time::Instant::now();
    let down = status_until(&api, &node, |r| {
        !r.registered
            && r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("kubelet not answering on"))
    })
    .await;
    assert!(down.healthy == 6 && down.lower_device_up, "{down:?}");
    let unregistered_after = died.elapsed();
    node.kubelet.come_back().await.unwrap();
    let listening = std::time::Instant::now();
    status_until(&api, &node, |r| r.registered && r.last_error.is_none()).await;
    eprintln!(
        "kubelet died -> status registered: false after {unregistered_after:?}; \
         kubelet listening -> status registered: true after {:?}",
        listening.elapsed()
    );

    // The resource leaves the spec: it stops and its socket goes.
    api.patch(
        "test-node",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"resources": []}})),
    )
    .await
    .unwrap();
    node.kubelet.wait_for_unregistered(&res, T).await.unwrap();
    assert!(
        eventually(T, || sockets_in(&node.device_plugin_dir())
            == ["kubelet.sock"])
        .await,
        "{:?}",
        sockets_in(&node.device_plugin_dir())
    );
    node.agent.take().unwrap().stop(Duration::from_secs(5));
    api.delete("test-node", &Default::default()).await.unwrap();
}

#[test]
fn install_cni_subcommand_copies_atomically_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("macvtap-build");
    std::fs::write(&src, b"#!/bin/sh\necho cni\n").unwrap();
    let dest = dir.path().join("opt/cni/bin");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_macvtap-agent"))
        .args(["--log-format", "json", "install-cni", "--dest"])
        .arg(&dest)
        .arg("--source")
        .arg(&src)
        .args(["--node-name", "node-x", "--state-dir", "/var/lib/mvt-state"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dest.join("macvtap")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    // The node file next to it: where this node's allocation records are, for the CNI.
    let node_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("macvtap-node.json")).unwrap()).unwrap();
    assert_eq!(
        node_file,
        serde_json::json!({
            "podResourcesSocket": "/var/lib/kubelet/pod-resources/kubelet.sock",
            "allocationDir": "/var/lib/mvt-state/nodes/node-x",
        })
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let messages: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"].clone())
        .collect();
    assert_eq!(messages, ["CNI binary installed", "CNI node file written"]);
    // A missing source is an error naming it, and nothing is installed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_macvtap-agent"))
        .args(["install-cni", "--dest"])
        .arg(dir.path().join("other"))
        .arg("--source")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!dir.path().join("other/macvtap").exists());
}

/// Waits (20 s) until the node state's only resource status satisfies `pred`; panics with the last status.
async fn status_until(
    api: &kube::Api<macvtap_api::MacvtapNodeState>,
    node: &Node,
    pred: impl Fn(&macvtap_api::NodeResourceStatus) -> bool,
) -> macvtap_api::NodeResourceStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = api.get("test-node").await.unwrap().status;
        let res = status.as_ref().and_then(|s| s.resources.first());
        if let Some(r) = res.filter(|r| pred(r)) {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{status:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No squatting (issue 20): a macvtap someone else made at a device's tap index before PreStartContainer, in a pod's
/// netns or in the host netns (even under our host link's name, without our marker), is refused and named; the
/// container never gets that `/dev/tapN`. Once it is gone, PreStart makes the device's own host link there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_start_refuses_a_squatters_tap_and_never_hands_it_over() {
    require_root();
    let mut node = Node::new("agent-squat").await;
    node.start_agent_with_file(
        r#"[{"name":"dp","lowerDevice":"lower0","capacity":4}]"#,
        &[],
    );
    let res = resource("dp");
    node.wait_for_healthy(&res, 4).await;
    // A macvtap at `index` on `lower` in `ns`, as anyone with CAP_NET_ADMIN there can make.
    let squat = |ns: &macvtap_e2e::netns::Netns, name: &str, lower: &str, index: u32| {
        let index = index.to_string();
        ns.ip(&[
            "link", "add", "link", lower, "name", name, "index", &index, "type", "macvtap",
        ])
        .unwrap();
    };

    // A device-plugin-only pod (no CNI ADD): another pod, with CAP_NET_ADMIN in its own netns, took the index first.
    let id = "dpMvp0";
    node.kubelet
        .allocate_ids("default", "victim", "c", &res, &[id])
        .await
        .unwrap();
    let index = node.record(id).unwrap().tap_index;
    let pod = macvtap_e2e::netns::Netns::new("agent-squat-pod").unwrap();
    pod.add_veth("slower0", "speer0").unwrap();
    squat(&pod, "evil0", "slower0", index);
    let err = node
        .kubelet
        .pre_start_container(&res, &[id])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("evil0")
            && err.contains("another network namespace")
            && err.contains(&format!("/dev/tap{index} is not handed over")),
        "{err}"
    );
    let host_name = macvtap_core::device::host_link_name(id);
    assert!(
        node.link(&host_name).is_none(),
        "nothing made at a squatted index"
    );
    // Gone: the device's own host link at the index.
    pod.ip(&["link", "del", "evil0"]).unwrap();
    node.kubelet.pre_start_container(&res, &[id]).await.unwrap();
    let link = node.link(&host_name).expect("host link made");
    assert_eq!(ifindex_of(&link), u64::from(index));
    macvtap_link::tap::TapNode::verify(&host_name, index).expect("/dev/tapN is the host link's");

    // In the host netns: a link of another name, then one with our host link's name but not our marker.
    let id = "dpMvp1";
    node.kubelet
        .allocate_ids("default", "victim2", "c", &res, &[id])
        .await
        .unwrap();
    let index = node.record(id).unwrap().tap_index;
    let host_name = macvtap_core::device::host_link_name(id);
    for squatter in ["squat1", host_name.as_str()] {
        squat(&node.netns, squatter, "lower0", index);
        let err = node
            .kubelet
            .pre_start_container(&res, &[id])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("link {squatter} "))
                && err.contains("in the host network namespace")
                && err.contains("is not handed over"),
            "{err}"
        );
        let l = node.link(squatter).expect("the squatter is left alone");
        assert!(l["ifalias"].is_null(), "and not adopted");
        node.ip(&["link", "del", squatter]);
    }
    node.kubelet.pre_start_container(&res, &[id]).await.unwrap();
    let link = node.link(&host_name).unwrap();
    assert_eq!(link["ifalias"], macvtap_core::device::ownership_alias(id));
    assert_eq!(ifindex_of(&link), u64::from(index));
    assert!(node.agent.as_mut().unwrap().is_running());
}

/// Durable state (issue 24): what a power loss leaves in the state directory — an empty record of a device a pod
/// holds, temporary files, a garbage tap-index key — is repaired at the next start and counted; the record comes
/// back with the device's index (from its reservation), so its pod's `/dev/tapN` is still the one announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_repairs_what_a_crash_left_in_the_state_directory() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let mut node = Node::new("agent-durable").await;
    let config = r#"[{"name":"dp","lowerDevice":"lower0","mode":"vepa","capacity":2}]"#;
    node.start_agent_with_file(config, &[]);
    let res = resource("dp");
    node.wait_for_healthy(&res, 2).await;
    let key = node.state_dir().join("tap-index.key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    let id = "dpMvp0";
    node.kubelet
        .allocate_ids("default", "vm", "c", &res, &[id])
        .await
        .unwrap();
    let record = node.record(id).unwrap();
    node.agent.take().unwrap().stop(Duration::from_secs(5));

    let node_dir = node.state_dir().join("nodes/test-node");
    std::fs::write(node_dir.join(format!("{id}.json")), "").unwrap();
    std::fs::write(node_dir.join(".dpMvp1.json.tmp"), "{\"reso").unwrap();
    std::fs::write(node.state_dir().join("taps/.test-node@dpMvp1.tmp"), "test-").unwrap();
    std::fs::write(&key, "garbage").unwrap();
    node.start_agent_with_file(config, &[]);
    node.wait_for_healthy(&res, 2).await;
    let repaired = |what: &str| {
        node.metric(&format!(
            "macvtap_agent_state_repaired_total{{what=\"{what}\"}}"
        ))
    };
    assert!(
        eventually(T, || repaired("record_rederived") == Some(1.0)).await,
        "{}",
        node.log()
    );
    assert_eq!(node.record(id), Some(record), "the same record, re-derived");
    assert_eq!(repaired("temp_file_removed"), Some(2.0));
    assert_eq!(repaired("tap_index_key_replaced"), Some(1.0));
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert!(!node_dir.join(".dpMvp1.json.tmp").exists());
    assert!(node.log().contains("state directory repaired"));
}
