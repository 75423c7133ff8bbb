//! `sparc-api`: the REST API v1 over HTTP (axum).
//!
//! Module map:
//!
//! - [`error`]: [`error::ApiError`], the one error type every handler answers with, and the
//!   FastAPI-compatible bodies (`{"detail": …}`, 422 field lists, 500 with `error_id`).
//! - [`extract`]: [`extract::AppJson`], [`extract::AppQuery`], [`extract::AppPath`], whose
//!   failures are `ApiError`s, and [`extract::Validator`] for collecting field errors.
//! - [`auth`]: roles, the [`auth::AuthUser`] / [`auth::Author`] / [`auth::MaybeAuthUser`]
//!   extractors over `sparc_accounts`'s tokens and session directory, and the 401 answers.
//! - [`middleware`]: request id, security headers, client IP, rate limits, body limit, gzip,
//!   error shaping and the 404/405 fallbacks; [`middleware::apply`] stacks them.
//! - [`settings`]: [`settings::ApiSettings`], the tunables of the HTTP layer.
//! - [`state`]: [`state::App`], what every handler reaches: command bus, read models
//!   ([`sparc_projections::ReadModels`]), projections; and settling writes.
//! - [`routes`]: one module per resource and [`routes::router`], which assembles the service.
//! - [`services`]: the application layer: workflows of several commands (a task's runs, an
//!   agent's activity), free of HTTP, tested given/when/then on SQLite.
//! - [`unsettled`]: a command's result together with the writes the read models must show
//!   before the request answers ([`unsettled::Unsettled`], `#[must_use]`).
//! - [`openapi`]: the error answers every operation of the OpenAPI document gains.
//! - [`resources`]: the contract's resources as they appear on the wire (from `sparc-contract`,
//!   shared with the WebSocket gateway).
//! - [`idempotency`]: replaying the first answer of a repeated `Idempotency-Key`.
//! - [`pages`]: list answers kept in memory while their read model stands still.
//! - [`quotas`]: per-user caps on live tasks, projects and registered agents.
//! - [`answered_creates`]: creates answered before the read models have them, which the next
//!   reads through this instance wait for.

pub mod answered_creates;
pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod job_queue;
pub mod middleware;
pub mod openapi;
pub mod pages;
pub mod quotas;
pub use sparc_contract::resources;
pub mod routes;
pub mod services;
pub mod settings;
pub mod state;
pub mod unsettled;

pub use routes::router;
pub use state::{App, RuntimeProbe, ServiceInfo};
