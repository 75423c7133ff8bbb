//! `sparc worker`: the built-in agent, which runs the jobs of its skills as local commands.
//!
//! - [`config`]: the TOML file and its checks.
//! - [`runner`]: one command, with its time limit and captured output.

pub mod config;
pub mod runner;
