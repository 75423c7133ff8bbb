//! The black-box tests of the whole service, one module per area, in one binary (one link,
//! and one pool of test threads for all of them). Each starts the service through
//! `sparc_tests::TestApp` (the `support` library) on PostgreSQL and SQLite.

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
