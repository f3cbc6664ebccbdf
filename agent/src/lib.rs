//! Corral's agent and the `corral` command line.
//!
//! ```text
//!  cli/        the `corral` commands: ca, core, agent, client commands, bench
//! ```

pub mod cli;
