//! One kubelet device plugin per resource: a gRPC server on `<dir>/macvtap-<name>.sock`, registered with the
//! kubelet after it serves, and served again + re-registered whenever the kubelet restarts.
//!
//! A kubelet restart removes every socket in the directory and creates `kubelet.sock` again. The runner notices
//! either its own socket vanishing or `kubelet.sock` changing identity ([`DirState`]), stops the old server
//! (which also ends its ListAndWatch streams, so none leak), binds a new one and registers again.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use crate::gc::CleanupReport;
use crate::metrics::ResourceLabel;
use crate::netmon::{self, LinkSnapshot};
use crate::original;
use crate::shared::{DirState, Shared};

/// Socket file name of a resource's plugin, relative to the device plugin directory.
pub fn socket_name(resource: &str) -> String {
    format!("macvtap-{resource}.sock")
}

/// The slot of `device_id` in `resource`, if it is one of its IDs (`<name>Mvp<i>`, no leading zeros).
pub fn slot_of(resource: &str, device_id: &str) -> Option<u32> {
    let rest = device_id.strip_prefix(resource)?.strip_prefix("Mvp")?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
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
        let mode: macvtap_link::MacvtapMode = cfg
            .mode
            .as_str()
            .parse()
            .map_err(|e: macvtap_link::UnknownMode| Status::invalid_argument(e.to_string()))?;
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let mut devices = Vec::new();
            for id in &req.devices_ids {
                let result = self.allocate_one(&cfg, id, mode).await;
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

impl PluginService {
    /// Creates (or recreates) the host link of one device ID; returns its `/dev/tapN`.
    async fn allocate_one(
        &self,
        cfg: &ResourceConfig,
        id: &str,
        mode: macvtap_link::MacvtapMode,
    ) -> Result<String, Status> {
        match slot_of(&cfg.name, id) {
            Some(slot) if slot < cfg.capacity => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "device {id:?} is not one of resource {}'s {} devices",
                    cfg.name, cfg.capacity
                )));
            }
        }
        // One link change at a time (Allocate, adoption, cleanup): the tap answered is the link left in place.
        let _ops = self.shared.link_ops.lock().await;
        // Recorded before the link exists: cleanup must not race a link that is being created.
        self.shared.note_allocation(id);
        let started = Instant::now();
        let netlink = &self.shared.netlink;
        let mut result = netlink.create_macvtap(&cfg.lower_device, id, mode).await;
        if let Err(macvtap_link::Error::NotOurs { .. }) = &result
            && self.adopt_originals_link(cfg, id).await
        {
            // Ours now: recreated like any stale link of ours, as the original does on Allocate.
            result = netlink.create_macvtap(&cfg.lower_device, id, mode).await;
        }
        let link = result.map_err(|e| match e {
            macvtap_link::Error::LowerDeviceNotFound(_) => Status::failed_precondition(format!(
                "resource {}: lower device {:?} does not exist on this node",
                cfg.name, cfg.lower_device
            )),
            macvtap_link::Error::NotOurs { .. } => {
                Status::already_exists(format!("resource {}, device {id}: {e}", cfg.name))
            }
            other => Status::internal(format!(
                "resource {}, device {id}: creating the {mode} macvtap link on {}: {other}",
                cfg.name, cfg.lower_device
            )),
        })?;
        self.shared.note_allocation(id);
        tracing::info!(resource = %cfg.name, device = %id, link = %link.name, ifindex = link.index,
            elapsed_us = started.elapsed().as_micros() as u64, "allocated");
        Ok(link.tap_path().display().to_string())
    }

    /// Adopts the host link named for `id` if it is the original's link for it (see [`crate::original`]).
    async fn adopt_originals_link(&self, cfg: &ResourceConfig, id: &str) -> bool {
        let handle = self.shared.netlink.handle();
        let name = macvtap_link::host_link_name(id);
        let (Ok(Some(link)), Ok(lower)) = (
            netmon::read_link(handle, &name).await,
            netmon::read_link(handle, &cfg.lower_device).await,
        ) else {
            return false;
        };
        if !original::is_originals_link(&link, id, lower.as_ref()) {
            return false;
        }
        match original::adopt(&self.shared.netlink, &link, id).await {
            Ok(()) => {
                self.shared.metrics.links_adopted.inc();
                true
            }
            Err(e) => {
                tracing::warn!(resource = %cfg.name, device = %id, "adopting the original's link: {e}");
                false
            }
        }
    }
}

/// How willing GetPreferredAllocation is to offer a slot, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotRank {
    /// No host link for it and no pod holding it.
    Free,
    /// A host link of ours or the original's is still there: a stale one, or an Allocate whose pod has not been
    /// set up yet. Allocate would replace it, so it is offered only after free slots.
    LinkPresent,
    /// PodResources says a pod holds it (the kubelet offered it anyway, e.g. after losing track).
    Held,
    /// Its host link name is taken by a link that is not ours: Allocate would refuse it.
    Blocked,
}

/// The rank of `id` of `cfg` given the host links and the latest cleanup report.
pub fn slot_rank(
    cfg: &ResourceConfig,
    id: &str,
    links: &LinkSnapshot,
    cleanup: &CleanupReport,
) -> SlotRank {
    let link = links.get(&macvtap_link::host_link_name(id));
    match link {
        Some(l)
            if crate::gc::our_device_id(l) != Some(id)
                && !original::is_originals_link(l, id, links.get(&cfg.lower_device)) =>
        {
            SlotRank::Blocked
        }
        _ if cleanup.is_held(&cfg.name, id) => SlotRank::Held,
        Some(_) => SlotRank::LinkPresent,
        None => SlotRank::Free,
    }
}

/// GetPreferredAllocation: the required IDs first, then by [`SlotRank`] (free slots before slots whose host link
/// is still there, held or blocked ones last), lowest slot first within a rank, so allocations stay compact and
/// predictable and a slot whose link may be in use is not offered while others are free.
pub fn preferred(
    resource: &str,
    available: &[String],
    must: &[String],
    size: usize,
    rank: impl Fn(&str) -> SlotRank,
) -> Vec<String> {
    let mut out: Vec<String> = must.iter().take(size).cloned().collect();
    let mut rest: Vec<(SlotRank, u32, &String)> = available
        .iter()
        .filter(|id| !out.contains(id))
        .filter_map(|id| slot_of(resource, id).map(|s| (rank(id), s, id)))
        .collect();
    rest.sort();
    out.extend(
        rest.into_iter()
            .map(|(_, _, id)| id.clone())
            .take(size.saturating_sub(out.len())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::HostLink;
    use std::collections::BTreeMap;

    #[test]
    fn slots_parse_strictly() {
        assert_eq!(slot_of("dp", "dpMvp0"), Some(0));
        assert_eq!(slot_of("dp", "dpMvp17"), Some(17));
        assert_eq!(slot_of("dp", "dpMvp017"), None);
        assert_eq!(slot_of("dp", "dpMvp"), None);
        assert_eq!(slot_of("dp", "otherMvp1"), None);
        assert_eq!(slot_of("dp", "dpMvp-1"), None);
    }

    #[test]
    fn preferred_takes_required_then_lowest() {
        let avail: Vec<String> = ["dpMvp10", "dpMvp2", "dpMvp7", "dpMvp3"]
            .map(String::from)
            .into();
        let got = preferred("dp", &avail, &["dpMvp7".into()], 3, |_| SlotRank::Free);
        assert_eq!(got, vec!["dpMvp7", "dpMvp2", "dpMvp3"]);
    }

    #[test]
    fn preferred_offers_slots_with_a_lingering_link_last() {
        let cfg = ResourceConfig {
            name: "dp".into(),
            lower_device: "eth1".into(),
            mode: Default::default(),
            capacity: 6,
            pool: None,
        };
        let mut eth1 = HostLink {
            index: 2,
            name: "eth1".into(),
            kind: None,
            admin_up: true,
            oper_up: true,
            loopback: false,
            master: None,
            alias: None,
            parent: None,
            parent_netnsid: None,
        };
        let macvtap = |id: &str, index: u32, alias: Option<String>| HostLink {
            index,
            name: macvtap_link::host_link_name(id),
            kind: Some("macvtap".into()),
            parent: Some(2),
            alias,
            ..eth1.clone()
        };
        let mut links = BTreeMap::new();
        // dpMvp0: the original's link; dpMvp1: ours, stale; dpMvp2: a foreign link with our scheme name.
        for l in [
            macvtap("dpMvp0", 10, None),
            macvtap("dpMvp1", 11, Some(macvtap_link::ownership_alias("dpMvp1"))),
            macvtap("dpMvp2", 12, Some("someone-else".into())),
        ] {
            links.insert(l.name.clone(), l);
        }
        eth1.index = 2;
        links.insert("eth1".into(), eth1);
        let links: LinkSnapshot = Arc::new(links);
        let cleanup = CleanupReport {
            held: Some([("dp".to_string(), ["dpMvp3".to_string()].into())].into()),
            skipped: None,
        };
        let rank = |id: &str| slot_rank(&cfg, id, &links, &cleanup);
        assert_eq!(rank("dpMvp0"), SlotRank::LinkPresent);
        assert_eq!(rank("dpMvp1"), SlotRank::LinkPresent);
        assert_eq!(rank("dpMvp2"), SlotRank::Blocked);
        assert_eq!(rank("dpMvp3"), SlotRank::Held);
        assert_eq!(rank("dpMvp4"), SlotRank::Free);
        let all: Vec<String> = (0..6).map(|i| format!("dpMvp{i}")).collect();
        assert_eq!(
            preferred("dp", &all, &[], 6, rank),
            ["dpMvp4", "dpMvp5", "dpMvp0", "dpMvp1", "dpMvp3", "dpMvp2"]
        );
        assert_eq!(preferred("dp", &all, &[], 1, rank), ["dpMvp4"]);
    }

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
            loopback: false,
            master: None,
            alias: None,
            parent: None,
            parent_netnsid: None,
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
