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
use crate::injector;
use crate::injector::certs::{CertSettings, service_dns_names};
use crate::injector::metrics::InjectorMetrics;
use crate::injector::mutate::{DEFAULT_PREFIX, ResourceFilter};
use crate::injector::tls_secret::{CertSource, SecretSettings};
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
    /// Serve the network-resources injector and the NAD warnings (HTTPS) on this address; unset: no webhooks.
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,
    /// The webhook's Service (its DNS names go into the serving certificate).
    #[arg(long, default_value = "macvtap-operator-webhook")]
    pub webhook_service: String,
    /// The Secret holding the webhook's certificates (in the pod's namespace).
    #[arg(long, default_value = "macvtap-operator-webhook-tls")]
    pub webhook_secret: String,
    /// Who makes the certificates: the operator, or someone else such as cert-manager (then only read).
    #[arg(long, value_enum, default_value = "operator")]
    pub webhook_certs: CertSource,
    /// Lifetime of the serving certificate the operator makes (renewed with a third left; the CA lives ten).
    #[arg(long, default_value_t = 365 * 24 * 3600, value_parser = clap::value_parser!(u64).range(60..))]
    pub webhook_cert_validity_seconds: u64,
    /// How often every replica reads the Secret (picks up a renewal) and checks the CA bundle.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_cert_check_seconds: u64,
    /// The MutatingWebhookConfiguration whose caBundle the operator writes.
    #[arg(long, default_value = "macvtap-operator-injector")]
    pub mutating_webhook_config: String,
    /// The ValidatingWebhookConfiguration (NAD warnings) whose caBundle the operator writes; empty: none.
    #[arg(long, default_value = "macvtap-operator-nad-warnings")]
    pub validating_webhook_config: String,
    /// Resource name prefixes the injector adds (repeatable).
    #[arg(long = "injector-resource-prefix", default_values_t = [DEFAULT_PREFIX.to_string()])]
    pub injector_resource_prefixes: Vec<String>,
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

    /// The injector's settings, when it runs.
    pub fn injector(&self) -> Option<injector::Settings> {
        let addr = self.webhook_addr?;
        let validity = Duration::from_secs(self.webhook_cert_validity_seconds);
        Some(injector::Settings {
            addr,
            filter: ResourceFilter::new(self.injector_resource_prefixes.clone()),
            secret: SecretSettings {
                namespace: self.leader_election_namespace.clone(),
                secret: self.webhook_secret.clone(),
                source: self.webhook_certs,
                cert: CertSettings {
                    dns_names: service_dns_names(
                        &self.webhook_service,
                        &self.leader_election_namespace,
                    ),
                    validity,
                },
                mutating_config: self.mutating_webhook_config.clone(),
                validating_config: Some(self.validating_webhook_config.clone())
                    .filter(|v| !v.is_empty()),
                check_every: Duration::from_secs(self.webhook_cert_check_seconds),
            },
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
    let injector_metrics = InjectorMetrics::default();
    let injector = args.injector();
    if injector.is_some() {
        injector_metrics.register(&mut registry);
    }
    let health = Arc::new(Health {
        webhook_enabled: injector.is_some(),
        ..Health::default()
    });
    // Every replica serves the webhooks, leader or not: started before the election.
    if let Some(settings) = injector {
        injector::start(
            client.clone(),
            settings,
            injector_metrics,
            health.webhook_ready.clone(),
        )
        .await
        .context("starting the admission webhooks")?;
    }
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
