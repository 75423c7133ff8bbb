//! Health, readiness and liveness (no auth), Prometheus metrics, and the OpenAPI document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use sparc_projections::ProjectionError;
use sparc_projections::status::ProjectionStatus;
use sparc_store::LogStats;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::middleware::metrics::{HttpMetrics, escape_label};
use crate::routes::admin::ConsumerStatus;
use crate::state::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(health_detailed))
        .routes(routes!(readiness))
        .routes(routes!(liveness))
        .routes(routes!(metrics))
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

/// What the health checks and `/metrics` read from the database (the consumers' statuses, two
/// queries per consumer; the log's size, a count of every event), computed at most once per
/// [`REUSED_FOR`]: they are polled, the health checks without authentication, `/metrics` by
/// several scrapers at once.
#[derive(Default)]
pub struct HealthFacts {
    statuses: OncePerInterval<Vec<ProjectionStatus>>,
    log: OncePerInterval<LogStats>,
}

/// How long computed facts are reused.
const REUSED_FOR: Duration = Duration::from_secs(1);

/// A value computed at most once per [`REUSED_FOR`]; concurrent callers wait for one
/// computation.
struct OncePerInterval<T>(tokio::sync::Mutex<Option<(Instant, T)>>);

impl<T> Default for OncePerInterval<T> {
    fn default() -> Self {
        Self(tokio::sync::Mutex::new(None))
    }
}

impl<T: Clone> OncePerInterval<T> {
    async fn get<E>(&self, compute: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let mut cached = self.0.lock().await;
        if let Some((at, value)) = cached.as_ref()
            && at.elapsed() < REUSED_FOR
        {
            return Ok(value.clone());
        }
        let value = compute.await?;
        *cached = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

impl HealthFacts {
    async fn statuses(&self, app: &AppState) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        self.statuses
            .get(sparc_projections::status::statuses(
                &app.db,
                app.info.stall_after,
            ))
            .await
    }

    async fn log(&self, app: &AppState) -> Result<LogStats, sparc_store::StoreError> {
        self.log
            .get(sparc_store::LogReader::new(&app.db).stats())
            .await
    }
}

/// The health of the service, and the status of every consumer of the log (empty if the
/// database could not say).
async fn health_of(app: &AppState) -> (Health, Vec<ProjectionStatus>) {
    let database = app.db.ping().await;
    let bus = app.runtime.get().map_or(app.info.bus, |probe| probe.bus());
    let (consumers, consumers_known) = if database {
        match app.health_facts.statuses(app).await {
            Ok(statuses) => (statuses, true),
            Err(error) => {
                tracing::warn!(%error, "projection status unavailable");
                (Vec::new(), false)
            }
        }
    } else {
        (Vec::new(), false)
    };
    let consumers_healthy = consumers_known && !consumers.iter().any(ProjectionStatus::unhealthy);
    let health = Health {
        status: if database && bus != "disconnected" && consumers_healthy {
            "healthy"
        } else {
            "degraded"
        },
        timestamp: now(),
        database: if database {
            "connected"
        } else {
            "disconnected"
        },
        bus,
        memory_mcp: app.memory.health().status(),
        version: env!("CARGO_PKG_VERSION"),
    };
    (health, consumers)
}

fn websocket_connections(app: &AppState) -> u64 {
    app.runtime
        .get()
        .map_or(0, |probe| probe.websocket_connections())
}

/// Overall health.
#[utoipa::path(get, path = "/api/v1/health", tag = "health", responses((status = 200, body = Health)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn health(axum::extract::State(app): axum::extract::State<AppState>) -> Json<Health> {
    Json(health_of(&app).await.0)
}

/// WebSocket facts.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebsocketHealth {
    /// Open connections on this instance.
    pub connections: u64,
}

/// [`Health`] plus uptime, environment, projection lag and WebSocket connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetailedHealth {
    #[serde(flatten)]
    pub health: Health,
    /// Whole seconds since the process started.
    pub uptime_seconds: i64,
    pub environment: String,
    /// Every consumer of the log, as `GET /api/v1/admin/projections` lists them.
    pub projections: Vec<ConsumerStatus>,
    pub websocket: WebsocketHealth,
}

/// Health plus uptime, environment, projection lag and WebSocket connections.
#[utoipa::path(get, path = "/api/v1/health/detailed", tag = "health", responses((status = 200, body = DetailedHealth)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn health_detailed(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> Json<DetailedHealth> {
    let (health, projections) = health_of(&app).await;
    Json(DetailedHealth {
        health,
        uptime_seconds: (Utc::now() - app.info.started_at).num_seconds(),
        environment: app.info.environment.clone(),
        projections: projections.into_iter().map(ConsumerStatus::from).collect(),
        websocket: WebsocketHealth {
            connections: websocket_connections(&app),
        },
    })
}

/// `/readiness` when the service can take traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `true`.
    pub ready: bool,
    pub timestamp: String,
}

/// `/readiness` when it cannot.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    /// Always `false`.
    pub ready: bool,
    /// `database unreachable` or `migrations pending`.
    pub reason: &'static str,
}

/// Whether the service can take traffic: 503 while the database is unreachable or migrations
/// are pending.
#[utoipa::path(get, path = "/api/v1/readiness", tag = "health", responses((status = 200, body = Ready), (status = 503, body = NotReady)))]
#[tracing::instrument(level = "debug", skip_all)]
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
        None => Json(Ready {
            ready: true,
            timestamp: now(),
        })
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady {
                ready: false,
                reason,
            }),
        )
            .into_response(),
    }
}

/// `/liveness`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// Always `true`.
    pub alive: bool,
    pub timestamp: String,
}

/// Whether the process is alive.
#[utoipa::path(get, path = "/api/v1/liveness", tag = "health", responses((status = 200, body = Alive)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn liveness() -> Json<Alive> {
    Json(Alive {
        alive: true,
        timestamp: now(),
    })
}

/// Prometheus text exposition of the HTTP traffic (requests and latency by method, route and
/// status), this instance's commands (by aggregate, command and outcome) and the events they
/// recorded (by aggregate and type), the log's size, each projection's position and lag,
/// WebSocket connections and messages, and the Memory MCP circuit breaker.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn metrics(
    axum::extract::State(app): axum::extract::State<AppState>,
    http: Option<Extension<Arc<HttpMetrics>>>,
) -> Response {
    let mut out = String::new();
    if let Some(Extension(http)) = http {
        http.render(&mut out);
    }
    let commands = app.commands.metrics();
    counter(
        &mut out,
        "sparc_commands_total",
        "Commands this instance ran, by aggregate, command and outcome.",
        &commands
            .commands()
            .into_iter()
            .map(|((aggregate, command, outcome), count)| {
                let labels = format!(
                    "{{aggregate=\"{aggregate}\",command=\"{}\",outcome=\"{}\"}}",
                    escape_label(command),
                    outcome.as_str()
                );
                (labels, count as f64)
            })
            .collect::<Vec<_>>(),
    );
    counter(
        &mut out,
        "sparc_events_recorded_total",
        "Events this instance's commands recorded, by aggregate and event type.",
        &commands
            .events()
            .into_iter()
            .map(|((aggregate, event_type), count)| {
                let labels = format!(
                    "{{aggregate=\"{aggregate}\",event_type=\"{}\"}}",
                    escape_label(&event_type)
                );
                (labels, count as f64)
            })
            .collect::<Vec<_>>(),
    );
    match app.health_facts.log(&app).await {
        Ok(stats) => {
            gauge(
                &mut out,
                "sparc_log_events",
                "Events in the log.",
                &[(String::new(), stats.events as f64)],
            );
            gauge(
                &mut out,
                "sparc_log_last_position",
                "Global position of the newest event.",
                &[(String::new(), stats.last_position as f64)],
            );
        }
        Err(error) => tracing::warn!(%error, "log statistics unavailable for /metrics"),
    }
    match app.health_facts.statuses(&app).await {
        Ok(statuses) => {
            let label = |name: &str| format!("{{projection=\"{}\"}}", escape_label(name));
            let series = |value: fn(&ProjectionStatus) -> f64| {
                statuses
                    .iter()
                    .map(|s| (label(&s.name), value(s)))
                    .collect::<Vec<_>>()
            };
            gauge(
                &mut out,
                "sparc_projection_position",
                "Global position of the last event a projection applied.",
                &series(|s| s.position as f64),
            );
            gauge(
                &mut out,
                "sparc_projection_lag_events",
                "Committed events a projection has not applied yet.",
                &series(|s| s.lag_events as f64),
            );
            gauge(
                &mut out,
                "sparc_projection_lag_seconds",
                "Age of the oldest event a projection has not applied yet.",
                &series(|s| s.lag_seconds),
            );
            gauge(
                &mut out,
                "sparc_projection_parked_events",
                "Events a consumer of the log could not apply and parked.",
                &series(|s| s.parked as f64),
            );
            let statuses_by_state: Vec<(String, f64)> = statuses
                .iter()
                .flat_map(|s| {
                    ["live", "rebuilding", "degraded", "stalled"].map(|state| {
                        let labels = format!(
                            "{{projection=\"{}\",status=\"{state}\"}}",
                            escape_label(&s.name)
                        );
                        (labels, f64::from(u8::from(s.status == state)))
                    })
                })
                .collect();
            gauge(
                &mut out,
                "sparc_projection_status",
                "1 for a consumer's current status (live, rebuilding, degraded, stalled), else 0.",
                &statuses_by_state,
            );
        }
        Err(error) => tracing::warn!(%error, "projection status unavailable for /metrics"),
    }
    gauge(
        &mut out,
        "sparc_websocket_connections",
        "Open WebSocket connections.",
        &[(String::new(), websocket_connections(&app) as f64)],
    );
    let (sent, received) = app
        .runtime
        .get()
        .map_or((0, 0), |probe| probe.websocket_messages());
    counter(
        &mut out,
        "sparc_websocket_messages_total",
        "WebSocket messages sent to and received from clients.",
        &[
            ("{direction=\"sent\"}".to_owned(), sent as f64),
            ("{direction=\"received\"}".to_owned(), received as f64),
        ],
    );
    memory_metrics(&mut out, &app.memory.health());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

/// The Memory MCP circuit breaker: its state (1 for the current one), its calls by outcome, its
/// openings, and the memory requests answered from the fallback.
fn memory_metrics(out: &mut String, health: &sparc_memory::MemoryHealth) {
    use sparc_memory::BreakerState;
    gauge(
        out,
        "sparc_memory_mcp_breaker_state",
        "The Memory MCP circuit breaker's state (1: current); no samples when no server is configured.",
        &if health.enabled {
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ]
            .iter()
            .map(|state| {
                (
                    format!("{{state=\"{}\"}}", state.as_str()),
                    f64::from(u8::from(*state == health.state)),
                )
            })
            .collect::<Vec<_>>()
        } else {
            Vec::new()
        },
    );
    let calls = health.breaker;
    counter(
        out,
        "sparc_memory_mcp_calls_total",
        "Calls to the Memory MCP server through the breaker, by outcome.",
        &[
            ("{outcome=\"success\"}".to_owned(), calls.successes as f64),
            (
                "{outcome=\"failure\"}".to_owned(),
                (calls.failures - calls.timeouts) as f64,
            ),
            ("{outcome=\"timeout\"}".to_owned(), calls.timeouts as f64),
            ("{outcome=\"rejected\"}".to_owned(), calls.rejections as f64),
        ],
    );
    counter(
        out,
        "sparc_memory_mcp_breaker_opens_total",
        "Times the Memory MCP circuit breaker opened.",
        &[(String::new(), calls.opens as f64)],
    );
    gauge(
        out,
        "sparc_memory_mcp_consecutive_failures",
        "Failed calls to the Memory MCP server in a row.",
        &[(String::new(), f64::from(calls.consecutive_failures))],
    );
    counter(
        out,
        "sparc_memory_requests_total",
        "Memory requests, and those answered from the fallback.",
        &[
            (
                "{answered=\"all\"}".to_owned(),
                health.requests.total_requests as f64,
            ),
            (
                "{answered=\"fallback\"}".to_owned(),
                health.requests.fallback_requests as f64,
            ),
        ],
    );
}

/// Writes one gauge family: `# HELP`, `# TYPE` and a sample per `(labels, value)`.
fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    family(out, name, "gauge", help, samples);
}

/// Writes one counter family (`name` ends in `_total`).
fn counter(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    family(out, name, "counter", help, samples);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// This document: OpenAPI 3.1, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn openapi_document(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}
