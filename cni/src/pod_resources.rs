//! "Does this pod hold this device?", asked of the kubelet's PodResources API (v1) before ADD touches anything.
//!
//! Why: `deviceID` comes from the NetworkAttachmentDefinition (Multus injects the allocated one, but a NAD may also
//! name any literal ID), and the agent's marker only proves the agent made a link, not for whom. The kubelet
//! recorded the allocation when it admitted the pod, before creating its sandbox, so at ADD time PodResources knows
//! it.
//!
//! How: `Get` for the one pod (beta, default on since Kubernetes 1.34); where the kubelet refuses it (older
//! kubelets: Unimplemented; feature gate off: Unknown "...Get method disabled"; pod unknown: Unknown/NotFound),
//! `List`, as Multus does. A call the kubelet refuses as over its rate limit (`ResourceExhausted`) is the same call
//! again after a jittered back-off ([`crate::backoff`]): one call per attempt, a `Get` refused as busy is retried as
//! `Get`. Fails closed: a socket that does not answer, a transport error, the deadline, or a kubelet still
//! rate-limiting after the back-off's budget is error 11 (try again later), never an unchecked attach. One gRPC
//! connection over the unix socket for all attempts, on a current-thread runtime; nothing is spawned beyond the
//! connection's own task; the runtime is the invocation's one ([`Runtime`]).
//!
//! PodResources has no pod UID: the pod is matched by namespace and name (the kubelet keeps one pod per name).

use std::path::Path;
use std::time::Duration;

use kubelet_api::podresources::pod_resources_lister_client::PodResourcesListerClient;
use kubelet_api::podresources::{GetPodResourcesRequest, ListPodResourcesRequest, PodResources};
use kubelet_api::tonic::{Code as GrpcCode, Status};

use macvtap_core::resource_of;

use crate::backoff::{self, Backoff};
use crate::config::CniArgs;
use crate::error::{CniError, Code};
use crate::netns::Runtime;

/// How long the whole question may take (connect, Get, List, waits on a busy kubelet) before ADD answers "try again
/// later".
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A List answer on a busy node can be large (Multus allows the same).
const MAX_MESSAGE: usize = 16 << 20;

/// The pod a call is for, from `CNI_ARGS` (set by the runtime and Multus, never by a NAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(u) = &self.uid {
            write!(f, " (uid {u})")?;
        }
        Ok(())
    }
}

impl PodRef {
    /// `Some` for a Kubernetes pod (`K8S_POD_NAMESPACE` and `K8S_POD_NAME`), `None` when neither is there; one
    /// without the other is error 4 (a half identity is never read as "not a pod").
    pub fn from_args(args: &CniArgs) -> Result<Option<PodRef>, CniError> {
        let get = |k| args.get(k).filter(|v| !v.is_empty()).map(str::to_string);
        match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
            (Some(namespace), Some(name)) => Ok(Some(PodRef {
                namespace,
                name,
                uid: get("K8S_POD_UID"),
            })),
            (None, None) if get("K8S_POD_UID").is_none() => Ok(None),
            _ => Err(CniError::new(
                Code::InvalidEnv,
                "CNI_ARGS names a Kubernetes pod only in part: K8S_POD_NAMESPACE and K8S_POD_NAME are both required",
                "",
            )),
        }
    }
}

/// Whether `pods` (a PodResources answer) shows `pod` holding `device_id` in a macvtap resource.
pub fn holds(pods: &[PodResources], pod: &PodRef, device_id: &str) -> bool {
    pods.iter()
        .filter(|p| p.namespace == pod.namespace && p.name == pod.name)
        .flat_map(|p| &p.containers)
        .flat_map(|c| &c.devices)
        // Macvtap resources only (ours and the original's: one prefix).
        .filter(|d| resource_of(&d.resource_name).is_some())
        .any(|d| d.device_ids.iter().any(|id| id == device_id))
}

/// The macvtap devices `pods` shows `pod` holding (for the refusal's details).
fn held(pods: &[PodResources], pod: &PodRef) -> Vec<String> {
    pods.iter()
        .filter(|p| p.namespace == pod.namespace && p.name == pod.name)
        .flat_map(|p| &p.containers)
        .flat_map(|c| &c.devices)
        .filter(|d| resource_of(&d.resource_name).is_some())
        .flat_map(|d| {
            d.device_ids
                .iter()
                .map(move |id| format!("{}={id}", d.resource_name))
        })
        .collect()
}

/// Ask the kubelet at `socket` whether `pod` holds `device_id`: `Ok` if it does, error 107 if it does not, error
/// 11 if the kubelet cannot be asked or stays busy.
/// On the invocation's runtime `rt`.
pub(crate) fn check(
    rt: &Runtime,
    socket: &Path,
    pod: &PodRef,
    device_id: &str,
) -> Result<(), CniError> {
    let question = format!(
        "whether pod {pod} holds deviceID {device_id:?} (kubelet PodResources at {})",
        socket.display()
    );
    let unreachable = |why: String| {
        CniError::new(
            Code::TryAgainLater,
            format!("cannot ask the kubelet {question}"),
            why,
        )
    };
    let pods = rt
        .block_on(async { tokio::time::timeout(DEADLINE, ask(socket, pod)).await })
        .map_err(|_| unreachable(format!("no answer within {DEADLINE:?}")))?
        .map_err(|e| match e {
            AskError::Unreachable(why) => unreachable(why),
            AskError::RateLimited {
                attempts,
                over,
                last,
            } => CniError::new(
                Code::TryAgainLater,
                format!(
                    "the kubelet rate-limited every call asking {question}: {attempts} attempts over {over:.1?}"
                ),
                last,
            ),
        })?;
    if holds(&pods, pod, device_id) {
        return Ok(());
    }
    let has = held(&pods, pod);
    Err(CniError::new(
        Code::NotAllocatedToPod,
        format!(
            "deviceID {device_id:?} is not allocated to pod {pod} (kubelet PodResources): refusing it, the device is left alone"
        ),
        if has.is_empty() {
            "the pod holds no macvtap device".to_string()
        } else {
            format!("the pod holds: {}", has.join(", "))
        },
    ))
}

/// Why the kubelet gave no answer.
#[derive(Debug)]
enum AskError {
    /// No socket, a transport error, or a status other than "busy".
    Unreachable(String),
    /// Every call within the back-off's budget was refused as over the rate limit (the last refusal in `last`).
    RateLimited {
        attempts: u32,
        over: Duration,
        last: String,
    },
}

/// The PodResources records to look at: `Get`'s one pod, or `List`'s all; calls refused as busy are retried.
async fn ask(socket: &Path, pod: &PodRef) -> Result<Vec<PodResources>, AskError> {
    let mut backoff = Backoff::new(backoff::BUDGET);
    let conn = kubelet_api::unix::connect_once(socket)
        .await
        .map_err(|e| AskError::Unreachable(e.to_string()))?;
    // The authority the kubelet itself uses towards gRPC servers on sockets; any is fine for a Go server.
    let origin = kubelet_api::tonic::codegen::http::Uri::from_static("http://localhost");
    let mut client = PodResourcesListerClient::with_origin(conn.clone(), origin)
        .max_decoding_message_size(MAX_MESSAGE);
    let answer = ask_on(&mut client, pod, &mut backoff).await;
    // The invocation's runtime goes on to netlink work: no GOAWAY from this connection in the middle of it.
    conn.close_now();
    answer
}

/// The calls themselves, on one connection.
async fn ask_on(
    client: &mut PodResourcesListerClient<kubelet_api::unix::Connection>,
    pod: &PodRef,
    backoff: &mut Backoff,
) -> Result<Vec<PodResources>, AskError> {
    let get = GetPodResourcesRequest {
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
    };
    // Once the kubelet refuses Get (not as busy: as not having it), List from then on.
    let mut list = false;
    loop {
        let refusal = if list {
            match client.list(ListPodResourcesRequest {}).await {
                Ok(r) => return Ok(answered(r.into_inner().pod_resources, backoff)),
                Err(s) => ("List", s),
            }
        } else {
            match client.get(get.clone()).await {
                Ok(r) => {
                    let pods = r.into_inner().pod_resources.into_iter().collect();
                    return Ok(answered(pods, backoff));
                }
                Err(s) if get_refused(&s) => {
                    eprintln!(
                        "macvtap: PodResources Get refused ({:?}: {}); asking List",
                        s.code(),
                        s.message()
                    );
                    list = true;
                    continue;
                }
                Err(s) => ("Get", s),
            }
        };
        let (method, s) = refusal;
        let why = format!("{method}: {:?}: {}", s.code(), s.message());
        if s.code() != GrpcCode::ResourceExhausted {
            return Err(AskError::Unreachable(why));
        }
        match backoff.refused() {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                return Err(AskError::RateLimited {
                    attempts: backoff.attempts(),
                    over: backoff.elapsed(),
                    last: why,
                });
            }
        }
    }
}

/// An answer, logged when it took retries (what a node admin looks for when pods start slowly).
fn answered(pods: Vec<PodResources>, backoff: &Backoff) -> Vec<PodResources> {
    if backoff.attempts() > 0 {
        eprintln!(
            "macvtap: PodResources answered after {} rate-limited calls over {:.1?}",
            backoff.attempts(),
            backoff.elapsed()
        );
    }
    pods
}

/// A `Get` answer that means "ask List instead" rather than "the kubelet is not answering".
fn get_refused(s: &Status) -> bool {
    matches!(
        s.code(),
        GrpcCode::Unimplemented | GrpcCode::Unknown | GrpcCode::NotFound
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cni_args;
    use kubelet_api::podresources::{ContainerDevices, ContainerResources};

    fn pod(ns: &str, name: &str, devices: &[(&str, &[&str])]) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: ns.into(),
            containers: vec![
                ContainerResources {
                    name: "sidecar".into(),
                    ..Default::default()
                },
                ContainerResources {
                    name: "compute".into(),
                    devices: devices
                        .iter()
                        .map(|(r, ids)| ContainerDevices {
                            resource_name: r.to_string(),
                            device_ids: ids.iter().map(|s| s.to_string()).collect(),
                            topology: None,
                        })
                        .collect(),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn holds_only_the_pods_own_macvtap_devices() {
        let me = PodRef {
            namespace: "ns".into(),
            name: "vm".into(),
            uid: None,
        };
        let pods = vec![
            pod(
                "ns",
                "vm",
                &[
                    ("macvtap.network.kubevirt.io/dp", &["dpMvp1"]),
                    ("example.com/gpu", &["gpu0"]),
                ],
            ),
            pod(
                "ns",
                "other",
                &[("macvtap.network.kubevirt.io/dp", &["dpMvp2"])],
            ),
            pod(
                "ns2",
                "vm",
                &[("macvtap.network.kubevirt.io/dp", &["dpMvp3"])],
            ),
        ];
        assert!(holds(&pods, &me, "dpMvp1"));
        assert!(!holds(&pods, &me, "dpMvp2"), "another pod's device");
        assert!(!holds(&pods, &me, "dpMvp3"), "same name, other namespace");
        assert!(!holds(&pods, &me, "gpu0"), "not a macvtap resource");
        assert!(!holds(&pods, &me, "dpMvp9"));
        assert_eq!(
            held(&pods, &me),
            vec!["macvtap.network.kubevirt.io/dp=dpMvp1"]
        );
    }

    #[test]
    fn pod_identity_from_cni_args() {
        let id = |s: &str| PodRef::from_args(&parse_cni_args(s).unwrap());
        assert_eq!(
            id("IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=vm;K8S_POD_UID=u1").unwrap(),
            Some(PodRef {
                namespace: "ns".into(),
                name: "vm".into(),
                uid: Some("u1".into())
            })
        );
        assert_eq!(id("").unwrap(), None);
        assert_eq!(id("MAC=02:00:00:00:00:01").unwrap(), None);
        for half in [
            "K8S_POD_NAMESPACE=ns",
            "K8S_POD_NAME=vm",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=",
            "K8S_POD_UID=u1",
        ] {
            assert_eq!(id(half).unwrap_err().code, 4, "{half}");
        }
    }

    #[test]
    fn an_absent_socket_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let me = PodRef {
            namespace: "ns".into(),
            name: "vm".into(),
            uid: None,
        };
        let rt = Runtime::new().unwrap();
        let e = check(&rt, &dir.path().join("kubelet.sock"), &me, "dpMvp1").unwrap_err();
        assert_eq!(e.code, 11, "{e:?}");
        assert!(
            e.msg.contains("kubelet.sock") && e.msg.contains("ns/vm"),
            "{e:?}"
        );
    }
}
