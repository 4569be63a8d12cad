//! Dev aid: bring the cluster up, install the chart (`--chart`), run a busybox pod, print what it sees, tear
//! down. `cargo run -p macvtap-e2e --example cluster_smoke [-- --chart]` (root).
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,kube_client=off")
        .init();
    let chart = std::env::args().any(|a| a == "--chart");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let t = std::time::Instant::now();
        let c = macvtap_e2e::cluster::Cluster::start(macvtap_e2e::cluster::ClusterOptions::default()).await?;
        println!("cluster up in {:?}", t.elapsed());
        print!("{}", c.kubectl_out(&["get", "nodes", "-o", "wide"])?);
        if chart {
            let r = c.install_chart(&[]).await;
            println!("chart: {r:?} after {:?}", t.elapsed());
            print!("{}", c.kubectl_out(&["get", "pods", "-A", "-o", "wide"])?);
        }
        let pod = c
            .run_pod_yaml(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: smoke}\nspec:\n  containers:\n  - {name: b, image: busybox, command: [sleep, '600']}\n",
                Duration::from_secs(120),
            )
            .await?;
        println!("pod running on {} after {:?}; links {:?}", pod.node, t.elapsed(), pod.link_names()?);
        print!("{}", c.kubectl_out(&["exec", "smoke", "--", "ip", "addr"])?);
        c.delete_pod("default", "smoke", Duration::from_secs(60)).await?;
        println!("deleted after {:?}", t.elapsed());
        Ok::<_, anyhow::Error>(())
    })
}
