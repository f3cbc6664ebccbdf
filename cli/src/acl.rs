//! `corral acl`: the access rules, bearer tokens and quota, changed under the admin
//! certificate straight at the core (every agent then enforces them from its replica).
//!
//! ```text
//!  corral acl rule set NAME --user 1000 --keys app/ --write
//!  corral acl token add ci            prints the token once; the core keeps its SHA-256
//!  corral acl enforce on              from now on, what no rule grants is refused
//!  corral acl quota --keys N --bytes N
//!  corral acl list
//! ```

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use corral_proto::Command;
use corral_proto::access::{Access, AccessRule, Quota, ResourceKind, Subject};
use serde_json::json;

use super::core_member::CoreAccess;
use super::output::print_json;

#[derive(Debug, Args)]
pub(crate) struct AclArgs {
    #[command(subcommand)]
    action: AclAction,
    #[command(flatten)]
    access: CoreAccess,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AclAction {
    /// The rules, token names, whether rules are enforced, and the quota.
    List,
    /// Access rules: who may read or write which names.
    #[command(subcommand)]
    Rule(RuleAction),
    /// Bearer tokens of HTTP clients.
    #[command(subcommand)]
    Token(TokenAction),
    /// Enforce the rules (on: refuse what no rule grants) or not (off: allow everything).
    Enforce {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Set the quota of the whole state.
    Quota {
        /// Most keys.
        #[arg(long)]
        keys: u64,
        /// Most bytes of keys and values.
        #[arg(long)]
        bytes: u64,
    },
}

#[derive(Debug, Subcommand)]
enum RuleAction {
    /// Set rule NAME (replacing one of that name).
    Set(RuleArgs),
    /// Remove rule NAME.
    Delete { name: String },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["user", "group", "token", "anyone"])))]
#[command(group(ArgGroup::new("kind").required(true).args(["keys", "shards", "locks", "services"])))]
#[command(group(ArgGroup::new("access").required(true).args(["read", "write"])))]
struct RuleArgs {
    name: String,
    /// For socket clients of this Unix user id.
    #[arg(long)]
    user: Option<u32>,
    /// For socket clients of this Unix group id (their primary group).
    #[arg(long)]
    group: Option<u32>,
    /// For HTTP clients presenting the token of this name.
    #[arg(long)]
    token: Option<String>,
    /// For everybody, HTTP clients without a token included.
    #[arg(long)]
    anyone: bool,
    /// On keys under this prefix ("" for all).
    #[arg(long)]
    keys: Option<String>,
    /// On shards whose names start with this.
    #[arg(long)]
    shards: Option<String>,
    /// On locks whose names start with this.
    #[arg(long)]
    locks: Option<String>,
    /// On services whose names start with this.
    #[arg(long)]
    services: Option<String>,
    /// Read only.
    #[arg(long)]
    read: bool,
    /// Read and write.
    #[arg(long)]
    write: bool,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a new token NAME and print it (only now: the core keeps its SHA-256).
    Add { name: String },
    /// Remove token NAME.
    Delete { name: String },
}

impl RuleArgs {
    fn rule(&self) -> anyhow::Result<AccessRule> {
        let subject = match (&self.user, &self.group, &self.token, self.anyone) {
            (Some(uid), ..) => Subject::User(*uid),
            (_, Some(gid), ..) => Subject::Group(*gid),
            (_, _, Some(token), _) => Subject::Token(token.clone()),
            _ => Subject::Anyone,
        };
        let (kind, prefix) = match (&self.keys, &self.shards, &self.locks, &self.services) {
            (Some(p), ..) => (ResourceKind::Keys, p),
            (_, Some(p), ..) => (ResourceKind::Shards, p),
            (_, _, Some(p), _) => (ResourceKind::Locks, p),
            (_, _, _, Some(p)) => (ResourceKind::Services, p),
            _ => bail!("name what the rule is on: --keys, --shards, --locks or --services"),
        };
        Ok(AccessRule {
            subject,
            kind,
            prefix: prefix.clone(),
            access: if self.write {
                Access::Write
            } else {
                Access::Read
            },
        })
    }
}

pub(crate) fn run(args: AclArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    super::runtime()?.block_on(manage(args))
}

/// A fresh token: 32 random bytes, hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn manage(args: AclArgs) -> anyhow::Result<()> {
    let client = args.access.client()?;
    let command = match args.action {
        AclAction::List => {
            let address = args.access.core.first().context("--core names no member")?;
            let table = client.access(address).await?;
            if args.json {
                let tokens: Vec<&String> = table.tokens.keys().collect();
                return print_json(&json!({
                    "enforce": table.enforce,
                    "rules": table.rules,
                    "tokens": tokens,
                    "quota": table.quota,
                }));
            }
            println!(
                "rules are {}",
                if table.enforce {
                    "enforced: what no rule grants is refused"
                } else {
                    "not enforced: every app may do everything"
                }
            );
            for (name, rule) in &table.rules {
                println!(
                    "rule {name}: {:?} may {:?} {:?} under {:?}",
                    rule.subject, rule.access, rule.kind, rule.prefix
                );
            }
            for name in table.tokens.keys() {
                println!("token {name}");
            }
            println!(
                "quota: {} keys, {} bytes",
                table.quota.keys_max, table.quota.bytes_max
            );
            return Ok(());
        }
        AclAction::Rule(RuleAction::Set(rule)) => Command::SetRule {
            name: rule.name.clone(),
            rule: Some(rule.rule()?),
        },
        AclAction::Rule(RuleAction::Delete { name }) => Command::SetRule { name, rule: None },
        AclAction::Token(TokenAction::Add { name }) => {
            let token = new_token();
            let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let command = Command::SetToken {
                name: name.clone(),
                digest: Some(digest.as_ref().to_vec()),
            };
            write(&client, &command).await?;
            if args.json {
                print_json(&json!({"name": name, "token": token}))?;
            } else {
                println!("{token}");
            }
            return Ok(());
        }
        AclAction::Token(TokenAction::Delete { name }) => Command::SetToken { name, digest: None },
        AclAction::Enforce { state } => Command::SetEnforce {
            enforce: state == "on",
        },
        AclAction::Quota { keys, bytes } => Command::SetQuota {
            quota: Quota {
                keys_max: keys,
                bytes_max: bytes,
            },
        },
    };
    let revision = write(&client, &command).await?;
    if args.json {
        print_json(&json!({ "revision": revision }))
    } else {
        println!("done (revision {revision})");
        Ok(())
    }
}

async fn write(client: &corral_net::client::CoreClient, command: &Command) -> anyhow::Result<u64> {
    let response = client.write(command).await?;
    match response.outcome {
        Ok(_) => Ok(response.revision),
        Err(error) => bail!("refused: {error}"),
    }
}
