//! The HTTP routes of the v1 contract, one module per resource, assembled into one router whose
//! OpenAPI document is generated from the same handler annotations (so a route cannot exist
//! without being documented). Shared here: the request context that becomes event metadata,
//! `If-Match` and `ETag`, ownership checks and paging (`offset` at most [`MAX_OFFSET`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::Serialize;
use sparc_store::EventMetadata;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::extract::JsonLimits;
use crate::middleware::RequestId;
use crate::pages::{AcceptsGzip, Page};
use crate::state::AppState;

pub mod admin;
pub mod admin_users;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod health;
pub mod jobs;
pub mod memory;
pub mod projects;
pub mod tasks;

#[derive(OpenApi)]
#[openapi(
    info(title = "sparc", description = "The v1 API of the sparc dashboard backend: scheduled tasks, projects, agents, executions, the agents' memory, auth and sessions."),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The routes and their OpenAPI document.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(auth::routes())
        .merge(tasks::routes())
        .merge(projects::routes())
        .merge(agents::routes())
        .merge(jobs::routes())
        .merge(memory::routes())
        .merge(audit::routes())
        .merge(admin::routes())
        .merge(admin_users::routes())
}

/// The complete application: every route, the OpenAPI document and the middleware stack.
/// `extra` (the WebSocket gateway's routes) is merged in under the same stack, so that an
/// upgrade passes the rate limiter and gets the request id and security headers as REST does.
pub fn router(app: std::sync::Arc<crate::state::App>, extra: Router) -> Router {
    let app = AppState(app);
    let (routes, openapi) = api().split_for_parts();
    let openapi = completed(openapi);
    let routes = routes
        .layer(Extension(Arc::new(openapi)))
        .layer(Extension(JsonLimits::from_settings(&app.settings)))
        .with_state(app.clone())
        .merge(extra);
    crate::middleware::apply(routes, &app.settings, app.tokens.clone())
}

/// The OpenAPI document `/api/openapi.json` serves (for `sparc openapi`, which prints it for
/// client generators without a running service).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    completed(api().split_for_parts().1)
}

/// The document of the routes with what the annotations cannot say: PATCH operation ids, the
/// gateway's routes, the error answers, and the limits every request field has.
fn completed(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    crate::openapi::document_patches(&mut openapi);
    crate::openapi::document_websocket(&mut openapi);
    crate::openapi::document_errors(&mut openapi);
    crate::openapi::document_requests(&mut openapi);
    openapi
}

/// Who asked, from where: becomes the metadata of every event a request records.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id (the client's `X-Request-ID` if sane).
    pub request_id: String,
    /// The client address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// Event metadata for a command by `actor`.
    pub fn metadata(&self, actor: impl Into<String>) -> EventMetadata {
        let mut metadata = EventMetadata::new(actor, self.request_id.clone());
        metadata.ip = self.ip.clone();
        metadata.user_agent = self.user_agent.clone();
        metadata
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(500).collect());
        Ok(Self {
            request_id,
            ip,
            user_agent,
        })
    }
}

/// The version an `If-Match: "<version>"` header asks for (`*` or no header: any).
pub fn if_match(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Invalid If-Match header".to_owned()))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            ApiError::BadRequest("If-Match must be a quoted version such as \"3\"".to_owned())
        })
}

/// `If-Match` as the OpenAPI document shows it on a conditional write; [`if_match`] reads it.
/// The pattern is the header's canonical form (the service also takes it unquoted).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a description of a header for the document, never built
pub struct IfMatch {
    /// The version (`ETag`) the write is for, or `*`: any. Another version is 412.
    #[param(
        rename = "If-Match",
        nullable = false,
        pattern = r#"^(\*|(W/)?"[0-9]{1,18}")$"#
    )]
    if_match: Option<String>,
}

/// `Idempotency-Key` as the OpenAPI document shows it on a create;
/// [`crate::idempotency::idempotency_key`] reads it.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a description of a header for the document, never built
pub struct IdempotencyKey {
    /// The same key from the same user on the same endpoint within 24 hours gets the first
    /// answer back, and nothing is created again.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255
    )]
    idempotency_key: Option<String>,
}

/// A JSON answer with `ETag: "<version>"`.
pub fn with_etag(version: i64, body: impl Serialize) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// A list answer: the one kept in [`App::pages`](crate::state::App::pages) under `key` while
/// none of the read-model `views` it reads has changed since (see
/// [`sparc_store::changes::view`]: the caller's part of a read model, or all of it), else the one
/// `read` builds (then kept). `key` must name everything the answer depends on (filter, page,
/// the caller's scope).
///
/// A client that accepts gzip gets the kept compressed bytes where there are some (the
/// compression layer leaves an answer already encoded alone).
pub async fn cached_list<T, F>(
    app: &crate::state::App,
    views: &[&str],
    key: crate::pages::ListKey<'_>,
    gzip: AcceptsGzip,
    read: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    let generation = app.pages.generation(views);
    if let Some(at) = generation
        && let Some(page) = app.pages.get(key, at)
    {
        // Kept for a client that does not take gzip: compressed once now, for the next ones.
        let page = match page.gzip {
            None if gzip.0 => {
                let compressed = Page::new(page.json, gzip);
                if compressed.gzip.is_some() {
                    app.pages.put(key, at, compressed.clone());
                }
                compressed
            }
            _ => page,
        };
        return Ok(page_response(page, gzip));
    }
    let json =
        axum::body::Bytes::from(serde_json::to_vec(&read.await?).map_err(ApiError::internal)?);
    let Some(at) = generation else {
        return Ok(page_response(Page { json, gzip: None }, gzip));
    };
    let page = Page::new(json, gzip);
    app.pages.put(key, at, page.clone());
    Ok(page_response(page, gzip))
}

/// `page` as JSON: its compressed bytes if the client takes gzip and there are some.
fn page_response(page: Page, accepts: AcceptsGzip) -> Response {
    let json = HeaderValue::from_static("application/json");
    match page.gzip {
        Some(gzip) if accepts.0 => (
            [
                (header::CONTENT_TYPE, json),
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                (header::VARY, HeaderValue::from_static("accept-encoding")),
            ],
            gzip,
        )
            .into_response(),
        _ => ([(header::CONTENT_TYPE, json)], page.json).into_response(),
    }
}

/// The largest `offset` of a list: deeper pages are better reached by filtering, and a bound
/// keeps `offset + limit` far from overflowing.
pub const MAX_OFFSET: i64 = 1_000_000;

/// `limit`/`offset` checked against a list's range: out of range is 422, never clamped.
pub fn page(
    limit: Option<i64>,
    offset: Option<i64>,
    default: i64,
    max: i64,
) -> Result<(i64, i64), ApiError> {
    let limit = limit.unwrap_or(default);
    let offset = offset.unwrap_or(0);
    let mut errors = Vec::new();
    if !(1..=max).contains(&limit) {
        errors.push(FieldError::query(
            "limit",
            format!("limit must be between 1 and {max}"),
            "value_error",
        ));
    }
    if !(0..=MAX_OFFSET).contains(&offset) {
        errors.push(FieldError::query(
            "offset",
            format!("offset must be between 0 and {MAX_OFFSET}"),
            "value_error",
        ));
    }
    if errors.is_empty() {
        Ok((limit, offset))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Parses an optional enum-like query value, reporting a 422 on `field`.
pub fn parse_query_value<T, E: std::fmt::Display>(
    field: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, ApiError> {
    raw.map(|raw| {
        parse(raw).map_err(|e| {
            ApiError::Validation(vec![FieldError::query(field, e.to_string(), "enum")])
        })
    })
    .transpose()
}

/// The paging fields every list answer carries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PageInfo {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

impl PageInfo {
    /// Paging facts for a page at `limit`/`offset` out of `total`.
    pub fn new(total: i64, limit: i64, offset: i64) -> Self {
        Self {
            total,
            limit,
            offset,
            has_more: offset + limit < total,
        }
    }
}

/// Deserializes a field that distinguishes "absent" (`None`) from "null" (`Some(None)`), for
/// updates where null clears a value.
pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// One event of an aggregate's history or of the audit log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventResource {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: String,
    pub hash: Option<String>,
}

impl From<sparc_store::RecordedEvent> for EventResource {
    /// The shape `sparc audit export` writes too ([`sparc_store::AuditEvent`]): password
    /// hashes redacted, `recorded_at` in RFC 3339 with microseconds.
    fn from(event: sparc_store::RecordedEvent) -> Self {
        let event = sparc_store::AuditEvent::from(event);
        Self {
            position: event.position,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload,
            metadata: event.metadata,
            recorded_at: event.recorded_at,
            hash: event.hash,
        }
    }
}

/// `{events}`: a page of an aggregate's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryResponse {
    pub events: Vec<EventResource>,
}

/// History paging: `limit` (1..1000, default 100) and `after_version` (≥0).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub after_version: Option<i64>,
}

/// Reads one aggregate's events after `after_version`, oldest first.
pub async fn history(
    db: &sparc_store::Database,
    aggregate_type: &str,
    id: Uuid,
    query: &HistoryQuery,
) -> Result<HistoryResponse, ApiError> {
    let (limit, _) = page(query.limit, None, 100, 1000)?;
    let after = query.after_version.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::Validation(vec![FieldError::query(
            "after_version",
            "after_version must be 0 or more",
            "value_error",
        )]));
    }
    let events = sparc_store::LogReader::new(db)
        .aggregate_events(aggregate_type, &id.to_string(), after, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(HistoryResponse {
        events: events.into_iter().map(EventResource::from).collect(),
    })
}

/// `as_of` (a time) or `version` (a number): rebuild a state from the log at that point.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// An RFC 3339 time.
    #[param(format = DateTime)]
    pub as_of: Option<String>,
    /// An aggregate version (≥1).
    #[param(minimum = 1)]
    pub version: Option<i64>,
}

impl AsOfQuery {
    /// Whether a point in the past is asked for.
    pub fn is_past(&self) -> bool {
        self.as_of.is_some() || self.version.is_some()
    }

    /// The `as_of` time, if given; 422 when it is not RFC 3339.
    pub fn time(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        self.as_of
            .as_deref()
            .map(|raw| {
                chrono::DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        ApiError::Validation(vec![FieldError::query(
                            "as_of",
                            "as_of must be an RFC 3339 time",
                            "datetime_parsing",
                        )])
                    })
            })
            .transpose()
    }
}

/// An aggregate's state at a point of its history: its version then, and when the last event
/// folded into it was recorded.
pub struct PastState<A> {
    /// The state.
    pub state: A,
    /// The sequence of its last event.
    pub version: i64,
    /// When that event was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// Folds an aggregate's events up to the `as_of` time or `version` asked for; `None` when the
/// aggregate did not exist yet at that point.
pub async fn state_as_of<A: cqrs_es::Aggregate>(
    db: &sparc_store::Database,
    id: Uuid,
    query: &AsOfQuery,
) -> Result<Option<PastState<A>>, ApiError>
where
    A::Event: serde::de::DeserializeOwned,
{
    let as_of = query.time()?;
    if query.version.is_some_and(|v| v < 1) {
        return Err(ApiError::Validation(vec![FieldError::query(
            "version",
            "version must be 1 or more",
            "value_error",
        )]));
    }
    state_until(db, &id.to_string(), query.version, as_of).await
}

/// Folds the events of aggregate `id` up to `version` and recorded no later than `time`, and
/// before its first event that cannot be read; `None` when it did not exist yet at that point.
pub async fn state_until<A: cqrs_es::Aggregate>(
    db: &sparc_store::Database,
    id: &str,
    version: Option<i64>,
    time: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Option<PastState<A>>, ApiError>
where
    A::Event: serde::de::DeserializeOwned,
{
    let events = sparc_store::LogReader::new(db)
        .aggregate_events(A::TYPE, id, 0, i64::MAX)
        .await
        .map_err(ApiError::internal)?;
    let mut past: Option<PastState<A>> = None;
    for event in events {
        if version.is_some_and(|v| event.sequence > v)
            || time.is_some_and(|t| event.recorded_at > t)
        {
            break;
        }
        let payload =
            sparc_domain::upcasting::upcast(&event.event_type, &event.event_version, event.payload);
        // An event no upcaster reads ends the replay there, as the read model parks it and the
        // rest of its stream: the state answered is the last one that can be known.
        let payload: A::Event = match serde_json::from_value(payload) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(position = event.position, %error, "replay stops at an unreadable event");
                break;
            }
        };
        let past = past.get_or_insert_with(|| PastState {
            state: A::default(),
            version: 0,
            recorded_at: event.recorded_at,
        });
        past.state.apply(payload);
        past.version = event.sequence;
        past.recorded_at = event.recorded_at;
    }
    Ok(past)
}
