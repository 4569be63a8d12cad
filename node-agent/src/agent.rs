//! The agent's main loop: configuration + host links → the set of resources served, reconciled live.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use macvtap_api::{NodeConfig, ResourceConfig};
use macvtap_core::validate_resource_name;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigSource, ConfigState};
use crate::gc::{Cleanup, CleanupReport};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::netmon::{self, HostLink};
use crate::plugin::ResourcePlugin;
use crate::shared::Shared;
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
    pub gc_interval: Duration,
    pub gc_grace: Duration,
    /// Link kinds discovery serves besides physical links and bonds.
    pub discovery_extra_kinds: Vec<String>,
    pub status_min_interval: Duration,
    /// The status is written at least this often (`lastUpdateTime`), so the operator can tell a live agent from a
    /// gone one; keep it well below the operator's `--agent-stale-after-seconds`.
    pub status_heartbeat: Duration,
    /// How often the device plugin directory is re-read for kubelet restarts.
    pub dir_poll: Duration,
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
            gc_interval: Duration::from_secs(30),
            gc_grace: Duration::from_secs(120),
            discovery_extra_kinds: Vec::new(),
            status_min_interval: Duration::from_secs(2),
            status_heartbeat: Duration::from_secs(30),
            dir_poll: Duration::from_millis(100),
            netlink_fault: None,
        }
    }
}

/// The resources to serve: explicit ones, plus (with discovery) one per suitable link not already named.
pub fn effective_resources(
    cfg: &NodeConfig,
    links: &BTreeMap<String, HostLink>,
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
                || !netmon::suitable_for_discovery(l, links, extra_kinds)
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

/// Runs the agent until `cancel` fires; then stops every plugin (sockets removed, links untouched).
pub async fn run(opts: AgentOptions, cancel: CancellationToken) -> anyhow::Result<()> {
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
    let health_listener = match opts.health_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the health/metrics address {addr}"))?,
        ),
        None => None,
    };

    let monitor = {
        let m = metrics.clone();
        netmon::spawn(
            cancel.clone(),
            move || {
                m.netlink_resubscriptions.inc();
            },
            opts.netlink_fault.clone(),
        )
        .await
        .context("starting the netlink link monitor")?
    };
    let netlink = macvtap_link::Netlink::new().context("opening a netlink socket")?;
    let (cleanup_tx, cleanup_rx) = watch::channel(CleanupReport::default());
    let shared = Shared::new(
        netlink,
        metrics.clone(),
        opts.device_plugin_dir.clone(),
        monitor.links.clone(),
        cleanup_rx.clone(),
        opts.dir_poll,
        cancel.clone(),
    );

    let (config_tx, mut config_rx) = watch::channel(ConfigState {
        config: initial,
        generation: None,
        error: None,
    });
    {
        let m = metrics.clone();
        tokio::spawn(crate::config::follow(
            opts.source.clone(),
            config_tx,
            move |_| {
                m.config_errors.inc();
            },
            cancel.clone(),
        ));
    }

    let (resources_tx, resources_rx) = watch::channel(BTreeMap::new());
    let (loaded_tx, loaded_rx) = watch::channel(false);
    if let Some(listener) = health_listener {
        let health = Health {
            shared: shared.clone(),
            netlink_subscribed: monitor.subscribed.clone(),
            wanted: resources_rx.clone(),
            config_loaded: loaded_rx,
        };
        tokio::spawn(crate::http::serve(
            listener,
            Arc::new(registry),
            health,
            cancel.clone(),
        ));
    }

    tokio::spawn(
        Cleanup {
            shared: shared.clone(),
            pod_resources_socket: opts.pod_resources_socket.clone(),
            interval: opts.gc_interval,
            grace: opts.gc_grace,
            resources: resources_rx.clone(),
            report: cleanup_tx,
        }
        .run(cancel.clone()),
    );

    if let ConfigSource::NodeState { client, node } = &opts.source {
        tokio::spawn(
            StatusWriter {
                client: client.clone(),
                node: node.clone(),
                shared: shared.clone(),
                resources: resources_rx.clone(),
                config: config_rx.clone(),
                cleanup: cleanup_rx.clone(),
                min_interval: opts.status_min_interval,
                heartbeat: opts.status_heartbeat,
            }
            .run(cancel.clone()),
        );
    }

    let mut plugins: BTreeMap<String, ResourcePlugin> = BTreeMap::new();
    let mut links_rx = monitor.links.clone();
    loop {
        let state = config_rx.borrow_and_update().clone();
        if let Some(cfg) = &state.config {
            let snapshot = links_rx.borrow_and_update().clone();
            let want = effective_resources(cfg, &snapshot, &opts.discovery_extra_kinds);
            for name in plugins.keys().cloned().collect::<Vec<_>>() {
                if !want.contains_key(&name) {
                    tracing::info!(resource = %name, "resource removed from the configuration; stopping");
                    if let Some(p) = plugins.remove(&name) {
                        p.stop().await;
                    }
                }
            }
            for (name, rc) in &want {
                match plugins.get(name) {
                    Some(p) => {
                        if p.config() != *rc {
                            tracing::info!(resource = %name, capacity = rc.capacity, mode = %rc.mode, lower = %rc.lower_device, "resource changed; applying live");
                            p.update(rc.clone());
                        }
                    }
                    None => {
                        tracing::info!(resource = %name, capacity = rc.capacity, mode = %rc.mode, lower = %rc.lower_device, "serving resource");
                        plugins.insert(
                            name.clone(),
                            ResourcePlugin::start(shared.clone(), rc.clone(), &cancel),
                        );
                    }
                }
            }
            metrics.resources.set(plugins.len() as i64);
            resources_tx.send_if_modified(|cur| {
                if *cur == want {
                    false
                } else {
                    *cur = want;
                    true
                }
            });
            loaded_tx.send_if_modified(|l| !std::mem::replace(l, true));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = config_rx.changed() => if r.is_err() { break },
            r = links_rx.changed() => if r.is_err() { break },
        }
    }
    loaded_tx.send_replace(false);
    for (_, p) in std::mem::take(&mut plugins) {
        p.stop().await;
    }
    tracing::info!("stopped: plugin sockets removed, links left as they are");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::tests::link;
    use macvtap_api::{DiscoveryConfig, MacvtapMode};

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
}
