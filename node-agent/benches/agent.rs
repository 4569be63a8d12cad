//! Agent figures, printed (root; real netns, real netlink, the built agent binary, the kubelet stand-in):
//! - Allocate latency p50/p99 (one device per call: a tap index reserved and recorded, no link), and
//!   PreStartContainer's (a device-plugin-only pod's host link created; or nothing when the tap exists), over a
//!   kept connection;
//! - time from a configuration change to the kubelet stand-in seeing it in ListAndWatch, for the config file
//!   (polled once a second) and for a MacvtapNodeState spec edit (watch; needs the control plane tools);
//! - the agent's RSS serving 4 resources x 100 devices.
//!
//! Run: `cargo bench -p macvtap-agent --bench agent` (add `--profile dev` to skip the release build).

use std::process::Command;
use std::time::{Duration, Instant};

use kubelet_api::deviceplugin::device_plugin_client::DevicePluginClient;
use kubelet_api::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, PreStartContainerRequest,
};
use macvtap_e2e::agent::agent_command;
use macvtap_e2e::kubelet::{KubeletStandIn, healthy_count};
use macvtap_e2e::netns::Netns;
use macvtap_e2e::process::{Process, rss_kib};

const RESOURCES: usize = 4;
const DEVICES: u32 = 100;
const CHANGES: usize = 10;

fn config(capacity_r0: u32) -> String {
    let list: Vec<_> = (0..RESOURCES)
        .map(|i| {
            let cap = if i == 0 { capacity_r0 } else { DEVICES };
            serde_json::json!({"name": format!("r{i}"), "lowerDevice": "lower0", "capacity": cap})
        })
        .collect();
    serde_json::to_string(&list).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn agent_cmd(netns: &Netns, kubelet: &KubeletStandIn, extra: &[&str]) -> Command {
    let mut cmd = agent_command(
        env!("CARGO_BIN_EXE_macvtap-agent"),
        netns,
        kubelet,
        "127.0.0.1:9808",
    );
    let state = kubelet.dir().parent().unwrap().join("state");
    cmd.args(["--node-name", "bench-node"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

async fn write_and_wait(
    kubelet: &KubeletStandIn,
    change: impl FnOnce(),
    resource: &str,
    want: usize,
) -> Duration {
    let started = Instant::now();
    change();
    kubelet
        .wait_for_resource(resource, Duration::from_secs(30), |d| d.len() == want)
        .await
        .expect("change seen");
    started.elapsed()
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().unwrap()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        macvtap_e2e::netns::can_create_netns(),
        "the agent bench needs root (network namespaces)"
    );
    let netns = Netns::new("agent-bench").unwrap();
    netns.add_veth("lower0", "peer0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubelet = KubeletStandIn::start(
        &dir.path().join("device-plugins"),
        &dir.path().join("pod-resources/kubelet.sock"),
    )
    .await
    .unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, config(DEVICES)).unwrap();
    let mut agent = Process::spawn(
        "agent",
        agent_cmd(&netns, &kubelet, &["--config-file", file.to_str().unwrap()]),
        &dir.path().join("agent.log"),
    )
    .unwrap();
    let started = Instant::now();
    for i in 0..RESOURCES {
        kubelet
            .wait_for_resource(
                &format!("macvtap.network.kubevirt.io/r{i}"),
                Duration::from_secs(30),
                |d| healthy_count(d) == DEVICES as usize,
            )
            .await
            .expect("registered");
    }
    println!(
        "startup to {RESOURCES} resources x {DEVICES} devices registered and Healthy: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "agent RSS, {RESOURCES} resources x {DEVICES} devices, idle: {} KiB",
        rss_kib(agent.pid())
    );

    // Allocate and PreStartContainer latency over one kept connection, as the kubelet holds one per plugin.
    let channel = kubelet_api::unix::connect(dir.path().join("device-plugins/macvtap-r0.sock"))
        .await
        .unwrap();
    let mut client = DevicePluginClient::new(channel);
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("r0Mvp{i}")).collect();
    // One call per device, each timed.
    async fn each(ids: &[String], mut call: impl AsyncFnMut(String)) -> Vec<Duration> {
        let mut v = Vec::new();
        for id in ids {
            let t = Instant::now();
            call(id.clone()).await;
            v.push(t.elapsed());
        }
        v
    }
    let allocate = async |client: &mut DevicePluginClient<_>, ids: &[String]| {
        each(ids, async |id| {
            client
                .allocate(AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: vec![id],
                    }],
                })
                .await
                .expect("Allocate");
        })
        .await
    };
    let pre_start = async |client: &mut DevicePluginClient<_>, ids: &[String]| {
        each(ids, async |id| {
            client
                .pre_start_container(PreStartContainerRequest {
                    devices_ids: vec![id],
                })
                .await
                .expect("PreStartContainer");
        })
        .await
    };
    summary(
        "Allocate, 1 device, first time (tap index reserved, record written, no link)",
        allocate(&mut client, &ids).await,
    );
    summary(
        "PreStartContainer, device-plugin-only pod (host link created at the tap index)",
        pre_start(&mut client, &ids).await,
    );
    summary(
        "PreStartContainer, tap already there (after CNI ADD, or a container restart)",
        pre_start(&mut client, &ids).await,
    );
    summary(
        "Allocate, 1 device, the previous pod's host link removed first",
        allocate(&mut client, &ids).await,
    );
    summary(
        "Allocate, 1 device, again (record kept)",
        allocate(&mut client, &ids).await,
    );
    println!(
        "agent RSS after {} allocations: {} KiB",
        3 * DEVICES,
        rss_kib(agent.pid())
    );

    let r0 = "macvtap.network.kubevirt.io/r0";
    let mut file_lat = Vec::new();
    for i in 0..CHANGES {
        let cap = DEVICES + 1 + i as u32 % 2;
        let f = file.clone();
        file_lat.push(
            write_and_wait(
                &kubelet,
                || {
                    let tmp = f.with_extension("tmp");
                    std::fs::write(&tmp, config(cap)).unwrap();
                    std::fs::rename(&tmp, &f).unwrap();
                },
                r0,
                cap as usize,
            )
            .await,
        );
    }
    summary(
        "config file change -> kubelet ListAndWatch (file polled every 1 s)",
        file_lat,
    );
    agent.stop(Duration::from_secs(5));

    match macvtap_e2e::tools::tool("kube-apiserver") {
        Ok(_) => crd_change_latency(&netns, dir.path(), &kubelet).await,
        Err(e) => println!("MacvtapNodeState change -> kubelet: not measured ({e})"),
    }
}

async fn crd_change_latency(netns: &Netns, dir: &std::path::Path, kubelet: &KubeletStandIn) {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use macvtap_api::{MacvtapNodeState, MacvtapNodeStateSpec, NodeResource};
    use macvtap_core::MacvtapMode;

    let cp = macvtap_e2e::control_plane::ControlPlane::shared();
    cp.apply_crds().await.unwrap();
    let api = Api::<MacvtapNodeState>::all(cp.admin_client());
    let spec = |capacity: u32| MacvtapNodeStateSpec {
        resources: vec![NodeResource {
            name: "c0".into(),
            pool: "bench".into(),
            lower_device: "lower0".into(),
            mode: MacvtapMode::Bridge,
            capacity,
        }],
        discovery: None,
    };
    let _ = api.delete("bench-node", &Default::default()).await;
    api.create(
        &PostParams::default(),
        &MacvtapNodeState::new("bench-node", spec(DEVICES)),
    )
    .await
    .unwrap();
    let server: std::net::SocketAddr = cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let fwd = macvtap_e2e::forward::NetnsForward::start(netns.path(), 0, server).unwrap();
    let mut kc = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    for c in &mut kc.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{}", fwd.port()));
        }
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, serde_json::to_vec(&kc).unwrap()).unwrap();
    let mut cmd = agent_cmd(netns, kubelet, &[]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let mut agent = Process::spawn("agent-crd", cmd, &dir.join("agent-crd.log")).unwrap();
    let res = "macvtap.network.kubevirt.io/c0";
    kubelet
        .wait_for_resource(res, Duration::from_secs(30), |d| {
            d.len() == DEVICES as usize
        })
        .await
        .expect("CRD-mode agent registered");
    let mut lat = Vec::new();
    for i in 0..CHANGES {
        let cap = DEVICES + 1 + i as u32 % 2;
        let started = Instant::now();
        api.patch(
            "bench-node",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": spec(cap)})),
        )
        .await
        .unwrap();
        kubelet
            .wait_for_resource(res, Duration::from_secs(30), |d| d.len() == cap as usize)
            .await
            .expect("change seen");
        lat.push(started.elapsed());
    }
    summary(
        "MacvtapNodeState spec edit -> kubelet ListAndWatch (watch)",
        lat,
    );
    agent.stop(Duration::from_secs(5));
    let _ = api.delete("bench-node", &Default::default()).await;
}
