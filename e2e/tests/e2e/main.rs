//! End to end on a real cluster (see `macvtap_e2e::cluster`): kubelet + containerd + runc per node, the
//! scheduler and controller-manager, the chart installed with helm so the operator and the agents run as pods
//! from our images, Multus calling our `macvtap` CNI. The scenarios of the README and config/, and those only a
//! real cluster can show (kubelet restart, agent pod recreated, drain, many pods at once, scheduling limits).
//!
//! One cluster runs every scenario in turn (bringing one up costs a minute or two); each scenario reports on its
//! own and the test fails listing every scenario that failed.

mod attach;
mod chart_pods;
mod injector;
mod kube_ovn;
mod node_events;
mod outages;
mod pools;
mod reboot;
mod refusals;
mod squatters;
mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use macvtap_api::MacvtapPool;
use macvtap_e2e::cluster::Cluster;
use macvtap_e2e::cluster::pods::RunningPod;
use macvtap_e2e::cluster::resources::{pool_ready, resource_name};
use macvtap_e2e::tap::Tap;
use macvtap_e2e::wait;
use macvtap_e2e::workspace::config_file;

type Scenario = for<'a> fn(&'a mut Cluster) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

use attach::*;
use chart_pods::*;
use injector::*;
use kube_ovn::*;
use node_events::*;
use outages::*;
use pools::*;
use reboot::*;
use refusals::*;
use squatters::*;
use support::*;

#[test]
fn end_to_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start_with_chart()
            .await
            .expect("the cluster with the chart");
        let scenarios: Vec<(&str, Scenario)> = vec![
            (
                "every node runs containerd 2.x (kubectl get nodes -o wide)",
                |c| Box::pin(nodes_run_containerd_2(c)),
            ),
            (
                "operator and agents run as pods, logs, leader election",
                |c| Box::pin(chart_runs_as_pods(c)),
            ),
            ("dataplane pool + NAD + pod, delete, reuse", |c| {
                Box::pin(dataplane(c))
            }),
            ("pod with MAC in the selection annotation", |c| {
                Box::pin(pod_with_mac(c))
            }),
            ("device-plugin-only pod", |c| {
                Box::pin(device_plugin_only(c))
            }),
            (
                "data path through /dev/tapN, same node and across nodes",
                |c| Box::pin(data_path(c)),
            ),
            ("pool capacity edit reaches the Node's allocatable", |c| {
                Box::pin(capacity_edit(c))
            }),
            ("lower device down -> Degraded, up -> Ready", |c| {
                Box::pin(lower_device_down(c))
            }),
            (
                "kube-ovn IPAM: fixed IP, fixed MAC, both, default network",
                |c| Box::pin(kube_ovn(c)),
            ),
            ("kubelet restart while a pod holds a device", |c| {
                Box::pin(kubelet_restart(c))
            }),
            (
                "kubelet killed, socket left: agent unready, node state says why, pool Degraded; back: Ready",
                |c| Box::pin(kubelet_outage(c)),
            ),
            (
                "node reboot: pods Running again at their tap indices, taps work, nothing left after",
                |c| Box::pin(node_reboot(c)),
            ),
            (
                "refusals by the real kubelet: another pod's device, no request, another resource, 11",
                |c| Box::pin(refusals_by_the_kubelet(c)),
            ),
            (
                "API server down 60 s: traffic, agents serving, links and our pods untouched; back: status current",
                |c| Box::pin(apiserver_outage(c)),
            ),
            (
                "agent outage: a device holder's container restart waits for PreStartContainer, traffic flows",
                |c| Box::pin(agent_outage(c)),
            ),
            (
                "agent pod deleted: recreated, links in use untouched, orphans cleaned",
                |c| Box::pin(agent_recreated(c)),
            ),
            ("node drained: devices free again", |c| Box::pin(drain(c))),
            (
                "squatter with CAP_NET_ADMIN takes guessable and flooded tap indices: victims get their own",
                |c| Box::pin(squatters(c)),
            ),
            ("50 pods at once on one node, through the kubelet's rate limit", |c| {
                Box::pin(fifty_at_once(c))
            }),
            ("capacity used up: Pending, Unschedulable", |c| {
                Box::pin(capacity_exhausted(c))
            }),
            (
                "injector: the original README's pods and the kube-ovn variants without limits run with net1",
                |c| Box::pin(injector_original_pods(c)),
            ),
            (
                "injector: one NAD twice, a NAD in another namespace, a limit already set, a missing NAD",
                |c| Box::pin(injector_attachments(c)),
            ),
            (
                "injector: pods without annotations, of kube-system and of the operator's namespace are never sent",
                |c| Box::pin(injector_not_sent(c)),
            ),
            ("injector: kubectl warns about bad macvtap NADs", |c| {
                Box::pin(injector_nad_warnings(c))
            }),
            (
                "injector: certificate rotation while pods are created",
                |c| Box::pin(injector_rotation(c)),
            ),
            (
                "injector: webhook down under Fail and under Ignore",
                |c| Box::pin(injector_down(c)),
            ),
            ("injector: figures", |c| Box::pin(injector_figures(c))),
        ];
        // E2E_ONLY=<part of a name>[,...] runs the matching scenarios only (development); it must match one.
        let only = std::env::var("E2E_ONLY").ok();
        let mut ran = 0;
        let mut failed = Vec::new();
        for (name, scenario) in scenarios {
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|o| name.contains(o)))
            {
                continue;
            }
            ran += 1;
            eprintln!("--- scenario: {name}");
            let t = std::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(420), scenario(&mut cluster)).await {
                Ok(Ok(())) => eprintln!("--- ok ({:.1?}): {name}", t.elapsed()),
                Ok(Err(e)) => {
                    eprintln!("--- FAILED: {name}: {e:#}");
                    for node in ["node-a", "node-b"] {
                        if let Ok(p) = cluster.agent_pod(node).await {
                            let logs = cluster
                                .kubectl_out(&[
                                    "logs",
                                    "-n",
                                    "macvtap-system",
                                    &p.name_any(),
                                    "-c",
                                    "agent",
                                    "--tail=25",
                                ])
                                .unwrap_or_else(|e| e.to_string());
                            eprintln!("--- agent on {node}:\n{logs}");
                            // A restarted agent: why its previous container ended, and its last words.
                            let statuses = cluster
                                .kubectl_out(&[
                                    "get",
                                    "pod",
                                    "-n",
                                    "macvtap-system",
                                    &p.name_any(),
                                    "-o",
                                    "jsonpath={.status.containerStatuses}",
                                ])
                                .unwrap_or_else(|e| e.to_string());
                            if statuses.contains("\"terminated\"") {
                                let previous = cluster
                                    .kubectl_out(&[
                                        "logs",
                                        "-n",
                                        "macvtap-system",
                                        &p.name_any(),
                                        "-c",
                                        "agent",
                                        "--previous",
                                        "--tail=40",
                                    ])
                                    .unwrap_or_else(|e| e.to_string());
                                eprintln!(
                                    "--- agent on {node} restarted: {statuses}\n--- its previous container:\n{previous}"
                                );
                            }
                        }
                    }
                    failed.push(format!("{name}: {e:#}"));
                }
                Err(_) => failed.push(format!("{name}: timed out")),
            }
        }
        drop(cluster);
        assert!(ran > 0, "E2E_ONLY={only:?} matched no scenario");
        assert!(
            failed.is_empty(),
            "{} scenario(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    });
}
