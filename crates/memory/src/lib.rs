//! `sparc-memory`: the Memory MCP port. The service talks to a Memory MCP server over the real
//! protocol and falls back to the `memories` read model whenever that server is unset, down,
//! slow or broken; since every store is an event, the fallback is always complete.
//!
//! - [`client`]: the `rmcp` connection (a child process over stdio, or streamable HTTP), kept up
//!   by a supervisor that restarts it with back-off.
//! - [`mapping`]: how store, search and a task's entries become the tool calls of a given
//!   server (configuration: a knowledge graph, or one tool per operation).
//! - [`breaker`]: the `failsafe` circuit breaker with per-call timeouts, its state and counters.
//! - [`service`]: [`MemoryService`], the port the API calls, and its health.
//! - [`sync`]: the policy that pushes entries stored while the server was unavailable.

pub mod breaker;
pub mod client;
pub mod mapping;
pub mod service;
pub mod sync;

pub use breaker::{BreakerState, StateChange, Thresholds};
pub use client::Endpoint;
pub use mapping::{Hit, Record, ToolMapping, tags};
pub use service::{MemoryConfig, MemoryHealth, MemoryService, Unavailable};
pub use sync::MemorySync;
