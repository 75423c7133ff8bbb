//! Resolves the client's IP once per request, for rate limiting and for the `ip` of event
//! metadata, and stores it in the request extensions as [`ClientIp`].
//!
//! The IP is the socket peer (`ConnectInfo<SocketAddr>`, present when the binary serves with
//! `into_make_service_with_connect_info::<SocketAddr>()`), or the first `X-Forwarded-For` entry
//! when `trust_forwarded_for` is set, i.e. behind a proxy that overwrites that header. Without
//! either (in-process tests) it is the unspecified address `0.0.0.0`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's IP address as resolved by [`client_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    /// The resolved IP; outside the middleware, the socket peer or `0.0.0.0`.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or_else(|| resolve(&parts.headers, &parts.extensions, false)))
    }
}

fn resolve(
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    trust_forwarded_for: bool,
) -> ClientIp {
    if trust_forwarded_for && let Some(ip) = first_forwarded_for(headers) {
        return ClientIp(ip);
    }
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    ClientIp(
        peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .to_canonical(),
    )
}

/// The first entry of the first `X-Forwarded-For` header, with or without a port.
fn first_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let first = headers
        .get(X_FORWARDED_FOR)?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .trim();
    let ip = first
        .parse::<IpAddr>()
        .ok()
        .or_else(|| first.parse::<SocketAddr>().ok().map(|addr| addr.ip()))?;
    Some(ip.to_canonical())
}

/// The middleware; install with `axum::middleware::from_fn_with_state(trust_forwarded_for, client_ip)`.
pub async fn client_ip(
    State(trust_forwarded_for): State<bool>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = resolve(request.headers(), request.extensions(), trust_forwarded_for);
    request.extensions_mut().insert(ip);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    async fn seen_ip(trust: bool, peer: Option<&str>, forwarded: Option<&str>) -> String {
        let app = Router::new()
            .route(
                "/",
                get(|ClientIp(ip): ClientIp| async move { ip.to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(trust, client_ip));
        let mut request = axum::http::Request::get("/");
        if let Some(value) = forwarded {
            request = request.header(X_FORWARDED_FOR, value);
        }
        let mut request = request.body(Body::empty()).expect("valid");
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().expect("a socket address");
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        let response = app.oneshot(request).await.expect("infallible");
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn the_socket_peer_is_the_client_by_default() {
        assert_eq!(
            seen_ip(false, Some("203.0.113.7:5000"), None).await,
            "203.0.113.7"
        );
    }

    #[tokio::test]
    async fn x_forwarded_for_is_ignored_unless_trusted() {
        let ip = seen_ip(false, Some("203.0.113.7:5000"), Some("198.51.100.1")).await;
        assert_eq!(ip, "203.0.113.7");
    }

    #[tokio::test]
    async fn the_first_x_forwarded_for_entry_is_used_when_trusted() {
        let ip = seen_ip(true, Some("10.0.0.1:5000"), Some("198.51.100.1, 10.0.0.2")).await;
        assert_eq!(ip, "198.51.100.1");
        let ip = seen_ip(true, Some("10.0.0.1:5000"), Some("198.51.100.1:4711")).await;
        assert_eq!(ip, "198.51.100.1");
    }

    #[tokio::test]
    async fn an_unparsable_forwarded_for_falls_back_to_the_peer() {
        assert_eq!(
            seen_ip(true, Some("10.0.0.1:5000"), Some("unknown")).await,
            "10.0.0.1"
        );
    }

    #[tokio::test]
    async fn ipv4_mapped_ipv6_peers_are_reported_as_ipv4() {
        assert_eq!(
            seen_ip(false, Some("[::ffff:192.0.2.9]:80"), None).await,
            "192.0.2.9"
        );
    }

    #[tokio::test]
    async fn without_connect_info_the_ip_is_unspecified() {
        assert_eq!(seen_ip(false, None, None).await, "0.0.0.0");
    }
}
