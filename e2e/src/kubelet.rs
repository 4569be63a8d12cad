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
//! - faults: [`KubeletStandIn::stop_pod_resources`] / [`KubeletStandIn::start_pod_resources`] make PodResources
//!   unreachable and back; [`KubeletStandIn::refuse_registrations`] makes `Register` fail (a kubelet that is not
//!   ready); [`KubeletStandIn::record_pod`] records devices for a pod without `Allocate` (what a previous plugin
//!   allocated before an upgrade).
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubelet_api::deviceplugin::device_plugin_client::DevicePluginClient;
use kubelet_api::deviceplugin::registration_server::{Registration, RegistrationServer};
use kubelet_api::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, DevicePluginOptions, Empty, PreferredAllocationRequest,
    RegisterRequest,
};
use kubelet_api::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kubelet_api::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use kubelet_api::tonic::{self, Request, Response, Status};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use kubelet_api::deviceplugin::{Device, DeviceSpec};
pub use kubelet_api::deviceplugin::{HEALTHY, UNHEALTHY};

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

/// A running server: stopped (and awaited) on drop of its stop sender.
struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    /// Serves `router` on `incoming` until [`Served::shutdown`].
    fn spawn(
        router: tonic::transport::server::Router,
        incoming: tokio_stream::wrappers::UnixListenerStream,
        what: &'static str,
    ) -> Served {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("kubelet stand-in: {what} server: {e}");
            }
        });
        Served {
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // A graceful shutdown waits for open requests; Register calls are short, so this is quick.
        let task = &mut self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut *task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
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

    /// Records `ids` of `resource` for a pod's container without calling `Allocate`, so PodResources lists them.
    pub fn record_pod(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: &[&str],
    ) {
        self.inner
            .state()
            .pods
            .entry((namespace.to_string(), pod.to_string()))
            .or_default()
            .entry(container.to_string())
            .or_default()
            .entry(resource.to_string())
            .or_default()
            .extend(ids.iter().map(|s| s.to_string()));
        self.inner.bump();
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

    /// Waits until `resource` is registered, its ListAndWatch stream is open, and `pred` holds for its latest
    /// device list; returns that list.
    pub async fn wait_for_resource(
        &self,
        resource: &str,
        timeout: Duration,
        pred: impl Fn(&[Device]) -> bool,
    ) -> Result<Vec<Device>> {
        self.wait_for(resource, timeout, |p| {
            p.filter(|p| p.connected && pred(&p.devices))
                .map(|p| p.devices.clone())
        })
        .await
    }

    /// Waits until `resource` is not registered (or its stream is closed).
    pub async fn wait_for_unregistered(&self, resource: &str, timeout: Duration) -> Result<()> {
        self.wait_for(resource, timeout, |p| match p {
            Some(p) if p.connected => None,
            _ => Some(()),
        })
        .await
    }

    /// Waits until `check` returns `Some` for the (possibly absent) registration of `resource`.
    pub async fn wait_for<T>(
        &self,
        resource: &str,
        timeout: Duration,
        check: impl Fn(Option<&RegisteredPlugin>) -> Option<T>,
    ) -> Result<T> {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(self.inner.state().plugins.get(resource).map(|p| &p.info)) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(Error::Timeout {
                        resource: resource.to_string(),
                        timeout,
                        last: self.plugin(resource).map(|p| p.devices),
                    });
                }
            }
        }
    }

    /// Allocates `n` healthy devices of `resource` that no recorded pod holds, as the kubelet does when it admits a
    /// pod: `GetPreferredAllocation` (when offered) picks them, `Allocate` is called, and the devices are recorded
    /// for PodResources.
    pub async fn allocate(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        n: usize,
    ) -> Result<ContainerAllocateResponse> {
        let (plugin, in_use) = {
            let st = self.inner.state();
            let plugin = st
                .plugins
                .get(resource)
                .map(|p| p.info.clone())
                .ok_or_else(|| Error::NotRegistered(resource.to_string()))?;
            (plugin, in_use(&st, resource))
        };
        let available: Vec<String> = plugin
            .devices
            .iter()
            .filter(|d| d.health == HEALTHY && !in_use.contains(&d.id))
            .map(|d| d.id.clone())
            .collect();
        if available.len() < n {
            return Err(Error::NotEnoughDevices {
                resource: resource.to_string(),
                wanted: n,
                free: available.len(),
            });
        }
        let mut client = self.client(&plugin).await?;
        let offered = plugin
            .options
            .as_ref()
            .is_some_and(|o| o.get_preferred_allocation_available);
        let mut ids: Vec<String> = available.iter().take(n).cloned().collect();
        if offered {
            let resp = client
                .get_preferred_allocation(PreferredAllocationRequest {
                    container_requests: vec![ContainerPreferredAllocationRequest {
                        available_device_i_ds: available.clone(),
                        must_include_device_i_ds: Vec::new(),
                        allocation_size: n as i32,
                    }],
                })
                .await
                .map_err(rpc("GetPreferredAllocation", resource))?
                .into_inner();
            let preferred = resp
                .container_responses
                .into_iter()
                .next()
                .map(|c| c.device_i_ds)
                .unwrap_or_default();
            // Like the kubelet, use the preference only when it is a valid answer.
            if preferred.len() == n && preferred.iter().all(|id| available.contains(id)) {
                ids = preferred;
            }
        }
        self.allocate_ids_with(&mut client, namespace, pod, container, resource, ids)
            .await
    }

    /// Calls `Allocate` for exactly `ids` (whatever their health or use) and records them for the container.
    pub async fn allocate_ids(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: &[&str],
    ) -> Result<ContainerAllocateResponse> {
        let plugin = self
            .plugin(resource)
            .ok_or_else(|| Error::NotRegistered(resource.to_string()))?;
        let mut client = self.client(&plugin).await?;
        let ids = ids.iter().map(|s| s.to_string()).collect();
        self.allocate_ids_with(&mut client, namespace, pod, container, resource, ids)
            .await
    }

    async fn allocate_ids_with(
        &self,
        client: &mut DevicePluginClient<tonic::transport::Channel>,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: Vec<String>,
    ) -> Result<ContainerAllocateResponse> {
        let resp = client
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: ids.clone(),
                }],
            })
            .await
            .map_err(rpc("Allocate", resource))?
            .into_inner();
        let c = resp
            .container_responses
            .into_iter()
            .next()
            .ok_or_else(|| Error::Rpc {
                call: "Allocate",
                resource: resource.to_string(),
                status: Status::internal("no container response"),
            })?;
        {
            let mut st = self.inner.state();
            st.pods
                .entry((namespace.to_string(), pod.to_string()))
                .or_default()
                .entry(container.to_string())
                .or_default()
                .entry(resource.to_string())
                .or_default()
                .extend(ids);
        }
        self.inner.bump();
        Ok(c)
    }

    /// Forgets a pod's devices (the pod was deleted): PodResources stops listing them.
    pub async fn release_pod(&self, namespace: &str, pod: &str) {
        self.inner
            .state()
            .pods
            .remove(&(namespace.to_string(), pod.to_string()));
        self.inner.bump();
    }

    /// Device IDs of `resource` held by recorded pods.
    pub fn allocated(&self, resource: &str) -> BTreeSet<String> {
        in_use(&self.inner.state(), resource)
    }

    async fn client(
        &self,
        plugin: &RegisteredPlugin,
    ) -> Result<DevicePluginClient<tonic::transport::Channel>> {
        let ch = kubelet_api::unix::connect(self.inner.dir.join(&plugin.endpoint))
            .await
            .map_err(|source| Error::Dial {
                resource: plugin.resource.clone(),
                source,
            })?;
        Ok(DevicePluginClient::new(ch))
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

fn rpc(call: &'static str, resource: &str) -> impl FnOnce(Status) -> Error {
    let resource = resource.to_string();
    move |status| Error::Rpc {
        call,
        resource,
        status,
    }
}

fn in_use(st: &State, resource: &str) -> BTreeSet<String> {
    st.pods
        .values()
        .flat_map(|containers| containers.values())
        .filter_map(|c| c.get(resource))
        .flatten()
        .cloned()
        .collect()
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

fn serve_pod_resources(inner: &Arc<Inner>) -> Result<Served> {
    let path = &inner.pod_resources_socket;
    let incoming = kubelet_api::unix::bind(path).map_err(|source| Error::Io {
        what: format!("binding {}", path.display()),
        source,
    })?;
    Ok(Served::spawn(
        tonic::transport::Server::builder().add_service(PodResourcesListerServer::new(
            PodResourcesService(inner.clone()),
        )),
        incoming,
        "PodResources",
    ))
}

fn serve_registration(inner: &Arc<Inner>) -> Result<Served> {
    let path = inner
        .dir
        .join(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME);
    let incoming = kubelet_api::unix::bind(&path).map_err(|source| Error::Io {
        what: format!("binding {}", path.display()),
        source,
    })?;
    Ok(Served::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(RegistrationService(inner.clone()))),
        incoming,
        "Registration",
    ))
}

struct RegistrationService(Arc<Inner>);

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        if self.0.refuse_registrations.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "kubelet stand-in: refusing registrations",
            ));
        }
        if req.version != kubelet_api::deviceplugin::VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported device plugin API version {:?}",
                req.version
            )));
        }
        if !req.resource_name.contains('/') {
            return Err(Status::invalid_argument(format!(
                "invalid extended resource name {:?}",
                req.resource_name
            )));
        }
        if req.endpoint.is_empty() || req.endpoint.contains('/') {
            return Err(Status::invalid_argument(format!(
                "endpoint {:?} must be a file name in the device plugin directory",
                req.endpoint
            )));
        }
        let inner = self.0.clone();
        let mut st = inner.state();
        st.next_generation += 1;
        let generation = st.next_generation;
        *st.registrations
            .entry(req.resource_name.clone())
            .or_default() += 1;
        let watcher = tokio::spawn(watch_plugin(
            inner.clone(),
            req.resource_name.clone(),
            req.endpoint.clone(),
            generation,
        ));
        let info = RegisteredPlugin {
            resource: req.resource_name.clone(),
            endpoint: req.endpoint,
            options: req.options,
            devices: Vec::new(),
            updates: 0,
            connected: false,
        };
        // Replacing an entry drops (aborts) the previous registration's watcher, as the kubelet does.
        st.plugins.insert(
            req.resource_name,
            Plugin {
                info,
                generation,
                watcher,
            },
        );
        drop(st);
        inner.bump();
        Ok(Response::new(Empty {}))
    }
}

/// Dials a freshly registered plugin and follows its ListAndWatch stream.
async fn watch_plugin(inner: Arc<Inner>, resource: String, endpoint: String, generation: u64) {
    let update = |f: &mut dyn FnMut(&mut RegisteredPlugin)| {
        let mut st = inner.state();
        if let Some(p) = st.plugins.get_mut(&resource)
            && p.generation == generation
        {
            f(&mut p.info);
        }
        drop(st);
        inner.bump();
    };
    let result: Result<(), String> = async {
        let ch = kubelet_api::unix::connect(inner.dir.join(&endpoint))
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let mut client = DevicePluginClient::new(ch);
        let options = client
            .get_device_plugin_options(Empty {})
            .await
            .map_err(|e| format!("GetDevicePluginOptions: {e}"))?
            .into_inner();
        update(&mut |p| p.options = Some(options));
        let mut stream = client
            .list_and_watch(Empty {})
            .await
            .map_err(|e| format!("ListAndWatch: {e}"))?
            .into_inner();
        update(&mut |p| p.connected = true);
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|e| format!("ListAndWatch stream: {e}"))?
        {
            update(&mut |p| {
                p.devices = msg.devices.clone();
                p.updates += 1;
            });
        }
        Err("ListAndWatch stream ended".into())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%resource, "kubelet stand-in: plugin disconnected: {e}");
    }
    update(&mut |p| {
        p.connected = false;
        for d in &mut p.devices {
            d.health = UNHEALTHY.to_string();
        }
    });
}

struct PodResourcesService(Arc<Inner>);

impl PodResourcesService {
    fn pod(
        namespace: &str,
        name: &str,
        containers: &BTreeMap<String, ContainerRecord>,
    ) -> PodResources {
        PodResources {
            name: name.to_string(),
            namespace: namespace.to_string(),
            containers: containers
                .iter()
                .map(|(c, res)| ContainerResources {
                    name: c.clone(),
                    devices: res
                        .iter()
                        .map(|(r, ids)| ContainerDevices {
                            resource_name: r.clone(),
                            device_ids: ids.clone(),
                            topology: None,
                        })
                        .collect(),
                    cpu_ids: Vec::new(),
                    memory: Vec::new(),
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl PodResourcesLister for PodResourcesService {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let st = self.0.state();
        let pod_resources = st
            .pods
            .iter()
            .map(|((ns, name), c)| Self::pod(ns, name, c))
            .collect();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(
        &self,
        _request: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let st = self.0.state();
        let devices = st
            .plugins
            .iter()
            .map(|(r, p)| ContainerDevices {
                resource_name: r.clone(),
                device_ids: p
                    .info
                    .devices
                    .iter()
                    .filter(|d| d.health == HEALTHY)
                    .map(|d| d.id.clone())
                    .collect(),
                topology: None,
            })
            .collect();
        Ok(Response::new(AllocatableResourcesResponse {
            devices,
            cpu_ids: Vec::new(),
            memory: Vec::new(),
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let req = request.into_inner();
        let st = self.0.state();
        match st
            .pods
            .get(&(req.pod_namespace.clone(), req.pod_name.clone()))
        {
            Some(c) => Ok(Response::new(GetPodResourcesResponse {
                pod_resources: Some(Self::pod(&req.pod_namespace, &req.pod_name, c)),
            })),
            None => Err(Status::not_found(format!(
                "pod {}/{} not found",
                req.pod_namespace, req.pod_name
            ))),
        }
    }
}
