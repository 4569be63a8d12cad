use clap::Parser;
use macvtap_operator::cli::{Args, run};
use macvtap_telemetry::logs::{self, JsonShape};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logs::init(args.log_format, JsonShape::Flat);
    run(args).await
}
