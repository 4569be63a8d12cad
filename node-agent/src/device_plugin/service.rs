//! The kubelet device plugin API v1beta1 of one resource, for one server generation: thin handlers over the
//! resource's [`DevicePool`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kubelet_api::deviceplugin::device_plugin_server::DevicePlugin;
use kubelet_api::deviceplugin::{
    AllocateRequest, AllocateResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::pool::DevicePool;
use crate::metrics::ResourceLabel;

/// What we tell the kubelet at registration and on GetDevicePluginOptions.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        // The host link of a pod without a network of ours is made then (see crate::allocator).
        pre_start_required: true,
        get_preferred_allocation_available: true,
    }
}

pub struct DevicePluginService {
    pub pool: Arc<DevicePool>,
    /// Cancelled when this server generation ends (a kubelet restart, the resource stopping).
    pub generation: CancellationToken,
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
impl DevicePlugin for DevicePluginService {
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
        let gauge = self
            .pool
            .metrics()
            .list_and_watch_streams
            .get_or_create(&ResourceLabel::new(&self.pool.name()))
            .clone();
        gauge.inc();
        let guard = StreamGuard(gauge);
        // Ends with this server generation, so a kubelet restart never leaves a stream behind.
        let stream = WatchStream::new(self.pool.devices())
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
        let container_responses = self.pool.preferred(request.into_inner().container_requests);
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            container_responses.push(self.pool.allocate(&req.devices_ids).await?);
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        self.pool
            .pre_start(&request.into_inner().devices_ids)
            .await?;
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
