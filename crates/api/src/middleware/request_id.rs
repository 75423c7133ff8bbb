//! Gives every request an id, echoes it as `X-Request-ID`, and turns every 500 into the
//! contract's `{"detail":"Internal server error","error_id":"<request id>"}` after logging the
//! cause next to that id.
//!
//! A client-sent `X-Request-ID` is kept if it is 1..=128 characters of `[A-Za-z0-9._-]` (so it is
//! safe in logs and headers); anything else is replaced by a new UUIDv4. The id is stored in the
//! request extensions as [`RequestId`] (handlers extract it for event metadata) and the rest of
//! the request runs inside a tracing span carrying it.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{ApiError, InternalErrorCause};

/// The request/response header carrying the id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, as echoed in `X-Request-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    /// The id set by the middleware; outside it (unit tests of a bare handler) a fresh one.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(Uuid::new_v4().to_string())))
    }
}

/// Whether a client-sent id is safe to adopt.
fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The middleware; install with `axum::middleware::from_fn(request_id)`.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_sane(id))
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        match response.extensions().get::<InternalErrorCause>() {
            Some(cause) => {
                tracing::error!(request_id = %id, error = %cause, "internal server error")
            }
            None => tracing::error!(request_id = %id, "internal server error without a cause"),
        }
        response = ApiError::internal_response(&id);
    }
    let value = HeaderValue::from_str(&id).expect("a sane id or a UUID is a valid header value");
    response.headers_mut().insert(X_REQUEST_ID, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/id", get(|id: RequestId| async move { id.0 }))
            .route(
                "/boom",
                get(|| async {
                    Err::<(), _>(ApiError::internal(std::io::Error::other(
                        "db password is hunter2",
                    )))
                }),
            )
            .route(
                "/bare500",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "stack trace here") }),
            )
            .layer(axum::middleware::from_fn(request_id))
    }

    async fn get_with(uri: &str, id: Option<&str>) -> Response {
        let mut request = axum::http::Request::get(uri);
        if let Some(id) = id {
            request = request.header(X_REQUEST_ID, id);
        }
        app()
            .oneshot(request.body(Body::empty()).expect("valid"))
            .await
            .expect("infallible")
    }

    async fn text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_sane_client_id_is_kept_and_echoed() {
        let response = get_with("/id", Some("abc.DEF_123-x")).await;
        assert_eq!(response.headers()[X_REQUEST_ID], "abc.DEF_123-x");
        assert_eq!(text(response).await, "abc.DEF_123-x");
    }

    #[tokio::test]
    async fn an_insane_or_missing_client_id_is_replaced_by_a_uuid() {
        let too_long = "a".repeat(129);
        for sent in [
            None,
            Some("has space"),
            Some("<script>"),
            Some(""),
            Some(too_long.as_str()),
        ] {
            let response = get_with("/id", sent).await;
            let echoed = response.headers()[X_REQUEST_ID]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(Uuid::parse_str(&echoed).is_ok(), "{sent:?} gave {echoed}");
            assert_eq!(text(response).await, echoed, "the handler sees the same id");
        }
    }

    #[tokio::test]
    async fn an_internal_error_body_carries_the_request_id_and_no_internals() {
        let response = get_with("/boom", Some("req-1")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[X_REQUEST_ID], "req-1");
        let body: Value = serde_json::from_str(&text(response).await).expect("JSON");
        assert_eq!(
            body,
            json!({"detail": "Internal server error", "error_id": "req-1"})
        );
    }

    #[tokio::test]
    async fn a_bare_500_from_elsewhere_is_also_rewritten() {
        let response = get_with("/bare500", Some("req-2")).await;
        let body: Value = serde_json::from_str(&text(response).await).expect("JSON");
        assert_eq!(
            body,
            json!({"detail": "Internal server error", "error_id": "req-2"})
        );
    }

    /// A log sink for the subscriber under test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A callsite's interest is cached for the whole process: one first hit by a test without
    /// a subscriber, on another thread, while this test runs would be cached as "never", and
    /// this test's scoped subscriber would miss its event. A global subscriber that takes
    /// everything keeps every callsite open, so each event reaches the subscriber in scope on
    /// its own thread.
    fn keep_callsites_open() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        });
    }

    #[tokio::test]
    async fn the_cause_of_a_500_is_logged_with_the_request_id() {
        keep_callsites_open();
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        get_with("/boom", Some("req-logged")).await;
        let logged = String::from_utf8_lossy(&logs.0.lock().expect("not poisoned")).into_owned();
        assert!(logged.contains("ERROR"), "{logged}");
        assert!(logged.contains("req-logged"), "{logged}");
        assert!(
            logged.contains("db password is hunter2"),
            "the cause goes to the log: {logged}"
        );
    }

    #[test]
    fn sanity_allows_only_the_safe_alphabet_up_to_128_chars() {
        assert!(is_sane("a"));
        assert!(is_sane(&"a".repeat(128)));
        assert!(!is_sane(&"a".repeat(129)));
        assert!(!is_sane("a/b"));
        assert!(!is_sane("é"));
    }
}
