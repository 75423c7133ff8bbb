//! `sparc worker`: the built-in agent, which runs the jobs of its skills as local commands.
//!
//! - [`config`]: the TOML file and its checks.
//! - [`client`]: the HTTP calls, the tokens, and the retry policy.
//! - [`runner`]: one command, with its time limit and captured output.

pub mod client;
pub mod config;
pub mod runner;
