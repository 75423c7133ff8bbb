//! Health, readiness and liveness (no auth), Prometheus metrics, and the OpenAPI document.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{SecondsFormat, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sparc_projections::ProjectionError;
use sparc_projections::status::ProjectionStatus;
use sparc_store::LogStats;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::middleware::metrics::HttpMetrics;
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
            .get(app.reads.consumer_statuses(app.info.stall_after))
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
    // This scrape's own registry over the instance's counters: nothing is process-global, so
    // services sharing a process (tests) never mix their counts.
    let mut registry = Registry::default();
    if let Some(Extension(http)) = http {
        http.register(&mut registry);
    }
    app.commands.metrics().register(&mut registry);
    match app.health_facts.log(&app).await {
        Ok(stats) => {
            registry.register(
                "sparc_log_events",
                "Events in the log",
                ConstGauge::new(stats.events),
            );
            registry.register(
                "sparc_log_last_position",
                "Global position of the newest event",
                ConstGauge::new(stats.last_position),
            );
        }
        Err(error) => tracing::warn!(%error, "log statistics unavailable for /metrics"),
    }
    match app.health_facts.statuses(&app).await {
        Ok(statuses) => projection_metrics(&mut registry, &statuses),
        Err(error) => tracing::warn!(%error, "projection status unavailable for /metrics"),
    }
    registry.register(
        "sparc_websocket_connections",
        "Open WebSocket connections",
        ConstGauge::new(websocket_connections(&app)),
    );
    let (sent, received) = app
        .runtime
        .get()
        .map_or((0, 0), |probe| probe.websocket_messages());
    registry.register(
        "sparc_websocket_messages",
        "WebSocket messages sent to and received from clients",
        counters(
            [("sent", sent), ("received", received)]
                .map(|(direction, count)| (DirectionLabels { direction }, count)),
        ),
    );
    memory_metrics(&mut registry, &app.memory.health());
    let mut out = String::new();
    match prometheus_text::encode(&mut out, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            )],
            out,
        )
            .into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// The labels of the per-projection series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

/// The labels of `sparc_projection_status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProjectionStatusLabels {
    projection: String,
    status: &'static str,
}

/// The labels of `sparc_websocket_messages_total`: `sent` or `received`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// The labels of `sparc_memory_mcp_breaker_state`: `CLOSED`, `OPEN` or `HALF_OPEN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BreakerStateLabels {
    state: &'static str,
}

/// The labels of `sparc_memory_mcp_calls_total`: `success`, `failure`, `timeout` or
/// `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallOutcomeLabels {
    outcome: &'static str,
}

/// The labels of `sparc_memory_requests_total`: `all` or `fallback`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AnsweredLabels {
    answered: &'static str,
}

/// A gauge family with one sample per `(labels, value)`.
fn gauges<L, N, A>(samples: impl IntoIterator<Item = (L, N)>) -> Family<L, Gauge<N, A>>
where
    L: Clone + Eq + std::hash::Hash,
    Gauge<N, A>: Default,
    A: Atomic<N>,
{
    let family = Family::<L, Gauge<N, A>>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// A counter family with one sample per `(labels, count)`, from counts kept elsewhere.
fn counters<L>(samples: impl IntoIterator<Item = (L, u64)>) -> Family<L, Counter>
where
    L: Clone + Eq + std::hash::Hash,
{
    let family = Family::<L, Counter>::default();
    for (labels, count) in samples {
        family.get_or_create(&labels).inc_by(count);
    }
    family
}

/// Each consumer of the log: its position, its lag in events and seconds, its parked events,
/// and its status (1 for the current one).
fn projection_metrics(registry: &mut Registry, statuses: &[ProjectionStatus]) {
    let series = |value: fn(&ProjectionStatus) -> i64| -> Family<ProjectionLabels, Gauge> {
        gauges(statuses.iter().map(|s| {
            let labels = ProjectionLabels {
                projection: s.name.clone(),
            };
            (labels, value(s))
        }))
    };
    registry.register(
        "sparc_projection_position",
        "Global position of the last event a projection applied",
        series(|s| s.position),
    );
    registry.register(
        "sparc_projection_lag_events",
        "Committed events a projection has not applied yet",
        series(|s| s.lag_events),
    );
    registry.register(
        "sparc_projection_lag_seconds",
        "Age of the oldest event a projection has not applied yet",
        gauges::<_, f64, AtomicU64>(statuses.iter().map(|s| {
            let labels = ProjectionLabels {
                projection: s.name.clone(),
            };
            (labels, s.lag_seconds)
        })),
    );
    registry.register(
        "sparc_projection_parked_events",
        "Events a consumer of the log could not apply and parked",
        series(|s| s.parked),
    );
    registry.register(
        "sparc_projection_status",
        "1 for a consumer's current status (live, rebuilding, degraded, stalled), else 0",
        gauges::<_, i64, AtomicI64>(statuses.iter().flat_map(|s| {
            ["live", "rebuilding", "degraded", "stalled"].map(|status| {
                let labels = ProjectionStatusLabels {
                    projection: s.name.clone(),
                    status,
                };
                (labels, i64::from(s.status == status))
            })
        })),
    );
}

/// The Memory MCP circuit breaker: its state (1 for the current one), its calls by outcome, its
/// openings, and the memory requests answered from the fallback.
fn memory_metrics(registry: &mut Registry, health: &sparc_memory::MemoryHealth) {
    use sparc_memory::BreakerState;
    let states = if health.enabled {
        vec![
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
    } else {
        Vec::new()
    };
    registry.register(
        "sparc_memory_mcp_breaker_state",
        "The Memory MCP circuit breaker's state (1: current); no samples when no server is configured",
        gauges::<_, i64, AtomicI64>(states.into_iter().map(|state| {
            let labels = BreakerStateLabels {
                state: state.as_str(),
            };
            (labels, i64::from(state == health.state))
        })),
    );
    let calls = health.breaker;
    registry.register(
        "sparc_memory_mcp_calls",
        "Calls to the Memory MCP server through the breaker, by outcome",
        counters(
            [
                ("success", calls.successes),
                ("failure", calls.failures - calls.timeouts),
                ("timeout", calls.timeouts),
                ("rejected", calls.rejections),
            ]
            .map(|(outcome, count)| (CallOutcomeLabels { outcome }, count)),
        ),
    );
    registry.register(
        "sparc_memory_mcp_breaker_opens",
        "Times the Memory MCP circuit breaker opened",
        ConstCounter::new(calls.opens),
    );
    registry.register(
        "sparc_memory_mcp_consecutive_failures",
        "Failed calls to the Memory MCP server in a row",
        ConstGauge::new(i64::from(calls.consecutive_failures)),
    );
    registry.register(
        "sparc_memory_requests",
        "Memory requests, and those answered from the fallback",
        counters(
            [
                ("all", health.requests.total_requests),
                ("fallback", health.requests.fallback_requests),
            ]
            .map(|(answered, count)| (AnsweredLabels { answered }, count)),
        ),
    );
}

/// This document: OpenAPI 3.1, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[tracing::instrument(level = "debug", skip_all)]
async fn openapi_document(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}
