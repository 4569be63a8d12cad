//! Command line and the process life cycle: probes and metrics server, leader election, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use macvtap_telemetry::CancellationToken;
use macvtap_telemetry::admin::AdminServer;
use macvtap_telemetry::logs::LogFormat;
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

use crate::controller::{self, FIELD_MANAGER, Settings};
use crate::health::Health;
use crate::metrics::Metrics;

/// Reconciles MacvtapPools into per-node MacvtapNodeStates and reports pool status.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "macvtap-operator", version)]
pub struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "macvtap-operator")]
    pub leader_election_id: String,
    /// Identity of this replica in the Lease (default: host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
    /// How long a Lease stays valid without renewal: the longest hand-over after a leader dies.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration_seconds: u64,
    /// How long before expiry the leader renews; must be shorter than the duration.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_grace_seconds: u64,
    /// Reconcile without a Lease (one replica only, e.g. local runs).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Remove a deleted pool's extended resource from Node status (needs nodes/status patch).
    #[arg(long)]
    pub clean_stale_node_resources: bool,
    /// Periodic re-check of every object, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Node state writes in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Seconds without a status update after which an agent counts as not reporting (its node stops counting as
    /// ready). Agents heartbeat every 30 s by default (`--status-heartbeat-secs`): keep this several times that.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_stale_after_seconds: u64,
    /// Log format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl Args {
    fn identity(&self) -> String {
        self.leader_election_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn settings(&self) -> Settings {
        Settings {
            clean_stale_node_resources: self.clean_stale_node_resources,
            resync: Duration::from_secs(self.resync_seconds),
            concurrency: self.concurrency,
            instance: Some(self.identity()),
            agent_stale_after: Duration::from_secs(self.agent_stale_after_seconds),
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.lease_grace_seconds >= args.lease_duration_seconds {
        bail!("--lease-grace-seconds must be shorter than --lease-duration-seconds");
    }
    let shutdown = macvtap_telemetry::signals::shutdown_token()
        .context("installing the SIGTERM/SIGINT handlers")?;
    let client = Client::try_default()
        .await
        .context("building a Kubernetes client (KUBECONFIG or in-cluster config)")?;

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Arc::new(Health::default());
    let admin = AdminServer::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let addr = admin
        .local_addr()
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    // Never cancelled: the probes answer until the process exits, through the Lease release after a signal.
    let admin_stop = CancellationToken::new();
    let probes = health.clone();
    tokio::spawn(async move {
        if let Err(e) = admin.serve(registry, probes, admin_stop).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    let settings = args.settings();
    if args.no_leader_election {
        health.started.store(true, Ordering::Release);
        health.leading.store(true, Ordering::Release);
        metrics.leader.set(1);
        tokio::select! {
            _ = controller::run(client, settings, metrics.clone(), health.synced.clone()) => {
                bail!("controllers stopped")
            }
            _ = shutdown.cancelled() => {}
        }
        info!("stopped");
        return Ok(());
    }

    let identity = settings.instance.clone().unwrap_or_default();
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &args.leader_election_id)
            .with_namespace(&args.leader_election_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace(args.lease_grace_seconds)
            .with_field_manager(format!("{FIELD_MANAGER}-{identity}"))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            // API server down or RBAC not there yet: keep trying, unready, instead of crash-looping.
            Err(e) => {
                warn!(error = %e, "setting up the leader Lease; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    let (mut leading, lease_task) = manager.watch().await;
    health.started.store(true, Ordering::Release);
    info!(lease = %args.leader_election_id, namespace = %args.leader_election_namespace, %identity, "waiting for leadership");

    'outer: loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { bail!("leader election task ended") },
            _ = shutdown.cancelled() => break 'outer,
        }
        info!(%identity, "leading: starting controllers");
        health.leading.store(true, Ordering::Release);
        metrics.leader.set(1);
        let lost = async {
            let _ = leading.wait_for(|l| !*l).await;
        };
        tokio::select! {
            _ = controller::run(client.clone(), settings.clone(), metrics.clone(), health.synced.clone()) => {
                warn!("controllers stopped unexpectedly");
            }
            _ = lost => warn!("lost the leader Lease: controllers stopped, back to standby"),
            _ = shutdown.cancelled() => {
                health.leading.store(false, Ordering::Release);
                break 'outer;
            }
        }
        health.leading.store(false, Ordering::Release);
        health.synced.store(false, Ordering::Release);
        metrics.leader.set(0);
    }
    metrics.leader.set(0);
    // Closing the channel makes the lease task release the Lease, so a standby takes over at once.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("leader Lease released"),
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader Lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("releasing the leader Lease timed out"),
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn chart_flags_parse() {
        let args = Args::try_parse_from([
            "macvtap-operator",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election-namespace=macvtap-system",
            "--leader-election-id=rel-operator",
            "--log-format=json",
            "--clean-stale-node-resources",
        ])
        .unwrap();
        assert_eq!(args.metrics_addr.port(), 8080);
        assert_eq!(args.leader_election_namespace, "macvtap-system");
        assert_eq!(args.leader_election_id, "rel-operator");
        assert_eq!(args.log_format, LogFormat::Json);
        let settings = args.settings();
        assert!(settings.clean_stale_node_resources);
        assert_eq!(settings.resync, Duration::from_secs(600));
        assert_eq!(settings.agent_stale_after, Duration::from_secs(120));
        let args =
            Args::try_parse_from(["macvtap-operator", "--agent-stale-after-seconds=45"]).unwrap();
        assert_eq!(args.settings().agent_stale_after, Duration::from_secs(45));
        assert!(
            Args::try_parse_from(["macvtap-operator", "--agent-stale-after-seconds=0"]).is_err()
        );
        assert!(Args::try_parse_from(["macvtap-operator", "--log-format=xml"]).is_err());
        assert!(Args::try_parse_from(["macvtap-operator", "--concurrency=0"]).is_err());
    }
}
