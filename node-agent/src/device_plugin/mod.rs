//! One kubelet device plugin per resource, in the shape of the SR-IOV device plugin's `server.go` / pool /
//! allocator split:
//!
//! - [`pool`]: the resource's devices, their health, preferred allocation and Allocate's bookkeeping.
//! - [`service`]: the device plugin API v1beta1 handlers of one server generation, over the pool.
//! - [`registration`]: serve a generation, register it with the kubelet, again after a kubelet restart.
//! - [`dir`]: the kubelet's device plugin directory, watched by socket identity.
//! - [`kubelet`]: whether a kubelet answers on its socket (a dead one leaves the file behind).
//!
//! [`ResourceServer`] is the only handle the agent holds: start, apply a changed config, stop. Nothing else
//! reaches into the server.

pub mod dir;
pub mod kubelet;
pub mod pool;
pub mod registration;
pub mod service;

use macvtap_core::ResourceConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::ResourceLabel;
pub use dir::DevicePluginDir;
pub use pool::{DevicePool, PoolInputs};
pub use registration::socket_name;

/// A served resource: its pool, its server and registration.
pub struct ResourceServer {
    config: watch::Sender<ResourceConfig>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ResourceServer {
    pub fn start(
        cfg: ResourceConfig,
        inputs: PoolInputs,
        dir: DevicePluginDir,
        parent: &CancellationToken,
    ) -> Self {
        let cancel = parent.child_token();
        let (config, config_rx) = watch::channel(cfg);
        let task = tokio::spawn(run(config_rx, inputs, dir, cancel.clone()));
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
    config: watch::Receiver<ResourceConfig>,
    inputs: PoolInputs,
    dir: DevicePluginDir,
    cancel: CancellationToken,
) {
    let (pool, devices_task) = DevicePool::start(config, inputs, cancel.clone());
    let name = pool.name();
    registration::run(pool.clone(), dir, cancel).await;
    let _ = devices_task.await;
    pool.metrics()
        .healthy_devices
        .get_or_create(&ResourceLabel::new(&name))
        .set(0);
    pool.states().remove(&name);
    tracing::info!(resource = %name, "resource stopped");
}
