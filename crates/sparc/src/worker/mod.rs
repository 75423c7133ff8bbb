//! `sparc worker`: the built-in agent, which runs the jobs of its skills as local commands.
//!
//! - [`config`]: the TOML file and its checks.

pub mod config;
