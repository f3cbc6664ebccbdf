//! `--config FILE` for `corral core` and `corral agent`: every flag may also be given in a
//! TOML file, under its long name (`data-dir = "/var/lib/corral"`, `join = ["a:1",
//! "b:1"]`, `probe-period-ms = 500`).
//!
//! Precedence: the command line, then `CORRAL_*` environment variables, then the file.
//! The file is turned into the flags it stands for, added only where neither the command
//! line nor the environment gave a value, and then parsed by the same rules as the command
//! line, so a wrong value gets the same message. A key that is no flag, or a value of the
//! wrong shape, fails at start with a message naming it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::CommandFactory;

use super::Cli;

/// The roles that take a configuration file.
const ROLES: [&str; 2] = ["core", "agent"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("--config needs a file name")]
    MissingPath,
}

/// The long flags (and their environment variables) of subcommand `role`.
fn flags_of(role: &str) -> BTreeMap<String, (Option<String>, bool)> {
    let command = Cli::command();
    let mut flags = BTreeMap::new();
    if let Some(sub) = command.find_subcommand(role) {
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                let takes_value = arg.get_action().takes_values();
                flags.insert(long.to_string(), (env, takes_value));
            }
        }
    }
    flags
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Expands `--config FILE` (or `CORRAL_CONFIG`) in `args` into the flags it stands for.
/// Arguments of other commands are returned as they are.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let Some(role) = args.get(1).and_then(|a| a.to_str()).map(str::to_string) else {
        return Ok(args);
    };
    if !ROLES.contains(&role.as_str()) {
        return Ok(args);
    }
    // `corral core status ...` and the like are tools, not the member.
    if args
        .get(2)
        .and_then(|a| a.to_str())
        .is_some_and(|a| !a.starts_with('-'))
    {
        return Ok(args);
    }
    let mut path: Option<PathBuf> = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            path = Some(iter.next().ok_or(ConfigError::MissingPath)?.into());
        } else if let Some(value) = text.strip_prefix("--config=") {
            path = Some(value.into());
        } else {
            rest.push(arg);
        }
    }
    let path = match path.or_else(|| std::env::var_os("CORRAL_CONFIG").map(PathBuf::from)) {
        Some(path) => path,
        None => return Ok(rest),
    };
    let error = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| error(e.to_string()))?;
    let flags = flags_of(&role);
    let given: Vec<String> = rest
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    for (key, value) in &table {
        let Some((env, takes_value)) = flags.get(key) else {
            let known: Vec<&str> = flags
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "config" && *k != "help")
                .collect();
            return Err(error(format!(
                "unknown field `{key}` for corral {role} (known: {})",
                known.join(", ")
            )));
        };
        if given.contains(key) || env.as_ref().is_some_and(|e| std::env::var_os(e).is_some()) {
            continue;
        }
        if !takes_value {
            match value {
                toml::Value::Boolean(true) => rest.push(format!("--{key}").into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(error(format!("field `{key}` must be true or false"))),
            }
            continue;
        }
        let text = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| error(format!("field `{key}` must be a list of plain values")))?
                .join(","),
            other => scalar(other).ok_or_else(|| {
                error(format!("field `{key}` must be a plain value, not a table"))
            })?,
        };
        rest.push(format!("--{key}").into());
        rest.push(text.into());
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str, f: impl FnOnce(&str)) {
        let dir = std::env::temp_dir().join(format!("corral-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        f(path.to_str().unwrap());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn file_fields_become_flags_and_the_command_line_wins() {
        with_file(
            "name = \"web-1\"\njoin = [\"10.0.0.1:7101\", \"10.0.0.2:7101\"]\nprobe-period-ms = 300\nsocket = \"/from/file\"\n",
            |path| {
                let out = expand(args(&[
                    "corral", "agent", "--config", path, "--socket", "/cli",
                ]))
                .unwrap();
                let out: Vec<String> = out
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let joined = out.join(" ");
                assert!(joined.contains("--name web-1"), "{joined}");
                assert!(
                    joined.contains("--join 10.0.0.1:7101,10.0.0.2:7101"),
                    "{joined}"
                );
                assert!(joined.contains("--probe-period-ms 300"), "{joined}");
                assert!(joined.contains("--socket /cli"), "{joined}");
                assert!(!joined.contains("/from/file"), "{joined}");
                assert!(!joined.contains("--config"), "{joined}");
            },
        );
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_named() {
        with_file("nmae = \"web-1\"\n", |path| {
            let error = expand(args(&["corral", "agent", "--config", path])).unwrap_err();
            assert!(
                error.to_string().contains("unknown field `nmae`"),
                "{error}"
            );
        });
        with_file("[probe-period-ms]\nx = 1\n", |path| {
            let error = expand(args(&["corral", "agent", "--config", path])).unwrap_err();
            assert!(error.to_string().contains("`probe-period-ms`"), "{error}");
        });
        with_file("this is not toml", |path| {
            let error = expand(args(&["corral", "core", "--config", path])).unwrap_err();
            assert!(error.to_string().contains(path), "{error}");
        });
    }

    #[test]
    fn other_commands_are_left_alone() {
        let input = args(&["corral", "kv", "get", "--config", "x"]);
        assert_eq!(expand(input.clone()).unwrap(), input);
        let input = args(&["corral", "core", "status", "--core", "a:1"]);
        assert_eq!(expand(input.clone()).unwrap(), input);
    }
}
