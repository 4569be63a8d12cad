//! The command line of `macvtap-agent`: the node agent (default command) and `macvtap-agent install-cni`.
//! In the library so a test can parse exactly the flags the chart passes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use macvtap_telemetry::logs::LogFormat;

use crate::agent::AgentOptions;
use crate::config::ConfigSource;
use crate::records::StateDirs;

#[derive(Parser, Debug)]
#[command(
    name = "macvtap-agent",
    version,
    about = "macvtap node agent: kubelet device plugins for macvtap resources"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy the `macvtap` CNI binary into the host's CNI bin directory (atomically: temp file, then rename).
    InstallCni {
        /// Destination directory, e.g. /opt/cni/bin.
        #[arg(long)]
        dest: PathBuf,
        /// The binary to install; default: `macvtap` next to this executable.
        #[arg(long)]
        source: Option<PathBuf>,
        #[command(flatten)]
        node: NodeFileArgs,
    },
}

/// What `install-cni` writes into the plugin's node file next to the binary (see [`crate::install`]).
#[derive(clap::Args, Debug)]
pub struct NodeFileArgs {
    /// This node's name: its allocation records are under `<state-dir>/nodes/<node>`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The agent's state directory (as the host sees it: the CNI runs on the host).
    #[arg(long, default_value = macvtap_core::allocation::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The kubelet's PodResources socket as the host sees it (the CNI asks it whether a pod holds a device).
    #[arg(long, default_value = kubelet_api::podresources::POD_RESOURCES_SOCKET)]
    pub pod_resources_socket: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// This node's name: the MacvtapNodeState to serve.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The kubelet's device plugin directory.
    #[arg(long, default_value = kubelet_api::deviceplugin::DEVICE_PLUGIN_PATH)]
    pub device_plugin_dir: PathBuf,
    /// The kubelet's PodResources socket (which devices pods hold, for cleanup).
    #[arg(long, default_value = kubelet_api::podresources::POD_RESOURCES_SOCKET)]
    pub pod_resources_socket: PathBuf,
    /// Serves /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9808")]
    pub health_addr: SocketAddr,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// A file with DP_MACVTAP_CONF JSON, re-read when it changes (the live form of the legacy configuration).
    /// Takes precedence over the DP_MACVTAP_CONF variable.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Seconds between cleanup passes over orphaned host links.
    #[arg(long, default_value_t = 30)]
    pub cleanup_interval_secs: u64,
    /// Seconds a host link must be unheld by any pod (and not freshly allocated) before cleanup removes it.
    #[arg(long, default_value_t = 120)]
    pub cleanup_grace_secs: u64,
    /// Link kinds that discovery (`[]`) serves besides physical links and bonds (repeatable, e.g. `team`).
    #[arg(long = "discovery-include-kind")]
    pub discovery_include_kinds: Vec<String>,
    /// Where allocation records (read by the CNI) and tap-index reservations are kept; a hostPath, on disk (the
    /// records must outlive a node reboot).
    #[arg(long, default_value = macvtap_core::allocation::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The tap-index reservations of every agent on this kernel; default `<state-dir>/taps`. Only for several
    /// agents on one kernel with different state directories (tests).
    #[arg(long, hide = true)]
    pub tap_reservation_dir: Option<PathBuf>,
    /// Seconds between MacvtapNodeState status writes when nothing changes (the heartbeat the operator's
    /// --agent-stale-after-seconds measures; keep it well below that).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub status_heartbeat_secs: u64,
}

impl Cli {
    /// Does what the command line says. Logging is set up by the caller (it needs `--log-format` first).
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(Command::InstallCni { dest, source, node }) = self.command {
            let source = match source {
                Some(s) => s,
                None => crate::install::default_source()?,
            };
            let installed = crate::install::install_cni(&source, &dest)?;
            tracing::info!(source = %source.display(), installed = %installed.display(), "CNI binary installed");
            let file = node.node_file()?;
            let written = crate::install::write_node_file(&file, &dest)?;
            tracing::info!(path = %written.display(), allocation_dir = ?file.allocation_dir,
                "CNI node file written");
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building the tokio runtime")?;
        rt.block_on(agent(self.run))
    }
}

impl NodeFileArgs {
    pub fn node_file(&self) -> anyhow::Result<macvtap_core::CniNodeFile> {
        let node = crate::records::node_or_hostname(self.node_name.as_deref().unwrap_or_default());
        let allocation_dir = macvtap_core::allocation::node_dir(&self.state_dir, &node)
            .with_context(|| format!("node name {node:?}"))?;
        Ok(macvtap_core::CniNodeFile {
            pod_resources_socket: self.pod_resources_socket.clone(),
            allocation_dir: Some(allocation_dir),
            ..Default::default()
        })
    }
}

impl RunArgs {
    /// The agent's options for `source` (cleanup intervals of at least a second).
    pub fn options(self, source: ConfigSource) -> AgentOptions {
        let mut opts = AgentOptions::new(self.node_name.as_deref().unwrap_or_default(), source);
        opts.device_plugin_dir = self.device_plugin_dir;
        opts.pod_resources_socket = self.pod_resources_socket;
        opts.health_addr = Some(self.health_addr);
        opts.cleanup_interval = Duration::from_secs(self.cleanup_interval_secs.max(1));
        opts.cleanup_grace = Duration::from_secs(self.cleanup_grace_secs);
        opts.discovery_extra_kinds = self.discovery_include_kinds;
        opts.status_heartbeat = Duration::from_secs(self.status_heartbeat_secs);
        opts.state = StateDirs {
            state_dir: self.state_dir,
            taps_dir: self.tap_reservation_dir,
        };
        opts
    }

    /// Where the configuration comes from. DP_MACVTAP_CONF set (even empty) is the legacy configuration, parsed as
    /// the original does: `[]` or `null` is discovery, an empty value is an error. Unset, the original exits
    /// ("must be set"); the agent serves the node's MacvtapNodeState instead, which needs the node name, else it
    /// exits as the original does.
    async fn config_source(&self) -> anyhow::Result<ConfigSource> {
        if let Some(path) = &self.config_file {
            return Ok(ConfigSource::File {
                path: path.clone(),
                poll: Duration::from_secs(1),
            });
        }
        if let Some(v) = std::env::var_os(macvtap_api::legacy::ENV_VAR) {
            let Some(v) = v.to_str() else {
                bail!("{} is not valid UTF-8", macvtap_api::legacy::ENV_VAR);
            };
            return Ok(ConfigSource::Legacy(v.to_string()));
        }
        let node = self.node_name.clone().unwrap_or_default();
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
        Ok(ConfigSource::NodeState { client, node })
    }
}

async fn agent(args: RunArgs) -> anyhow::Result<()> {
    let source = args.config_source().await?;
    let what = match &source {
        ConfigSource::Legacy(_) => format!("legacy {}", macvtap_api::legacy::ENV_VAR),
        ConfigSource::File { path, .. } => format!("config file {}", path.display()),
        ConfigSource::NodeState { node, .. } => format!("MacvtapNodeState {node}"),
    };
    tracing::info!(version = crate::VERSION, source = %what, device_plugin_dir = %args.device_plugin_dir.display(), "starting");
    let opts = args.options(source);
    let cancel = macvtap_telemetry::signals::shutdown_token()
        .context("installing the SIGTERM/SIGINT handlers")?;
    crate::agent::run(opts, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeSet;

    /// The agent's flags as the chart renders them with its default values (agent-daemonset.yaml: `args`, the
    /// legacy config file), and the e2e's `agent.extraArgs`.
    const CHART_ARGS: &[&str] = &[
        "macvtap-agent",
        "--health-addr=0.0.0.0:9808",
        "--log-format=json",
        "--status-heartbeat-secs=30",
        "--config-file=/etc/macvtap/dp-macvtap-conf.json",
        "--cleanup-grace-secs=10",
        "--cleanup-interval-secs=3",
        "--state-dir=/var/lib/macvtap-operator",
    ];

    #[test]
    fn the_charts_agent_flags_parse() {
        let cli = Cli::try_parse_from(CHART_ARGS).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.log_format, LogFormat::Json);
        assert_eq!(
            cli.run.config_file.as_deref(),
            Some(std::path::Path::new("/etc/macvtap/dp-macvtap-conf.json"))
        );
        let opts = cli.run.options(ConfigSource::Legacy("[]".into()));
        assert_eq!(opts.health_addr, Some(([0, 0, 0, 0], 9808).into()));
        assert_eq!(opts.status_heartbeat, Duration::from_secs(30));
        assert_eq!(opts.cleanup_grace, Duration::from_secs(10));
        assert_eq!(opts.cleanup_interval, Duration::from_secs(3));
        assert_eq!(
            opts.device_plugin_dir,
            PathBuf::from(kubelet_api::deviceplugin::DEVICE_PLUGIN_PATH)
        );

        // The init container.
        let cli = Cli::try_parse_from([
            "macvtap-agent",
            "install-cni",
            "--dest",
            "/host/opt/cni/bin",
            "--node-name=node-a",
            "--state-dir=/var/lib/macvtap-operator",
            "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
        ])
        .unwrap();
        match cli.command {
            Some(Command::InstallCni { dest, source, node }) => {
                assert_eq!(dest, PathBuf::from("/host/opt/cni/bin"));
                assert!(source.is_none());
                let file = node.node_file().unwrap();
                assert_eq!(
                    file.allocation_dir,
                    Some(PathBuf::from("/var/lib/macvtap-operator/nodes/node-a"))
                );
            }
            other => panic!("{other:?}"),
        }

        assert!(Cli::try_parse_from(["macvtap-agent", "--status-heartbeat-secs=0"]).is_err());
        assert!(Cli::try_parse_from(["macvtap-agent", "--log-format=xml"]).is_err());
        assert!(Cli::try_parse_from(["macvtap-agent", "--cleanup-grace=10"]).is_err());
    }

    /// Every `--flag` the chart's DaemonSet template can pass is one the agent knows, and the test above covers
    /// each of them.
    #[test]
    fn every_flag_in_the_charts_daemonset_is_known_and_tested() {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/macvtap-operator/templates/agent-daemonset.yaml"
        ))
        .unwrap();
        let in_chart: BTreeSet<String> = template
            .split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ',')
            .filter_map(|w| w.strip_prefix("--"))
            .filter(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
            .map(|w| w.split('=').next().unwrap().to_string())
            .collect();
        assert!(in_chart.contains("health-addr"), "{in_chart:?}");
        let cmd = Cli::command();
        let known: BTreeSet<String> = cmd
            .get_arguments()
            .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
            .filter_map(|a| a.get_long().map(String::from))
            .collect();
        let tested: BTreeSet<String> = CHART_ARGS
            .iter()
            .filter_map(|a| a.strip_prefix("--"))
            .map(|a| a.split('=').next().unwrap().to_string())
            .chain(["dest", "node-name", "pod-resources-socket"].map(String::from))
            .collect();
        for flag in &in_chart {
            assert!(
                known.contains(flag),
                "the chart passes --{flag}, unknown to the agent"
            );
            assert!(
                tested.contains(flag),
                "--{flag} is in the chart but not in CHART_ARGS"
            );
        }
    }
}
