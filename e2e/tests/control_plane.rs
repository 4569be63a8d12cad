//! The control plane fixture against the real etcd + kube-apiserver: admin access, ServiceAccount tokens under
//! RBAC, kubeconfigs usable by the built kubectl, and teardown (drop, panic, process exit, abort).
//! A list of independent cases over one control plane, hence just over 400 lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use macvtap_e2e::control_plane::ControlPlane;
use macvtap_e2e::tools;

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn admin_lists_namespaces_and_server_reports_the_pinned_version() {
    let cp = ControlPlane::shared();
    assert!(
        cp.server_url().starts_with("https://127.0.0.1:"),
        "{}",
        cp.server_url()
    );
    let client = cp.admin_client();
    let names: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("admin lists namespaces")
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    for ns in ["default", "kube-system", "kube-public"] {
        assert!(names.iter().any(|n| n == ns), "{ns} missing from {names:?}");
    }
    // The build stamps the version (helm's kubeVersion checks read it); an unstamped build says v0.0.0-master.
    let info = client.apiserver_version().await.unwrap();
    assert!(info.git_version.starts_with("v1."), "{info:?}");
    assert_eq!(info.major, "1", "{info:?}");
}

#[tokio::test]
async fn service_account_is_refused_until_rbac_grants_it() {
    let cp = ControlPlane::shared();
    let ns = "rbac-test";
    cp.create_service_account(ns, "reader").await.unwrap();
    let sa = cp.client_as_service_account(ns, "reader").await.unwrap();

    let review = Api::<SelfSubjectReview>::all(sa.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("any authenticated user may review itself");
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        user.as_deref(),
        Some("system:serviceaccount:rbac-test:reader")
    );

    let cms = Api::<ConfigMap>::namespaced(sa.clone(), ns);
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err}");

    let admin = cp.admin_client();
    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader-reads-configmaps".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The RBAC authorizer reads roles from an informer cache: allow it a moment to see the new binding.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cms.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if api_code(&e) == Some(403) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still refused after the RoleBinding: {e}"),
        }
    }
    // The grant is exactly what the Role says: not other resources, verbs or namespaces.
    let err = Api::<Secret>::namespaced(sa.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err}");
    let err = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("x".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err}");
    let err = Api::<ConfigMap>::namespaced(sa, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err}");
}

#[tokio::test]
async fn token_of_a_missing_service_account_is_refused() {
    let cp = ControlPlane::shared();
    let err = match cp
        .client_as_service_account("default", "does-not-exist")
        .await
    {
        Ok(_) => panic!("a token for a missing ServiceAccount"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("not found"), "{err}");
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(tools::require("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn kubeconfigs_work_with_the_built_kubectl() {
    let cp = ControlPlane::shared();
    let admin = cp.kubeconfig_path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        kubectl(
            &admin,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
        )
    })
    .await
    .unwrap();
    assert!(out.contains("system:masters"), "{out}");

    cp.create_service_account("kubectl-test", "agent")
        .await
        .unwrap();
    let sa = cp
        .write_service_account_kubeconfig("kubectl-test", "agent")
        .await
        .unwrap();
    let (who, can) = tokio::task::spawn_blocking(move || {
        let who = kubectl(
            &sa,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        // `auth can-i` exits 1 for "no"; it still prints the answer.
        let can = Command::new(tools::require("kubectl"))
            .arg(format!("--kubeconfig={}", sa.display()))
            .args(["auth", "can-i", "list", "pods"])
            .output()
            .unwrap();
        (who, String::from_utf8_lossy(&can.stdout).trim().to_string())
    })
    .await
    .unwrap();
    assert_eq!(who, "system:serviceaccount:kubectl-test:agent");
    assert_eq!(can, "no");
}

#[tokio::test]
async fn helm_installs_a_chart_with_a_kube_version_constraint() {
    let cp = ControlPlane::shared();
    let chart = tempfile::tempdir().unwrap();
    // kubeVersion makes helm check the server's version, which an unstamped kube-apiserver fails.
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::create_dir(chart.path().join("templates")).unwrap();
    std::fs::write(
        chart.path().join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: helm-probe\ndata:\n  release: {{ .Release.Name | quote }}\n",
    )
    .unwrap();
    let mut install = cp.helm().unwrap();
    install
        .args(["install", "probe"])
        .arg(chart.path())
        .args(["--namespace", "default", "--wait"]);
    let out = tokio::task::spawn_blocking(move || install.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cm = Api::<ConfigMap>::namespaced(cp.admin_client(), "default")
        .get("helm-probe")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["release"], "probe");

    let mut uninstall = cp.helm().unwrap();
    uninstall.args(["uninstall", "probe", "--namespace", "default", "--wait"]);
    let out = tokio::task::spawn_blocking(move || uninstall.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = Api::<ConfigMap>::namespaced(cp.admin_client(), "default")
        .get_opt("helm-probe")
        .await
        .unwrap();
    assert!(gone.is_none());
}

// --- teardown ------------------------------------------------------------------------------------------------

/// True while `pid` is a live (non-zombie) etcd or kube-apiserver; a reused pid of another program is gone.
fn server_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let comm_and_state = stat.split_once(" (").map(|(_, rest)| rest).unwrap_or("");
    let (comm, rest) = comm_and_state.rsplit_once(") ").unwrap_or(("", ""));
    let zombie = rest.starts_with('Z');
    !zombie && (comm == "etcd" || comm.starts_with("kube-apiserver"))
}

fn assert_gone_within(dir: &Path, pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| server_alive(*p)).collect();
        if alive.is_empty() && !dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {within:?}: servers alive {alive:?}, dir exists: {}",
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn drop_during_a_panic_stops_the_servers_and_removes_the_dir() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let cp = ControlPlane::start().unwrap();
        assert!(cp.pids().iter().all(|p| server_alive(*p)));
        assert!(cp.dir().join("admin.kubeconfig").is_file());
        tx.send((cp.dir().to_path_buf(), cp.pids())).unwrap();
        panic!("a failing test");
    });
    assert!(test.join().is_err());
    let (dir, pids) = rx.recv().unwrap();
    // Drop waits for the processes, so they are gone right away.
    assert_gone_within(&dir, &pids, Duration::ZERO);
}

const CHILD_ENV: &str = "MACVTAP_E2E_CHILD_MODE";

/// Runs as a child process of the teardown tests below (ignored when run directly).
#[tokio::test]
#[ignore = "helper: run as a child process by the teardown tests"]
async fn child_process_helper() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    // An API server stopped and started again must be cleaned up like the first one.
    let restarted;
    let cp = if mode == "restart-abort" {
        let mut cp = ControlPlane::start().expect("a control plane");
        cp.stop_apiserver();
        cp.start_apiserver().expect("the API server starts again");
        restarted = cp;
        &restarted
    } else {
        ControlPlane::shared()
    };
    Api::<Namespace>::all(cp.admin_client())
        .list(&ListParams::default())
        .await
        .expect("the control plane serves");
    let [a, b] = cp.pids();
    println!("CHILD-INFO {a} {b} {}", cp.dir().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    if mode.ends_with("abort") {
        // No unwinding, no atexit: only the pdeathsig and the reaper can clean up.
        std::process::abort();
    }
}

fn run_child(mode: &str, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn child_info(out: &std::process::Output) -> (Vec<u32>, PathBuf) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-INFO ").map(|(_, info)| info))
        .unwrap_or_else(|| {
            panic!(
                "child printed no info: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut parts = line.splitn(3, ' ');
    let a = parts.next().unwrap().parse().unwrap();
    let b = parts.next().unwrap().parse().unwrap();
    (vec![a, b], PathBuf::from(parts.next().unwrap()))
}

#[test]
fn shared_control_plane_is_gone_after_the_test_process_exits() {
    let out = run_child("exit", &[]);
    assert!(out.status.success(), "{out:?}");
    let (pids, dir) = child_info(&out);
    assert_gone_within(&dir, &pids, Duration::from_secs(10));
}

#[test]
fn shared_control_plane_is_gone_after_the_test_process_aborts() {
    let out = run_child("abort", &[]);
    assert!(!out.status.success(), "{out:?}");
    let (pids, dir) = child_info(&out);
    assert_gone_within(&dir, &pids, Duration::from_secs(10));
}

#[test]
fn api_server_started_again_is_gone_after_the_test_process_aborts() {
    let out = run_child("restart-abort", &[]);
    assert!(!out.status.success(), "{out:?}");
    let (pids, dir) = child_info(&out);
    assert_gone_within(&dir, &pids, Duration::from_secs(10));
}

/// An outage of the API server alone: clients fail while it is down; started again it serves the same objects
/// (etcd kept them) at the same URL with the same credentials; drop stops the new process.
#[tokio::test]
async fn api_server_stopped_and_started_again_serves_the_same_objects() {
    let mut cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap()
        .expect("a control plane");
    let cms = Api::<ConfigMap>::namespaced(cp.admin_client(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("kept".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let [_, first] = cp.pids();
    cp.stop_apiserver();
    assert!(!cp.apiserver_running());
    assert!(!server_alive(first));
    assert!(
        cms.get("kept").await.is_err(),
        "nothing answers while it is down"
    );
    let mut cp = tokio::task::spawn_blocking(move || cp.start_apiserver().map(|()| cp))
        .await
        .unwrap()
        .expect("the API server starts again");
    let [etcd, second] = cp.pids();
    assert_ne!(first, second);
    assert!(cp.apiserver_running() && server_alive(second));
    // A client made before the outage reconnects; the object is still there.
    assert!(cms.get("kept").await.is_ok());
    assert!(cp.dir().join("kube-apiserver.1.log").is_file());
    let dir = cp.dir().to_path_buf();
    drop(cp);
    assert_gone_within(&dir, &[etcd, second], Duration::ZERO);
}

#[test]
fn missing_tools_fail_the_test_with_a_build_hint() {
    let empty = tempfile::tempdir().unwrap();
    let out = run_child(
        "exit",
        &[(tools::CACHE_ENV, empty.path().to_str().unwrap())],
    );
    assert!(!out.status.success(), "a missing tool must fail, not skip");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.contains("e2e/tools/build-tools.sh"), "{output}");
}
