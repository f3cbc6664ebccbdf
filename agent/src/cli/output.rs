//! Printing answers: for people by default, one JSON document with `--json`.

use serde::Serialize;

pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
