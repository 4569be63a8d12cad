//! What the kubelet does for a device plugin when it admits a pod: pick free healthy devices (asking the plugin's
//! preference when offered), `Allocate`, and record the devices for PodResources; and forget them again.

use std::collections::BTreeSet;

use kubelet_api::deviceplugin::device_plugin_client::DevicePluginClient;
use kubelet_api::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, PreStartContainerRequest, PreferredAllocationRequest,
};
use kubelet_api::tonic::{self, Status};

use super::{Error, HEALTHY, KubeletStandIn, RegisteredPlugin, Result, State};

impl KubeletStandIn {
    /// Records `ids` of `resource` for a pod's container without calling `Allocate`, so PodResources lists them.
    pub fn record_pod(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: &[&str],
    ) {
        self.inner.state().record(
            namespace,
            pod,
            container,
            resource,
            ids.iter().map(|s| s.to_string()),
        );
        self.inner.bump();
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
        self.inner
            .state()
            .record(namespace, pod, container, resource, ids);
        self.inner.bump();
        Ok(c)
    }

    /// A pod without a network of ours, admitted and its container started: [`KubeletStandIn::allocate`], then
    /// [`KubeletStandIn::pre_start_container`] for the devices it got.
    pub async fn start_pod(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        n: usize,
    ) -> Result<ContainerAllocateResponse> {
        let resp = self
            .allocate(namespace, pod, container, resource, n)
            .await?;
        let ids = self.ids_of(namespace, pod, resource);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.pre_start_container(resource, &ids).await?;
        Ok(resp)
    }

    /// [`KubeletStandIn::start_pod`] with exactly `ids`.
    pub async fn start_pod_ids(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        resource: &str,
        ids: &[&str],
    ) -> Result<ContainerAllocateResponse> {
        let resp = self
            .allocate_ids(namespace, pod, container, resource, ids)
            .await?;
        self.pre_start_container(resource, ids).await?;
        Ok(resp)
    }

    /// The device IDs of `resource` recorded for a pod.
    pub fn ids_of(&self, namespace: &str, pod: &str, resource: &str) -> Vec<String> {
        let st = self.inner.state();
        st.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|containers| {
                containers
                    .values()
                    .flat_map(|c| c.get(resource).cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the kubelet does right before it starts a container holding `ids` of `resource` (after the pod's
    /// sandbox, so after its CNI ADD): `PreStartContainer`, when the plugin asked for it at registration. Whether
    /// it was called.
    pub async fn pre_start_container(&self, resource: &str, ids: &[&str]) -> Result<bool> {
        let plugin = self
            .plugin(resource)
            .ok_or_else(|| Error::NotRegistered(resource.to_string()))?;
        if !plugin
            .options
            .as_ref()
            .is_some_and(|o| o.pre_start_required)
        {
            return Ok(false);
        }
        let mut client = self.client(&plugin).await?;
        client
            .pre_start_container(PreStartContainerRequest {
                devices_ids: ids.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .map_err(rpc("PreStartContainer", resource))?;
        Ok(true)
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
