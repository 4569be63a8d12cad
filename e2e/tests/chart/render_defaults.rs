//! Offline: lint, and what the default values render.

use super::*;

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
        "Role/rel-macvtap-operator-operator-webhook-certs",
        "RoleBinding/rel-macvtap-operator-operator-webhook-certs",
        "Service/rel-macvtap-operator-webhook",
        "MutatingWebhookConfiguration/rel-macvtap-operator-injector",
        "ValidatingWebhookConfiguration/rel-macvtap-operator-nad-warnings",
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
                | "MutatingWebhookConfiguration"
                | "ValidatingWebhookConfiguration"
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
            "--webhook-addr=0.0.0.0:9443",
            "--webhook-service=rel-macvtap-operator-webhook",
            "--webhook-secret=rel-macvtap-operator-webhook-tls",
            "--webhook-certs=operator",
            "--webhook-cert-validity-seconds=31536000",
            "--mutating-webhook-config=rel-macvtap-operator-injector",
            "--validating-webhook-config=rel-macvtap-operator-nad-warnings",
            "--injector-resource-prefix=macvtap.network.kubevirt.io/",
        ]
    );
    assert_eq!(c["env"][0], json!({"name": "RUST_LOG", "value": "info"}));
    assert_eq!(
        c["env"][1],
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"},
            {"name": "https-webhook", "containerPort": 9443, "protocol": "TCP"}
        ])
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
            "--status-heartbeat-secs=30",
            "--state-dir=/var/lib/macvtap-operator"
        ]
    );
    assert_eq!(env_names(c), ["RUST_LOG", "NODE_NAME"]);
    assert_eq!(
        c["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // A busy node's slow answer must not restart the agent.
    assert_eq!(c["livenessProbe"]["timeoutSeconds"], 5);
    assert_eq!(c["readinessProbe"]["timeoutSeconds"], 5);
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
            "/var/lib/kubelet/pod-resources",
            "/var/lib/macvtap-operator"
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
    let state = mounts.iter().find(|m| m["name"] == "state").unwrap();
    assert_eq!(
        state["mountPath"], "/var/lib/macvtap-operator",
        "the records name host paths: mounted where the host has them"
    );
    assert!(
        !mounts.iter().any(|m| m["name"] == "cni-bin"),
        "only the init container touches the CNI dir"
    );
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], c["image"]);
    assert_eq!(
        strs(&init["args"]),
        [
            "install-cni",
            "--dest=/host/opt/cni/bin",
            "--state-dir=/var/lib/macvtap-operator",
            "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock"
        ]
    );
    assert_eq!(env_names(init), ["NODE_NAME"]);
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "cni-bin", "mountPath": "/host/opt/cni/bin"}])
    );
    assert!(init["securityContext"]["capabilities"]["add"].is_null());

    // RBAC: exactly the calls the binaries make (each checked against a real API server below); secrets only in
    // the webhook certificates' Role.
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
    want.extend(grant(
        "k8s.cni.cncf.io",
        "network-attachment-definitions",
        &["get", "list", "watch"],
    ));
    let a = "admissionregistration.k8s.io";
    want.extend(grant(a, "mutatingwebhookconfigurations", &["get", "patch"]));
    want.extend(grant(
        a,
        "validatingwebhookconfigurations",
        &["get", "patch"],
    ));
    assert_eq!(grants(op), want);
    for (groups, _, _, names) in rules(op) {
        if groups.contains(a) {
            assert_eq!(names.len(), 1, "only its own webhook configurations");
        }
    }
    let certs = rules(find(
        &objs,
        "Role",
        "rel-macvtap-operator-operator-webhook-certs",
    ));
    assert_eq!(certs.len(), 2);
    for (_, resources, verbs, names) in &certs {
        assert_eq!(strs(&json!(resources)), ["secrets"]);
        if verbs.contains("create") {
            assert_eq!(verbs.len(), 1);
        } else {
            assert_eq!(strs(&json!(names)), ["rel-macvtap-operator-webhook-tls"]);
            assert_eq!(strs(&json!(verbs)), ["get", "update"]);
        }
    }

    // The injector: only pods naming a Multus network, never the release namespace or kube-system, the chosen
    // failurePolicy; no caBundle in the chart (the operator writes it).
    let mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "rel-macvtap-operator-injector",
    );
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(
        hook["clientConfig"],
        json!({"service": {"name": "rel-macvtap-operator-webhook", "namespace": "macvtap-system",
               "path": "/mutate-pods", "port": 443}})
    );
    assert_eq!(strs(&hook["rules"][0]["operations"]), ["CREATE"]);
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
               "values": ["macvtap-system", "kube-system"]})
    );
    let cond = hook["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(
        cond.contains("'k8s.v1.cni.cncf.io/networks' in object.metadata.annotations")
            && cond.contains("'v1.multus-cni.io/default-network' in object.metadata.annotations"),
        "{cond}"
    );
    let vwc = find(
        &objs,
        "ValidatingWebhookConfiguration",
        "rel-macvtap-operator-nad-warnings",
    );
    assert_eq!(
        vwc["webhooks"][0]["failurePolicy"], "Ignore",
        "NADs are never refused"
    );
    let svc = find(&objs, "Service", "rel-macvtap-operator-webhook");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https-webhook");
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
            o["metadata"]["name"] == "rel-macvtap-operator-operator-webhook-certs"
                || !o.to_string().contains("\"secrets\""),
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
