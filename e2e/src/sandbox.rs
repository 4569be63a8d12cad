//! The sandbox cluster: everything a user's cluster runs, minus a kubelet with a container runtime.
//!
//! - a real control plane (etcd + kube-apiserver, RBAC on) and the chart installed into it with the real helm;
//! - the operator as a local process, authenticated with the chart's operator ServiceAccount token;
//! - per node: a network namespace whose `eth0` (a veth) is the lower device, all nodes' `eth0` on one L2 segment
//!   (a bridge in a namespace of its own); the agent running inside it with the chart's agent ServiceAccount
//!   token; a kubelet stand-in (device plugin registration, ListAndWatch, Allocate, PodResources);
//! - pods: an object in the API server bound to a node, a network namespace, devices allocated through the
//!   kubelet stand-in, and the real Multus thin plugin run on the node with the pod's annotations, which calls
//!   our `macvtap` CNI with the NetworkAttachmentDefinition from the API server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};

use crate::apply;
use crate::control_plane::ControlPlane;
use crate::forward::NetnsForward;
use crate::kubelet::KubeletStandIn;
use crate::netns::Netns;
use crate::node_exec::{NodeContext, POD_RESOURCES_DIR};
use crate::process::Process;
use crate::tools;
use crate::workspace;

/// Where kube-ovn's CNI binary finds its daemon (the `server_socket` of config/kube-ovn/nad-p4p1.yaml).
pub const KUBE_OVN_SOCKET_DIR: &str = "/run/openvswitch";

/// Lower devices every node has: `eth0` (the `dataplane` examples) and `p4p1` (the kube-ovn examples), each on
/// an L2 segment shared by all nodes.
pub const LOWER_DEVICES: [&str; 2] = ["eth0", "p4p1"];

/// Name of the NetworkAttachmentDefinition (in kube-system) Multus uses as the cluster network.
pub const CLUSTER_NETWORK: &str = "sandbox-default";

/// What to bring up.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Node names; every node gets an agent and a kubelet stand-in.
    pub nodes: Vec<String>,
    /// Release namespace of the chart.
    pub namespace: String,
    /// Helm release name.
    pub release: String,
    /// Extra `--set` values for `helm install`.
    pub helm_set: Vec<String>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["node-a".into(), "node-b".into()],
            namespace: "macvtap-system".into(),
            release: "macvtap-operator".into(),
            helm_set: Vec::new(),
        }
    }
}

/// One node of the sandbox.
pub struct SandboxNode {
    pub name: String,
    /// The node's network namespace; its `eth0` is the lower device.
    pub netns: Netns,
    /// The node's kubelet directories: `device-plugins/`, `pod-resources/`.
    pub dir: PathBuf,
    pub kubelet: KubeletStandIn,
    pub agent: Process,
    /// Admin kubeconfig that works from inside the node's netns (Multus uses it).
    pub admin_kubeconfig: PathBuf,
    /// The agent's ServiceAccount kubeconfig, from inside the node's netns.
    pub agent_kubeconfig: PathBuf,
    forward: NetnsForward,
    _podresources_relay: Process,
}

impl SandboxNode {
    pub fn device_plugin_dir(&self) -> PathBuf {
        self.dir.join("device-plugins")
    }

    pub fn pod_resources_dir(&self) -> PathBuf {
        self.dir.join("pod-resources")
    }

    /// Where the node's programs (Multus, CNI plugins) run.
    pub fn context(&self) -> NodeContext {
        NodeContext {
            netns_path: self.netns.path().to_path_buf(),
            binds: vec![
                // Multus reads PodResources at the kubelet's path: there it finds the relay (see `podresources_relay`).
                (self.relay_dir(), PathBuf::from(POD_RESOURCES_DIR)),
                (
                    self.dir.parent().expect("sandbox dir").join("openvswitch"),
                    PathBuf::from(KUBE_OVN_SOCKET_DIR),
                ),
            ],
        }
    }

    /// The directory holding the PodResources relay's socket, seen by Multus as `/var/lib/kubelet/pod-resources`.
    pub fn relay_dir(&self) -> PathBuf {
        self.dir.join("multus-pod-resources")
    }

    /// Port inside the node's netns that reaches the API server.
    pub fn api_port(&self) -> u16 {
        self.forward.port()
    }
}

/// The whole sandbox; dropping it tears everything down (processes, namespaces, files).
pub struct Sandbox {
    pub options: SandboxOptions,
    pub dir: PathBuf,
    /// CNI_PATH for Multus: our `macvtap`, the kube-ovn binary, and the Debian CNI plugins.
    pub cni_bin_dir: PathBuf,
    pub nodes: Vec<SandboxNode>,
    pub operator: Option<Process>,
    pub operator_kubeconfig: PathBuf,
    pub operator_sa: String,
    pub agent_sa: String,
    _segment: Netns,
    // Last: the control plane outlives every process that talks to it.
    pub control_plane: ControlPlane,
}

/// A pod started on a sandbox node.
pub struct SandboxPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: usize,
    pub netns: Netns,
    pub container_id: String,
    /// `/dev/tapN` host paths the kubelet stand-in got from Allocate, per container.
    pub tap_devices: Vec<PathBuf>,
    /// Multus' result (CNI JSON), or None for a pod without networks that Multus had nothing to add for.
    pub result: serde_json::Value,
}

impl Sandbox {
    /// Brings the sandbox up: control plane, chart, nodes with agents and kubelet stand-ins, operator.
    pub async fn start(options: SandboxOptions) -> Result<Sandbox> {
        let helm = tools::tool("helm").map_err(|e| anyhow!(e))?;
        let agent_bin = workspace::binary("macvtap-agent").map_err(|e| anyhow!(e))?;
        workspace::binary("macvtap-operator").map_err(|e| anyhow!(e))?;
        let cni_bin = workspace::binary("macvtap").map_err(|e| anyhow!(e))?;

        let control_plane = ControlPlane::start().context("starting the control plane")?;
        let dir = control_plane.dir().join("sandbox");
        std::fs::create_dir_all(&dir)?;
        let client = control_plane.admin_client();

        // CNI_PATH: our plugin, kube-ovn's, and the reference plugins (host-local, static, loopback, ...).
        let cni_bin_dir = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin_dir)?;
        for entry in std::fs::read_dir("/usr/lib/cni")
            .context("/usr/lib/cni (containernetworking-plugins)")?
        {
            let entry = entry?;
            symlink_force(&entry.path(), &cni_bin_dir.join(entry.file_name()))?;
        }
        symlink_force(&cni_bin, &cni_bin_dir.join("macvtap"))?;
        if let Ok(kube_ovn) = tools::tool("kube-ovn") {
            symlink_force(&kube_ovn, &cni_bin_dir.join("kube-ovn"))?;
        }

        control_plane
            .apply_crd_yaml(&std::fs::read_to_string(
                workspace::root().join("e2e/manifests/network-attachment-definition-crd.yaml"),
            )?)
            .await
            .context("NetworkAttachmentDefinition CRD")?;
        // The cluster's default network, as Multus finds it by name: loopback only, so pods' eth0 stays free for
        // the cases that make a macvtap the default network.
        apply::apply_objects(
            &client,
            &apply::parse_objects(&format!(
                "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {CLUSTER_NETWORK}\n  \
                 namespace: kube-system\nspec:\n  config: '{{\"cniVersion\": \"1.0.0\", \"name\": \"{CLUSTER_NETWORK}\", \"type\": \"loopback\"}}'\n"
            ))?,
            "kube-system",
        )
        .await
        .context("cluster network NetworkAttachmentDefinition")?;

        // The chart, as a user installs it (its crds/ come with it).
        let mut helm_cmd = Command::new(&helm);
        helm_cmd
            .args(["install", &options.release])
            .arg(workspace::root().join("charts/macvtap-operator"))
            .args([
                "--namespace",
                &options.namespace,
                "--create-namespace",
                "--kubeconfig",
            ])
            .arg(control_plane.kubeconfig_path());
        for s in &options.helm_set {
            helm_cmd.args(["--set", s]);
        }
        let out = helm_cmd.output().context("running helm")?;
        if !out.status.success() {
            bail!(
                "helm install failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_established(&client).await?;

        let (operator_sa, agent_sa) = chart_service_accounts(&client, &options.namespace).await?;
        let operator_kubeconfig = control_plane
            .write_service_account_kubeconfig(&options.namespace, &operator_sa)
            .await?;

        // The L2 segments the nodes' lower devices hang on: one bridge per lower device name.
        let segment = Netns::new("mvt-segment")?;
        for (b, _) in LOWER_DEVICES.iter().enumerate() {
            segment.ip(&["link", "add", &format!("br{b}"), "type", "bridge"])?;
            segment.ip(&["link", "set", &format!("br{b}"), "up"])?;
        }
        std::fs::create_dir_all(dir.join("openvswitch"))?;

        let api_addr: SocketAddr = control_plane
            .server_url()
            .trim_start_matches("https://")
            .parse()
            .context("API server address")?;

        let mut nodes = Vec::new();
        for (i, name) in options.nodes.iter().enumerate() {
            let node_obj = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        ("kubernetes.io/hostname".to_string(), name.clone()),
                        ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<Node>::all(client.clone())
                .patch(
                    name,
                    &PatchParams::apply(apply::FIELD_MANAGER).force(),
                    &Patch::Apply(&node_obj),
                )
                .await
                .with_context(|| format!("creating Node {name}"))?;

            let netns = Netns::new(&format!("mvt-{name}"))?;
            for (b, lower) in LOWER_DEVICES.iter().enumerate() {
                let port = format!("n{i}-{lower}");
                netns.add_veth_to(lower, &segment, &port)?;
                segment.ip(&["link", "set", &port, "master", &format!("br{b}")])?;
            }

            let forward = NetnsForward::start(netns.path(), 0, api_addr)?;
            let node_dir = dir.join(name);
            std::fs::create_dir_all(node_dir.join("device-plugins"))?;
            std::fs::create_dir_all(node_dir.join("pod-resources"))?;
            let local_server = format!("https://127.0.0.1:{}", forward.port());
            let admin_kubeconfig = node_dir.join("admin.kubeconfig");
            rewrite_kubeconfig(
                control_plane.kubeconfig_path(),
                &admin_kubeconfig,
                &local_server,
            )?;
            // The agent authenticates as a DaemonSet pod would: with a token bound to its pod on this node, so
            // the chart's admission policy can tell which node it is.
            let token = agent_pod_token(&client, &options.namespace, &agent_sa, name).await?;
            let agent_kubeconfig = node_dir.join("agent.kubeconfig");
            rewrite_kubeconfig(
                control_plane.kubeconfig_path(),
                &agent_kubeconfig,
                &local_server,
            )?;
            set_kubeconfig_token(
                &agent_kubeconfig,
                &token,
                &format!("system:serviceaccount:{}:{agent_sa}", options.namespace),
            )?;

            let kubelet = KubeletStandIn::start(
                &node_dir.join("device-plugins"),
                &node_dir.join("pod-resources").join("kubelet.sock"),
            )
            .await
            .with_context(|| format!("kubelet stand-in of {name}"))?;
            let podresources_relay = start_podresources_relay(&node_dir)?;

            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns.name()])
                .arg(&agent_bin)
                .args(["--node-name", name, "--device-plugin-dir"])
                .arg(node_dir.join("device-plugins"))
                .arg("--pod-resources-socket")
                .arg(node_dir.join("pod-resources").join("kubelet.sock"))
                .args(["--health-addr", "127.0.0.1:9808"])
                .env("KUBECONFIG", &agent_kubeconfig)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                );
            let agent = Process::spawn(&format!("agent-{name}"), cmd, &node_dir.join("agent.log"))?;
            nodes.push(SandboxNode {
                name: name.clone(),
                netns,
                dir: node_dir,
                kubelet,
                agent,
                admin_kubeconfig,
                agent_kubeconfig,
                forward,
                _podresources_relay: podresources_relay,
            });
        }

        let mut sandbox = Sandbox {
            options,
            dir,
            cni_bin_dir,
            nodes,
            operator: None,
            operator_kubeconfig,
            operator_sa,
            agent_sa,
            _segment: segment,
            control_plane,
        };
        sandbox.start_operator().await?;
        Ok(sandbox)
    }

    /// Starts (or restarts) the operator process as the chart's operator ServiceAccount, with the arguments of
    /// the chart's operator Deployment (its `$(POD_NAMESPACE)` expanded, metrics on a free loopback port).
    pub async fn start_operator(&mut self) -> Result<()> {
        if let Some(mut old) = self.operator.take() {
            old.stop(Duration::from_secs(10));
        }
        let bin = workspace::binary("macvtap-operator").map_err(|e| anyhow!(e))?;
        let deployments = Api::<Deployment>::namespaced(self.client(), &self.options.namespace)
            .list(&ListParams::default())
            .await?;
        let deployment = deployments
            .items
            .iter()
            .find(|d| d.name_any().ends_with("-operator"))
            .ok_or_else(|| anyhow!("the chart created no operator Deployment"))?;
        let chart_args = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.args.clone())
            .unwrap_or_default();
        let metrics = free_port()?;
        let args: Vec<String> = chart_args
            .iter()
            .map(|a| {
                if a.starts_with("--metrics-addr") {
                    format!("--metrics-addr=127.0.0.1:{metrics}")
                } else if a.starts_with("--log-format") {
                    "--log-format=text".to_string()
                } else {
                    a.replace("$(POD_NAMESPACE)", &self.options.namespace)
                }
            })
            .collect();
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("POD_NAMESPACE", &self.options.namespace)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        self.operator = Some(Process::spawn(
            "operator",
            cmd,
            &self.dir.join("operator.log"),
        )?);
        Ok(())
    }

    /// Socket path a kube-ovn daemon stand-in listens on for every node (bind-mounted at /run/openvswitch).
    pub fn kube_ovn_socket(&self) -> PathBuf {
        self.dir.join("openvswitch").join("kube-ovn-daemon.sock")
    }

    pub fn client(&self) -> Client {
        self.control_plane.admin_client()
    }

    /// Applies a YAML file (e.g. from `config/`), namespaced objects into `default` unless they say otherwise.
    pub async fn apply_file(&self, path: &Path) -> Result<()> {
        apply::apply_file(&self.client(), path, "default").await?;
        Ok(())
    }

    /// Applies YAML text.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<()> {
        apply::apply_objects(&self.client(), &apply::parse_objects(yaml)?, "default").await?;
        Ok(())
    }

    /// Waits until `pred` holds for the pool, returning it; the error says what the pool looked like last.
    pub async fn wait_pool(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&MacvtapPool) -> bool,
    ) -> Result<MacvtapPool> {
        let api = Api::<MacvtapPool>::all(self.client());
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(p) = api.get_opt(name).await? {
                if pred(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "pool {name} did not reach the expected state in {timeout:?}; last: {}\noperator log:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.operator
                .as_ref()
                .map(|o| o.log_tail(30))
                .unwrap_or_default()
        )
    }

    /// The node state of a node.
    pub async fn node_state(&self, node: &str) -> Result<Option<MacvtapNodeState>> {
        Ok(Api::<MacvtapNodeState>::all(self.client())
            .get_opt(node)
            .await?)
    }

    /// Mirrors what a kubelet does with device plugin resources: writes the healthy device counts the stand-in
    /// sees into the Node's status capacity/allocatable, so `kubectl describe node` shows them.
    pub async fn publish_node_resources(&self) -> Result<()> {
        let api = Api::<Node>::all(self.client());
        for node in &self.nodes {
            let mut capacity = BTreeMap::new();
            for (resource, devices) in node.kubelet.resources() {
                let healthy = devices.iter().filter(|d| d.health == "Healthy").count();
                capacity.insert(resource, serde_json::Value::String(healthy.to_string()));
            }
            let patch =
                serde_json::json!({"status": {"capacity": capacity, "allocatable": capacity}});
            api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }

    /// Starts a pod from a manifest on `node`: creates the object (bound to the node), allocates the devices its
    /// containers ask for through the kubelet stand-in, makes its netns and runs Multus ADD on the node.
    /// `edit` may change the manifest first (name, annotations).
    pub async fn run_pod(
        &self,
        node: usize,
        manifest: &Path,
        edit: impl FnOnce(&mut Pod),
    ) -> Result<SandboxPod> {
        let text =
            std::fs::read_to_string(manifest).with_context(|| manifest.display().to_string())?;
        let mut pod: Pod =
            serde_saphyr::from_str(&text).with_context(|| manifest.display().to_string())?;
        edit(&mut pod);
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        pod.metadata.namespace = Some(namespace.clone());
        let spec = pod
            .spec
            .as_mut()
            .ok_or_else(|| anyhow!("pod has no spec"))?;
        spec.node_name = Some(self.nodes[node].name.clone());
        let created = Api::<Pod>::namespaced(self.client(), &namespace)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {}", pod.name_any()))?;
        let name = created.name_any();
        let uid = created.uid().unwrap_or_default();

        // Allocate what the containers ask for, as the kubelet does before it starts the sandbox.
        let kubelet = &self.nodes[node].kubelet;
        let mut tap_devices = Vec::new();
        for c in &created.spec.as_ref().expect("spec").containers {
            let limits = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.clone())
                .unwrap_or_default();
            for (resource, qty) in limits {
                if !resource.starts_with(macvtap_api::GROUP) {
                    continue;
                }
                let n: usize = qty
                    .0
                    .parse()
                    .with_context(|| format!("quantity {}", qty.0))?;
                let resp = kubelet
                    .allocate(&namespace, &name, &c.name, &resource, n)
                    .await
                    .with_context(|| format!("Allocate {resource} x{n} for {namespace}/{name}"))?;
                tap_devices.extend(resp.devices.iter().map(|d| PathBuf::from(&d.host_path)));
            }
        }

        let netns = Netns::new("mvt-pod")?;
        let container_id = format!("{:x}", rand_u64());
        let out = self.multus(
            node,
            "ADD",
            &namespace,
            &name,
            &uid,
            &container_id,
            netns.path(),
        )?;
        let result: serde_json::Value = serde_json::from_slice(&out)
            .with_context(|| format!("Multus ADD output: {}", String::from_utf8_lossy(&out)))?;
        Ok(SandboxPod {
            namespace,
            name,
            uid,
            node,
            netns,
            container_id,
            tap_devices,
            result,
        })
    }

    /// Multus DEL, release of the pod's devices in the kubelet stand-in, deletion of the pod object.
    pub async fn delete_pod(&self, pod: SandboxPod) -> Result<()> {
        self.multus(
            pod.node,
            "DEL",
            &pod.namespace,
            &pod.name,
            &pod.uid,
            &pod.container_id,
            pod.netns.path(),
        )?;
        self.nodes[pod.node]
            .kubelet
            .release_pod(&pod.namespace, &pod.name)
            .await;
        Api::<Pod>::namespaced(self.client(), &pod.namespace)
            .delete(&pod.name, &DeleteParams::default().grace_period(0))
            .await?;
        Ok(())
    }

    /// Runs the Multus thin plugin on a node as a container runtime would, returning stdout on success.
    #[allow(clippy::too_many_arguments)]
    pub fn multus(
        &self,
        node: usize,
        command: &str,
        namespace: &str,
        name: &str,
        uid: &str,
        container_id: &str,
        netns: &Path,
    ) -> Result<Vec<u8>> {
        let multus = tools::tool("multus").map_err(|e| anyhow!(e))?;
        let n = &self.nodes[node];
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": n.admin_kubeconfig,
            "cniDir": n.dir.join("multus-cache"),
            "binDir": self.cni_bin_dir,
            "logToStderr": true,
            "logLevel": "error",
            "clusterNetwork": CLUSTER_NETWORK,
        });
        let args = format!(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
        );
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container_id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", self.cni_bin_dir.display().to_string()),
            ("CNI_ARGS", args),
        ];
        let out = n
            .context()
            .run(&multus, &env, conf.to_string().as_bytes())?;
        if !out.status.success() {
            bail!(
                "multus {command} for {namespace}/{name} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut op) = self.operator.take() {
            op.stop(Duration::from_secs(5));
        }
        for node in &mut self.nodes {
            node.agent.stop(Duration::from_secs(5));
        }
    }
}

/// The chart's operator and agent ServiceAccounts in the release namespace (`<fullname>-operator`, `<fullname>-agent`).
async fn chart_service_accounts(client: &Client, namespace: &str) -> Result<(String, String)> {
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let find = |component: &str| {
        sas.items
            .iter()
            .map(|sa| sa.name_any())
            .find(|n| n.ends_with(&format!("-{component}")))
            .ok_or_else(|| {
                anyhow!("the chart created no ServiceAccount for the {component} in {namespace}")
            })
    };
    Ok((find("operator")?, find("agent")?))
}

/// Starts the PodResources relay of a node and waits for its socket.
///
/// Why a relay: Multus' PodResources client (grpc-go dialing a plain socket path) sends that path as the HTTP/2
/// `:authority`. The real kubelet's Go server accepts it; the stand-in's Rust (h2) server rejects it as malformed.
/// The relay (e2e/tools/podresources-relay, Go) serves Multus as the kubelet would and asks the stand-in with
/// `:authority` `localhost`, as the kubelet itself does towards device plugins.
fn start_podresources_relay(node_dir: &Path) -> Result<Process> {
    let relay = tools::tool("podresources-relay").map_err(|e| anyhow!(e))?;
    let dir = node_dir.join("multus-pod-resources");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("kubelet.sock");
    let mut cmd = Command::new(relay);
    cmd.arg("-listen")
        .arg(&socket)
        .arg("-upstream")
        .arg(node_dir.join("pod-resources").join("kubelet.sock"));
    let process = Process::spawn(
        "podresources-relay",
        cmd,
        &node_dir.join("podresources-relay.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "podresources-relay did not start:\n{}",
                process.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// A Pod object standing for the agent DaemonSet's pod on `node`, and a token bound to it (TokenRequest with a
/// boundObjectRef): such tokens carry the node's name, as the tokens the kubelet projects into pods do.
async fn agent_pod_token(client: &Client, namespace: &str, sa: &str, node: &str) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{sa}-{node}"), "namespace": namespace,
                     "labels": {"app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "serviceAccountName": sa,
                 "containers": [{"name": "agent", "image": "macvtap-agent"}]},
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod = pods
        .patch(
            &pod.name_any(),
            &PatchParams::apply(apply::FIELD_MANAGER).force(),
            &Patch::Apply(&pod),
        )
        .await?;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..Default::default()
    };
    let resp = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {sa} bound to its pod on {node}"))?;
    resp.status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("empty token for {sa}"))
}

/// Replaces the credentials of every user in a kubeconfig file with a bearer token.
fn set_kubeconfig_token(path: &Path, token: &str, user: &str) -> Result<()> {
    let mut kc = Kubeconfig::read_from(path)?;
    for a in &mut kc.auth_infos {
        a.name = user.to_string();
        a.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        });
    }
    for c in &mut kc.contexts {
        if let Some(ctx) = c.context.as_mut() {
            ctx.user = Some(user.to_string());
        }
    }
    std::fs::write(path, serde_json::to_vec_pretty(&kc)?)?;
    Ok(())
}

async fn wait_established(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for name in [
        "macvtappools.macvtap.network.kubevirt.io",
        "macvtapnodestates.macvtap.network.kubevirt.io",
    ] {
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), name, cond),
        )
        .await
        .map_err(|_| anyhow!("CRD {name} not Established"))??;
    }
    Ok(())
}

/// Copies a kubeconfig, pointing every cluster at `server` (the forwarded port inside a node's netns).
fn rewrite_kubeconfig(from: &Path, to: &Path, server: &str) -> Result<()> {
    let mut kc = Kubeconfig::read_from(from)?;
    for c in &mut kc.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(server.to_string());
        }
    }
    std::fs::write(to, serde_json::to_vec_pretty(&kc)?)?;
    Ok(())
}

fn symlink_force(src: &Path, dst: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(dst);
    std::os::unix::fs::symlink(src, dst)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
