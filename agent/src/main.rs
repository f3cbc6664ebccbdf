//! `corral`: every role (core member, agent, local dev cluster) and the command-line client.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = corral_agent::cli::Cli::parse();
    corral_agent::cli::run(cli)
}
