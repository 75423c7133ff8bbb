//! The HTTP middleware stack of the API and [`apply`], which puts it around a router.
//!
//! Outermost first, and why in this order:
//!
//! 1. [`security_headers`]: on every response, whatever produced it.
//! 2. [`metrics`]: counts every answer (429s and 413s included) by method, route and status,
//!    and times it, for `GET /metrics`.
//! 3. gzip compression of bodies over 1 KiB when the client accepts it: outside every layer that
//!    rewrites bodies, so a rewritten body is never mislabelled as gzip.
//! 4. [`request_id`]: the id exists before anything can fail, is echoed on every response, and
//!    every 500 below is logged with it and rendered as `{"detail", "error_id"}`; its span
//!    (with the id) holds every log line of the request, tower-http's `TraceLayer` (at debug:
//!    start, end, latency) and each handler's and command's own span included.
//! 5. [`cors`] (only with `SPARC_CORS_ORIGINS` set): preflights are answered here, before any
//!    limit counts them, and every answer below (errors too) carries the CORS headers a browser
//!    needs to show it to the page; a WebSocket upgrade from a page of another origin is
//!    refused with 403.
//! 6. [`client_ip`]: resolves the IP once, for the limiter and for event metadata.
//! 7. [`over_capacity`]: a request on a connection the server accepted over its cap is
//!    answered 503 here, with the id and headers above, and costs nothing further.
//! 8. [`rate_limit`], with the cap on each client's requests in flight: before any work is done
//!    for a request that will be refused; WebSocket upgrades (`/ws`) count like any request.
//! 9. body limit (1 MiB): a declared `Content-Length` over it is refused before any handler
//!    runs (the body drained first, so the client sees the 413 rather than a reset); a
//!    streamed body is cut off by the extractors ([`axum::extract::DefaultBodyLimit`]).
//! 10. [`error_shape`]: plain-text 4xx answers from axum's own extractors become `{"detail"}`.
//! 11. panic catcher: a panicking handler becomes a 500 (with error id) instead of a dropped
//!     connection.
//! 12. [`deadline`]: the request's deadline, from its arrival, for the queues it may wait in.
//!
//! and inside all of them the router, with `{"detail":"Not Found"}` and
//! `{"detail":"Method Not Allowed"}` fallbacks, and the [`metrics::HttpMetrics`] registry as an
//! extension for the `/metrics` handler.

pub mod client_ip;
pub mod cors;
pub mod error_shape;
pub mod metrics;
pub mod over_capacity;
pub mod rate_limit;
pub mod request_id;
pub mod security_headers;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use futures::StreamExt;
use sparc_accounts::tokens::TokenService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};

use crate::error::ApiError;
use crate::settings::ApiSettings;

pub use client_ip::{ClientIp, TrustedProxies};
pub use cors::CorsOrigins;
pub use rate_limit::RateLimiter;
pub use request_id::RequestId;

/// The largest accepted request body: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Responses of at least this many bytes are compressed ("over 1 KiB").
pub(crate) const COMPRESS_FROM_BYTES: u64 = 1025;

/// Wraps `router` in the whole stack (see the module docs) and sets the 404/405 fallbacks.
/// Call it last, after every route is registered: the 405 fallback applies to the routes that
/// exist at that point.
///
/// The rate limiter and the client IP need the socket peer: serve the result with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn apply(router: Router, settings: &ApiSettings, tokens: Arc<TokenService>) -> Router {
    let limiter = Arc::new(RateLimiter::new(settings, tokens));
    let metrics = Arc::new(metrics::HttpMetrics::default());
    let compression = CompressionLayer::new()
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_FROM_BYTES)));
    let inner = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(metrics.clone()))
        .layer(from_fn_with_state(settings.request_timeout(), deadline))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn(error_shape::json_error_bodies))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(reject_declared_oversize))
        .layer(from_fn_with_state(limiter, rate_limit::rate_limit))
        .layer(from_fn(over_capacity::refuse_over_capacity))
        .layer(from_fn_with_state(
            settings.trust_forwarded_for.clone(),
            client_ip::client_ip,
        ));
    let with_cors = match settings.cors_origins.layer() {
        Some(cors) => inner.layer(cors).layer(from_fn_with_state(
            settings.cors_origins.clone(),
            cors::guard,
        )),
        None => inner,
    };
    // Inside the request id's span, so its lines carry the id; failures are logged by the
    // error-shaping middleware, once, with their cause.
    let traced = with_cors.layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::DEBUG))
            .on_failure(()),
    );
    traced
        .layer(from_fn(request_id::request_id))
        .layer(compression)
        .layer(from_fn_with_state(metrics, metrics::record))
        .layer(from_fn_with_state(
            settings.hsts,
            security_headers::security_headers,
        ))
}

/// Runs the request under its deadline, `timeout` after it arrived
/// ([`sparc_store::overload`]): what is still queued then (a command waiting for its stream, an append waiting for its statement) is refused
/// with 503 and `Retry-After`, unattempted; what has started to commit is finished.
async fn deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    sparc_store::overload::with_deadline(deadline, next.run(request)).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A refused body up to this size is read and thrown away before the 413 goes out.
const DRAIN_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// How long draining a refused body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses a body whose declared length is over [`MAX_BODY_BYTES`] without handing it to any
/// handler.
///
/// The body is still read and discarded first (up to [`DRAIN_MAX_BYTES`], within
/// [`DRAIN_TIMEOUT`]): a client is usually still sending when the answer is ready, and closing
/// a socket with unread data makes the kernel reset the connection, which can destroy the 413
/// before the client reads it. Larger bodies are not read; their senders may see a reset.
async fn reject_declared_oversize(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(length) = declared.filter(|&length| length > MAX_BODY_BYTES as u64) else {
        return next.run(request).await;
    };
    if length <= DRAIN_MAX_BYTES {
        let mut body = request.into_body().into_data_stream();
        let drained = async { while let Some(Ok(_)) = body.next().await {} };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
    }
    let mut response = ApiError::PayloadTooLarge.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A handler panic as a 500 whose cause (the panic message) is logged by the request-id layer.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned());
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::token_service;
    use crate::extract::AppJson;
    use axum::body::{Body, to_bytes};
    use axum::http::{Method, StatusCode};
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn app(settings: &ApiSettings) -> Router {
        let routes = Router::new()
            .route("/api/v1/small", get(|| async { "tiny" }))
            .route("/api/v1/large", get(|| async { "x".repeat(4096) }))
            .route(
                "/api/v1/echo",
                post(|AppJson(v): AppJson<Value>| async move { AppJson(v) }),
            )
            .route("/api/v1/panic", get(panicking_handler))
            .route("/api/v1/health", get(|| async { "healthy" }));
        apply(routes, settings, Arc::new(token_service()))
    }

    async fn panicking_handler() -> &'static str {
        panic!("invariant broken")
    }

    async fn send(request: axum::http::Request<Body>) -> Response {
        app(&ApiSettings::default())
            .oneshot(request)
            .await
            .expect("infallible")
    }

    async fn json_body(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    fn get_req(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri)
            .body(Body::empty())
            .expect("valid")
    }

    #[tokio::test]
    async fn an_unknown_path_is_404_with_every_standard_header() {
        let response = send(get_req("/api/v1/nope")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        for name in [
            "x-request-id",
            "x-content-type-options",
            "x-frame-options",
            "x-ratelimit-limit",
        ] {
            assert!(response.headers().contains_key(name), "missing {name}");
        }
        assert_eq!(json_body(response).await, json!({"detail": "Not Found"}));
    }

    #[tokio::test]
    async fn a_wrong_method_is_405_with_allow_and_our_body() {
        let request = axum::http::Request::builder()
            .method(Method::DELETE)
            .uri("/api/v1/small")
            .body(Body::empty())
            .expect("valid");
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            response.headers()[header::ALLOW]
                .to_str()
                .is_ok_and(|v| v.contains("GET"))
        );
        assert_eq!(
            json_body(response).await,
            json!({"detail": "Method Not Allowed"})
        );
    }

    #[tokio::test]
    async fn a_declared_body_over_one_mib_is_413_before_reading() {
        let request = axum::http::Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, MAX_BODY_BYTES + 1)
            .body(Body::empty())
            .expect("valid");
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            json_body(response).await,
            json!({"detail": "Request body too large"})
        );
    }

    #[tokio::test]
    async fn a_refused_declared_body_is_drained_so_the_client_sees_the_413() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let chunk = bytes_of(MAX_BODY_BYTES / 2 + 1);
        let chunks = futures::stream::iter([chunk.clone(), chunk]).map(Ok::<_, std::io::Error>);
        let body = chunks.chain(futures::stream::once(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(axum::body::Bytes::new())
        }));
        let request = axum::http::Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, MAX_BODY_BYTES + 2)
            .body(Body::from_stream(body))
            .expect("valid");
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert!(
            finished.load(Ordering::SeqCst),
            "the body was read to its end"
        );
    }

    #[tokio::test]
    async fn a_streamed_body_over_one_mib_is_413() {
        let chunk = bytes_of(64 * 1024);
        let chunks = (0..17).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let request = axum::http::Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .expect("valid");
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            json_body(response).await,
            json!({"detail": "Request body too large"})
        );
    }

    fn bytes_of(n: usize) -> axum::body::Bytes {
        axum::body::Bytes::from(vec![b' '; n])
    }

    #[tokio::test]
    async fn a_body_just_under_the_limit_is_read() {
        let padding = " ".repeat(MAX_BODY_BYTES - 2);
        let request = axum::http::Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!("{padding}{{}}")))
            .expect("valid");
        assert_eq!(send(request).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn large_responses_are_gzipped_when_accepted_and_small_ones_never() {
        let with_gzip = |uri| {
            axum::http::Request::get(uri)
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(Body::empty())
                .expect("valid")
        };
        let large = send(with_gzip("/api/v1/large")).await;
        assert_eq!(large.headers()[header::CONTENT_ENCODING], "gzip");
        let small = send(with_gzip("/api/v1/small")).await;
        assert!(!small.headers().contains_key(header::CONTENT_ENCODING));
        let not_accepted = send(get_req("/api/v1/large")).await;
        assert!(
            !not_accepted
                .headers()
                .contains_key(header::CONTENT_ENCODING)
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_whose_error_id_is_the_request_id() {
        let response = send(get_req("/api/v1/panic")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(
            json_body(response).await,
            json!({"detail": "Internal server error", "error_id": id})
        );
    }

    #[tokio::test]
    async fn a_rate_limited_answer_still_has_the_request_id_and_security_headers() {
        let app = app(&ApiSettings {
            rate_limit_per_minute: 1,
            ..ApiSettings::default()
        });
        app.clone()
            .oneshot(get_req("/api/v1/small"))
            .await
            .expect("infallible");
        let response = app
            .oneshot(get_req("/api/v1/small"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn health_is_not_rate_limited_through_the_full_stack() {
        let app = app(&ApiSettings {
            rate_limit_per_minute: 1,
            ..ApiSettings::default()
        });
        for _ in 0..3 {
            let response = app
                .clone()
                .oneshot(get_req("/api/v1/health"))
                .await
                .expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
}
