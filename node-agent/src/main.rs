//! `macvtap-agent`: the node agent (default command) and `macvtap-agent install-cni`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use macvtap_agent::agent::{AgentOptions, run};
use macvtap_agent::config::ConfigSource;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "macvtap-agent",
    version,
    about = "macvtap node agent: kubelet device plugins for macvtap resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy the `macvtap` CNI binary into the host's CNI bin directory (atomically: temp file, then rename).
    InstallCni {
        /// Destination directory, e.g. /opt/cni/bin.
        #[arg(long)]
        dest: PathBuf,
        /// The binary to install; default: `macvtap` next to this executable.
        #[arg(long)]
        source: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// This node's name: the MacvtapNodeState to serve.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The kubelet's device plugin directory.
    #[arg(long, default_value = kubelet_api::deviceplugin::DEVICE_PLUGIN_PATH)]
    device_plugin_dir: PathBuf,
    /// The kubelet's PodResources socket (which devices pods hold, for cleanup).
    #[arg(long, default_value = kubelet_api::podresources::POD_RESOURCES_SOCKET)]
    pod_resources_socket: PathBuf,
    /// Serves /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9808")]
    health_addr: SocketAddr,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// A file with DP_MACVTAP_CONF JSON, re-read when it changes (the live form of the legacy configuration).
    /// Takes precedence over the DP_MACVTAP_CONF variable.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Seconds between cleanup passes over orphaned host links.
    #[arg(long, default_value_t = 30)]
    cleanup_interval_secs: u64,
    /// Seconds a host link must be unheld by any pod (and not freshly allocated) before cleanup removes it.
    #[arg(long, default_value_t = 120)]
    cleanup_grace_secs: u64,
    /// Link kinds that discovery (`[]`) serves besides physical links and bonds (repeatable, e.g. `team`).
    #[arg(long = "discovery-include-kind")]
    discovery_include_kinds: Vec<String>,
    /// Seconds between MacvtapNodeState status writes when nothing changes (the heartbeat the operator's
    /// --agent-stale-after-seconds measures; keep it well below that).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    status_heartbeat_secs: u64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.run.log_format);
    if let Some(Command::InstallCni { dest, source }) = cli.command {
        let source = match source {
            Some(s) => s,
            None => macvtap_agent::install::default_source()?,
        };
        let installed = macvtap_agent::install::install_cni(&source, &dest)?;
        tracing::info!(source = %source.display(), installed = %installed.display(), "CNI binary installed");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(agent(cli.run))
}

async fn agent(args: RunArgs) -> anyhow::Result<()> {
    let node = args.node_name.clone().unwrap_or_default();
    // DP_MACVTAP_CONF set (even empty) is the legacy configuration, parsed as the original does: `[]` or `null`
    // is discovery, an empty value is an error. Unset, the original exits ("must be set"); the agent serves the
    // node's MacvtapNodeState instead, which needs the node name, else it exits as the original does.
    let source = if let Some(path) = &args.config_file {
        ConfigSource::File {
            path: path.clone(),
            poll: Duration::from_secs(1),
        }
    } else if let Some(v) = std::env::var_os(macvtap_api::legacy::ENV_VAR) {
        let Some(v) = v.to_str() else {
            bail!("{} is not valid UTF-8", macvtap_api::legacy::ENV_VAR);
        };
        ConfigSource::Legacy(v.to_string())
    } else {
        if node.is_empty() {
            bail!(
                "{} environment variable must be set (the original's legacy configuration), or --node-name \
                 (or NODE_NAME) to serve this node's MacvtapNodeState, or --config-file",
                macvtap_api::legacy::ENV_VAR
            );
        }
        let client = kube::Client::try_default()
            .await
            .context("building a Kubernetes client (in-cluster or KUBECONFIG)")?;
        ConfigSource::NodeState {
            client,
            node: node.clone(),
        }
    };
    let what = match &source {
        ConfigSource::Legacy(_) => format!("legacy {}", macvtap_api::legacy::ENV_VAR),
        ConfigSource::File { path, .. } => format!("config file {}", path.display()),
        ConfigSource::NodeState { node, .. } => format!("MacvtapNodeState {node}"),
    };
    tracing::info!(version = macvtap_agent::VERSION, source = %what, device_plugin_dir = %args.device_plugin_dir.display(), "starting");
    let mut opts = AgentOptions::new(&node, source);
    opts.device_plugin_dir = args.device_plugin_dir;
    opts.pod_resources_socket = args.pod_resources_socket;
    opts.health_addr = Some(args.health_addr);
    opts.gc_interval = Duration::from_secs(args.cleanup_interval_secs.max(1));
    opts.gc_grace = Duration::from_secs(args.cleanup_grace_secs);
    opts.discovery_extra_kinds = args.discovery_include_kinds;
    opts.status_heartbeat = Duration::from_secs(args.status_heartbeat_secs);

    let cancel = CancellationToken::new();
    let signals = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            cancel.cancel();
        })
    };
    let result = run(opts, cancel).await;
    signals.abort();
    result
}
