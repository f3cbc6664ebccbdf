//! `corral`: every role (core member, agent, local dev cluster) and the command-line client.

use clap::Parser;

/// Every role allocates per packet, per request and per log entry; glibc's allocator spent
/// about a tenth of a loaded member's CPU on it, mimalloc a small part of that. Built
/// without transparent huge pages (`no_thp`): with them an idle agent held 63 MiB
/// resident instead of 42.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = match corral_cli::config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = corral_cli::Cli::parse_from(args);
    corral_cli::run(cli)
}
