//! Pods on the test cluster, seen the way a node's administrator would: created through the API server and
//! scheduled, then inspected from the machine through their processes (found by the pod's cgroup): the pod's
//! network namespace (`/proc/<pid>/ns/net`, read with the machine's `ip`) and a container's `/dev`
//! (`/proc/<pid>/root/dev`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use super::Cluster;
use super::node::cgroup_hierarchies;

/// A pod that runs, with what the harness learned about it.
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub pod: Pod,
}

impl RunningPod {
    /// Processes of the pod (sandbox and containers), from its cgroup.
    pub fn pids(&self) -> Vec<u32> {
        pod_pids(&self.uid)
    }

    /// A process of the pod's network namespace.
    pub fn net_pid(&self) -> Result<u32> {
        self.pids()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("pod {} has no processes", self.name))
    }

    /// `ip <args>` inside the pod's network namespace (the machine's iproute2, JSON-capable).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let pid = self.net_pid()?;
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("ip")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ip {} in pod {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -d -j link show <name>` in the pod, or None when there is no such link.
    pub fn link(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let all: serde_json::Value =
            serde_json::from_str(&self.ip(&["-d", "-j", "link", "show"])?)?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["ifname"] == name)
            .cloned())
    }

    /// Seconds from the pod's creation to its `Ready` condition, from its own timestamps (whole seconds, the API's
    /// resolution): no polling in the figure.
    pub fn create_to_ready_secs(&self) -> Option<i64> {
        let created = self.pod.metadata.creation_timestamp.as_ref()?.0.as_second();
        let ready = self
            .pod
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_transition_time
            .as_ref()?
            .0
            .as_second();
        Some(ready - created)
    }

    /// The pod's `net1` (where the NADs of these tests attach it); an error names the links it has instead.
    pub fn net1(&self) -> Result<serde_json::Value> {
        self.link("net1")?
            .with_context(|| format!("pod {} has no net1: {:?}", self.name, self.link_names()))
    }

    /// Names of the pod's links.
    pub fn link_names(&self) -> Result<Vec<String>> {
        let all: serde_json::Value = serde_json::from_str(&self.ip(&["-j", "link", "show"])?)?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect())
    }

    /// `tapN` character devices in the containers' `/dev`, with their device numbers.
    pub fn tap_devices(&self) -> Vec<TapDevice> {
        let mut taps = Vec::new();
        for pid in self.pids() {
            let dev = PathBuf::from(format!("/proc/{pid}/root/dev"));
            let Ok(entries) = std::fs::read_dir(&dev) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = e.metadata() else { continue };
                if name.starts_with("tap") && meta.file_type().is_char_device() {
                    let t = TapDevice {
                        name,
                        rdev: meta.rdev(),
                        uid: meta.uid(),
                        gid: meta.gid(),
                    };
                    if !taps.contains(&t) {
                        taps.push(t);
                    }
                }
            }
        }
        taps
    }

    /// The Multus network-status annotation, parsed.
    pub fn network_status(&self) -> Vec<serde_json::Value> {
        self.pod
            .annotations()
            .get("k8s.v1.cni.cncf.io/network-status")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

/// A `/dev/tapN` seen inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapDevice {
    pub name: String,
    pub rdev: u64,
    pub uid: u32,
    pub gid: u32,
}

impl TapDevice {
    /// The ifindex the name promises (`tap<ifindex>`).
    pub fn ifindex(&self) -> Option<u32> {
        self.name.strip_prefix("tap")?.parse().ok()
    }

    /// The machine's `/dev/tapN` of the same name.
    pub fn host_path(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.name)
    }
}

/// Pids in the cgroups of the pod with `uid` (kubelet's cgroupfs layout: `.../pod<uid>/<container>`).
pub fn pod_pids(uid: &str) -> Vec<u32> {
    let needle = format!("pod{uid}");
    let Some(pids_root) = cgroup_hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids"))
    else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    let mut stack = vec![pids_root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let in_pod = dir.components().any(|c| c.as_os_str() == needle.as_str());
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if in_pod && e.file_name() == "cgroup.procs" {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.sort_unstable();
    pids
}

impl Cluster {
    /// Creates `pod` (namespace from the object, else `default`) and waits until it runs; the error tells the
    /// pod's phase, conditions and events.
    pub async fn run_pod(&self, pod: Pod, timeout: Duration) -> Result<RunningPod> {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let api = Api::<Pod>::namespaced(self.client(), &ns);
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {}", pod.name_any()))?;
        self.wait_running(&ns, &created.name_any(), timeout).await
    }

    /// Creates a pod from YAML text.
    pub async fn run_pod_yaml(&self, yaml: &str, timeout: Duration) -> Result<RunningPod> {
        let pod: Pod = serde_saphyr::from_str(yaml).context("pod YAML")?;
        self.run_pod(pod, timeout).await
    }

    /// Waits until the pod is Running with every container ready.
    pub async fn wait_running(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<RunningPod> {
        let api = Api::<Pod>::namespaced(self.client(), ns);
        let deadline = Instant::now() + timeout;
        loop {
            let pod = api.get(name).await?;
            let status = pod.status.clone().unwrap_or_default();
            let ready = status.phase.as_deref() == Some("Running")
                && status
                    .container_statuses
                    .as_ref()
                    .is_some_and(|cs| cs.iter().all(|c| c.ready));
            if ready {
                return Ok(RunningPod {
                    namespace: ns.into(),
                    name: name.into(),
                    uid: pod.uid().unwrap_or_default(),
                    node: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default(),
                    pod,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {ns}/{name} not running within {timeout:?}: phase {:?}, conditions {:?}, \
                     containers {:?}\nevents:\n{}",
                    status.phase,
                    status.conditions,
                    status.container_statuses,
                    self.events_of(ns, name)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages of the `FailedCreatePodSandBox` events of the pods in `ns` whose names start with `prefix`.
    pub async fn failed_sandboxes(&self, ns: &str, prefix: &str) -> Result<Vec<String>> {
        let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client(), ns)
            .list(&kube::api::ListParams::default().fields("reason=FailedCreatePodSandBox"))
            .await?;
        Ok(events
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .map(|e| e.message.unwrap_or_default())
            .collect())
    }

    /// `kubectl get events` of one object, for error messages.
    pub fn events_of(&self, ns: &str, name: &str) -> String {
        self.kubectl_out(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "--sort-by=.lastTimestamp",
        ])
        .unwrap_or_else(|e| e.to_string())
    }

    /// Deletes a pod and waits until it is gone (its sandbox torn down, CNI DEL done).
    pub async fn delete_pod(&self, ns: &str, name: &str, timeout: Duration) -> Result<()> {
        let api = Api::<Pod>::namespaced(self.client(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(1),
            ..Default::default()
        };
        if api.delete(name, &dp).await.is_err() && api.get_opt(name).await?.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {ns}/{name} still there after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}
