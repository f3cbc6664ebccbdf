//! Checking a command against every limit that does not depend on state: the core refuses
//! an invalid command before proposing it, and apply checks again.

use serde::{Deserialize, Serialize};

use super::{Command, CompareTarget, TxnOp};
use crate::limits::*;
use crate::model::SessionOwner;

/// A command that breaks a limit. Nothing was proposed or written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InvalidCommand {
    #[error("invalid key {key:?}: {reason}")]
    Key { key: String, reason: String },
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("invalid {what} {name:?}: {reason}")]
    Name {
        what: String,
        name: String,
        reason: String,
    },
    #[error("transaction has {count} {what}, more than the limit of {max}")]
    TxnTooLarge {
        what: String,
        count: usize,
        max: usize,
    },
    #[error("service instance has {count} tags, more than the limit of {max}")]
    TooManyTags { count: usize, max: usize },
    #[error("command of {len} bytes exceeds the limit of {max} bytes")]
    CommandTooLarge { len: usize, max: usize },
    #[error("a renewal must move to a newer incarnation, not from {from} to {to}")]
    Renewal { from: u64, to: u64 },
    #[error("a command names its actor once, not twice")]
    NestedActor,
    #[error("invalid certificate name {name:?} of the actor")]
    ActorName { name: String },
    #[error("a token digest is a SHA-256 of 32 bytes, not {len}")]
    TokenDigest { len: usize },
    #[error("{count} replication positions, more than the limit of {max}")]
    TooManyPositions { count: usize, max: usize },
    #[error("replication positions are attached once, around a command, not inside one")]
    NestedPositions,
    #[error("slots {first}..={last} are not a range within 0..{slots}", slots = crate::slots::SLOTS)]
    Slots { first: u16, last: u16 },
    #[error("a group has 1 to {max} shards, each once, not {count}")]
    GroupShards { count: usize, max: usize },
}

/// Checks a key: non-empty UTF-8 up to [`KEY_LEN_MAX`] bytes with no NUL and no control
/// characters. An empty prefix is allowed where a prefix is asked for.
pub fn validate_key(key: &str, allow_empty: bool) -> Result<(), InvalidCommand> {
    let reason = if key.is_empty() && !allow_empty {
        Some("empty".to_string())
    } else if key.len() > KEY_LEN_MAX {
        Some(format!(
            "{} bytes, more than the limit of {KEY_LEN_MAX}",
            key.len()
        ))
    } else if key.chars().any(char::is_control) {
        Some("contains a control character".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidCommand::Key {
            key: truncate_for_error(key),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a name (shard, lock, service, instance id, address, node): non-empty, up to
/// [`NAME_LEN_MAX`] bytes, printable, no white space.
pub fn validate_name(what: &str, name: &str) -> Result<(), InvalidCommand> {
    let reason = if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > NAME_LEN_MAX {
        Some(format!(
            "{} bytes, more than the limit of {NAME_LEN_MAX}",
            name.len()
        ))
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("contains white space or a control character".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidCommand::Name {
            what: what.to_string(),
            name: truncate_for_error(name),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_value(value: &[u8]) -> Result<(), InvalidCommand> {
    if value.len() > VALUE_LEN_MAX {
        return Err(InvalidCommand::ValueTooLarge {
            len: value.len(),
            max: VALUE_LEN_MAX,
        });
    }
    Ok(())
}

fn truncate_for_error(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.len() <= SHOWN {
        return text.to_string();
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl TxnOp {
    fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            TxnOp::Put { key, value, .. } => {
                validate_key(key, false)?;
                validate_value(value)
            }
            TxnOp::Delete { key, prefix } => validate_key(key, *prefix),
            TxnOp::Range(query) => query.range.validate(),
            TxnOp::DeleteRange(range) => range.validate(),
        }
    }
}

impl Command {
    /// Checks every limit that does not depend on state.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            Command::Put { key, value, .. } => {
                validate_key(key, false)?;
                validate_value(value)?;
            }
            Command::Delete { key, prefix } => validate_key(key, *prefix)?,
            Command::Txn(txn) => {
                for (what, count) in [
                    ("compares", txn.compares.len()),
                    ("success operations", txn.success.len()),
                    ("failure operations", txn.failure.len()),
                ] {
                    if count > TXN_OPS_MAX {
                        return Err(InvalidCommand::TxnTooLarge {
                            what: what.to_string(),
                            count,
                            max: TXN_OPS_MAX,
                        });
                    }
                }
                for compare in &txn.compares {
                    validate_key(&compare.key, false)?;
                    if let CompareTarget::Value(value) = &compare.target {
                        validate_value(value)?;
                    }
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    op.validate()?;
                }
            }
            Command::OpenSession { owner } => match owner {
                SessionOwner::Node { name, .. } => validate_name("node name", name)?,
                SessionOwner::Client { label, .. } => {
                    if label.len() > NAME_LEN_MAX {
                        return Err(InvalidCommand::Name {
                            what: "session label".into(),
                            name: truncate_for_error(label),
                            reason: "too long".into(),
                        });
                    }
                }
            },
            Command::CloseSession { .. } => {}
            Command::CloseNode { name, .. } => validate_name("node name", name)?,
            Command::RenewNode { name, from, to } => {
                validate_name("node name", name)?;
                if to <= from {
                    return Err(InvalidCommand::Renewal {
                        from: *from,
                        to: *to,
                    });
                }
            }
            Command::CreateShard { name } | Command::DeleteShard { name } => {
                validate_name("shard name", name)?
            }
            Command::RegisterReplica { shard, address, .. }
            | Command::JoinShard { shard, address, .. }
            | Command::SetReplicaPriority { shard, address, .. }
            | Command::DeregisterReplica { shard, address } => {
                validate_name("shard name", shard)?;
                validate_name("replica address", address)?;
            }
            Command::CreateGroup { name, shards } => {
                validate_name("group name", name)?;
                let distinct: std::collections::BTreeSet<&String> = shards.iter().collect();
                if shards.is_empty()
                    || shards.len() > GROUP_SHARDS_MAX
                    || distinct.len() != shards.len()
                {
                    return Err(InvalidCommand::GroupShards {
                        count: shards.len(),
                        max: GROUP_SHARDS_MAX,
                    });
                }
                for shard in shards {
                    validate_name("shard name", shard)?;
                }
            }
            Command::DeleteGroup { name } | Command::FinishMove { group: name, .. } => {
                validate_name("group name", name)?
            }
            Command::MoveSlots {
                group,
                first,
                last,
                to,
            } => {
                validate_name("group name", group)?;
                validate_name("shard name", to)?;
                if first > last || *last >= crate::slots::SLOTS {
                    return Err(InvalidCommand::Slots {
                        first: *first,
                        last: *last,
                    });
                }
            }
            Command::Handover { shard, to, .. } => {
                validate_name("shard name", shard)?;
                if let Some(to) = to {
                    validate_name("replica address", to)?;
                }
            }
            Command::AcquireLock { name, .. } | Command::ReleaseLock { name, .. } => {
                validate_name("lock name", name)?
            }
            Command::RegisterService {
                service,
                id,
                address,
                tags,
                ..
            } => {
                validate_name("service name", service)?;
                validate_name("service instance id", id)?;
                validate_name("service address", address)?;
                if tags.len() > SERVICE_TAGS_MAX {
                    return Err(InvalidCommand::TooManyTags {
                        count: tags.len(),
                        max: SERVICE_TAGS_MAX,
                    });
                }
                for tag in tags {
                    if tag.len() > SERVICE_TAG_LEN_MAX || tag.chars().any(char::is_control) {
                        return Err(InvalidCommand::Name {
                            what: "service tag".into(),
                            name: truncate_for_error(tag),
                            reason: format!(
                                "longer than {SERVICE_TAG_LEN_MAX} bytes or has a control character"
                            ),
                        });
                    }
                }
            }
            Command::DeregisterService { service, id } => {
                validate_name("service name", service)?;
                validate_name("service instance id", id)?;
            }
            Command::Promoting { positions, command } => {
                if matches!(**command, Command::Promoting { .. }) {
                    return Err(InvalidCommand::NestedPositions);
                }
                if positions.len() > PROMOTING_POSITIONS_MAX {
                    return Err(InvalidCommand::TooManyPositions {
                        count: positions.len(),
                        max: PROMOTING_POSITIONS_MAX,
                    });
                }
                for position in positions {
                    validate_name("shard name", &position.shard)?;
                    validate_name("replica address", &position.address)?;
                }
                command.validate()?;
            }
            Command::Act { actor, command } => {
                match **command {
                    Command::Act { .. } => return Err(InvalidCommand::NestedActor),
                    Command::Promoting { .. } => return Err(InvalidCommand::NestedPositions),
                    _ => {}
                }
                if validate_name("certificate", &actor.certificate).is_err() {
                    return Err(InvalidCommand::ActorName {
                        name: truncate_for_error(&actor.certificate),
                    });
                }
                command.validate()?;
            }
            Command::SetRule { name, rule } => {
                validate_name("rule name", name)?;
                if let Some(rule) = rule {
                    validate_key(&rule.prefix, true)?;
                    if let crate::access::Subject::Token(token) = &rule.subject {
                        validate_name("token name", token)?;
                    }
                }
            }
            Command::SetToken { name, digest } => {
                validate_name("token name", name)?;
                if let Some(digest) = digest
                    && digest.len() != 32
                {
                    return Err(InvalidCommand::TokenDigest { len: digest.len() });
                }
            }
            Command::SetEnforce { .. } | Command::SetQuota { .. } => {}
        }
        let len = postcard::experimental::serialized_size(self).unwrap_or(usize::MAX);
        if len > COMMAND_LEN_MAX {
            return Err(InvalidCommand::CommandTooLarge {
                len,
                max: COMMAND_LEN_MAX,
            });
        }
        Ok(())
    }
}
