//! The agent's main loop: configuration + host links → the set of resources served, reconciled live. [`run`] is
//! two steps: build and start the parts (`Parts::start`), then the loop over them (`Parts::serve`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use macvtap_core::{NodeConfig, ResourceConfig};
use macvtap_telemetry::admin::AdminServer;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::allocator::Allocator;
use crate::cleanup::{Cleanup, CleanupReport};
use crate::config::{ConfigSource, ConfigState};
use crate::device_plugin::{DevicePluginDir, PoolInputs, ResourceServer};
use crate::discovery::effective_resources;
use crate::health::Health;
use crate::link_writer::LinkWriter;
use crate::metrics::Metrics;
use crate::netmon::{self, LinkSnapshot};
use crate::recent::RecentAllocations;
use crate::records::{NodeRecords, StateDirs};
use crate::resource_state::ResourceStates;
use crate::status::StatusWriter;

/// Everything `run` needs; the CLI fills it from flags.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node_name: String,
    pub source: ConfigSource,
    pub device_plugin_dir: PathBuf,
    pub pod_resources_socket: PathBuf,
    /// `/healthz`, `/readyz`, `/metrics`; none when `None`.
    pub health_addr: Option<SocketAddr>,
    /// Time between cleanup passes over orphaned host links.
    pub cleanup_interval: Duration,
    /// How long a host link must be unheld by any pod (and not freshly allocated) before cleanup removes it.
    pub cleanup_grace: Duration,
    /// Link kinds discovery serves besides physical links and bonds.
    pub discovery_extra_kinds: Vec<String>,
    pub status_min_interval: Duration,
    /// The status is written at least this often (`lastUpdateTime`), so the operator can tell a live agent from a
    /// gone one; keep it well below the operator's `--agent-stale-after-seconds`.
    pub status_heartbeat: Duration,
    /// Where allocation records and tap-index reservations are kept (in-place attach).
    pub state: StateDirs,
    /// How often the device plugin directory is re-read for kubelet restarts.
    pub dir_poll: Duration,
    /// How often `kubelet.sock` is probed while the kubelet answers (a dead kubelet leaves the file behind); while
    /// it does not, it is probed at every `dir_poll`.
    pub kubelet_probe: Duration,
    /// Test hook: while this reads true the netlink link monitor drops its subscription and does not subscribe
    /// again (what a failed netlink socket looks like).
    #[doc(hidden)]
    pub netlink_fault: Option<watch::Receiver<bool>>,
}

impl AgentOptions {
    pub fn new(node_name: &str, source: ConfigSource) -> Self {
        Self {
            node_name: node_name.to_string(),
            source,
            device_plugin_dir: PathBuf::from(kubelet_api::deviceplugin::DEVICE_PLUGIN_PATH),
            pod_resources_socket: PathBuf::from(kubelet_api::podresources::POD_RESOURCES_SOCKET),
            health_addr: None,
            cleanup_interval: Duration::from_secs(30),
            cleanup_grace: Duration::from_secs(120),
            discovery_extra_kinds: Vec::new(),
            status_min_interval: Duration::from_secs(2),
            status_heartbeat: Duration::from_secs(30),
            state: StateDirs::default(),
            dir_poll: Duration::from_millis(100),
            kubelet_probe: Duration::from_secs(1),
            netlink_fault: None,
        }
    }
}

/// Runs the agent until `cancel` fires; then stops every plugin (sockets removed, links untouched).
pub async fn run(opts: AgentOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let parts = Parts::start(&opts, &cancel).await?;
    parts.serve(&opts.discovery_extra_kinds, &cancel).await;
    tracing::info!("stopped: plugin sockets removed, links left as they are");
    Ok(())
}

/// The running agent as the resource loop sees it: what it reads (the configuration, the links), what each served
/// resource is started with, and what it publishes (the resources served, whether a configuration is applied).
/// The other tasks (link monitor, configuration follower, cleanup, status, probes) run on their own until `cancel`.
struct Parts {
    config: watch::Receiver<ConfigState>,
    links: watch::Receiver<LinkSnapshot>,
    pool_inputs: PoolInputs,
    dir: DevicePluginDir,
    metrics: Arc<Metrics>,
    /// The resources served, read by the probes, cleanup (whose slots' original links are adopted) and status.
    served: watch::Sender<BTreeMap<String, ResourceConfig>>,
    /// A configuration has been applied (`/readyz`).
    loaded: watch::Sender<bool>,
}

impl Parts {
    /// Builds every part and starts its task. A startup error (bad configuration, a taken port, no netlink, no
    /// state directory) is returned before anything is served.
    async fn start(opts: &AgentOptions, cancel: &CancellationToken) -> anyhow::Result<Self> {
        let initial = crate::config::initial(&opts.source).context("invalid configuration")?;
        std::fs::create_dir_all(&opts.device_plugin_dir).with_context(|| {
            format!(
                "creating the device plugin directory {}",
                opts.device_plugin_dir.display()
            )
        })?;
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        // Bound first: a taken port is a startup error, not a silent absence of probes.
        let admin = match opts.health_addr {
            Some(addr) => Some(
                AdminServer::bind(addr)
                    .await
                    .with_context(|| format!("binding the health/metrics address {addr}"))?,
            ),
            None => None,
        };
        let monitor = start_link_monitor(opts, &metrics, cancel).await?;
        let records = Arc::new(
            NodeRecords::open(
                &opts.state,
                &crate::records::node_or_hostname(&opts.node_name),
                metrics.state_repaired.clone(),
            )
            .context("the allocation record directory of this node")?,
        );
        let netlink = macvtap_link::Netlink::new().context("opening a netlink socket")?;
        let writer = Arc::new(LinkWriter::new(netlink));
        let recent = RecentAllocations::default();
        let states = ResourceStates::default();
        let (cleanup_tx, cleanup_rx) = watch::channel(CleanupReport::default());
        let dir = DevicePluginDir::watch(
            opts.device_plugin_dir.clone(),
            opts.dir_poll,
            opts.kubelet_probe,
            cancel.clone(),
        );
        let pool_inputs = PoolInputs {
            links: monitor.links.clone(),
            cleanup: cleanup_rx.clone(),
            allocator: Allocator {
                writer: writer.clone(),
                links: monitor.links.clone(),
                recent: recent.clone(),
                metrics: metrics.clone(),
                records: records.clone(),
            },
            states: states.clone(),
            metrics: metrics.clone(),
        };
        let config = follow_config(opts, initial, &metrics, cancel);
        let (served, served_rx) = watch::channel(BTreeMap::new());
        let (loaded, loaded_rx) = watch::channel(false);

        if let Some(admin) = admin {
            let health = Health {
                states: states.subscribe(),
                netlink_subscribed: monitor.subscribed.clone(),
                wanted: served_rx.clone(),
                config_loaded: loaded_rx,
            };
            let stop = cancel.clone();
            tokio::spawn(async move {
                if let Err(e) = admin.serve(registry, Arc::new(health), stop).await {
                    tracing::error!("health/metrics server: {e}");
                }
            });
        }
        tokio::spawn(
            Cleanup {
                writer,
                recent,
                records,
                metrics: metrics.clone(),
                pod_resources_socket: opts.pod_resources_socket.clone(),
                interval: opts.cleanup_interval,
                grace: opts.cleanup_grace,
                resources: served_rx.clone(),
                report: cleanup_tx,
            }
            .run(cancel.clone()),
        );
        if let ConfigSource::NodeState { client, node } = &opts.source {
            tokio::spawn(
                StatusWriter {
                    client: client.clone(),
                    node: node.clone(),
                    states: states.subscribe(),
                    resources: served_rx,
                    config: config.clone(),
                    cleanup: cleanup_rx,
                    min_interval: opts.status_min_interval,
                    heartbeat: opts.status_heartbeat,
                }
                .run(cancel.clone()),
            );
        }
        Ok(Self {
            config,
            links: monitor.links,
            pool_inputs,
            dir,
            metrics,
            served,
            loaded,
        })
    }

    /// The loop: on every configuration or link change, serves the resources they ask for, live; when `cancel` fires,
    /// stops every plugin.
    async fn serve(mut self, extra_kinds: &[String], cancel: &CancellationToken) {
        let mut servers: BTreeMap<String, ResourceServer> = BTreeMap::new();
        loop {
            let state = self.config.borrow_and_update().clone();
            if let Some(cfg) = &state.config {
                let snapshot = self.links.borrow_and_update().clone();
                let want = effective_resources(cfg, &snapshot, extra_kinds);
                self.apply(&mut servers, &want, cancel).await;
                self.metrics.resources.set(servers.len() as i64);
                self.served.send_if_modified(|cur| {
                    if *cur == want {
                        false
                    } else {
                        *cur = want;
                        true
                    }
                });
                self.loaded
                    .send_if_modified(|l| !std::mem::replace(l, true));
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.config.changed() => if r.is_err() { break },
                r = self.links.changed() => if r.is_err() { break },
            }
        }
        self.loaded.send_replace(false);
        for (_, p) in std::mem::take(&mut servers) {
            p.stop().await;
        }
    }

    /// Makes `servers` serve `want`: stops the resources no longer wanted, applies changed ones live, starts new ones.
    async fn apply(
        &self,
        servers: &mut BTreeMap<String, ResourceServer>,
        want: &BTreeMap<String, ResourceConfig>,
        cancel: &CancellationToken,
    ) {
        for name in servers.keys().cloned().collect::<Vec<_>>() {
            if !want.contains_key(&name) {
                tracing::info!(resource = %name, "resource removed from the configuration; stopping");
                if let Some(p) = servers.remove(&name) {
                    p.stop().await;
                }
            }
        }
        for (name, rc) in want {
            match servers.get(name) {
                Some(p) => {
                    if p.config() != *rc {
                        tracing::info!(resource = %name, capacity = rc.capacity, mode = %rc.mode, lower = %rc.lower_device, "resource changed; applying live");
                        p.update(rc.clone());
                    }
                }
                None => {
                    tracing::info!(resource = %name, capacity = rc.capacity, mode = %rc.mode, lower = %rc.lower_device, "serving resource");
                    servers.insert(
                        name.clone(),
                        ResourceServer::start(
                            rc.clone(),
                            self.pool_inputs.clone(),
                            self.dir.clone(),
                            cancel,
                        ),
                    );
                }
            }
        }
    }
}

/// The netlink link monitor, its resubscriptions counted.
async fn start_link_monitor(
    opts: &AgentOptions,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> anyhow::Result<netmon::Monitor> {
    let m = metrics.clone();
    netmon::spawn(
        cancel.clone(),
        move || {
            m.netlink_resubscriptions.inc();
        },
        opts.netlink_fault.clone(),
    )
    .await
    .context("starting the netlink link monitor")
}

/// The configuration in effect, starting with `initial` and following its source (rejected updates counted).
fn follow_config(
    opts: &AgentOptions,
    initial: Option<NodeConfig>,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> watch::Receiver<ConfigState> {
    let (tx, rx) = watch::channel(ConfigState {
        config: initial,
        generation: None,
        error: None,
    });
    let m = metrics.clone();
    tokio::spawn(crate::config::follow(
        opts.source.clone(),
        tx,
        move |_| {
            m.config_errors.inc();
        },
        cancel.clone(),
    ));
    rx
}
