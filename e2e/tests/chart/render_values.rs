//! Offline: what other values render.

use super::*;

#[test]
fn non_default_values_render_what_they_say() {
    let objs = render_ok(&[
        "--set-json",
        r#"legacyConfig=[{"name":"dataplane","lowerDevice":"eth1","mode":"vepa","capacity":20}]"#,
        "--set-json",
        r#"pools=[{"name":"p1","labels":{"team":"net"},"spec":{"lowerDevice":"eth1","capacity":20}},{"name":"p2","spec":{"discovery":{}}}]"#,
        "--set",
        "keepPoolsOnUninstall=true,agent.privileged=true,agent.metricsPort=9900,agent.kubeletDir=/var/lib/k0s/kubelet,agent.stateDir=/srv/macvtap",
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
            "--state-dir=/srv/macvtap",
            "--config-file=/etc/macvtap/dp-macvtap-conf.json"
        ]
    );
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(state["hostPath"]["path"], "/srv/macvtap");
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "state" && m["mountPath"] == "/srv/macvtap"),
        "{:?}",
        c["volumeMounts"]
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
            "/var/lib/k0s/kubelet/pod-resources",
            "/srv/macvtap"
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

/// Both components name their admin port (`/metrics`, `/healthz`, `/readyz`) `metricsPort`; `agent.port`, the
/// agent's old name, still works and wins when set, so values files written for older charts keep their port.
#[test]
fn agent_metrics_port_and_its_deprecated_alias() {
    let agent_port = |extra: &[&str]| {
        let objs = render_ok(extra);
        let ds = find_by_component(&objs, "DaemonSet", "agent");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        let svc = find_by_component(&objs, "Service", "agent");
        let health = strs(&c["args"])
            .into_iter()
            .find(|a| a.starts_with("--health-addr="))
            .expect("--health-addr");
        (
            health,
            c["ports"][0]["containerPort"].as_u64().unwrap(),
            svc["spec"]["ports"][0]["port"].as_u64().unwrap(),
        )
    };
    let on = |port: u64| (format!("--health-addr=0.0.0.0:{port}"), port, port);
    assert_eq!(agent_port(&[]), on(9808));
    assert_eq!(agent_port(&["--set", "agent.metricsPort=9901"]), on(9901));
    assert_eq!(agent_port(&["--set", "agent.port=9900"]), on(9900));
    assert_eq!(
        agent_port(&["--set", "agent.port=9900,agent.metricsPort=9901"]),
        on(9900)
    );
    let values = fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(
        values.contains("  metricsPort: 8080\n") && values.contains("  metricsPort: 9808\n"),
        "both components' defaults are named metricsPort"
    );
    assert!(
        !values.lines().any(|l| l.starts_with("  port:")),
        "agent.port is not set by default (it would win over agent.metricsPort)"
    );
}
