//! The event store of sparc: one code path over PostgreSQL (production) and SQLite (embedded).
//!
//! - [`audit`]: which events an audit query selects, and the redacted shape events leave in.
//! - [`db`]: connecting, migrating and probing a [`Database`], and backend-neutral transactions.
//! - [`event_repository`]: the cqrs-es repository over either backend, and how a caller learns
//!   what a command committed.
//! - [`group_commit`]: single-event appends of concurrent commands in one statement (Postgres).
//! - [`json`]: reading stored JSON at any depth.
//! - [`event_store`](mod@event_store): the cqrs-es event store (events, optionally snapshots) and `Cqrs<A>`.
//! - [`metadata`]: the metadata stored on every event (actor, request and correlation ids, …).
//! - [`metrics`]: what the command bus did (commands by outcome, events by type).
//! - [`log`]: reading the whole log in global (commit-safe) order, and per aggregate.
//! - [`checkpoint`]: how far each consumer of the log has read.
//! - [`chain`]: the sha256 hash chain over the log and its verification.
//! - [`bystanders`]: transactions that write no events, which this process's log readers look past.
//! - [`changes`]: read-model change notices between instances, and the generations caches use.
//! - [`outbox`]: how published changes get their gap-free `event_id`, in log order.
//! - [`overload`]: request deadlines, and one queue per stream so its commands take turns.
//! - [`parked`]: the events a consumer could not apply, parked for it alone.
//! - [`session_lock`]: which of several processes does a piece of work that needs doing once.
//! - `testing` (feature `testing`): fresh test databases.

#![warn(missing_docs)]

pub mod audit;
pub mod bystanders;
pub mod chain;
pub mod changes;
pub mod checkpoint;
pub mod commands;
pub mod db;
pub mod error;
pub mod event_repository;
pub mod event_store;
pub mod group_commit;
pub mod json;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod outbox;
pub mod overload;
pub mod parked;
pub mod session_lock;
#[cfg(feature = "testing")]
pub mod testing;

pub use audit::{AuditEvent, AuditFilter};
pub use chain::{Chainer, VerifyReport, verify};
pub use changes::Generations;
pub use checkpoint::Checkpoint;
pub use commands::{CommandBus, CommandError, Outcome, Routed, StoreFailure};
pub use db::{Backend, Database, Planning, StoreTx, postgres_pool_options};
pub use error::StoreError;
pub use event_repository::EventRepository;
pub use event_store::{Cqrs, Store, event_store, snapshot_store};
pub use log::{LogReader, LogStats, RecordedEvent, StoredEvent};
pub use metadata::EventMetadata;
