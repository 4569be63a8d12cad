//! One kubelet device plugin per resource: a gRPC server on `<dir>/macvtap-<name>.sock`, registered with the
//! kubelet after it serves, and served again + re-registered whenever the kubelet restarts.
//!
//! A kubelet restart removes every socket in the directory and creates `kubelet.sock` again. The runner notices
//! either its own socket vanishing or `kubelet.sock` changing identity ([`DirState`]), stops the old server
//! (which also ends its ListAndWatch streams, so none leak), binds a new one and registers again.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kubelet_api::deviceplugin::device_plugin_server::{DevicePlugin, DevicePluginServer};
use kubelet_api::deviceplugin::registration_client::RegistrationClient;
use kubelet_api::deviceplugin::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, DeviceSpec, Empty,
    ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};
use macvtap_api::ResourceConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::allocator::{allocate_one, preferred, slot_rank};
use crate::metrics::ResourceLabel;
use crate::netmon::LinkSnapshot;
use crate::shared::{DirState, Shared};

/// Socket file name of a resource's plugin, relative to the device plugin directory.
pub fn socket_name(resource: &str) -> String {
    format!("macvtap-{resource}.sock")
}

/// The device list advertised for `cfg` given the host links: `capacity` synthetic IDs, all Healthy while the
/// lower device exists and is up, all Unhealthy otherwise.
pub fn devices_for(cfg: &ResourceConfig, links: &LinkSnapshot) -> Vec<Device> {
    let healthy = links.get(&cfg.lower_device).is_some_and(|l| l.healthy());
    let health = if healthy {
        kubelet_api::deviceplugin::HEALTHY
    } else {
        kubelet_api::deviceplugin::UNHEALTHY
    };
    (0..cfg.capacity)
        .map(|i| Device {
            id: macvtap_link::device_id(&cfg.name, i),
            health: health.to_string(),
            topology: None,
        })
        .collect()
}

/// A running resource: its plugin server, registration and device list.
pub struct ResourcePlugin {
    config: watch::Sender<ResourceConfig>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ResourcePlugin {
    pub fn start(shared: Arc<Shared>, cfg: ResourceConfig, parent: &CancellationToken) -> Self {
        let cancel = parent.child_token();
        let (config, config_rx) = watch::channel(cfg);
        let task = tokio::spawn(run(shared, config_rx, cancel.clone()));
        Self {
            config,
            cancel,
            task,
        }
    }

    /// Applies a changed capacity, mode or lower device live: ListAndWatch pushes the new list.
    pub fn update(&self, cfg: ResourceConfig) {
        self.config.send_if_modified(|c| {
            if *c == cfg {
                false
            } else {
                *c = cfg;
                true
            }
        });
    }

    pub fn config(&self) -> ResourceConfig {
        self.config.borrow().clone()
    }

    /// Stops serving: streams end, the socket is removed. Links are left alone.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    shared: Arc<Shared>,
    config: watch::Receiver<ResourceConfig>,
    cancel: CancellationToken,
) {
    let name = config.borrow().name.clone();
    let label = ResourceLabel::new(&name);
    let (devices_tx, devices_rx) = watch::channel(Vec::new());
    let devices_task = tokio::spawn(follow_devices(
        shared.clone(),
        config.clone(),
        devices_tx,
        cancel.clone(),
    ));
    let socket = shared.device_plugin_dir.join(socket_name(&name));
    let mut dir = shared.dir.clone();
    'serve: while !cancel.is_cancelled() {
        let generation = cancel.child_token();
        let (ino, mut server) = match serve(&shared, &socket, &config, &devices_rx, &generation) {
            Ok(served) => {
                shared.set_runtime(&name, |r| r.serving = true);
                served
            }
            Err(e) => {
                let msg = format!("serving {}: {e}", socket.display());
                tracing::error!(resource = %name, "{msg}");
                shared.set_runtime(&name, |r| {
                    r.serving = false;
                    r.registered = false;
                    r.last_error = Some(msg.clone());
                });
                tokio::select! {
                    _ = cancel.cancelled() => break 'serve,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'serve,
                }
            }
        };
        let mut registered_with: Option<u64> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Backoff for a kubelet.sock nobody answers on (a kubelet that is down): 0.5 s doubling to 5 s.
        let mut backoff = Duration::from_millis(500);
        loop {
            let state: DirState = dir.borrow_and_update().clone();
            // The directory scan only wakes us; the file itself says whether our socket is still there (a scan
            // taken before our bind would not list it yet).
            if crate::shared::socket_id(&socket) != Some(ino) {
                tracing::info!(resource = %name, "plugin socket removed (kubelet restart?); serving again");
                break;
            }
            if let Some(kubelet) = state.kubelet
                && registered_with != Some(kubelet)
                && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
            {
                match register(&shared, &name).await {
                    Ok(()) => {
                        tracing::info!(resource = %name, "registered with the kubelet");
                        shared.metrics.registrations.get_or_create(&label).inc();
                        shared.set_runtime(&name, |r| {
                            r.registered = true;
                            r.last_error = None;
                        });
                        registered_with = Some(kubelet);
                        retry_at = None;
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        let msg = format!("registering with the kubelet: {e}");
                        tracing::warn!(resource = %name, "{msg}");
                        shared
                            .metrics
                            .registration_failures
                            .get_or_create(&label)
                            .inc();
                        shared.set_runtime(&name, |r| {
                            r.registered = false;
                            r.last_error = Some(msg.clone());
                        });
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            }
            if state.kubelet.is_none() && registered_with.is_some() {
                registered_with = None;
                shared.set_runtime(&name, |r| r.registered = false);
            }
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    generation.cancel();
                    remove_socket_if(&socket, ino);
                    break 'serve;
                }
                // The directory watcher ends only at shutdown, possibly before this task sees the cancel: the
                // socket must go either way.
                r = dir.changed() => if r.is_err() {
                    generation.cancel();
                    remove_socket_if(&socket, ino);
                    break 'serve;
                },
                // The server ended without being asked to: serve again on a fresh socket.
                r = &mut server => {
                    let msg = match r {
                        Ok(Err(e)) => format!("device plugin server stopped: {e}"),
                        _ => "device plugin server stopped".to_string(),
                    };
                    tracing::error!(resource = %name, "{msg}; serving again");
                    shared.set_runtime(&name, |r| r.last_error = Some(msg.clone()));
                    break;
                }
                _ = retry => {}
            }
        }
        generation.cancel();
        shared.set_runtime(&name, |r| {
            r.serving = false;
            r.registered = false;
        });
        remove_socket_if(&socket, ino);
    }
    let _ = devices_task.await;
    shared.metrics.healthy_devices.get_or_create(&label).set(0);
    shared.remove_runtime(&name);
    tracing::info!(resource = %name, "resource stopped");
}

/// Removes the socket only if it is still the one we bound (a new kubelet may have put something else there).
fn remove_socket_if(path: &Path, ino: u64) {
    if crate::shared::socket_id(path) == Some(ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds the socket and spawns the server of one generation; returns the socket's identity and the server task.
fn serve(
    shared: &Arc<Shared>,
    socket: &Path,
    config: &watch::Receiver<ResourceConfig>,
    devices: &watch::Receiver<Vec<Device>>,
    generation: &CancellationToken,
) -> std::io::Result<(u64, JoinHandle<Result<(), String>>)> {
    let incoming = kubelet_api::unix::bind(socket)?;
    let ino = crate::shared::socket_id(socket)
        .ok_or_else(|| std::io::Error::other("socket vanished right after bind"))?;
    let svc = PluginService {
        shared: shared.clone(),
        config: config.clone(),
        devices: devices.clone(),
        generation: generation.clone(),
    };
    let stop = generation.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(svc))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    });
    // The kubelet is told to dial us only after this socket accepts connections (bind + listen are done).
    shared.dir_rescan();
    Ok((ino, server))
}

async fn register(shared: &Shared, name: &str) -> Result<(), String> {
    let kubelet = shared
        .device_plugin_dir
        .join(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME);
    let channel =
        tokio::time::timeout(Duration::from_secs(5), kubelet_api::unix::connect(&kubelet))
            .await
            .map_err(|_| "timed out dialing kubelet.sock".to_string())?
            .map_err(|e| format!("dialing {}: {e}", kubelet.display()))?;
    let mut client = RegistrationClient::new(channel);
    let req = RegisterRequest {
        version: kubelet_api::deviceplugin::VERSION.into(),
        endpoint: socket_name(name),
        resource_name: macvtap_api::extended_resource_name(name),
        options: Some(options()),
    };
    tokio::time::timeout(Duration::from_secs(5), client.register(req))
        .await
        .map_err(|_| "Register timed out".to_string())?
        .map_err(|s| format!("Register: {}", s.message()))?;
    Ok(())
}

fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Recomputes the device list on config or link changes; the latest list is what ListAndWatch streams send.
async fn follow_devices(
    shared: Arc<Shared>,
    mut config: watch::Receiver<ResourceConfig>,
    devices: watch::Sender<Vec<Device>>,
    cancel: CancellationToken,
) {
    let mut links = shared.links.clone();
    loop {
        let cfg = config.borrow_and_update().clone();
        let snapshot = links.borrow_and_update().clone();
        let list = devices_for(&cfg, &snapshot);
        let healthy = list
            .iter()
            .filter(|d| d.health == kubelet_api::deviceplugin::HEALTHY)
            .count();
        shared
            .metrics
            .healthy_devices
            .get_or_create(&ResourceLabel::new(&cfg.name))
            .set(healthy as i64);
        let lower = snapshot.get(&cfg.lower_device);
        shared.set_runtime(&cfg.name, |r| {
            r.healthy = healthy as u32;
            r.lower_present = lower.is_some();
            r.lower_up = lower.is_some_and(|l| l.oper_up);
        });
        devices.send_if_modified(|cur| {
            if *cur == list {
                false
            } else {
                tracing::info!(resource = %cfg.name, capacity = cfg.capacity, healthy, lower = %cfg.lower_device, "device list changed");
                *cur = list;
                true
            }
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = config.changed() => if r.is_err() { return },
            r = links.changed() => if r.is_err() { return },
        }
    }
}

struct PluginService {
    shared: Arc<Shared>,
    config: watch::Receiver<ResourceConfig>,
    devices: watch::Receiver<Vec<Device>>,
    generation: CancellationToken,
}

/// Decrements the open-streams gauge when a ListAndWatch stream is dropped.
struct StreamGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type ListAndWatchStream =
    Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListAndWatchStream;

    async fn list_and_watch(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let name = self.config.borrow().name.clone();
        let gauge = self
            .shared
            .metrics
            .list_and_watch_streams
            .get_or_create(&ResourceLabel::new(&name))
            .clone();
        gauge.inc();
        let guard = StreamGuard(gauge);
        // Ends with this server generation, so a kubelet restart never leaves a stream behind.
        let stream = WatchStream::new(self.devices.clone())
            .map(move |devices| {
                let _ = &guard;
                Ok(ListAndWatchResponse { devices })
            })
            .take_until(self.generation.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let cfg = self.config.borrow().clone();
        let links = self.shared.links.borrow().clone();
        let cleanup = self.shared.cleanup.borrow().clone();
        let rank = |id: &str| slot_rank(&cfg, id, &links, &cleanup);
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|req| ContainerPreferredAllocationResponse {
                device_i_ds: preferred(
                    &cfg.name,
                    &req.available_device_i_ds,
                    &req.must_include_device_i_ds,
                    req.allocation_size.max(0) as usize,
                    rank,
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let cfg = self.config.borrow().clone();
        let label = ResourceLabel::new(&cfg.name);
        let mode = cfg.mode;
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let mut devices = Vec::new();
            for id in &req.devices_ids {
                let result = allocate_one(&self.shared, &cfg, id, mode).await;
                match result {
                    Ok(tap) => {
                        self.shared.metrics.allocations.get_or_create(&label).inc();
                        devices.push(DeviceSpec {
                            container_path: tap.clone(),
                            host_path: tap,
                            permissions: "rw".into(),
                        });
                    }
                    Err(status) => {
                        self.shared
                            .metrics
                            .allocation_failures
                            .get_or_create(&label)
                            .inc();
                        let msg = status.message().to_string();
                        tracing::warn!(resource = %cfg.name, device = %id, "Allocate failed: {msg}");
                        self.shared
                            .set_runtime(&cfg.name, |r| r.last_error = Some(msg.clone()));
                        return Err(status);
                    }
                }
            }
            container_responses.push(ContainerAllocateResponse {
                envs: Default::default(),
                mounts: Vec::new(),
                devices,
                annotations: Default::default(),
                cdi_devices: Vec::new(),
            });
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::HostLink;
    use std::collections::BTreeMap;

    #[test]
    fn devices_follow_the_lower_device() {
        let cfg = ResourceConfig {
            name: "dp".into(),
            lower_device: "eth0".into(),
            mode: Default::default(),
            capacity: 3,
            pool: None,
        };
        let mut links = BTreeMap::new();
        let ids = |d: &[Device]| d.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        let none = devices_for(&cfg, &Arc::new(links.clone()));
        assert_eq!(ids(&none), vec!["dpMvp0", "dpMvp1", "dpMvp2"]);
        assert!(none.iter().all(|d| d.health == "Unhealthy"));
        let mut eth0 = HostLink {
            index: 2,
            name: "eth0".into(),
            kind: None,
            admin_up: true,
            oper_up: true,
            ..Default::default()
        };
        links.insert("eth0".to_string(), eth0.clone());
        assert!(
            devices_for(&cfg, &Arc::new(links.clone()))
                .iter()
                .all(|d| d.health == "Healthy")
        );
        eth0.oper_up = false;
        links.insert("eth0".to_string(), eth0);
        assert!(
            devices_for(&cfg, &Arc::new(links))
                .iter()
                .all(|d| d.health == "Unhealthy")
        );
    }
}
