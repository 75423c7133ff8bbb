//! The security headers of the contract, on every response: `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY`, `Content-Security-Policy: default-src 'self'`,
//! `Referrer-Policy: no-referrer`, and `Strict-Transport-Security` when configured (it must only
//! be sent over TLS, which the process cannot see behind a terminating proxy).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// `max-age` of one year, the value browsers' preload lists expect.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000; includeSubDomains");

/// The middleware; `hsts` adds `Strict-Transport-Security`. Install with
/// `axum::middleware::from_fn_with_state(hsts, security_headers)`.
pub async fn security_headers(State(hsts): State<bool>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn headers(hsts: bool, uri: &str) -> axum::http::HeaderMap {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(hsts, security_headers));
        let request = axum::http::Request::get(uri)
            .body(Body::empty())
            .expect("valid");
        app.oneshot(request)
            .await
            .expect("infallible")
            .headers()
            .clone()
    }

    #[tokio::test]
    async fn every_response_carries_the_security_headers() {
        for uri in ["/", "/missing"] {
            let headers = headers(false, uri).await;
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                "default-src 'self'"
            );
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        }
    }

    #[tokio::test]
    async fn hsts_is_sent_only_when_configured() {
        assert!(
            !headers(false, "/")
                .await
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        );
        assert_eq!(
            headers(true, "/").await[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
    }
}
