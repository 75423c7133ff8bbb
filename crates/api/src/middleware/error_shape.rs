//! A safety net that keeps client errors in the contract's shape when they come from outside our
//! own types: axum's built-in rejections (`Path`, `Json`, `WebSocketUpgrade`…), a handler that
//! returns a bare `StatusCode`, or a layer's plain-text answer. Any 4xx whose body is not JSON is
//! rewritten to `{"detail": "<its text, or the status reason>"}`; status and other headers stay.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

/// The most of a non-JSON error body we read to reuse as the message.
const MAX_TEXT_BYTES: usize = 4096;

/// The middleware; install with `axum::middleware::from_fn(json_error_bodies)`.
pub async fn json_error_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if !response.status().is_client_error() || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_TEXT_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let detail = match parts.status {
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large".to_owned(),
        status if text.is_empty() => status.canonical_reason().unwrap_or("Error").to_owned(),
        _ => text,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!({ "detail": detail }).to_string()))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim();
            essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use axum::Router;
    use axum::extract::Path;
    use axum::routing::get;
    use serde_json::Value;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route(
                "/items/{n}",
                get(|Path(n): Path<u32>| async move { n.to_string() }),
            )
            .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
            .route(
                "/ours",
                get(|| async { ApiError::NotFound("Task not found".into()) }),
            )
            .route(
                "/big",
                get(|| async { (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded") }),
            )
            .route("/fine", get(|| async { "plain success" }))
            .layer(axum::middleware::from_fn(json_error_bodies))
    }

    async fn get_uri(uri: &str) -> (StatusCode, Option<HeaderValue>, String) {
        let request = axum::http::Request::get(uri)
            .body(Body::empty())
            .expect("valid");
        let response = app().oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        (
            status,
            content_type,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn detail(body: &str) -> Value {
        serde_json::from_str::<Value>(body).expect("JSON")["detail"].clone()
    }

    #[tokio::test]
    async fn a_plain_text_axum_rejection_becomes_a_detail_body() {
        let (status, content_type, body) = get_uri("/items/abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            content_type.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert!(
            detail(&body)
                .as_str()
                .is_some_and(|d| d.contains("Invalid URL")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn an_empty_error_gets_the_status_reason() {
        let (status, _, body) = get_uri("/teapot").await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(detail(&body), "I'm a teapot");
        let (status, _, body) = get_uri("/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(detail(&body), "Not Found");
    }

    #[tokio::test]
    async fn a_413_from_any_layer_gets_our_message() {
        let (_, _, body) = get_uri("/big").await;
        assert_eq!(detail(&body), "Request body too large");
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_untouched() {
        let (_, _, body) = get_uri("/ours").await;
        assert_eq!(detail(&body), "Task not found");
        let (status, _, body) = get_uri("/fine").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "plain success"));
    }
}
