//! The Helm chart (`charts/macvtap-operator`) with the real `helm` binary and a real kube-apiserver (RBAC on):
//! lint, rendering with default and other values, the values schema, install/upgrade/uninstall exactly as the
//! chart README says, and what the chart's own ServiceAccounts may and may not do (RBAC, and the agent's
//! ValidatingAdmissionPolicy), using tokens the API server issues for them.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use macvtap_api::{MacvtapNodeState, MacvtapPool};
use macvtap_e2e::control_plane::ControlPlane;
use macvtap_e2e::{tools, workspace};
use serde_json::{Value, json};

const CRD_POOLS: &str = "macvtappools.macvtap.network.kubevirt.io";
const CRD_NODE_STATES: &str = "macvtapnodestates.macvtap.network.kubevirt.io";
/// How long a new or removed ValidatingAdmissionPolicy may take to reach the API server's admission chain.
const POLICY_SYNC: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------------
// helm and rendering helpers

fn chart_dir() -> PathBuf {
    workspace::root().join("charts/macvtap-operator")
}

fn chart_arg() -> String {
    chart_dir().to_str().expect("utf-8 path").to_string()
}

/// Runs helm in the repository root (README commands use repo-relative paths). Err carries helm's output.
fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new(tools::require("helm"));
    cmd.args(args).current_dir(workspace::root());
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let out = cmd.output().expect("running helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        ))
    }
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("helm output is not YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// `helm template rel <chart> -n macvtap-system <extra>`, as objects.
fn render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_arg();
    let mut args = vec!["template", "rel", &chart, "--namespace", "macvtap-system"];
    args.extend_from_slice(extra);
    helm(&args, None).map(|out| parse_docs(&out))
}

fn render_ok(extra: &[&str]) -> Vec<Value> {
    render(extra).unwrap_or_else(|e| panic!("{e}"))
}

fn kind_names(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kind_names(objs)))
}

fn find_by_component<'a>(objs: &'a [Value], kind: &str, component: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind && o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .unwrap_or_else(|| {
            panic!(
                "no {kind} of component {component} in {:?}",
                kind_names(objs)
            )
        })
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"].as_array().map_or_else(Vec::new, |env| {
        env.iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    })
}

/// The rules of a (Cluster)Role as (apiGroups, resources, verbs, resourceNames) sets.
type Rule = (
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
);

fn rules(role: &Value) -> Vec<Rule> {
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array().map_or_else(BTreeSet::new, |a| {
            a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        })
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                set(&r["apiGroups"]),
                set(&r["resources"]),
                set(&r["verbs"]),
                set(&r["resourceNames"]),
            )
        })
        .collect()
}

/// Every (group, resource, verb) a role grants, ignoring resourceNames.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (groups, resources, verbs, _) in rules(role) {
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn grant(g: &str, r: &str, verbs: &[&str]) -> Vec<(String, String, String)> {
    verbs
        .iter()
        .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// The lines of a README code block between `<!-- <tag>:begin -->` and `<!-- <tag>:end -->`.
fn readme_commands(tag: &str) -> Vec<String> {
    let readme = fs::read_to_string(chart_dir().join("README.md")).expect("chart README.md");
    let begin = format!("<!-- {tag}:begin -->");
    let end = format!("<!-- {tag}:end -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("README has no {begin}"));
    let stop = readme[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("README has no {end}"))
        + start;
    let cmds: Vec<String> = readme[start + begin.len()..stop]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```"))
        .map(str::to_string)
        .collect();
    assert!(!cmds.is_empty(), "README {tag} block is empty");
    cmds
}

/// Runs a README command line (a plain `helm ...` line: no quoting or shell syntax, checked) with our helm.
fn run_readme_command(line: &str, kubeconfig: &Path) -> String {
    assert!(
        !line.contains(['"', '\'', '\\', '$', '|', ';', '&']),
        "README command needs a shell; keep install commands plain: {line}"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[0], "helm",
        "README install commands are helm commands: {line}"
    );
    helm(&words[1..], Some(kubeconfig)).unwrap_or_else(|e| panic!("README command `{line}`: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Offline: lint, render, schema

#[test]
fn lint_passes_with_default_and_non_default_values() {
    let chart = chart_arg();
    let out = helm(&["lint", "--strict", &chart], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    fs::write(
        &values,
        r#"
operator:
  replicas: 3
  logFormat: text
  logLevel: debug
  cleanStaleNodeResources: true
  image: {repository: registry.example/macvtap-operator, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
agent:
  privileged: true
  port: 9900
  kubeletDir: /var/lib/k0s/kubelet
  cniBinDir: /var/lib/cni/bin
  nodeStatePolicy: {enabled: false}
legacyConfig:
  - {name: dataplane, lowerDevice: eth1, mode: vepa, capacity: 20}
pools:
  - name: dataplane
    labels: {team: net}
    spec: {lowerDevice: eth1, capacity: 20}
keepPoolsOnUninstall: true
"#,
    )
    .unwrap();
    let values = values.to_str().unwrap();
    let out =
        helm(&["lint", "--strict", &chart, "-f", values], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn default_render_is_least_privilege_and_matches_the_binaries_interfaces() {
    let objs = render_ok(&[]);
    let expected: BTreeSet<String> = [
        "ServiceAccount/rel-macvtap-operator-operator",
        "ServiceAccount/rel-macvtap-operator-agent",
        "ClusterRole/rel-macvtap-operator-operator",
        "ClusterRoleBinding/rel-macvtap-operator-operator",
        "Role/rel-macvtap-operator-operator-leader-election",
        "RoleBinding/rel-macvtap-operator-operator-leader-election",
        "ClusterRole/rel-macvtap-operator-agent",
        "ClusterRoleBinding/rel-macvtap-operator-agent",
        "ValidatingAdmissionPolicy/rel-macvtap-operator-agent-own-node-state",
        "ValidatingAdmissionPolicyBinding/rel-macvtap-operator-agent-own-node-state",
        "Deployment/rel-macvtap-operator-operator",
        "Service/rel-macvtap-operator-operator-metrics",
        "PodDisruptionBudget/rel-macvtap-operator-operator",
        "DaemonSet/rel-macvtap-operator-agent",
        "Service/rel-macvtap-operator-agent-metrics",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kind_names(&objs), expected);
    for o in &objs {
        let namespaced = !matches!(
            o["kind"].as_str().unwrap(),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        assert_eq!(
            o["metadata"]["namespace"].is_string(),
            namespaced,
            "{}",
            o["metadata"]
        );
        if namespaced {
            assert_eq!(o["metadata"]["namespace"], "macvtap-system");
        }
    }

    // Operator: non-root, read-only, no capabilities, 2 replicas with leader election in its namespace.
    let dep = find(&objs, "Deployment", "rel-macvtap-operator-operator");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "rel-macvtap-operator-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        "ghcr.io/macvtap-operator/macvtap-operator:0.1.0"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(
        strs(&c["args"]),
        [
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election-namespace=$(POD_NAMESPACE)",
            "--leader-election-id=rel-macvtap-operator-operator",
            "--log-format=json",
            "--agent-stale-after-seconds=120",
        ]
    );
    assert_eq!(c["env"][0], json!({"name": "RUST_LOG", "value": "info"}));
    assert_eq!(
        c["env"][1],
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http-metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http-metrics"})
    );
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );

    // Agent: host network, only CAP_NET_ADMIN, the kubelet dirs, CNI install, no /dev and no /sys host mounts.
    let ds = find(&objs, "DaemonSet", "rel-macvtap-operator-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["serviceAccountName"], "rel-macvtap-operator-agent");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/macvtap-operator/macvtap-agent:0.1.0");
    let sc = &c["securityContext"];
    assert!(sc["privileged"].is_null(), "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&sc["capabilities"]["add"]), ["NET_ADMIN"]);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strs(&c["args"]),
        [
            "--health-addr=0.0.0.0:9808",
            "--log-format=json",
            "--status-heartbeat-secs=30"
        ]
    );
    assert_eq!(env_names(c), ["RUST_LOG", "NODE_NAME"]);
    assert_eq!(
        c["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9808);
    let host_paths: BTreeSet<String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(String::from))
        .collect();
    assert_eq!(
        host_paths,
        [
            "/opt/cni/bin",
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/pod-resources"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let pr = mounts
        .iter()
        .find(|m| m["name"] == "pod-resources")
        .unwrap();
    assert_eq!(pr["readOnly"], true, "PodResources is only read");
    assert!(
        !mounts.iter().any(|m| m["name"] == "cni-bin"),
        "only the init container touches the CNI dir"
    );
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], c["image"]);
    assert_eq!(
        strs(&init["args"]),
        ["install-cni", "--dest", "/host/opt/cni/bin"]
    );
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "cni-bin", "mountPath": "/host/opt/cni/bin"}])
    );
    assert!(init["securityContext"]["capabilities"]["add"].is_null());

    // RBAC: exactly the calls the binaries make (each checked against a real API server below); nothing about
    // secrets anywhere.
    let op = find(&objs, "ClusterRole", "rel-macvtap-operator-operator");
    let g = "macvtap.network.kubevirt.io";
    let mut want: BTreeSet<_> = BTreeSet::new();
    want.extend(grant(g, "macvtappools", &["list", "watch"]));
    want.extend(grant(g, "macvtappools/status", &["patch"]));
    want.extend(grant(
        g,
        "macvtapnodestates",
        &["list", "watch", "create", "patch", "delete"],
    ));
    want.extend(grant("", "nodes", &["list", "watch"]));
    want.extend(grant("events.k8s.io", "events", &["create", "patch"]));
    assert_eq!(grants(op), want);
    let lease_role = find(
        &objs,
        "Role",
        "rel-macvtap-operator-operator-leader-election",
    );
    let lease_rules = rules(lease_role);
    assert_eq!(lease_rules.len(), 2);
    for (groups, resources, verbs, names) in &lease_rules {
        assert_eq!(strs(&json!(groups)), ["coordination.k8s.io"]);
        assert_eq!(strs(&json!(resources)), ["leases"]);
        if verbs.contains("create") {
            assert_eq!(verbs.len(), 1);
        } else {
            assert_eq!(
                strs(&json!(names)),
                ["rel-macvtap-operator-operator"],
                "named Lease only"
            );
            assert_eq!(strs(&json!(verbs)), ["get", "patch"]);
        }
    }
    let agent = find(&objs, "ClusterRole", "rel-macvtap-operator-agent");
    let mut want: BTreeSet<_> = BTreeSet::new();
    want.extend(grant(g, "macvtapnodestates", &["list", "watch"]));
    want.extend(grant(g, "macvtapnodestates/status", &["patch"]));
    assert_eq!(grants(agent), want);
    for o in &objs {
        assert!(
            !o.to_string().contains("secrets"),
            "{} mentions secrets",
            o["metadata"]["name"]
        );
    }

    let vap = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "rel-macvtap-operator-agent-own-node-state",
    );
    assert_eq!(
        vap["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:macvtap-system:rel-macvtap-operator-agent'"
    );
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "rel-macvtap-operator-agent-own-node-state",
    );
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(strs(&binding["spec"]["validationActions"]), ["Deny"]);
}

#[test]
fn non_default_values_render_what_they_say() {
    let objs = render_ok(&[
        "--set-json",
        r#"legacyConfig=[{"name":"dataplane","lowerDevice":"eth1","mode":"vepa","capacity":20}]"#,
        "--set-json",
        r#"pools=[{"name":"p1","labels":{"team":"net"},"spec":{"lowerDevice":"eth1","capacity":20}},{"name":"p2","spec":{"discovery":{}}}]"#,
        "--set",
        "keepPoolsOnUninstall=true,agent.privileged=true,agent.port=9900,agent.kubeletDir=/var/lib/k0s/kubelet",
        "--set",
        "agent.installCNI=false,agent.nodeStatePolicy.enabled=false,operator.cleanStaleNodeResources=true",
        "--set",
        "operator.replicas=1,operator.logFormat=text,operator.logLevel=debug,operator.metricsPort=9090",
        "--set",
        "operator.image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--set",
        "agent.image.tag=dev,agent.image.repository=registry.example/agent",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    let names = kind_names(&objs);
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("ValidatingAdmissionPolicy")),
        "{names:?}"
    );
    assert!(
        !names.contains("PodDisruptionBudget/rel-macvtap-operator-operator"),
        "one replica needs no PDB"
    );
    assert!(names.contains("ServiceMonitor/rel-macvtap-operator-operator"));
    assert!(names.contains("ServiceMonitor/rel-macvtap-operator-agent"));

    let dep = find(&objs, "Deployment", "rel-macvtap-operator-operator");
    assert_eq!(dep["spec"]["replicas"], 1);
    assert!(
        dep["spec"]["template"]["spec"]["affinity"].is_null(),
        "no anti-affinity for one replica"
    );
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "ghcr.io/macvtap-operator/macvtap-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let args = strs(&c["args"]);
    assert!(
        args.contains(&"--metrics-addr=0.0.0.0:9090".into()),
        "{args:?}"
    );
    assert!(args.contains(&"--log-format=text".into()), "{args:?}");
    assert!(
        args.contains(&"--clean-stale-node-resources".into()),
        "{args:?}"
    );
    assert_eq!(c["env"][0]["value"], "debug");
    let op = find(&objs, "ClusterRole", "rel-macvtap-operator-operator");
    assert!(grants(op).contains(&("".into(), "nodes/status".into(), "patch".into())));

    let ds = find(&objs, "DaemonSet", "rel-macvtap-operator-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null());
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/agent:dev");
    assert_eq!(c["securityContext"]["privileged"], true);
    // The API server rejects privileged together with allowPrivilegeEscalation=false.
    assert!(c["securityContext"]["allowPrivilegeEscalation"].is_null());
    // Legacy config, default delivery: a ConfigMap file the agent polls, not the env var (no restarts on edits).
    assert_eq!(
        strs(&c["args"]),
        [
            "--health-addr=0.0.0.0:9900",
            "--log-format=json",
            "--status-heartbeat-secs=30",
            "--config-file=/etc/macvtap/dp-macvtap-conf.json"
        ]
    );
    assert!(!env_names(c).contains(&"DP_MACVTAP_CONF".to_string()));
    let cm = find(
        &objs,
        "ConfigMap",
        "rel-macvtap-operator-agent-legacy-config",
    );
    let conf = cm["data"]["dp-macvtap-conf.json"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(conf).unwrap();
    assert_eq!(
        parsed,
        json!([{"name": "dataplane", "lowerDevice": "eth1", "mode": "vepa", "capacity": 20}])
    );
    // The agent's own parser accepts what the chart passes.
    let cfg = macvtap_api::legacy::parse(conf).expect("agent accepts the rendered config");
    assert_eq!(cfg.resources.len(), 1);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "legacy-config")
        .unwrap();
    assert_eq!(
        mount["mountPath"], "/etc/macvtap",
        "a directory mount: subPath mounts never update"
    );
    assert!(mount["subPath"].is_null());
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "legacy-config")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], cm["metadata"]["name"]);
    let paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/var/lib/k0s/kubelet/device-plugins",
            "/var/lib/k0s/kubelet/pod-resources"
        ]
    );

    let p1 = find(&objs, "MacvtapPool", "p1");
    assert_eq!(p1["apiVersion"], "macvtap.network.kubevirt.io/v1alpha1");
    assert_eq!(p1["spec"], json!({"lowerDevice": "eth1", "capacity": 20}));
    assert_eq!(p1["metadata"]["labels"]["team"], "net");
    assert_eq!(
        p1["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(
        p1["metadata"]["namespace"].is_null(),
        "pools are cluster-scoped"
    );
    assert_eq!(
        find(&objs, "MacvtapPool", "p2")["spec"],
        json!({"discovery": {}})
    );

    let sm = find(&objs, "ServiceMonitor", "rel-macvtap-operator-agent");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "agent"
    );

    // `[]` is the original's "discover every physical link": it must reach the agent, not vanish as "empty".
    let objs = render_ok(&["--set-json", "legacyConfig=[]"]);
    let cm = find(
        &objs,
        "ConfigMap",
        "rel-macvtap-operator-agent-legacy-config",
    );
    assert_eq!(cm["data"]["dp-macvtap-conf.json"], "[]");
    // The original's way: the environment variable.
    let objs = render_ok(&[
        "--set-json",
        "legacyConfig=[]",
        "--set",
        "legacyConfigDelivery=env",
    ]);
    assert!(
        !kind_names(&objs)
            .iter()
            .any(|n| n.starts_with("ConfigMap/"))
    );
    let ds = find(&objs, "DaemonSet", "rel-macvtap-operator-agent");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !strs(&c["args"])
            .iter()
            .any(|a| a.starts_with("--config-file"))
    );
    let env = &c["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "DP_MACVTAP_CONF" && e["value"] == "[]"),
        "{env}"
    );
    // Without legacyConfig there is neither.
    let objs = render_ok(&["--set", "legacyConfigDelivery=env"]);
    let ds = find(&objs, "DaemonSet", "rel-macvtap-operator-agent");
    assert!(
        !env_names(&ds["spec"]["template"]["spec"]["containers"][0])
            .contains(&"DP_MACVTAP_CONF".to_string())
    );

    // Agent-only install.
    let objs = render_ok(&["--set", "operator.enabled=false"]);
    assert!(
        !kind_names(&objs)
            .iter()
            .any(|n| n.contains("-operator-operator")),
        "{:?}",
        kind_names(&objs)
    );
    assert!(kind_names(&objs).contains("DaemonSet/rel-macvtap-operator-agent"));
}

#[test]
fn schema_and_template_checks_reject_bad_values() {
    // (bad values, the same key with a good value, what the error must name). The good twin proves that the
    // failure is about that value, not something else.
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["--set", "operator.replicas=0"],
            &["--set", "operator.replicas=1"],
            "/operator/replicas",
        ),
        (
            &["--set", "agent.port=70000"],
            &["--set", "agent.port=7000"],
            "/agent/port",
        ),
        (
            &["--set", "operator.logFormat=xml"],
            &["--set", "operator.logFormat=text"],
            "/operator/logFormat",
        ),
        (
            &["--set", "agent.kubeletDir=var/lib/kubelet"],
            &["--set", "agent.kubeletDir=/var/lib/kubelet"],
            "/agent/kubeletDir",
        ),
        (
            &["--set", "operator.image.digest=sha256:abc"],
            &["--set", "operator.image.digest="],
            "/operator/image/digest",
        ),
        (
            &["--set", "agent.imge.tag=x"],
            &["--set", "agent.image.tag=x"],
            "imge",
        ),
        (
            &["--set", "legacyConfigDelivery=configmap"],
            &["--set", "legacyConfigDelivery=env"],
            "/legacyConfigDelivery",
        ),
        (
            &["--set", "unknownKey=1"],
            &["--set", "nameOverride=x"],
            "unknownKey",
        ),
        (
            &["--set", "agent.statusHeartbeatSeconds=0"],
            &["--set", "agent.statusHeartbeatSeconds=1"],
            "/agent/statusHeartbeatSeconds",
        ),
        (
            // Fewer than 3 heartbeats before an agent counts as stale.
            &["--set", "operator.agentStaleAfterSeconds=60"],
            &["--set", "operator.agentStaleAfterSeconds=90"],
            "must be at least 3 agent heartbeats",
        ),
        (
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a b","lowerDevice":"eth0"}]"#,
            ],
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"ab","lowerDevice":"eth0"}]"#,
            ],
            "/legacyConfig/0/name",
        ),
        (
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"sixteen-chars-xx"}]"#,
            ],
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"fifteen-chars-x"}]"#,
            ],
            "/legacyConfig/0/lowerDevice",
        ),
        (
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0","mode":"bridged"}]"#,
            ],
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0","mode":"passthru"}]"#,
            ],
            "/legacyConfig/0/mode",
        ),
        (
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0","capacity":4097}]"#,
            ],
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0","capacity":4096}]"#,
            ],
            "/legacyConfig/0/capacity",
        ),
        (
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0"},{"name":"a","lowerDevice":"eth1"}]"#,
            ],
            &[
                "--set-json",
                r#"legacyConfig=[{"name":"a","lowerDevice":"eth0"},{"name":"b","lowerDevice":"eth1"}]"#,
            ],
            "the name \"a\" is used twice",
        ),
        (
            &[
                "--set-json",
                r#"pools=[{"name":"Bad_Name","spec":{"lowerDevice":"eth0"}}]"#,
            ],
            &[
                "--set-json",
                r#"pools=[{"name":"bad-name","spec":{"lowerDevice":"eth0"}}]"#,
            ],
            "/pools/0/name",
        ),
        (
            &["--set-json", r#"pools=[{"name":"p"}]"#],
            &["--set-json", r#"pools=[{"name":"p","spec":{}}]"#],
            "spec",
        ),
        (
            &[
                "--set-json",
                r#"pools=[{"name":"p","spec":{"mode":"bridged"}}]"#,
            ],
            &[
                "--set-json",
                r#"pools=[{"name":"p","spec":{"mode":"vepa"}}]"#,
            ],
            "/pools/0/spec/mode",
        ),
        (
            &[
                "--set-json",
                r#"pools=[{"name":"p","spec":{}},{"name":"p","spec":{}}]"#,
            ],
            &[
                "--set-json",
                r#"pools=[{"name":"p","spec":{}},{"name":"q","spec":{}}]"#,
            ],
            "the name \"p\" is used twice",
        ),
        (
            &["--set", "metrics.serviceMonitor.enabled=true"],
            &[
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--api-versions",
                "monitoring.coreos.com/v1/ServiceMonitor",
            ],
            "no monitoring.coreos.com/v1 ServiceMonitor API",
        ),
    ];
    for (bad, good, needle) in cases {
        let err = render(bad)
            .err()
            .unwrap_or_else(|| panic!("accepted bad values {bad:?}"));
        assert!(
            err.contains(needle),
            "error for {bad:?} does not name {needle:?}:\n{err}"
        );
        render(good).unwrap_or_else(|e| panic!("rejected good values {good:?}: {e}"));
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let list = |dir: PathBuf| -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let generated = list(workspace::root().join("crds/yaml"));
    let in_chart = list(chart_dir().join("crds"));
    assert_eq!(
        generated.iter().map(|f| &f.0).collect::<Vec<_>>(),
        [
            &format!("{CRD_NODE_STATES}.yaml"),
            &format!("{CRD_POOLS}.yaml")
        ]
    );
    assert!(
        generated == in_chart,
        "charts/macvtap-operator/crds/ differs from crds/yaml/: copy them (cp crds/yaml/*.yaml charts/macvtap-operator/crds/)"
    );
}

#[test]
fn chart_images_are_what_the_image_script_builds() {
    let out = Command::new("bash")
        .arg(workspace::root().join("images/build.sh"))
        .arg("--print-refs")
        .env_remove("IMAGE_REGISTRY")
        .output()
        .expect("running images/build.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[1].to_string())
        })
        // The chart runs these two; pause and busybox are the test cluster's own images.
        .filter(|(name, _)| name == "operator" || name == "agent")
        .collect();
    let objs = render_ok(&[]);
    let dep = find(&objs, "Deployment", "rel-macvtap-operator-operator");
    let ds = find(&objs, "DaemonSet", "rel-macvtap-operator-agent");
    assert_eq!(
        refs,
        [
            (
                "operator".to_string(),
                dep["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            ),
            (
                "agent".to_string(),
                ds["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            ),
        ]
    );
    // The default tag is the chart's appVersion, which follows the workspace version.
    let chart_yaml = fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&chart_yaml).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        refs[0]
            .1
            .ends_with(&format!(":{}", env!("CARGO_PKG_VERSION")))
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Against the real API server

fn cp() -> &'static ControlPlane {
    ControlPlane::shared()
}

fn install(release: &str, namespace: &str, extra: &[&str]) {
    let chart = chart_arg();
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    args.extend_from_slice(extra);
    helm(&args, Some(cp().kubeconfig_path())).unwrap_or_else(|e| panic!("{e}"));
}

fn upgrade(release: &str, namespace: &str, extra: &[&str]) {
    let chart = chart_arg();
    let mut args = vec![
        "upgrade",
        release,
        &chart,
        "--namespace",
        namespace,
        "--reuse-values",
    ];
    args.extend_from_slice(extra);
    helm(&args, Some(cp().kubeconfig_path())).unwrap_or_else(|e| panic!("{e}"));
}

fn release_objects(release: &str, namespace: &str) -> Vec<Value> {
    let out = helm(
        &["get", "manifest", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    parse_docs(&out)
}

/// GETs an object as rendered (kind, name, namespace) from the API server.
async fn get_object(
    client: &Client,
    obj: &Value,
    default_ns: &str,
) -> Result<DynamicObject, kube::Error> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap());
    let (ar, caps) = pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap_or(default_ns),
            &ar,
        ),
    };
    api.get(obj["metadata"]["name"].as_str().unwrap()).await
}

fn status_code<T: Debug>(r: &Result<T, kube::Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(s)) => Some(s.code),
        Err(e) => panic!("not an API status error: {e}"),
    }
}

#[track_caller]
fn assert_allowed<T: Debug>(what: &str, r: Result<T, kube::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected to be allowed, got {e}"))
}

/// Asserts the API server refused with 403 and returns its message.
#[track_caller]
fn assert_forbidden<T: Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Neither component may read Secrets (here or anywhere) or list Pods.
async fn assert_no_secrets_or_pods(client: &Client, namespace: &str) {
    assert_forbidden(
        "secrets here",
        Api::<Secret>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "all secrets",
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "pods",
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await,
    );
}

/// Retries `f` until it returns Some (policies reach the admission chain asynchronously).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLICY_SYNC;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {POLICY_SYNC:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create_node(client: &Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"e2e": "chart"}}}))
            .unwrap();
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await.unwrap(),
        Err(e) => panic!("creating node {name}: {e}"),
    }
}

async fn create_node_state(client: &Client, name: &str) {
    let api: Api<MacvtapNodeState> = Api::all(client.clone());
    let ns: MacvtapNodeState = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1",
        "kind": "MacvtapNodeState",
        "metadata": {"name": name},
        "spec": {"resources": []}
    }))
    .unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating node state {name}: {e}"),
    }
}

/// A client authenticated with a raw bearer token.
fn client_with_token(token: String) -> Client {
    let mut config = cp().admin_config();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// A token for `namespace/sa` bound to `pod` (what the kubelet projects into the agent's pods): the API server
/// adds the pod's node name to the user's extra info.
async fn pod_bound_token(namespace: &str, sa: &str, pod: &Pod) -> String {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let resp = Api::<ServiceAccount>::namespaced(cp().admin_client(), namespace)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .expect("TokenRequest bound to a pod");
    resp.status.expect("token status").token
}

async fn watch_allowed<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
{
    // The request is made (and authorized) before the stream is returned.
    api.watch(&WatchParams::default().timeout(1), "0")
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_install_upgrade_uninstall_on_a_real_api_server() {
    let cp = cp();
    let kubeconfig = cp.kubeconfig_path();
    let client = cp.admin_client();
    let (release, namespace) = ("macvtap-operator", "macvtap-system");

    // Install exactly as the README says.
    for cmd in readme_commands("install") {
        run_readme_command(&cmd, kubeconfig);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [CRD_POOLS, CRD_NODE_STATES] {
        let crd = crds
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} after install: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} not Established");
    }
    let objs = release_objects(release, namespace);
    assert!(objs.len() >= 15, "{:?}", kind_names(&objs));
    for o in &objs {
        get_object(&client, o, namespace)
            .await
            .unwrap_or_else(|e| panic!("{} {} not stored: {e}", o["kind"], o["metadata"]["name"]));
    }

    // Upgrade as the README says (no change), then with pools and other values.
    for cmd in readme_commands("upgrade") {
        run_readme_command(&cmd, kubeconfig);
    }
    upgrade(
        release,
        namespace,
        &[
            "--set-json",
            r#"pools=[{"name":"chart-e2e-a","spec":{"lowerDevice":"eth1","capacity":10}},{"name":"chart-e2e-b","spec":{"discovery":{},"mode":"vepa"}}]"#,
            "--set",
            "operator.replicas=3",
            "--set-json",
            r#"legacyConfig=[{"name":"dp","lowerDevice":"eth1"}]"#,
        ],
    );
    // Every object of the upgraded release is stored, the legacy-config ConfigMap among them.
    let upgraded = release_objects(release, namespace);
    assert!(
        kind_names(&upgraded)
            .iter()
            .any(|n| n.starts_with("ConfigMap/")),
        "{:?}",
        kind_names(&upgraded)
    );
    for o in &upgraded {
        get_object(&client, o, namespace)
            .await
            .unwrap_or_else(|e| panic!("{} {} not stored: {e}", o["kind"], o["metadata"]["name"]));
    }
    let pools: Api<MacvtapPool> = Api::all(client.clone());
    let a = pools.get("chart-e2e-a").await.expect("pool from values");
    assert_eq!(a.spec.capacity, 10);
    assert_eq!(a.spec.lower_device.as_deref(), Some("eth1"));
    assert!(
        pools
            .get("chart-e2e-b")
            .await
            .expect("pool from values")
            .spec
            .discovery
            .is_some()
    );
    let deploy = find_by_component(
        &release_objects(release, namespace),
        "Deployment",
        "operator",
    )
    .clone();
    let stored = get_object(&client, &deploy, namespace).await.unwrap();
    assert_eq!(stored.data["spec"]["replicas"], 3);

    // The API server validates pool specs from values with the CRD's rules: a bad one fails the upgrade.
    let err = helm(
        &[
            "upgrade",
            release,
            &chart_arg(),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set-json",
            r#"pools=[{"name":"chart-e2e-bad","spec":{"lowerDevice":"eth1","discovery":{}}}]"#,
        ],
        Some(kubeconfig),
    )
    .expect_err("a pool with both lowerDevice and discovery is invalid");
    assert!(
        err.contains("exactly one of spec.lowerDevice or spec.discovery"),
        "{err}"
    );

    // Dropping a pool from the values deletes it; keepPoolsOnUninstall marks the rest to survive uninstall.
    upgrade(
        release,
        namespace,
        &[
            "--set-json",
            r#"pools=[{"name":"chart-e2e-b","spec":{"discovery":{},"mode":"vepa"}}]"#,
            "--set",
            "keepPoolsOnUninstall=true",
        ],
    );
    assert_eq!(
        status_code(&pools.get("chart-e2e-a").await),
        Some(404),
        "dropped pool is deleted"
    );
    assert!(pools.get("chart-e2e-b").await.is_ok());

    // A pool the user created outside helm.
    let user_pool: MacvtapPool = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": "chart-e2e-user"}, "spec": {"lowerDevice": "eth2"}
    }))
    .unwrap();
    pools
        .create(&PostParams::default(), &user_pool)
        .await
        .unwrap();

    let objs = release_objects(release, namespace);
    for cmd in readme_commands("uninstall") {
        run_readme_command(&cmd, kubeconfig);
    }
    for o in objs.iter().filter(|o| o["kind"] != "MacvtapPool") {
        let r = get_object(&client, o, namespace).await;
        assert_eq!(
            status_code(&r),
            Some(404),
            "{} {} left after uninstall",
            o["kind"],
            o["metadata"]["name"]
        );
    }
    // Helm never deletes crds/: the CRDs, the kept pool and the user's pool stay.
    for name in [CRD_POOLS, CRD_NODE_STATES] {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} after uninstall: {e}"));
    }
    assert!(
        pools.get("chart-e2e-b").await.is_ok(),
        "keepPoolsOnUninstall pool removed"
    );
    assert!(
        pools.get("chart-e2e-user").await.is_ok(),
        "user's pool removed"
    );
    for p in ["chart-e2e-b", "chart-e2e-user"] {
        pools.delete(p, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_service_account_can_do_its_job_and_nothing_more() {
    let (release, namespace) = ("chart-op", "chart-op");
    install(release, namespace, &[]);
    let objs = release_objects(release, namespace);
    let sa = find_by_component(&objs, "ServiceAccount", "operator")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let lease_name = find_by_component(&objs, "Deployment", "operator")["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| {
            a.as_str()
                .unwrap()
                .strip_prefix("--leader-election-id=")
                .map(String::from)
        })
        .unwrap();
    let admin = cp().admin_client();
    let op = cp()
        .client_as_service_account(namespace, &sa)
        .await
        .unwrap();

    let pool_name = "chart-op-pool";
    let admin_pools: Api<MacvtapPool> = Api::all(admin.clone());
    let pool: MacvtapPool = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": pool_name}, "spec": {"lowerDevice": "eth1"}
    }))
    .unwrap();
    let _ = admin_pools.create(&PostParams::default(), &pool).await;
    let node = create_node(&admin, "chart-op-node").await;

    // Pools: watched (list + watch) and their status applied; nothing else.
    let pools: Api<MacvtapPool> = Api::all(op.clone());
    assert_allowed("list pools", pools.list(&ListParams::default()).await);
    assert_allowed("watch pools", watch_allowed(&pools).await);
    assert_forbidden("get pool (unused)", pools.get(pool_name).await);
    let pp = PatchParams::apply("macvtap-operator");
    let status = json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool",
        "metadata": {"name": pool_name},
        "status": {"observedGeneration": 1, "nodesMatched": 1}
    });
    let patched = assert_allowed(
        "apply pool status",
        pools
            .patch_status(pool_name, &pp, &Patch::Apply(&status))
            .await,
    );
    assert_eq!(patched.status.unwrap().nodes_matched, 1);
    assert_forbidden(
        "create pool",
        pools.create(&PostParams::default(), &pool).await,
    );
    assert_forbidden(
        "edit pool spec",
        pools
            .patch(
                pool_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"capacity": 5}})),
            )
            .await,
    );
    assert_forbidden(
        "delete pool",
        pools.delete(pool_name, &DeleteParams::default()).await,
    );

    // Node states: full lifecycle of the spec, never the status.
    let states: Api<MacvtapNodeState> = Api::all(op.clone());
    let state = json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
        "metadata": {"name": "chart-op-node"}, "spec": {"resources": []}
    });
    assert_allowed(
        "apply node state",
        states
            .patch("chart-op-node", &pp, &Patch::Apply(&state))
            .await,
    );
    let listed = assert_allowed(
        "list node states",
        states.list(&ListParams::default()).await,
    );
    assert_allowed("watch node states", watch_allowed(&states).await);
    assert_allowed(
        "merge-patch node state spec",
        states
            .patch(
                "chart-op-node",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"resources": []}})),
            )
            .await,
    );
    assert_forbidden("get node state (unused)", states.get("chart-op-node").await);
    let current = listed
        .items
        .into_iter()
        .find(|s| s.name_any() == "chart-op-node")
        .unwrap();
    assert_forbidden(
        "replace node state (unused)",
        states
            .replace("chart-op-node", &PostParams::default(), &current)
            .await,
    );
    assert_forbidden(
        "node state status",
        states
            .patch_status(
                "chart-op-node",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"agentVersion": "x"}})),
            )
            .await,
    );
    assert_allowed(
        "delete node state",
        states
            .delete("chart-op-node", &DeleteParams::default())
            .await,
    );

    // Nodes: watched (nodes/status only with cleanStaleNodeResources, below).
    let nodes: Api<Node> = Api::all(op.clone());
    assert_allowed("list nodes", nodes.list(&ListParams::default()).await);
    assert_allowed("watch nodes", watch_allowed(&nodes).await);
    assert_forbidden("get node (unused)", nodes.get(&node.name_any()).await);
    assert_forbidden(
        "label node",
        nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
    );
    let stale = json!({"status": {"capacity": {"macvtap.network.kubevirt.io/gone": null}}});
    assert_forbidden(
        "node status without cleanStaleNodeResources",
        nodes
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&stale),
            )
            .await,
    );

    // Events about cluster-scoped pools go to "default", through events.k8s.io (kube's Recorder: create, then
    // patch for a series); the core Event API is not used.
    let now = "2026-01-01T00:00:00.000000Z";
    let core_event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "chart-op-pool.1", "namespace": "default"},
        "involvedObject": {"apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool", "name": pool_name},
        "reason": "Test", "message": "m", "type": "Normal", "source": {"component": "macvtap-operator"}
    }))
    .unwrap();
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(op.clone(), "default");
    assert_forbidden(
        "core event (unused)",
        core_events
            .create(&PostParams::default(), &core_event)
            .await,
    );
    let new_event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "chart-op-pool.2", "namespace": "default"},
        "eventTime": now, "reportingController": "macvtap.network.kubevirt.io/operator",
        "reportingInstance": "test", "action": "Reconcile", "reason": "Test", "type": "Normal",
        "regarding": {"apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapPool", "name": pool_name}
    }))
    .unwrap();
    let new_events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(op.clone(), "default");
    assert_allowed(
        "events.k8s.io event",
        new_events.create(&PostParams::default(), &new_event).await,
    );
    assert_allowed(
        "events.k8s.io event series",
        new_events
            .patch(
                "chart-op-pool.2",
                &PatchParams::default(),
                &Patch::Merge(json!({"series": {"count": 2, "lastObservedTime": now}})),
            )
            .await,
    );
    // (Granted by the ClusterRole: "default" is not the release namespace, so a Role there could not do this.)

    // Leader election: its own Lease in its namespace only.
    let leases: Api<Lease> = Api::namespaced(op.clone(), namespace);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease_name}, "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    assert_allowed(
        "create lease",
        leases.create(&PostParams::default(), &lease).await,
    );
    let got = assert_allowed("get lease", leases.get(&lease_name).await);
    assert_forbidden(
        "replace lease (unused)",
        leases
            .replace(&lease_name, &PostParams::default(), &got)
            .await,
    );
    assert_forbidden("watch lease (unused)", watch_allowed(&leases).await);
    assert_allowed(
        "patch lease",
        leases
            .patch(
                &lease_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "pod-b"}})),
            )
            .await,
    );
    assert_forbidden(
        "get another lease",
        leases.get("kube-controller-manager").await,
    );
    assert_forbidden("list leases", leases.list(&ListParams::default()).await);
    let other_ns: Api<Lease> = Api::namespaced(op.clone(), "default");
    assert_forbidden(
        "lease in another namespace",
        other_ns.create(&PostParams::default(), &lease).await,
    );
    assert_forbidden(
        "delete lease (unused)",
        leases.delete(&lease_name, &DeleteParams::default()).await,
    );
    // The lease manager's own calls: a server-side apply patch of the named Lease.
    assert_allowed(
        "apply lease",
        leases
            .patch(
                &lease_name,
                &PatchParams::apply("macvtap-operator-test").force(),
                &Patch::Apply(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "spec": {"holderIdentity": "pod-c"}
                })),
            )
            .await,
    );
    Api::<Lease>::namespaced(cp().admin_client(), namespace)
        .delete(&lease_name, &DeleteParams::default())
        .await
        .unwrap();

    // Never secrets, nor anything else.
    assert_forbidden(
        "get a secret",
        Api::<Secret>::namespaced(op.clone(), namespace)
            .get("x")
            .await,
    );
    assert_forbidden(
        "configmaps",
        Api::<ConfigMap>::namespaced(op.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    assert_no_secrets_or_pods(&op, namespace).await;

    // The value that grants nodes/status really does.
    upgrade(
        release,
        namespace,
        &["--set", "operator.cleanStaleNodeResources=true"],
    );
    assert_allowed(
        "node status with cleanStaleNodeResources",
        nodes
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&stale),
            )
            .await,
    );

    helm(
        &["uninstall", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap();
    admin_pools
        .delete(pool_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_service_account_writes_only_its_own_nodes_status() {
    let (release, namespace) = ("chart-ag", "chart-ag");
    install(release, namespace, &[]);
    let objs = release_objects(release, namespace);
    let sa = find_by_component(&objs, "ServiceAccount", "agent")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let image =
        find_by_component(&objs, "DaemonSet", "agent")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .to_string();
    let admin = cp().admin_client();
    let (mine, other) = ("chart-ag-node-a", "chart-ag-node-b");
    for n in [mine, other] {
        create_node(&admin, n).await;
        create_node_state(&admin, n).await;
    }
    // What the DaemonSet controller would create on node a (no controller-manager here), and its token.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-on-a", "namespace": namespace},
        "spec": {"nodeName": mine, "serviceAccountName": sa, "containers": [{"name": "agent", "image": image}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let agent = client_with_token(pod_bound_token(namespace, &sa, &pod).await);

    // The agent's calls: watch its own state (list + watch by field selector), apply its status.
    let states: Api<MacvtapNodeState> = Api::all(agent.clone());
    assert_forbidden("get own state (unused)", states.get(mine).await);
    assert_allowed(
        "list states",
        states
            .list(&ListParams::default().fields(&format!("metadata.name={mine}")))
            .await,
    );
    assert_allowed("watch states", watch_allowed(&states).await);
    assert_allowed(
        "apply own status",
        states
            .patch_status(
                mine,
                &PatchParams::apply("macvtap-agent").force(),
                &Patch::Apply(json!({
                    "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
                    "status": {"agentVersion": "0.0.1"}
                })),
            )
            .await,
    );
    let status = |v: &str| json!({"status": {"agentVersion": v}});
    let done = assert_allowed(
        "own status",
        states
            .patch_status(
                mine,
                &PatchParams::default(),
                &Patch::Merge(status("0.1.0")),
            )
            .await,
    );
    assert_eq!(done.status.unwrap().agent_version.as_deref(), Some("0.1.0"));
    let current = Api::<MacvtapNodeState>::all(admin.clone())
        .get(mine)
        .await
        .unwrap();
    assert_forbidden(
        "replace own status (unused)",
        states
            .replace_status(mine, &PostParams::default(), &current)
            .await,
    );

    // Another node's state: RBAC allows status writes, the admission policy must refuse them.
    let msg = eventually("policy refuses another node's status", || async {
        let r = states
            .patch_status(
                other,
                &PatchParams::default(),
                &Patch::Merge(status("evil")),
            )
            .await;
        (status_code(&r) == Some(403)).then(|| format!("{r:?}"))
    })
    .await;
    assert!(
        msg.contains(&format!(
            "may write only MacvtapNodeState {mine}, not {other}"
        )),
        "{msg}"
    );
    let theirs = Api::<MacvtapNodeState>::all(admin.clone())
        .get(other)
        .await
        .unwrap();
    assert_forbidden(
        "replace another node's status",
        states
            .replace_status(other, &PostParams::default(), &theirs)
            .await,
    );

    // Spec, create, delete: RBAC.
    let spec_patch =
        Patch::Merge(json!({"spec": {"resources": []}, "metadata": {"labels": {"x": "y"}}}));
    assert_forbidden(
        "own spec",
        states
            .patch(mine, &PatchParams::default(), &spec_patch)
            .await,
    );
    assert_forbidden(
        "delete own state",
        states.delete(mine, &DeleteParams::default()).await,
    );
    let new_state: MacvtapNodeState = serde_json::from_value(json!({
        "apiVersion": "macvtap.network.kubevirt.io/v1alpha1", "kind": "MacvtapNodeState",
        "metadata": {"name": "chart-ag-node-c"}, "spec": {"resources": []}
    }))
    .unwrap();
    assert_forbidden(
        "create a state",
        states.create(&PostParams::default(), &new_state).await,
    );

    // Nodes: nothing. Nothing else.
    let nodes: Api<Node> = Api::all(agent.clone());
    assert_forbidden("get own node (unused)", nodes.get(mine).await);
    assert_forbidden("list nodes", nodes.list(&ListParams::default()).await);
    assert_forbidden(
        "node status",
        nodes
            .patch_status(mine, &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
    );
    assert_forbidden(
        "pools",
        Api::<MacvtapPool>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_no_secrets_or_pods(&agent, namespace).await;

    // A token not bound to a pod names no node: refused even for "its own" object.
    let unbound = cp()
        .client_as_service_account(namespace, &sa)
        .await
        .unwrap();
    let msg = assert_forbidden(
        "unbound token",
        Api::<MacvtapNodeState>::all(unbound)
            .patch_status(mine, &PatchParams::default(), &Patch::Merge(status("x")))
            .await,
    );
    assert!(msg.contains("pod-bound ServiceAccount token"), "{msg}");

    // The operator is not subject to the agent policy.
    let op_sa = find_by_component(&objs, "ServiceAccount", "operator")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let op = cp()
        .client_as_service_account(namespace, &op_sa)
        .await
        .unwrap();
    assert_allowed(
        "operator writes any node state",
        Api::<MacvtapNodeState>::all(op)
            .patch(
                other,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await,
    );

    // Without the policy, RBAC alone would let the agent write other nodes' status: the policy is what refuses.
    upgrade(
        release,
        namespace,
        &["--set", "agent.nodeStatePolicy.enabled=false"],
    );
    eventually(
        "another node's status accepted once the policy is gone",
        || async {
            states
                .patch_status(
                    other,
                    &PatchParams::default(),
                    &Patch::Merge(status("evil")),
                )
                .await
                .ok()
        },
    )
    .await;

    helm(
        &["uninstall", release, "--namespace", namespace],
        Some(cp().kubeconfig_path()),
    )
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), namespace)
        .delete("agent-on-a", &DeleteParams::default())
        .await
        .unwrap();
    for n in [mine, other] {
        Api::<MacvtapNodeState>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
        Api::<Node>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}
