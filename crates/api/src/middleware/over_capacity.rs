//! The answer on a connection the server accepted over its cap (`SPARC_MAX_CONNECTIONS`): 503
//! `{"detail"}` naming the cap, with `Retry-After` and `Connection: close`.
//!
//! The server marks every request of such a connection with [`OverCapacity`] and leaves the
//! answer to this layer, so that it has a request id and the security headers like any other
//! and is counted in the metrics, while nothing behind it (the rate limiter, a handler) runs.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Marks a request that came on a connection over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCapacity {
    /// The cap, for the answer.
    pub max_connections: usize,
}

/// The middleware; install with `axum::middleware::from_fn(refuse_over_capacity)`.
pub async fn refuse_over_capacity(request: Request, next: Next) -> Response {
    let Some(OverCapacity { max_connections }) = request.extensions().get().copied() else {
        return next.run(request).await;
    };
    let mut response = ApiError::Overloaded {
        detail: format!(
            "The service is busy: it holds its most connections ({max_connections}); nothing was done"
        ),
        // Connections come and go in well under a second when busy.
        retry_after_secs: 1,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::http::StatusCode;
    use axum::routing::get;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/api/v1/tasks", get(|| async { "tasks" }))
            .layer(axum::middleware::from_fn(refuse_over_capacity))
    }

    #[tokio::test]
    async fn a_marked_request_is_503_naming_the_cap_and_closes_the_connection() {
        let mut request = axum::http::Request::get("/api/v1/tasks")
            .body(Body::empty())
            .expect("valid");
        request
            .extensions_mut()
            .insert(OverCapacity { max_connections: 7 });
        let response = app().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            body,
            json!({"detail": "The service is busy: it holds its most connections (7); nothing was done"})
        );
    }

    #[tokio::test]
    async fn an_unmarked_request_passes() {
        let request = axum::http::Request::get("/api/v1/tasks")
            .body(Body::empty())
            .expect("valid");
        let response = app().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
