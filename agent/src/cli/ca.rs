//! `corral ca init|issue`: the cluster's certificate authority.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use corral_core::transport::certificate_authority;

#[derive(Debug, Args)]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    action: CaAction,
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Create a CA in DIR (ca.pem, ca-key.pem) and the operators' `admin` certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Validity of the CA, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate for NAME (NAME.pem, NAME-key.pem) signed by the CA in DIR.
    /// Core members are named core-<id>; agents by their --name.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Validity of the certificate, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

pub(crate) fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.action {
        CaAction::Init { dir, days } => {
            certificate_authority::init(&dir, days)?;
            println!(
                "created the CA in {} (keep ca-key.pem off the hosts) and the admin certificate",
                dir.display()
            );
        }
        CaAction::Issue { dir, name, days } => {
            certificate_authority::issue(&dir, &name, days)?;
            println!(
                "issued {} and {}",
                certificate_authority::cert_path(&dir, &name).display(),
                certificate_authority::key_path(&dir, &name).display()
            );
        }
    }
    Ok(())
}
