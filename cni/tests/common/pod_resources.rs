//! A tiny kubelet PodResources v1 server for the CNI tests: which pod holds which devices, how `Get` behaves
//! (answering, as an older kubelet without it, or with the feature gate off), and the kubelet's rate limit in front
//! of every call, on by default. Served on its own thread and current-thread runtime; stopped on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use kubelet_api::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kubelet_api::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, GetPodResourcesRequest,
    GetPodResourcesResponse, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
};
use kubelet_api::tonic::{self, Request, Response, Status};
use macvtap_e2e::kubelet::pod_resources;

/// How the stand-in answers `Get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetMode {
    /// As a kubelet >= 1.34 (or with the gate on): the pod, or Unknown "pod ... not found".
    #[default]
    Answer,
    /// As a kubelet that predates `Get`: Unimplemented.
    Unimplemented,
    /// As a kubelet with `KubeletPodResourcesGet` off: Unknown "PodResources API Get method disabled".
    Disabled,
}

/// A token bucket in front of every call, as the kubelet's (`pkg/kubelet/apis/podresources/grpc/ratelimit.go`: a
/// `golang.org/x/time/rate` limiter in a unary interceptor): `qps` tokens a second up to `burst`, full at the start;
/// a call finding no token is refused with `ResourceExhausted` "rejected by rate limit" before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub qps: f64,
    pub burst: f64,
}

impl RateLimit {
    /// The kubelet's defaults (`DefaultQPS`, `DefaultBurstTokens`).
    pub const KUBELET: RateLimit = RateLimit {
        qps: 100.0,
        burst: 10.0,
    };
    /// Never a token: every call refused.
    pub const EXHAUSTED: RateLimit = RateLimit {
        qps: 0.0,
        burst: 0.0,
    };
}

struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.limit.qps)
            .min(self.limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct State {
    /// (namespace, pod) → [(resource, device ID)], all in one container "compute".
    pods: BTreeMap<(String, String), Vec<(String, String)>>,
    get: GetMode,
    /// `None`: no limit.
    bucket: Option<Bucket>,
    /// Calls served (past the limiter).
    calls: Vec<&'static str>,
    /// Calls refused by the limiter.
    refused: Vec<&'static str>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            pods: BTreeMap::new(),
            get: GetMode::default(),
            bucket: Some(Bucket::new(RateLimit::KUBELET)),
            calls: Vec::new(),
            refused: Vec::new(),
        }
    }
}

impl State {
    /// The limiter's word on one `method` call: served (and recorded), or the kubelet's refusal.
    fn admit(&mut self, method: &'static str) -> Result<(), Status> {
        if self.bucket.as_mut().is_some_and(|b| !b.allow()) {
            self.refused.push(method);
            return Err(Status::resource_exhausted("rejected by rate limit"));
        }
        self.calls.push(method);
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct PodResourcesStandIn {
    socket: PathBuf,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PodResourcesStandIn {
    /// Serve on `socket` (its directory must exist).
    pub fn start(socket: &Path) -> Self {
        let shared = Shared::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let svc = PodResourcesListerServer::new(Service(shared.clone()));
        let path = socket.to_path_buf();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let incoming = kubelet_api::unix::bind(&path).unwrap();
                ready_tx.send(()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv().expect("PodResources stand-in started");
        Self {
            socket: socket.to_path_buf(),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Record `device_id` of `resource` as allocated to `namespace/pod`.
    pub fn grant(&self, namespace: &str, pod: &str, resource: &str, device_id: &str) {
        self.shared
            .state()
            .pods
            .entry((namespace.to_string(), pod.to_string()))
            .or_default()
            .push((resource.to_string(), device_id.to_string()));
    }

    pub fn set_get(&self, mode: GetMode) {
        self.shared.state().get = mode;
    }

    /// The kubelet's limiter (the default, [`RateLimit::KUBELET`]), another, or none; starts with a full bucket.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.shared.state().bucket = limit.map(Bucket::new);
    }

    /// The RPCs served so far ("Get", "List"), and forget them.
    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.shared.state().calls)
    }

    /// The RPCs refused by the rate limit so far, and forget them.
    pub fn take_refused(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.shared.state().refused)
    }
}

impl Drop for PodResourcesStandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Service(Shared);

fn record(namespace: &str, name: &str, devices: &[(String, String)]) -> PodResources {
    let mut by_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, id) in devices {
        by_resource.entry(r.clone()).or_default().push(id.clone());
    }
    pod_resources(
        namespace,
        name,
        &BTreeMap::from([("compute".into(), by_resource)]),
    )
}

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let mut st = self.0.state();
        st.admit("List")?;
        let pod_resources = st
            .pods
            .iter()
            .map(|((ns, name), d)| record(ns, name, d))
            .collect();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(
        &self,
        _request: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        self.0.state().admit("GetAllocatableResources")?;
        Err(Status::unimplemented("not in this stand-in"))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.0.state();
        st.admit("Get")?;
        match st.get {
            GetMode::Unimplemented => return Err(Status::unimplemented("unknown method Get")),
            GetMode::Disabled => {
                return Err(Status::unknown("PodResources API Get method disabled"));
            }
            GetMode::Answer => {}
        }
        match st
            .pods
            .get(&(req.pod_namespace.clone(), req.pod_name.clone()))
        {
            Some(d) => Ok(Response::new(GetPodResourcesResponse {
                pod_resources: Some(record(&req.pod_namespace, &req.pod_name, d)),
            })),
            None => Err(Status::unknown(format!(
                "pod {} in namespace {} not found",
                req.pod_name, req.pod_namespace
            ))),
        }
    }
}
