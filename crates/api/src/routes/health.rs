//! Health, readiness and liveness (no auth), and the OpenAPI document.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(health_detailed))
        .routes(routes!(readiness))
        .routes(routes!(liveness))
        .routes(routes!(openapi_document))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The service's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` or `degraded`.
    pub status: &'static str,
    pub timestamp: String,
    /// `connected` or `disconnected`.
    pub database: &'static str,
    /// `connected`, `disconnected` or `embedded`.
    pub bus: &'static str,
    /// `available`, `degraded`, `unavailable` or `disabled`.
    pub memory_mcp: &'static str,
    pub version: &'static str,
}

async fn health_of(app: &AppState) -> Health {
    let database = app.db.ping().await;
    Health {
        status: if database { "healthy" } else { "degraded" },
        timestamp: now(),
        database: if database {
            "connected"
        } else {
            "disconnected"
        },
        bus: app.info.bus,
        memory_mcp: "disabled",
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// Overall health.
#[utoipa::path(get, path = "/api/v1/health", tag = "health", responses((status = 200, body = Health)))]
async fn health(axum::extract::State(app): axum::extract::State<AppState>) -> Json<Health> {
    Json(health_of(&app).await)
}

/// Health plus uptime, environment, projection lag and WebSocket connections.
#[utoipa::path(get, path = "/api/v1/health/detailed", tag = "health", responses((status = 200, description = "Detailed health")))]
async fn health_detailed(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    let health = health_of(&app).await;
    let projections = sparc_projections::status::statuses(&app.db)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "projection status unavailable");
            Vec::new()
        });
    Json(json!({
        "status": health.status,
        "timestamp": health.timestamp,
        "database": health.database,
        "bus": health.bus,
        "memory_mcp": health.memory_mcp,
        "version": health.version,
        "uptime_seconds": (Utc::now() - app.info.started_at).num_seconds(),
        "environment": app.info.environment,
        "projections": projections,
        "websocket": {"connections": 0},
    }))
    .into_response()
}

/// Whether the service can take traffic: 503 while the database is unreachable or migrations
/// are pending.
#[utoipa::path(get, path = "/api/v1/readiness", tag = "health", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
async fn readiness(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    let reason = if !app.db.ping().await {
        Some("database unreachable")
    } else {
        match app.db.pending_migrations().await {
            Ok(false) => None,
            Ok(true) => Some("migrations pending"),
            Err(_) => Some("database unreachable"),
        }
    };
    match reason {
        None => Json(json!({"ready": true, "timestamp": now()})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// Whether the process is alive.
#[utoipa::path(get, path = "/api/v1/liveness", tag = "health", responses((status = 200, description = "Alive")))]
async fn liveness() -> Json<serde_json::Value> {
    Json(json!({"alive": true, "timestamp": now()}))
}

/// This document: OpenAPI 3.1, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document")))]
async fn openapi_document(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}
