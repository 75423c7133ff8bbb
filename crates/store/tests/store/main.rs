//! Integration tests of sparc-store against real databases: SQLite in a temporary file, and the
//! PostgreSQL running on 127.0.0.1:5432 (a missing one fails the run unless
//! `SPARC_SKIP_SERVICES=1`).

mod changes;
mod command_bus;
mod dedicated_pool;
mod event_repository;
mod group_commit;
mod hash_chain;
mod log_order;
mod log_reader;
mod session_lock;
mod support;
