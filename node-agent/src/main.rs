//! `macvtap-agent`: the node agent (default command) and `macvtap-agent install-cni`; see [`macvtap_agent::cli`].

use clap::Parser;
use macvtap_agent::cli::Cli;
use macvtap_telemetry::logs;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logs::init(cli.run.log_format);
    cli.run()
}
