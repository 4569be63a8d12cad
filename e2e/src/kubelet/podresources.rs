//! The PodResources lister (`List`, `Get`, `GetAllocatableResources`), answered from the stand-in's records.

use std::collections::BTreeMap;
use std::sync::Arc;

use kubelet_api::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kubelet_api::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use kubelet_api::tonic::{self, Request, Response, Status};

use super::served::Served;
use super::{ContainerRecord, Error, HEALTHY, Inner, Result};

pub(super) fn serve_pod_resources(inner: &Arc<Inner>) -> Result<Served> {
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

struct PodResourcesService(Arc<Inner>);

/// The PodResources answer for one pod: its containers with their devices per resource. Public for the other
/// PodResources stand-ins of the workspace's tests (the CNI's, with its `Get` modes).
pub fn pod_resources(
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
            .map(|((ns, name), c)| pod_resources(ns, name, c))
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
                pod_resources: Some(pod_resources(&req.pod_namespace, &req.pod_name, c)),
            })),
            None => Err(Status::not_found(format!(
                "pod {}/{} not found",
                req.pod_namespace, req.pod_name
            ))),
        }
    }
}
