//! A kubelet stand-in: the gRPC side of the kubelet's device manager, which is all a device plugin sees of it.
//!
//! - serves `v1beta1.Registration` on `<dir>/kubelet.sock`; on `Register` it dials the plugin's socket in the same
//!   directory, asks `GetDevicePluginOptions`, and consumes `ListAndWatch`, keeping the latest device list per
//!   resource (like the kubelet, it marks every device of a plugin Unhealthy when its stream ends);
//! - [`KubeletStandIn::allocate`] picks healthy free devices (asking `GetPreferredAllocation` when the plugin offers
//!   it), calls `Allocate`, and records the devices per pod and container;
//! - serves `v1.PodResourcesLister` (`List`, `Get`, `GetAllocatableResources`) from those records, on the socket it
//!   was given (what Multus and the agent read);
//! - [`KubeletStandIn::restart`] behaves like a new kubelet process: every socket in the directory is removed,
//!   registrations are forgotten, `kubelet.sock` is created again. Pod records survive (the real kubelet keeps
//!   them in its checkpoint).
//! - [`KubeletStandIn::die`] behaves like a kubelet process that died: its listener and every connection to the
//!   plugins close, registrations are forgotten, but `kubelet.sock` stays (nothing removes a socket file when its
//!   process ends); [`KubeletStandIn::come_back`] is a new process listening on the same path, without removing
//!   the plugins' sockets.
//! - faults: [`KubeletStandIn::stop_pod_resources`] / [`KubeletStandIn::start_pod_resources`] make PodResources
//!   unreachable and back; [`KubeletStandIn::refuse_registrations`] makes `Register` fail (a kubelet that is not
//!   ready); [`KubeletStandIn::record_pod`] records devices for a pod without `Allocate` (what a previous plugin
//!   allocated before an upgrade).
//!
//! Files by concern: [`registration`] (the Registration service, following each plugin's ListAndWatch, and the
//! waits on what it saw), [`allocation`] (what the kubelet does when it admits a pod), [`podresources`] (the
//! PodResources lister), `served` (one gRPC server's lifetime).
//!
//! ```no_run
//! # async fn f() -> Result<(), macvtap_e2e::kubelet::Error> {
//! use std::time::Duration;
//! use macvtap_e2e::kubelet::{KubeletStandIn, healthy_count};
//! let dir = std::path::Path::new("/tmp/dp");
//! let kubelet = KubeletStandIn::start(dir, &dir.join("pod-resources.sock")).await?;
//! let res = "macvtap.network.kubevirt.io/dataplane";
//! kubelet.wait_for_resource(res, Duration::from_secs(10), |d| healthy_count(d) == 10).await?;
//! let resp = kubelet.allocate("default", "pod-a", "compute", res, 1).await?;
//! println!("{}", resp.devices[0].host_path);
//! kubelet.release_pod("default", "pod-a").await;
//! # Ok(()) }
//! ```

mod allocation;
mod podresources;
mod registration;
mod served;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubelet_api::deviceplugin::DevicePluginOptions;
use kubelet_api::tonic::{self, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use kubelet_api::deviceplugin::{Device, DeviceSpec};
pub use kubelet_api::deviceplugin::{HEALTHY, UNHEALTHY};
pub use podresources::pod_resources;

use podresources::serve_pod_resources;
use registration::serve_registration;
use served::Served;

/// Errors of the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("resource {0} is not registered")]
    NotRegistered(String),
    #[error("resource {resource}: {wanted} devices wanted, {free} healthy and free")]
    NotEnoughDevices {
        resource: String,
        wanted: usize,
        free: usize,
    },
    #[error("dialing the plugin of {resource}: {source}")]
    Dial {
        resource: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call} of {resource}: {status}")]
    Rpc {
        call: &'static str,
        resource: String,
        status: Status,
    },
    #[error(
        "resource {resource} did not reach the expected state within {timeout:?}; last devices: {last:?}"
    )]
    Timeout {
        resource: String,
        timeout: Duration,
        last: Option<Vec<Device>>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Number of `Healthy` devices in a list.
pub fn healthy_count(devices: &[Device]) -> usize {
    devices.iter().filter(|d| d.health == HEALTHY).count()
}

/// What the stand-in knows about one registered resource.
#[derive(Debug, Clone)]
pub struct RegisteredPlugin {
    pub resource: String,
    /// Socket file name, relative to the device plugin directory.
    pub endpoint: String,
    pub options: Option<DevicePluginOptions>,
    /// Latest `ListAndWatch` list (all Unhealthy once the stream ended).
    pub devices: Vec<Device>,
    /// `ListAndWatch` responses received from this registration.
    pub updates: u64,
    /// The `ListAndWatch` stream is still open.
    pub connected: bool,
}

/// Devices recorded for one container.
type ContainerRecord = BTreeMap<String, Vec<String>>;

#[derive(Default)]
struct State {
    plugins: BTreeMap<String, Plugin>,
    /// (namespace, pod) -> container -> resource -> device IDs
    pods: BTreeMap<(String, String), BTreeMap<String, ContainerRecord>>,
    /// Register calls accepted, per resource, over the stand-in's whole life.
    registrations: BTreeMap<String, u64>,
    next_generation: u64,
}

struct Plugin {
    info: RegisteredPlugin,
    generation: u64,
    watcher: JoinHandle<()>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

struct Inner {
    dir: PathBuf,
    pod_resources_socket: PathBuf,
    state: Mutex<State>,
    /// Bumped on every change of `state`, for waiters.
    changed: watch::Sender<u64>,
    /// `Register` answers an error while set.
    refuse_registrations: AtomicBool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

impl State {
    /// Adds `ids` of `resource` to a pod's container.
    fn record(
        &mut self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: impl IntoIterator<Item = String>,
    ) {
        self.pods
            .entry((namespace.to_string(), pod.to_string()))
            .or_default()
            .entry(container.to_string())
            .or_default()
            .entry(resource.to_string())
            .or_default()
            .extend(ids);
    }
}

/// The kubelet stand-in. Dropping it stops its servers and removes its sockets.
pub struct KubeletStandIn {
    inner: Arc<Inner>,
    registration: tokio::sync::Mutex<Option<Served>>,
    pod_resources: tokio::sync::Mutex<Option<Served>>,
}

impl KubeletStandIn {
    /// Starts serving `Registration` on `<dir>/kubelet.sock` (creating `dir`) and PodResources on
    /// `pod_resources_socket` (creating its parent directory).
    pub async fn start(dir: &Path, pod_resources_socket: &Path) -> Result<KubeletStandIn> {
        let io = |what: String| move |source| Error::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if let Some(parent) = pod_resources_socket.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            pod_resources_socket: pod_resources_socket.to_path_buf(),
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            refuse_registrations: AtomicBool::new(false),
        });
        let pod_resources = serve_pod_resources(&inner)?;
        let registration = serve_registration(&inner)?;
        Ok(KubeletStandIn {
            inner,
            registration: tokio::sync::Mutex::new(Some(registration)),
            pod_resources: tokio::sync::Mutex::new(Some(pod_resources)),
        })
    }

    /// Stops serving PodResources and removes its socket: the API is unreachable until
    /// [`KubeletStandIn::start_pod_resources`].
    pub async fn stop_pod_resources(&self) {
        if let Some(s) = self.pod_resources.lock().await.take() {
            s.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.inner.pod_resources_socket);
    }

    /// Serves PodResources again (a no-op when it is served).
    pub async fn start_pod_resources(&self) -> Result<()> {
        let mut pr = self.pod_resources.lock().await;
        if pr.is_none() {
            *pr = Some(serve_pod_resources(&self.inner)?);
        }
        Ok(())
    }

    /// While `refuse` is true, `Register` fails with `Unavailable` (nothing is registered).
    pub fn refuse_registrations(&self, refuse: bool) {
        self.inner
            .refuse_registrations
            .store(refuse, Ordering::SeqCst);
    }

    /// The device plugin directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// `<dir>/kubelet.sock`.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.inner
            .dir
            .join(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME)
    }

    /// The PodResources socket.
    pub fn pod_resources_socket(&self) -> &Path {
        &self.inner.pod_resources_socket
    }

    /// Like a kubelet restart: stop serving, forget registrations (closing every ListAndWatch stream), remove every
    /// socket in the directory, then serve `kubelet.sock` again. Pod records are kept.
    pub async fn restart(&self) -> Result<()> {
        let mut reg = self.registration.lock().await;
        if let Some(old) = reg.take() {
            old.shutdown().await;
        }
        self.inner.state().plugins.clear();
        self.inner.bump();
        remove_sockets(&self.inner.dir)?;
        *reg = Some(serve_registration(&self.inner)?);
        Ok(())
    }

    /// Like a kubelet process that dies: the registration listener closes (without removing `kubelet.sock`, as an
    /// ended process leaves it), registrations are forgotten and every ListAndWatch stream closes. Pod records are
    /// kept. Until [`KubeletStandIn::come_back`], connecting to `kubelet.sock` is refused.
    pub async fn die(&self) {
        let mut reg = self.registration.lock().await;
        if let Some(old) = reg.take() {
            old.shutdown().await;
        }
        self.inner.state().plugins.clear();
        self.inner.bump();
    }

    /// A new process listening on `kubelet.sock` again after [`KubeletStandIn::die`] (the stale file is replaced, as
    /// binding needs); the plugins' sockets are left as they are. A no-op while serving.
    pub async fn come_back(&self) -> Result<()> {
        let mut reg = self.registration.lock().await;
        if reg.is_none() {
            *reg = Some(serve_registration(&self.inner)?);
        }
        Ok(())
    }

    /// The registered resource, if any.
    pub fn plugin(&self, resource: &str) -> Option<RegisteredPlugin> {
        self.inner
            .state()
            .plugins
            .get(resource)
            .map(|p| p.info.clone())
    }

    /// Latest device list of a resource (empty when not registered).
    pub fn devices(&self, resource: &str) -> Vec<Device> {
        self.plugin(resource).map(|p| p.devices).unwrap_or_default()
    }

    /// Every registered resource with its latest device list.
    pub fn resources(&self) -> BTreeMap<String, Vec<Device>> {
        self.inner
            .state()
            .plugins
            .iter()
            .map(|(k, p)| (k.clone(), p.info.devices.clone()))
            .collect()
    }

    /// How many times `resource` registered since the stand-in started (restarts included).
    pub fn registrations(&self, resource: &str) -> u64 {
        self.inner
            .state()
            .registrations
            .get(resource)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.inner.state().plugins.clear();
        if let Some(s) = self.registration.get_mut().take() {
            drop(s);
        }
        drop(self.pod_resources.get_mut().take());
        let _ = std::fs::remove_file(self.kubelet_socket());
        let _ = std::fs::remove_file(&self.inner.pod_resources_socket);
    }
}

/// Removes every unix socket in `dir` (what a starting kubelet does); other files stay.
fn remove_sockets(dir: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        what: format!("reading {}", dir.display()),
        source,
    })?;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_socket()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
