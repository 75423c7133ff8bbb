//! `/api/v1/admin`: operations for admins: each projection's progress, and rebuilding a read
//! model without downtime (the rebuild runs in the background; its progress is polled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sparc_projections::catalog::read_model;
use sparc_projections::rebuild::{Progress, rebuild};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::AppPath;
use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projections))
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

/// Every projection's position, lag and status.
#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "admin",
    responses((status = 200, description = "[{name, position, lag_events, lag_seconds, status, rebuilt_at}]"), (status = 403, description = "Not an admin")), security(("bearer" = [])))]
async fn list_projections(
    State(app): State<AppState>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let statuses = sparc_projections::status::statuses(&app.db)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(statuses).into_response())
}

/// Starts rebuilding a read model into a shadow table; the live one keeps serving until the
/// rebuilt copy has caught up, then the two swap.
#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild", tag = "admin", params(("name" = String, Path)),
    responses((status = 202, description = "{rebuild_id}"), (status = 404, description = "Unknown read model"), (status = 409, description = "Already rebuilding")), security(("bearer" = [])))]
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
    tokio::spawn(async move {
        let report = |p: Progress| {
            rebuilds.update(model.name, |s| {
                s.processed = p.processed;
                s.total = p.total;
                s.events_per_second = p.events_per_second();
            })
        };
        let result = rebuild(&db, model, &report).await;
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
        Json(serde_json::json!({"rebuild_id": started.rebuild_id})),
    )
        .into_response())
}

/// The progress of the latest rebuild of a read model.
#[utoipa::path(get, path = "/api/v1/admin/projections/{name}/rebuild", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = RebuildStatus), (status = 404, description = "No rebuild of that read model")), security(("bearer" = [])))]
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
