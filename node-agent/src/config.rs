//! Where the agent's [`NodeConfig`] comes from, kept live:
//!
//! - legacy `DP_MACVTAP_CONF` (the environment cannot change while the process runs: read once);
//! - a file with the same JSON (`--config-file`), re-read when its content changes: the live legacy path;
//! - this node's `MacvtapNodeState` (watched alone, with a field selector on its name), spec → config.
//!
//! A bad update never replaces the configuration in effect: it is reported (log, metric, status `lastError`) and
//! the last good one keeps being served.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use macvtap_api::MacvtapNodeState;
use macvtap_core::NodeConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the agent serves now, and what went wrong last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigState {
    /// The configuration in effect; `None` until a first good one arrived.
    pub config: Option<NodeConfig>,
    /// `metadata.generation` of the MacvtapNodeState served.
    pub generation: Option<i64>,
    /// The latest rejected update, cleared by the next good one.
    pub error: Option<String>,
}

/// The configured source.
#[derive(Clone)]
pub enum ConfigSource {
    /// A `DP_MACVTAP_CONF` value.
    Legacy(String),
    /// A file holding `DP_MACVTAP_CONF` JSON, polled for changes.
    File { path: PathBuf, poll: Duration },
    /// The node's MacvtapNodeState.
    NodeState { client: kube::Client, node: String },
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Legacy(v) => f.debug_tuple("Legacy").field(v).finish(),
            Self::File { path, poll } => f
                .debug_struct("File")
                .field("path", path)
                .field("poll", poll)
                .finish(),
            Self::NodeState { node, .. } => {
                f.debug_struct("NodeState").field("node", node).finish()
            }
        }
    }
}

/// A configuration that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Legacy(#[from] macvtap_api::legacy::LegacyConfigError),
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] macvtap_core::InvalidNodeConfig),
}

/// Checks what the CRD schema cannot: unique names, kernel-acceptable interface names, capacities in range (the
/// rules are `macvtap-core`'s; the legacy parser applies them to its input too).
pub fn validate(cfg: &NodeConfig) -> Result<(), ConfigError> {
    Ok(macvtap_core::node_config::validate(cfg)?)
}

fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads the initial configuration of a legacy or file source: an error here means the agent has nothing to
/// serve, and it says exactly why.
pub fn initial(source: &ConfigSource) -> Result<Option<NodeConfig>, ConfigError> {
    match source {
        ConfigSource::Legacy(v) => Ok(Some(macvtap_api::legacy::parse(v)?)),
        ConfigSource::File { path, .. } => Ok(Some(macvtap_api::legacy::parse(&read_file(path)?)?)),
        ConfigSource::NodeState { .. } => Ok(None),
    }
}

/// Follows the source, updating `tx`, until `cancel` fires.
pub async fn follow(
    source: ConfigSource,
    tx: watch::Sender<ConfigState>,
    on_error: impl Fn(&str) + Send + 'static,
    cancel: CancellationToken,
) {
    let reject = |tx: &watch::Sender<ConfigState>, e: String| {
        tracing::error!("configuration update rejected, still serving the last good one: {e}");
        on_error(&e);
        tx.send_modify(|s| s.error = Some(e));
    };
    match source {
        // The environment cannot change: hold the sender so the configuration stays in effect until shutdown.
        ConfigSource::Legacy(_) => cancel.cancelled().await,
        ConfigSource::File { path, poll } => {
            let mut last = read_file(&path).ok();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                let now = read_file(&path);
                let text = match now {
                    Ok(t) => t,
                    Err(e) => {
                        // A file being replaced may be missing for a moment; report only a lasting change.
                        if last.is_some() {
                            reject(&tx, e.to_string());
                            last = None;
                        }
                        continue;
                    }
                };
                if last.as_deref() == Some(text.as_str()) {
                    continue;
                }
                last = Some(text.clone());
                match macvtap_api::legacy::parse(&text) {
                    Ok(cfg) => {
                        tracing::info!(path = %path.display(), "configuration file changed; applying");
                        tx.send_modify(|s| {
                            s.config = Some(cfg);
                            s.error = None;
                        });
                    }
                    Err(e) => reject(&tx, format!("{}: {e}", path.display())),
                }
            }
        }
        ConfigSource::NodeState { client, node } => {
            let api = kube::Api::<MacvtapNodeState>::all(client);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
            let mut stream = watcher::watcher(api, cfg).boxed();
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = stream.next() => ev,
                };
                let Some(ev) = ev else { return };
                match ev {
                    Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                        if obj.metadata.name.as_deref() != Some(node.as_str()) {
                            continue;
                        }
                        let cfg = obj.spec.to_node_config();
                        match validate(&cfg) {
                            Ok(()) => tx.send_if_modified(|s| {
                                let new = ConfigState {
                                    config: Some(cfg),
                                    generation: obj.metadata.generation,
                                    error: None,
                                };
                                if *s == new {
                                    false
                                } else {
                                    *s = new;
                                    true
                                }
                            }),
                            Err(e) => {
                                reject(&tx, format!("MacvtapNodeState {node}: {e}"));
                                false
                            }
                        };
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        tracing::info!(%node, "MacvtapNodeState deleted: serving no resources");
                        tx.send_modify(|s| {
                            s.config = Some(NodeConfig::default());
                            s.generation = None;
                            s.error = None;
                        });
                    }
                    Ok(watcher::Event::Init) => {}
                    Ok(watcher::Event::InitDone) => {
                        // No object yet: nothing to serve, but the source is healthy.
                        tx.send_if_modified(|s| {
                            if s.config.is_none() {
                                s.config = Some(NodeConfig::default());
                                true
                            } else {
                                false
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(%node, "watching MacvtapNodeState: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}
