use clap::Parser;
use macvtap_operator::cli::{Args, run};
use macvtap_telemetry::logs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logs::init(args.log_format);
    run(args).await
}
