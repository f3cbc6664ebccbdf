//! `corral ca init|issue|revoke`: the cluster's certificate authority.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use corral_net::transport::certificate_authority;

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
    /// Revoke the certificate of NAME: add it to the CA's revocation list DIR/crl.pem.
    /// Copy crl.pem beside ca.pem on every host and send the core members and agents
    /// SIGHUP: they refuse the certificate from then on, on new and open connections.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
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
        CaAction::Revoke { dir, name } => {
            let serial = certificate_authority::revoke(&dir, &name)?;
            println!(
                "revoked {name} (serial {serial}) in {}; copy it beside ca.pem on every host and \
                 send SIGHUP to the core members and agents",
                certificate_authority::crl_path(&dir).display()
            );
        }
    }
    Ok(())
}
