//! Read models built from the event log, and the runner that keeps them current.
//!
//! Every read model here is a table of aggregate states: its projector folds the aggregate's own
//! events with the domain's `apply` (so a read model can never disagree with the aggregate) and
//! stores the state as JSON beside the columns that queries filter and sort on. The
//! [`runner`] feeds each projection the log in global order, in batches, and commits the
//! read-model change together with the projection's checkpoint, so a crash never loses or
//! doubles a change.
//!
//! | module | table | queried by |
//! |---|---|---|
//! | [`tasks`] | `tasks` | task list and detail |
//! | [`projects`] | `projects` | project list and detail |
//! | [`executions`] | `executions` | task executions, agent history |
//! | [`agents`] | `agents` | the agent registry |
//! | [`memories`] | `memories` | the memory endpoints (the Memory MCP server's fallback) |
//! | [`users`] | `users` | login, sessions, `me` |
//!
//! [`catalog`] lists the read models by name; [`rebuild`] replays one into a shadow table and
//! swaps it in without downtime, or compares a live one with a fresh replay.
//!
//! [`cache_key`] gives the in-memory cache of list answers keys of one size,
//! whatever text their filters carry.
//!
//! [`outbox`] carries the changes of the published read models to the `outbox` table.
//!
//! [`fault`] tells a failure that is an event's fault from one of the moment's; [`isolation`]
//! finds the event a consumer cannot apply, which is then parked for it alone
//! (`sparc_store::parked`), and [`retry`] applies parked events again after a fix.
//!
//! [`policies`] holds the cross-aggregate reactions (deleting a project deletes its tasks),
//! which run on the same runner but issue commands instead of writing tables.

pub mod agents;
pub mod cache_key;
pub mod catalog;
pub mod executions;
pub mod fault;
pub mod isolation;
mod leadership;
pub mod memories;
pub mod outbox;
pub mod policies;
pub mod projects;
pub mod queries;
pub mod rebuild;
pub mod retry;
pub mod runner;
mod sql;
pub mod state_table;
pub mod status;
pub mod tasks;
pub mod users;

pub use cache_key::CacheKey;
pub use queries::ReadModels;
pub use runner::{CommandFailure, Projection, ProjectionError, ProjectionHandle, ProjectionRunner};
pub use sql::{SqlValue, format_timestamp};
pub use state_table::{Indexed, Row, StateTable, StatusFilter, Tally, Total};
