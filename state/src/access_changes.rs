//! Changes to the access part of the state (rules, tokens, enforcement, quota), and how
//! full the state is against its quota. Only the admin certificate gets here
//! ([`super::ownership`]); each change that changes something is one event, so the
//! revision moves exactly when the table does.

use std::collections::BTreeMap;

use corral_proto::access::AccessTable;
use corral_proto::limits::{ACCESS_RULES_MAX, QUOTA_ALARM_PERCENT};
use corral_proto::{Answer, Command, CommandError, Event};
use serde::{Deserialize, Serialize};

/// Sets (`Some`) or removes (`None`) the entry `name` of an access table's map, keeping
/// it within [`ACCESS_RULES_MAX`]; answers whether anything changed (setting an entry
/// to what it holds changes nothing).
fn set_entry<T: Clone + PartialEq>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    value: Option<&T>,
    what: &str,
) -> Result<bool, CommandError> {
    match value {
        Some(value) if map.get(name) == Some(value) => Ok(false),
        Some(value) => {
            if !map.contains_key(name) && map.len() >= ACCESS_RULES_MAX {
                return Err(CommandError::TooManyRules {
                    what: what.into(),
                    max: ACCESS_RULES_MAX,
                });
            }
            map.insert(name.to_string(), value.clone());
            Ok(true)
        }
        None => Ok(map.remove(name).is_some()),
    }
}

/// How full the state is against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUse {
    pub keys: u64,
    pub keys_max: u64,
    pub bytes: u64,
    pub bytes_max: u64,
}

impl QuotaUse {
    /// True once keys or bytes passed [`QUOTA_ALARM_PERCENT`] of the quota: writes will
    /// soon be refused.
    pub fn alarm(&self) -> bool {
        let past = |used: u64, max: u64| {
            used.saturating_mul(100) >= max.saturating_mul(QUOTA_ALARM_PERCENT)
        };
        past(self.keys, self.keys_max) || past(self.bytes, self.bytes_max)
    }
}

/// Applies one access command to `access`.
pub(super) fn apply(
    access: &mut AccessTable,
    command: &Command,
    events: &mut Vec<Event>,
) -> Result<Answer, CommandError> {
    match command {
        Command::SetRule { name, rule } => {
            let changed = set_entry(&mut access.rules, name, rule.as_ref(), "access rules")?;
            if changed {
                events.push(Event::AccessChanged {
                    what: format!("rule {name}"),
                });
            }
            Ok(Answer::AccessSet)
        }
        Command::SetToken { name, digest } => {
            let changed = set_entry(&mut access.tokens, name, digest.as_ref(), "tokens")?;
            if changed {
                events.push(Event::AccessChanged {
                    what: format!("token {name}"),
                });
            }
            Ok(Answer::AccessSet)
        }
        Command::SetEnforce { enforce } => {
            if access.enforce != *enforce {
                access.enforce = *enforce;
                events.push(Event::AccessChanged {
                    what: format!("enforce {enforce}"),
                });
            }
            Ok(Answer::AccessSet)
        }
        Command::SetQuota { quota } => {
            if access.quota != *quota {
                access.quota = *quota;
                events.push(Event::AccessChanged {
                    what: format!("quota {} keys, {} bytes", quota.keys_max, quota.bytes_max),
                });
            }
            Ok(Answer::AccessSet)
        }
        other => unreachable!("only access commands are applied here, not {other:?}"),
    }
}
