//! `/api/v1/audit`: the event log as auditors read it, and the check of its hash chain.
//!
//! `GET /audit/events` pages through the log in log order with the cursor `after_position`
//! (the position of the last event already read): the next page continues after that event's
//! `(transaction_id, position)`, so paging never skips nor repeats an event, even one whose
//! transaction committed after a later-numbered one. Admins and auditors see every event;
//! other callers only the events of aggregates they own (their user, and the tasks, projects,
//! executions and memory entries whose owner they are). `GET /audit/verify` is for admins and
//! auditors only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sparc_store::{AuditFilter, Checkpoint, LogReader};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, Role};
use crate::error::{ApiError, FieldError};
use crate::extract::{AppQuery, Text};
use crate::routes::EventResource;
use crate::state::AppState;

/// Largest page of `GET /audit/events`.
const MAX_LIMIT: i64 = 1000;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(audit_events))
        .routes(routes!(verify_chain))
}

/// Filters and cursor of `GET /audit/events`; every filter given narrows the selection.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events of this aggregate type (`User`, `Task`, `Project`, `Execution`, `Agent`, …).
    #[param(value_type = Option<String>, max_length = 100)]
    pub aggregate_type: Option<Text<100>>,
    /// Only events of the aggregate with this id (a UUID, or a reservation such as
    /// `agent:<name>`).
    #[param(value_type = Option<String>, max_length = 1024)]
    pub aggregate_id: Option<Text<1024>>,
    /// Only events whose metadata `actor` is this (a user id, or `system`).
    #[param(value_type = Option<String>, max_length = 255)]
    pub actor: Option<Text<255>>,
    /// Only events of this type.
    #[param(value_type = Option<String>, max_length = 100)]
    pub event_type: Option<Text<100>>,
    /// RFC 3339: only events recorded at or after this time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339: only events recorded before this time.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// The position of the last event already read (the previous page's
    /// `next_after_position`); 0 or absent: from the start of the log.
    #[param(minimum = 0)]
    pub after_position: Option<i64>,
    /// 1..1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of the log in log order.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventPage {
    pub events: Vec<EventResource>,
    /// The cursor for the next page: the last event's position, or the request's
    /// `after_position` when the page is empty.
    pub next_after_position: i64,
}

/// Where a page after log position `after_position` starts (0: the beginning), or 422 if no
/// event has that position.
async fn checkpoint_after(reader: &LogReader, after_position: i64) -> Result<Checkpoint, ApiError> {
    if after_position == 0 {
        return Ok(Checkpoint::ORIGIN);
    }
    reader
        .checkpoint_of(after_position)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::query(
                "after_position",
                "after_position must be the position of an event",
                "value_error",
            )])
        })
}

/// Events of the log in log order, filtered; a caller other than an admin or auditor gets only
/// the events of their own aggregates. Page with `after_position`.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditEventPage), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn audit_events(
    State(app): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<AuditQuery>,
) -> Result<Json<AuditEventPage>, ApiError> {
    let mut errors = Vec::new();
    let limit = query.limit.unwrap_or(AuditFilter::DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        errors.push(FieldError::query(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
            "value_error",
        ));
    }
    let from = parse_time("from", query.from.as_deref(), &mut errors);
    let to = parse_time("to", query.to.as_deref(), &mut errors);
    let after_position = query.after_position.unwrap_or(0);
    if after_position < 0 {
        errors.push(FieldError::query(
            "after_position",
            "after_position must be 0 or more",
            "value_error",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let reader = LogReader::new(&app.db);
    let after = checkpoint_after(&reader, after_position).await?;
    let filter = AuditFilter {
        aggregate_type: query.aggregate_type.map(String::from),
        aggregate_id: query.aggregate_id.map(String::from),
        actor: query.actor.map(String::from),
        event_type: query.event_type.map(String::from),
        from,
        to,
        owner: (!user.role.can_read_all()).then_some(user.user_id),
        after,
        limit,
    };
    let events = reader
        .audit_events(&filter)
        .await
        .map_err(ApiError::internal)?;
    let next_after_position = events.last().map_or(after_position, |e| e.position);
    Ok(Json(AuditEventPage {
        events: events.into_iter().map(EventResource::from).collect(),
        next_after_position,
    }))
}

/// An optional RFC 3339 query time; a malformed one is recorded in `errors`.
fn parse_time(
    field: &str,
    raw: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(raw?).map(|t| t.with_timezone(&Utc));
    parsed
        .map_err(|_| {
            errors.push(FieldError::query(
                field,
                format!("{field} must be an RFC 3339 time"),
                "datetime_parsing",
            ))
        })
        .ok()
}

/// The outcome of checking the hash chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainVerification {
    /// True when no event was edited, deleted or reordered.
    pub ok: bool,
    /// Events walked.
    pub events_checked: u64,
    /// The first bad event in log order; absent when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_position: Option<i64>,
}

/// Recomputes the log's hash chain end to end (admins and auditors).
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = ChainVerification), (status = 403, description = "Not an admin or auditor")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn verify_chain(
    State(app): State<AppState>,
    user: AuthUser,
) -> Result<Json<ChainVerification>, ApiError> {
    user.require_role(&[Role::Admin, Role::Auditor])?;
    let report = sparc_store::verify(&app.db)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ChainVerification {
        ok: report.ok,
        events_checked: report.events_checked,
        first_bad_position: report.first_bad_position,
    }))
}
