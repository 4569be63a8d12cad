//! The Registration service: a plugin registers, the stand-in dials it back, asks its options and follows its
//! ListAndWatch stream; and the waits on what it saw.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubelet_api::deviceplugin::device_plugin_client::DevicePluginClient;
use kubelet_api::deviceplugin::registration_server::{Registration, RegistrationServer};
use kubelet_api::deviceplugin::{Empty, RegisterRequest};
use kubelet_api::tonic::{self, Request, Response, Status};

use super::served::Served;
use super::{Device, Error, Inner, KubeletStandIn, Plugin, RegisteredPlugin, Result, UNHEALTHY};

impl KubeletStandIn {
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
}

pub(super) fn serve_registration(inner: &Arc<Inner>) -> Result<Served> {
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
