//! The chart's workloads as pods: logs, leader election.

use super::*;

/// Every node's runtime, as `kubectl get nodes -o wide` shows it to a user: containerd 2.x.
pub async fn nodes_run_containerd_2(c: &mut Cluster) -> Result<()> {
    let wide = c.kubectl_out(&["get", "nodes", "-o", "wide"])?;
    // Columns are aligned, and OS-IMAGE has spaces: the runtime starts where its header does.
    let header = wide.lines().next().unwrap_or_default();
    let column = header
        .find("CONTAINER-RUNTIME")
        .with_context(|| format!("no CONTAINER-RUNTIME column in:\n{wide}"))?;
    let runtimes: Vec<&str> = wide
        .lines()
        .skip(1)
        .filter_map(|l| l.get(column..)?.split_whitespace().next())
        .collect();
    ensure!(
        runtimes.len() == c.nodes.len()
            && runtimes.iter().all(|r| r.starts_with("containerd://2.")),
        "every node on containerd 2.x:\n{wide}"
    );
    Ok(())
}

pub async fn chart_runs_as_pods(c: &mut Cluster) -> Result<()> {
    let ns = c.chart.namespace.clone();
    // Both agents and both operator replicas answer `kubectl logs`; one replica leads.
    for node in c
        .nodes
        .iter()
        .map(|n| n.name().to_string())
        .collect::<Vec<_>>()
    {
        let agent = c.agent_pod(&node).await?;
        let logs = c.kubectl_out(&["logs", "-n", &ns, &agent.name_any(), "-c", "agent"])?;
        ensure!(!logs.trim().is_empty(), "empty log of {}", agent.name_any());
    }
    let pods = Api::<Pod>::namespaced(c.client(), &ns)
        .list(&ListParams::default())
        .await?;
    let operators: Vec<String> = pods
        .items
        .iter()
        .map(|p| p.name_any())
        .filter(|n| n.contains("operator") && !n.contains("agent"))
        .collect();
    ensure!(operators.len() == 2, "operator pods: {operators:?}");
    for o in &operators {
        c.kubectl_out(&["logs", "-n", &ns, o])?;
    }
    let leases = Api::<Lease>::namespaced(c.client(), &ns)
        .list(&ListParams::default())
        .await?;
    let holders: Vec<String> = leases
        .items
        .iter()
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .collect();
    ensure!(
        holders
            .iter()
            .any(|h| operators.iter().any(|o| h.contains(o.as_str()))),
        "the operator Lease is held by one of {operators:?}: {holders:?}"
    );
    Ok(())
}
