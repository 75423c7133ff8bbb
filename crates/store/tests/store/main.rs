//! Integration tests of sparc-store against real databases: SQLite in a temporary file, and the
//! PostgreSQL running on 127.0.0.1:5432 (skipped with a message when it is not running, unless
//! `CI=true`).

mod changes;
mod command_bus;
mod event_repository;
mod hash_chain;
mod log_order;
mod log_reader;
mod support;
