//! `/api/v1/admin`: operations for admins: each consumer of the log's progress, the events it
//! parked and retrying them after a fix, and rebuilding a read model without downtime (the
//! rebuild runs in the background; its progress is polled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sparc_projections::catalog::read_model;
use sparc_projections::rebuild::{Progress, rebuild};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{AppPath, parse_json_body};
use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projections))
        .routes(routes!(list_parked))
        .routes(routes!(retry_parked))
        .routes(routes!(start_rebuild, rebuild_status))
}

/// A rebuild's state, as the admin endpoint reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebuildStatus {
    pub rebuild_id: Uuid,
    /// `running`, `completed` or `failed`.
    pub status: &'static str,
    pub processed: u64,
    pub total: u64,
    pub events_per_second: f64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The latest rebuild of each read model started through the API, by name.
#[derive(Default)]
pub struct Rebuilds(Mutex<HashMap<String, RebuildStatus>>);

impl Rebuilds {
    fn get(&self, name: &str) -> Option<RebuildStatus> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut RebuildStatus)) {
        if let Some(status) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            change(status);
        }
    }

    /// Registers a new rebuild unless one is running.
    fn start(&self, name: &str) -> Option<RebuildStatus> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(name).is_some_and(|s| s.status == "running") {
            return None;
        }
        let status = RebuildStatus {
            rebuild_id: Uuid::now_v7(),
            status: "running",
            processed: 0,
            total: 0,
            events_per_second: 0.0,
            started_at: timestamp(Utc::now()),
            finished_at: None,
            error: None,
        };
        all.insert(name.to_owned(), status.clone());
        Some(status)
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One consumer of the log, as the admin list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStatus {
    /// The read model, policy, `chain` (the hash chainer) or `relay` (the outbox relay).
    pub name: String,
    /// The global position of the last event it applied.
    pub position: i64,
    /// Committed events it has not applied yet.
    pub lag_events: i64,
    /// Age of the oldest event it has not applied yet, in seconds.
    pub lag_seconds: f64,
    /// Events it parked.
    pub parked: i64,
    /// `live`, `rebuilding`, `degraded` (it parked events) or `stalled` (an event has waited
    /// for it longer than `SPARC_PROJECTION_STALL_SECONDS`).
    #[schema(pattern = "^(live|rebuilding|degraded|stalled)$")]
    pub status: &'static str,
    /// When it was last rebuilt.
    pub rebuilt_at: Option<String>,
}

impl From<sparc_projections::status::ProjectionStatus> for ConsumerStatus {
    fn from(status: sparc_projections::status::ProjectionStatus) -> Self {
        Self {
            name: status.name,
            position: status.position,
            lag_events: status.lag_events,
            lag_seconds: status.lag_seconds,
            parked: status.parked,
            status: status.status,
            rebuilt_at: status.rebuilt_at,
        }
    }
}

/// Every consumer's position, lag, parked events and status.
#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "admin",
    responses((status = 200, body = [ConsumerStatus]), (status = 403, description = "Not an admin")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_projections(
    State(app): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<ConsumerStatus>>, ApiError> {
    user.require_admin()?;
    let statuses = app
        .reads
        .consumer_statuses(app.info.stall_after)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        statuses.into_iter().map(ConsumerStatus::from).collect(),
    ))
}

/// A rebuild started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStarted {
    /// Its id; poll `GET …/rebuild` for its progress.
    pub rebuild_id: Uuid,
}

/// One parked event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedEventView {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    /// Why it could not be applied (the last failure), or the parked event of its stream it
    /// waits behind.
    pub error: String,
    /// How many times applying it has failed.
    pub attempts: i32,
    pub first_seen: String,
    pub last_seen: String,
}

/// The events a consumer parked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedEvents {
    /// In log order (at most 1,000).
    pub parked: Vec<ParkedEventView>,
}

/// Parked events listed at most.
const PARKED_LISTED: i64 = 1_000;

/// A consumer by name, or 404 with the known names.
fn consumer(
    app: &AppState,
    name: &str,
) -> Result<Arc<dyn sparc_projections::Projection>, ApiError> {
    app.projections
        .consumer(name)
        .ok_or_else(|| ApiError::NotFound(format!("No consumer of the log named '{name}'")))
}

/// The events a consumer of the log could not apply and went past, with their errors.
#[utoipa::path(get, path = "/api/v1/admin/projections/{name}/parked", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = ParkedEvents), (status = 403, description = "Not an admin"), (status = 404, description = "Unknown consumer")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_parked(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(name): AppPath<String>,
) -> Result<Json<ParkedEvents>, ApiError> {
    user.require_admin()?;
    let consumer = consumer(&app, &name)?;
    let parked = sparc_store::parked::list(&app.db, Some(consumer.name()), PARKED_LISTED)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ParkedEvents {
        parked: parked
            .into_iter()
            .map(|p| ParkedEventView {
                position: p.position,
                aggregate_type: p.aggregate_type,
                aggregate_id: p.aggregate_id,
                sequence: p.sequence,
                event_type: p.event_type,
                error: p.error,
                attempts: p.attempts,
                first_seen: timestamp(p.first_seen),
                last_seen: timestamp(p.last_seen),
            })
            .collect(),
    }))
}

/// Which parked events to retry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryParked {
    /// The position of a parked event: retry its stream only. Without it, every parked stream.
    #[schema(minimum = 1)]
    pub position: Option<i64>,
}

/// What a retry did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryOutcome {
    /// Events that applied and are no longer parked.
    pub applied: u64,
    /// Events that failed again (or wait behind one that did) and stay parked.
    pub still_parked: u64,
}

/// Applies a consumer's parked events again, in log order, after a fix. Events that fail
/// again stay parked, one more attempt counted.
#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/parked/retry", tag = "admin", params(("name" = String, Path)),
    request_body(content = RetryParked, description = "Optional: `{}` or no body retries every parked stream"),
    responses((status = 200, body = RetryOutcome), (status = 403, description = "Not an admin"), (status = 404, description = "Unknown consumer")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn retry_parked(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(name): AppPath<String>,
    body: Bytes,
) -> Result<Json<RetryOutcome>, ApiError> {
    user.require_admin()?;
    let consumer = consumer(&app, &name)?;
    let position = if body.is_empty() {
        None
    } else {
        parse_json_body::<RetryParked>(&body)?.position
    };
    let report = sparc_projections::retry::retry(&app.db, consumer.as_ref(), position)
        .await
        .map_err(ApiError::internal)?;
    // What the retry applied is committed: this instance's next read must not wait for the
    // change notice to come back.
    if report.applied > 0 {
        app.pages.generations().bump_all();
    }
    app.projections.poke();
    Ok(Json(RetryOutcome {
        applied: report.applied,
        still_parked: report.still_parked,
    }))
}

/// Starts rebuilding a read model into a shadow table; the live one keeps serving until the
/// rebuilt copy has caught up, then the two swap.
#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild", tag = "admin", params(("name" = String, Path)),
    responses((status = 202, body = RebuildStarted), (status = 404, description = "Unknown read model"), (status = 409, description = "Already rebuilding")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn start_rebuild(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(name): AppPath<String>,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let model = read_model(&name)
        .ok_or_else(|| ApiError::NotFound(format!("No read model named '{name}'")))?;
    let started = app
        .rebuilds
        .start(model.name)
        .ok_or_else(|| ApiError::Conflict(format!("'{name}' is already being rebuilt")))?;
    let rebuilds: Arc<Rebuilds> = app.rebuilds.clone();
    let db = app.db.clone();
    let generations = app.pages.generations().clone();
    tokio::spawn(async move {
        let report = |p: Progress| {
            rebuilds.update(model.name, |s| {
                s.processed = p.processed;
                s.total = p.total;
                s.events_per_second = p.events_per_second();
            })
        };
        let result = rebuild(&db, model, &report).await;
        // Swapped in: the status below must not show before reads through here do.
        generations.bump_all();
        rebuilds.update(model.name, |s| {
            s.finished_at = Some(timestamp(Utc::now()));
            match result {
                Ok(_) => s.status = "completed",
                Err(error) => {
                    tracing::error!(read_model = model.name, %error, "rebuild failed");
                    s.status = "failed";
                    s.error = Some(error.to_string());
                }
            }
        });
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(RebuildStarted {
            rebuild_id: started.rebuild_id,
        }),
    )
        .into_response())
}

/// The progress of the latest rebuild of a read model.
#[utoipa::path(get, path = "/api/v1/admin/projections/{name}/rebuild", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = RebuildStatus), (status = 404, description = "No rebuild of that read model")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn rebuild_status(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(name): AppPath<String>,
) -> Result<Json<RebuildStatus>, ApiError> {
    user.require_admin()?;
    app.rebuilds
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("No rebuild of '{name}' was started")))
}
