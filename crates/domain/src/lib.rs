//! The sparc domain: aggregates, their commands and events, and the value types that guard the
//! edge of the model. Nothing here does I/O: every decision is a plain function of the current
//! state and the command (which carries the decision time), so the rules are unit-tested without
//! a database.
//!
//! | module | aggregate | what it decides |
//! |---|---|---|
//! | [`user`] | `User` | registration, profile, password, role, sessions with refresh rotation |
//! | [`project`] | `Project` | create, update, archive, soft delete |
//! | [`task`] | `Task` | scheduling by cron in a time zone, changes, soft delete, firing a slot, run counts |
//! | [`execution`] | `Execution` | a run of a task: start, claim by an agent, finish |
//! | [`agent`] | `Agent` | the shared agent registry: register, update, activity, deregister |
//! | [`memory`] | `Memory` | an entry of the agents' memory, and whether the Memory MCP server holds it |
//! | [`reservation`] | `Reservation` | unique names (usernames, emails, agent names) claimed through optimistic concurrency |
//!
//! [`upcasting`] turns stored events of older schema versions into the current shape.
//!
//! [`values`] holds the newtypes that parse input (`SkillName::parse`, `CronSchedule::parse`, …),
//! so an invalid value cannot exist past the API edge.

pub mod agent;
pub mod execution;
pub mod memory;
pub mod project;
pub mod reservation;
pub mod task;
pub mod upcasting;
pub mod user;
pub mod values;

pub use values::Timestamp;

/// How a refused command should be reported, independent of transport: the API maps each kind
/// to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The aggregate does not exist (or is soft-deleted where that hides it).
    NotFound,
    /// The command conflicts with the current state (already exists, already fired, taken).
    Conflict,
    /// The command itself is invalid for this aggregate (bad transition, no changes).
    Invalid,
}

/// Implemented by every aggregate error so callers can classify refusals.
pub trait DomainError: std::error::Error {
    /// The kind of refusal.
    fn kind(&self) -> ErrorKind;
}
