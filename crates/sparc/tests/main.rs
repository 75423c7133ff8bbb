//! The integration tests of sparc, one module per area, in one binary (one link, and one pool
//! of test threads for all of them), sharing one `support` module.
//!
//! Most start the whole service in this process through [`support::TestApp`], on PostgreSQL and
//! on SQLite, and speak HTTP and WebSocket to it. The rest run the real `sparc` binary (`serve`,
//! `gateway`, `worker`, the command line) as processes through [`support::process`]: crash
//! safety, scale-out, the worker, the scheduler across processes, what an operator sees.
//!
//! `cargo test -p sparc --test integration tasks::` runs one area.

mod support;

mod agents;
mod audit;
mod auth;
mod browser;
mod concurrency;
mod conventions;
mod edge;
mod fault_isolation;
mod generated;
mod health;
mod jobs;
mod limits;
mod login_burst;
mod memory;
mod openapi;
mod operations;
mod overload;
mod ownership;
mod projects;
mod quotas;
mod reads;
mod tasks;
mod users;
mod websocket;

// The real `sparc` processes.
mod accounts;
mod crash_restart;
mod gateways;
mod scheduler;
mod service;
mod worker;
