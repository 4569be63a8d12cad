//! The device pool of one resource: its `capacity` device IDs, their health (from the lower device's link
//! state), preferred allocation among them, and Allocate's bookkeeping (metrics, the resource's last error).

use std::sync::Arc;

use kubelet_api::deviceplugin::{
    ContainerAllocateResponse, ContainerPreferredAllocationRequest,
    ContainerPreferredAllocationResponse, Device, DeviceSpec,
};
use macvtap_core::ResourceConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::allocator::Allocator;
use crate::cleanup::CleanupReport;
use crate::metrics::{Metrics, ResourceLabel};
use crate::netmon::LinkSnapshot;
use crate::preferred::{preferred, slot_rank};
use crate::resource_state::ResourceStates;

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
            id: macvtap_core::device::device_id(&cfg.name, i),
            health: health.to_string(),
            topology: None,
        })
        .collect()
}

/// What a pool reads from and reports to the node.
#[derive(Clone)]
pub struct PoolInputs {
    pub links: watch::Receiver<LinkSnapshot>,
    /// Which devices pods hold, for preferred allocation.
    pub cleanup: watch::Receiver<CleanupReport>,
    pub allocator: Allocator,
    pub states: ResourceStates,
    pub metrics: Arc<Metrics>,
}

pub struct DevicePool {
    config: watch::Receiver<ResourceConfig>,
    devices: watch::Receiver<Vec<Device>>,
    inputs: PoolInputs,
}

impl DevicePool {
    /// The pool of the resource `config` describes; its device list follows config and link changes until
    /// `cancel` (the returned task).
    pub fn start(
        config: watch::Receiver<ResourceConfig>,
        inputs: PoolInputs,
        cancel: CancellationToken,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let (devices_tx, devices) = watch::channel(Vec::new());
        let task = tokio::spawn(follow_devices(
            inputs.clone(),
            config.clone(),
            devices_tx,
            cancel,
        ));
        let pool = Arc::new(Self {
            config,
            devices,
            inputs,
        });
        (pool, task)
    }

    pub fn name(&self) -> String {
        self.config.borrow().name.clone()
    }

    /// The latest device list, changing as config and links do: what ListAndWatch streams send.
    pub fn devices(&self) -> watch::Receiver<Vec<Device>> {
        self.devices.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inputs.metrics
    }

    pub fn states(&self) -> &ResourceStates {
        &self.inputs.states
    }

    /// GetPreferredAllocation, per container (see [`crate::preferred::preferred`]), over one snapshot of the
    /// links and the pods' devices.
    pub fn preferred(
        &self,
        requests: Vec<ContainerPreferredAllocationRequest>,
    ) -> Vec<ContainerPreferredAllocationResponse> {
        let cfg = self.config.borrow().clone();
        let links = self.inputs.links.borrow().clone();
        let cleanup = self.inputs.cleanup.borrow().clone();
        let rank = |id: &str| slot_rank(&cfg, id, &links, &cleanup);
        requests
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
            .collect()
    }

    /// Allocate of one container's device IDs: each one's tap index recorded, its `/dev/tapN` as the device.
    pub async fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, Status> {
        let cfg = self.config.borrow().clone();
        let label = ResourceLabel::new(&cfg.name);
        let metrics = &self.inputs.metrics;
        let mut devices = Vec::new();
        for id in ids {
            match self.inputs.allocator.allocate(&cfg, id).await {
                Ok(tap) => {
                    metrics.allocations.get_or_create(&label).inc();
                    devices.push(DeviceSpec {
                        container_path: tap.clone(),
                        host_path: tap,
                        permissions: "rw".into(),
                    });
                }
                Err(status) => {
                    metrics.allocation_failures.get_or_create(&label).inc();
                    let msg = status.message().to_string();
                    tracing::warn!(resource = %cfg.name, device = %id, "Allocate failed: {msg}");
                    self.inputs
                        .states
                        .update(&cfg.name, |r| r.last_error = Some(msg.clone()));
                    return Err(status);
                }
            }
        }
        Ok(ContainerAllocateResponse {
            envs: Default::default(),
            mounts: Vec::new(),
            devices,
            annotations: Default::default(),
            cdi_devices: Vec::new(),
        })
    }
}

impl DevicePool {
    /// PreStartContainer of one container's device IDs: the host link of each device no CNI ADD attached.
    pub async fn pre_start(&self, ids: &[String]) -> Result<(), Status> {
        let cfg = self.config.borrow().clone();
        for id in ids {
            if let Err(status) = self.inputs.allocator.pre_start(&cfg, id).await {
                let msg = status.message().to_string();
                tracing::warn!(resource = %cfg.name, device = %id, "PreStartContainer failed: {msg}");
                self.inputs
                    .states
                    .update(&cfg.name, |r| r.last_error = Some(msg.clone()));
                return Err(status);
            }
        }
        Ok(())
    }
}

/// Recomputes the device list on config or link changes, with the health it reports (metric, resource state).
async fn follow_devices(
    inputs: PoolInputs,
    mut config: watch::Receiver<ResourceConfig>,
    devices: watch::Sender<Vec<Device>>,
    cancel: CancellationToken,
) {
    let mut links = inputs.links.clone();
    loop {
        let cfg = config.borrow_and_update().clone();
        let snapshot = links.borrow_and_update().clone();
        let list = devices_for(&cfg, &snapshot);
        let healthy = list
            .iter()
            .filter(|d| d.health == kubelet_api::deviceplugin::HEALTHY)
            .count();
        inputs
            .metrics
            .healthy_devices
            .get_or_create(&ResourceLabel::new(&cfg.name))
            .set(healthy as i64);
        let lower = snapshot.get(&cfg.lower_device);
        inputs.states.update(&cfg.name, |r| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmon::tests::link;
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
        let mut eth0 = link(2, "eth0", None);
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
