//! Browsers on other origins (`SPARC_CORS_ORIGINS`): CORS for the API, and the `Origin` check of
//! WebSocket upgrades.
//!
//! With no origins listed (the default) there is no CORS layer at all: only pages of the
//! service's own origin can read its answers. With a list, `tower-http`'s CORS layer answers
//! preflights for the methods and request headers the contract uses and exposes the headers a
//! client reads (`ETag`, `X-Request-ID`, `X-RateLimit-*`, `Retry-After`); a request from an
//! origin not in the list gets no CORS headers, so the browser keeps the answer from the page.
//! Credentials (cookies) are never allowed: the API authenticates with bearer tokens, so `*`
//! (any origin) is safe to offer and is accepted.
//!
//! A browser does not apply CORS to WebSocket upgrades, so `/ws` checks `Origin` itself when a
//! list is set ([`guard`]): an upgrade from a page of another origin is refused with 403.
//! Clients that are not browsers send no `Origin` and are not affected.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origins whose pages may call the API: none (same origin only), a list, or any (`*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Same-origin pages only: no CORS headers at all.
    #[default]
    None,
    /// Pages of these origins (`scheme://host[:port]`, as browsers send them).
    List(Vec<String>),
    /// Pages of any origin (`*`), without credentials.
    Any,
}

impl CorsOrigins {
    /// Parses origins from a comma-separated list; `*` alone allows any.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let entries: Vec<&str> = entries
            .into_iter()
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        if entries == ["*"] {
            return Ok(Self::Any);
        }
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            origins.push(origin(entry)?);
        }
        Ok(if origins.is_empty() {
            Self::None
        } else {
            Self::List(origins)
        })
    }

    /// Whether a page of `origin` may use the API.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::List(origins) => origins.iter().any(|allowed| allowed.as_bytes() == origin),
        }
    }

    /// The CORS layer for these origins; `None` when no other origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow_origin = match self {
            Self::None => return None,
            Self::Any => AllowOrigin::any(),
            Self::List(origins) => AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::IF_MATCH,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("x-request-id"),
                ])
                .expose_headers([
                    header::ETAG,
                    header::RETRY_AFTER,
                    HeaderName::from_static("x-request-id"),
                    HeaderName::from_static("x-ratelimit-limit"),
                    HeaderName::from_static("x-ratelimit-remaining"),
                    HeaderName::from_static("x-ratelimit-reset"),
                ])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// One origin as browsers send it: `http(s)://host[:port]`, lowercase, no path.
fn origin(entry: &str) -> Result<String, String> {
    let entry = entry.trim_end_matches('/').to_ascii_lowercase();
    let host = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
        .ok_or_else(|| format!("CORS origin {entry:?} must start with http:// or https://"))?;
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid {
        return Err(format!(
            "CORS origin {entry:?} must be scheme://host[:port], with no path"
        ));
    }
    Ok(entry)
}

impl<'de> Deserialize<'de> for CorsOrigins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            List(Vec<String>),
            Text(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Text(text) => Self::parse(text.split(',')),
            Given::List(list) => Self::parse(list.iter().map(String::as_str)),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for CorsOrigins {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_str(""),
            Self::Any => serializer.serialize_str("*"),
            Self::List(origins) => serializer.serialize_str(&origins.join(",")),
        }
    }
}

/// Around the CORS layer, when a list is set: refuses a WebSocket upgrade (`/ws`) from a page of
/// an origin the list does not allow, and takes every `Access-Control-*` header off an answer to
/// a request from such an origin (or from none). The CORS layer adds some of them to every
/// answer; only the allowed origins' pages are meant to see any.
pub async fn guard(State(origins): State<CorsOrigins>, request: Request, next: Next) -> Response {
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .map(|origin| origins.allows(origin.as_bytes()));
    if allowed == Some(false) && request.uri().path() == "/ws" {
        return ApiError::Forbidden.into_response();
    }
    let mut response = next.run(request).await;
    if allowed != Some(true) {
        let headers = response.headers_mut();
        let cors: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors {
            headers.remove(name);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_from_a_comma_separated_list() {
        let parsed =
            CorsOrigins::parse("https://Dash.example.com/, http://localhost:3000".split(','));
        assert_eq!(
            parsed,
            Ok(CorsOrigins::List(vec![
                "https://dash.example.com".to_owned(),
                "http://localhost:3000".to_owned()
            ]))
        );
        assert_eq!(CorsOrigins::parse("".split(',')), Ok(CorsOrigins::None));
        assert_eq!(CorsOrigins::parse(["*"]), Ok(CorsOrigins::Any));
    }

    #[test]
    fn an_entry_that_is_not_an_origin_is_refused() {
        for entry in [
            "localhost:3000",
            "https://a.example/app",
            "ftp://a.example",
            "https://",
        ] {
            assert!(CorsOrigins::parse([entry]).is_err(), "{entry}");
        }
        assert!(
            CorsOrigins::parse(["*", "https://a.example"]).is_err(),
            "* alone or not at all"
        );
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let origins = CorsOrigins::parse(["https://a.example"]).expect("valid");
        assert!(origins.allows(b"https://a.example"));
        assert!(!origins.allows(b"https://b.example"));
        assert!(!CorsOrigins::None.allows(b"https://a.example"));
        assert!(CorsOrigins::Any.allows(b"https://b.example"));
    }
}
