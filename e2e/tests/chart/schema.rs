//! Offline: the values schema and template checks refuse bad values; the chart's CRDs and images are the
//! ones the repository generates and builds.

use super::*;

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
            &["--set", "agent.metricsPort=70000"],
            &["--set", "agent.metricsPort=7000"],
            "/agent/metricsPort",
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
