//! Printing answers: for people by default, JSON with `--json` (see [`corral_agent::json`]).

use serde::Serialize;

use corral_agent::json::readable;

/// One JSON document, pretty-printed.
pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&readable(value)?)?);
    Ok(())
}

/// One JSON document on one line (for streams).
pub(crate) fn print_json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&readable(value)?)?);
    Ok(())
}
