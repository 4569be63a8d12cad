use clap::Parser;
use macvtap_operator::cli::{Args, run};
use macvtap_operator::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    run(args).await
}
