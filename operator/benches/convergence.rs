//! Convergence benchmark against a real kube-apiserver + etcd (no kubelets: Node objects only).
//!
//! For each N: a fresh control plane, N Nodes in 4 zones, M = 5 pools (one on every node, one per zone), then the
//! operator's controllers (in-process, admin client) are started and timed until every node's MacvtapNodeState
//! has its desired spec (observed through a watch). Then one pool edit is timed until it reached all N node
//! states. Writes are counted by the operator's own metrics.
//!
//! `cargo bench -p macvtap-operator --bench convergence -- 100 1000 5000` (default: 100 1000).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapNodeStateSpec, MacvtapPool};
use macvtap_e2e::control_plane::ControlPlane;
use macvtap_operator::controller::{self, Settings};
use macvtap_operator::metrics::{Metrics, NODE_STATE};
use macvtap_operator::selection::plan_node;
use serde_json::json;
use tokio::sync::watch;

const ZONES: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(900);

fn pools() -> Vec<MacvtapPool> {
    let mut pools = vec![pool("all", json!({"lowerDevice": "eth1", "capacity": 16}))];
    for z in 0..ZONES {
        pools.push(pool(
            &format!("zone{z}"),
            json!({"lowerDevice": "eth2", "capacity": 8, "nodeSelector": {"matchLabels": {"zone": format!("z{z}")}}}),
        ));
    }
    pools
}

fn pool(name: &str, spec: serde_json::Value) -> MacvtapPool {
    serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("pool JSON")
}

fn node(i: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("bench-{i:05}")),
            labels: Some([("zone".to_string(), format!("z{}", i % ZONES))].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Watches node states and reports how many have the wanted spec, on every change.
/// The wanted specs and a version bumped on every change, so counts against an older version are never read.
type Wanted = Arc<std::sync::Mutex<(u64, HashMap<String, MacvtapNodeStateSpec>)>>;

fn watch_matching(client: Client, want: Wanted) -> watch::Receiver<(u64, usize)> {
    let (tx, rx) = watch::channel((0, 0));
    tokio::spawn(async move {
        let mut current: HashMap<String, MacvtapNodeStateSpec> = HashMap::new();
        let mut events = watcher(
            Api::<MacvtapNodeState>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        while let Some(Ok(state)) = events.next().await {
            current.insert(state.name_any(), state.spec.clone());
            let want = want.lock().unwrap();
            let matching = want
                .1
                .iter()
                .filter(|(n, s)| current.get(*n) == Some(s))
                .count();
            if tx.send((want.0, matching)).is_err() {
                return;
            }
        }
    });
    rx
}

async fn wait_matching(
    rx: &mut watch::Receiver<(u64, usize)>,
    version: u64,
    n: usize,
) -> anyhow::Result<()> {
    tokio::time::timeout(TIMEOUT, rx.wait_for(|(v, m)| *v == version && *m >= n))
        .await
        .context("timed out")?
        .context("watch ended")?;
    Ok(())
}

async fn run(n: usize) -> anyhow::Result<()> {
    let cp = ControlPlane::start().context("starting the control plane")?;
    cp.apply_crds().await?;
    let client = cp.admin_client();
    let pool_list = pools();

    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = Api::<Node>::all(client.clone());
            async move { api.create(&PostParams::default(), &node(i)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .context("creating nodes")?;
    let create_nodes = t.elapsed();
    let pools_api = Api::<MacvtapPool>::all(client.clone());
    let mut created = Vec::new();
    for p in &pool_list {
        created.push(pools_api.create(&PostParams::default(), p).await?);
    }

    let want: HashMap<String, MacvtapNodeStateSpec> = (0..n)
        .map(|i| {
            let node = node(i);
            let spec = plan_node(created.iter(), node.metadata.labels.as_ref().unwrap()).spec;
            (node.name_any(), spec)
        })
        .collect();
    let want: Wanted = Arc::new(std::sync::Mutex::new((0, want)));
    let mut matching = watch_matching(client.clone(), want.clone());

    let metrics = Metrics::default();
    let settings = Settings::default();
    let start = Instant::now();
    let operator = tokio::spawn(controller::run(
        client.clone(),
        settings.clone(),
        metrics.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    wait_matching(&mut matching, 0, n).await?;
    let converged = start.elapsed();
    // Counters move when a write returns, which can be after its watch event: let the last ones land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = metrics.writes_of("macvtapnodestates", "apply");
    let reconciles = metrics.reconciles_of(NODE_STATE);
    let status_writes = metrics.writes_of("macvtappools", "apply-status");

    // Quiet period: a converged operator should not write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_writes = metrics.writes_of("macvtapnodestates", "apply") - writes;

    // One pool edit reaching every node.
    {
        let mut w = want.lock().unwrap();
        w.0 = 1;
        for spec in w.1.values_mut() {
            for r in spec.resources.iter_mut().filter(|r| r.pool == "all") {
                r.capacity = 32;
            }
        }
    }
    let before = metrics.writes_of("macvtapnodestates", "apply");
    let edit = Instant::now();
    pools_api
        .patch(
            "all",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": 32}})),
        )
        .await?;
    wait_matching(&mut matching, 1, n).await?;
    let edit_time = edit.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let edit_writes = metrics.writes_of("macvtapnodestates", "apply") - before;

    // One zone pool edit: only a quarter of the node states may be written.
    {
        let mut w = want.lock().unwrap();
        w.0 = 2;
        for spec in w.1.values_mut() {
            for r in spec.resources.iter_mut().filter(|r| r.pool == "zone0") {
                r.capacity = 4;
            }
        }
    }
    let before = metrics.writes_of("macvtapnodestates", "apply");
    let edit = Instant::now();
    pools_api
        .patch(
            "zone0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": 4}})),
        )
        .await?;
    wait_matching(&mut matching, 2, n).await?;
    let zone_edit_time = edit.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let zone_edit_writes = metrics.writes_of("macvtapnodestates", "apply") - before;
    operator.abort();

    println!(
        "N={n:>5} M={m}  create nodes {create:>7.2}s | full convergence {conv:>7.2}s, node-state writes {writes} \
         ({reconciles} reconciles), pool status writes {status_writes}, idle writes after 3s {idle_writes} | \
         edit 'all' -> {n} states {edit:>6.2}s, {edit_writes} writes | edit 'zone0' -> {q} states {zedit:>6.2}s, \
         {zone_edit_writes} writes",
        m = pool_list.len(),
        create = create_nodes.as_secs_f64(),
        conv = converged.as_secs_f64(),
        edit = edit_time.as_secs_f64(),
        q = n.div_ceil(ZONES),
        zedit = zone_edit_time.as_secs_f64(),
    );
    if idle_writes != 0 {
        bail!("the converged operator kept writing");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().context("sizes are node counts"))
        .collect::<anyhow::Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for n in sizes {
        rt.block_on(run(n))?;
    }
    Ok(())
}
