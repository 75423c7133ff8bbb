//! Our extractors for bodies, query strings and path parameters, whose failures are
//! [`ApiError`]s in the contract's shape instead of axum's plain-text rejections.
//!
//! Mapping (FastAPI-compatible where the contract says so):
//!
//! | problem | answer |
//! |---|---|
//! | `Content-Type` missing or not JSON (`application/json`, `application/*+json`) | 415 `"Content-Type must be application/json"` |
//! | body over the limit | 413 `"Request body too large"` |
//! | JSON syntax error, empty body, trailing garbage | 400 `"Invalid JSON: …"` |
//! | a value the service could not keep exactly (see below) | 422, `loc: ["body", <field path>]` |
//! | wrong type, missing field, unknown field (`deny_unknown_fields`), bad enum value, a newtype's `Deserialize` refusing the value, a string over its [`Text`] length | 422, `loc: ["body", <field path>]` |
//! | unparsable query parameter (`limit=abc`), missing required one, one holding U+0000 | 422, `loc: ["query", <name>]` |
//! | unparsable path parameter (`/tasks/not-a-uuid`), one holding U+0000 | 422, `loc: ["path", <name>]` |
//!
//! A 415 rather than FastAPI's 422 for a missing content type: the request is not invalid data,
//! it is data in a format we do not read, and 415 says so to every HTTP client.
//!
//! **What is accepted is kept exactly.** Before serde reads a body, one pass over its bytes
//! (the `scan` module) refuses what serde_json would take but a backend or a reader would
//! not give back unchanged: U+0000 in any string or key (PostgreSQL cannot store it), integers
//! beyond 64 bits and numbers a 64-bit float would round (serde_json would change them
//! silently), keys repeated in one object (serde_json would keep the last), and nesting
//! deeper than [`JsonLimits::max_depth`] below a top-level field. Free-form fields (a task's
//! `params`) are then held to [`JsonLimits`] by [`check_free_form`]; every string field is a
//! [`Text`] of a documented maximum length, counted in characters (Unicode scalar values, as
//! JSON Schema's `maxLength` counts them).
//!
//! Rules that serde cannot express (ranges, cross-field checks) go through [`Validator`], which
//! collects every field error into one 422.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Deref;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_path_to_error::{Path as FieldPath, Segment};

use crate::error::{ApiError, FieldError};
use crate::settings::ApiSettings;

mod scan;

/// How deep and how large free-form JSON in a request may be (`SPARC_MAX_JSON_DEPTH`,
/// `SPARC_MAX_JSON_BYTES`). [`AppJson`] finds them in the request's extensions (the router puts
/// them there from the settings) and takes the defaults when they are absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Nested objects and arrays a free-form value may have (`{}` is 1, `{"a":[]}` is 2); the
    /// whole body may nest one level more.
    pub max_depth: usize,
    /// Bytes of a free-form value written as compact JSON (as it is stored).
    pub max_bytes: usize,
}

impl JsonLimits {
    /// The deepest nesting the settings may ask for: serde_json reads no deeper than 128
    /// levels, and a body wraps its free-form fields in a level of its own.
    pub const DEPTH_CEILING: usize = 100;

    /// The limits the settings ask for, the depth at most [`Self::DEPTH_CEILING`].
    pub fn from_settings(settings: &ApiSettings) -> Self {
        Self {
            max_depth: settings.max_json_depth.min(Self::DEPTH_CEILING),
            max_bytes: settings.max_json_bytes,
        }
    }
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self::from_settings(&ApiSettings::default())
    }
}

/// Checks a free-form field (already through the body scan) against `limits`.
///
/// # Errors
/// A 422 field error at `["body", field]`: `json_too_deep` or `json_too_large`.
pub fn check_free_form(field: &str, value: &Value, limits: JsonLimits) -> Result<(), FieldError> {
    if deeper_than(value, limits.max_depth) {
        return Err(FieldError::body(
            field,
            format!("{field} may nest at most {} levels", limits.max_depth),
            "json_too_deep",
        ));
    }
    let mut size = SizeLimit {
        written: 0,
        max: limits.max_bytes,
    };
    if serde_json::to_writer(&mut size, value).is_err() {
        return Err(FieldError::body(
            field,
            format!(
                "{field} must be at most {} bytes as compact JSON",
                limits.max_bytes
            ),
            "json_too_large",
        ));
    }
    Ok(())
}

/// Whether `value` has more than `levels` nested objects and arrays. Recurses no deeper than
/// `levels`, whatever the value.
fn deeper_than(value: &Value, levels: usize) -> bool {
    if !(value.is_array() || value.is_object()) {
        return false;
    }
    let Some(below) = levels.checked_sub(1) else {
        return true;
    };
    match value {
        Value::Array(items) => items.iter().any(|item| deeper_than(item, below)),
        Value::Object(members) => members.values().any(|member| deeper_than(member, below)),
        _ => false,
    }
}

/// Counts what serde_json writes and fails once it passes `max`, so an oversized value is not
/// written out whole.
struct SizeLimit {
    written: usize,
    max: usize,
}

impl io::Write for SizeLimit {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        if self.written > self.max {
            Err(io::Error::other("over the limit"))
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A string field of a request body, at most `MAX` characters (Unicode scalar values); longer
/// is a 422 `string_too_long` at the field. Every string a request body carries is one, so
/// each has a limit; the OpenAPI document states it as `maxLength`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const MAX: usize> Deref for Text<MAX> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> From<Text<MAX>> for String {
    fn from(text: Text<MAX>) -> Self {
        text.0
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Bytes bound characters from above: count only when the bytes are over.
        if text.len() > MAX && text.chars().count() > MAX {
            return Err(serde::de::Error::custom(format_args!(
                "{TOO_LONG}{MAX} characters"
            )));
        }
        Ok(Self(text))
    }
}

/// The start of [`Text`]'s message (pydantic's), which [`field_error`] recognises.
const TOO_LONG: &str = "String should have at most ";

/// Checks that `url` is an `http://` or `https://` URL with a host and without whitespace,
/// the same rule as [`HTTP_URL_PATTERN`]. Anything else (`javascript:`, `data:`, a bare path)
/// is refused: a URL a user gives is shown to others.
pub fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    host_len > 0 && !url.chars().any(is_ecma_space)
}

/// [`is_http_url`] as an ECMA-262 pattern, for the OpenAPI document. The white space of
/// [`is_ecma_space`] is spelt out rather than `\s`, whose meaning differs between regex
/// dialects (Python's, which schemathesis generates with, adds U+001C..U+001F and U+0085 and
/// drops U+FEFF), and U+0000, which no string may hold, is left out too.
pub const HTTP_URL_PATTERN: &str = concat!(
    r"^https?://[^/?#\u0000\t-\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+",
    r"[^\u0000\t-\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]*$"
);

/// What `\s` matches in an ECMA-262 pattern (JSON Schema's dialect).
fn is_ecma_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A JSON request body (as an extractor) or response body (as a responder).
///
/// As an extractor it fails with the answers in the module table. As a responder it writes
/// `application/json`; a value that cannot be serialized becomes a logged 500.
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limits = req
            .extensions()
            .get::<JsonLimits>()
            .copied()
            .unwrap_or_default();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_read_error)?;
        parse_json_body_within(&bytes, limits).map(AppJson)
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(err) => ApiError::internal(err).into_response(),
        }
    }
}

/// Deserializes a JSON body the way [`AppJson`] does with the default [`JsonLimits`]; public
/// for handlers that need the raw bytes too (idempotency keys hash the body).
///
/// # Errors
/// As [`parse_json_body_within`].
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json_body_within(bytes, JsonLimits::default())
}

/// Deserializes a JSON body after the scan described in the module docs, the body allowed to
/// nest one level deeper than `limits.max_depth`.
///
/// # Errors
/// 400 for syntax errors anywhere in the body (even after a field that does not fit, or after
/// the value), 422 with the field path for a value the scan refuses and for type and shape
/// errors of well-formed JSON.
pub fn parse_json_body_within<T: DeserializeOwned>(
    bytes: &[u8],
    limits: JsonLimits,
) -> Result<T, ApiError> {
    match scan::scan(bytes, limits.max_depth.saturating_add(1)) {
        scan::Scan::Clean => {}
        // The scan stops at its first refusal; the rest must still be JSON for a 422. (Skipping
        // a value is iterative in serde_json, so this reads a body at any depth.)
        scan::Scan::Refused(error) => {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => Err(error.into()),
                Err(syntax) => Err(invalid_json(&syntax)),
            };
        }
        scan::Scan::Malformed => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Err(syntax) => invalid_json(&syntax),
                    // The scan is stricter than serde_json nowhere; should it be, refuse safely.
                    Ok(_) => ApiError::BadRequest("Invalid JSON".to_owned()),
                },
            );
        }
    }
    // Every body is an object: serde would also read a struct from an array of its fields in
    // order, which no client means.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Validation(vec![FieldError::new(
                    ["body"],
                    "Input should be a valid dictionary or object to extract fields from",
                    "model_attributes_type",
                )]),
                Err(syntax) => invalid_json(&syntax),
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().clone();
        let inner = err.into_inner();
        match inner.classify() {
            // Deserializing stops at the first field that does not fit, before the parser has
            // seen the rest: a body that is not JSON at all must still be the 400 it is.
            serde_json::error::Category::Data => {
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => ApiError::from(field_error("body", &path, &strip_position(&inner))),
                    Err(syntax) => invalid_json(&syntax),
                }
            }
            _ => invalid_json(&inner),
        }
    })?;
    deserializer.end().map_err(|err| invalid_json(&err))?;
    Ok(value)
}

fn invalid_json(err: &serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("Invalid JSON: {err}"))
}

fn body_read_error(rejection: BytesRejection) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::PayloadTooLarge
        }
        other => ApiError::BadRequest(format!(
            "Could not read the request body: {}",
            other.body_text()
        )),
    }
}

/// `application/json`, `application/json; charset=utf-8`, `application/merge-patch+json`...
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

/// serde_json appends ` at line 1 column 17` to data errors; the `loc` says where instead.
fn strip_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// Turns a serde data error at `path` into a pydantic-style field error under `source`
/// (`body`, `query`).
fn field_error(source: &str, path: &FieldPath, message: &str) -> FieldError {
    let mut loc = vec![source.to_owned()];
    loc.extend(path.iter().filter_map(|segment| match segment {
        Segment::Seq { index } => Some(index.to_string()),
        Segment::Map { key } => Some(key.clone()),
        Segment::Enum { variant } => Some(variant.clone()),
        Segment::Unknown => None,
    }));
    let (msg, kind): (Cow<'_, str>, &str) =
        if let Some(field) = backticked_after(message, "missing field ") {
            // serde reports a missing field at its parent; point at the field itself.
            loc.push(field.to_owned());
            ("Field required".into(), "missing")
        } else if message.starts_with("unknown field ") {
            // Here the path already ends with the offending key.
            ("Extra inputs are not permitted".into(), "extra_forbidden")
        } else if message.starts_with(TOO_LONG) {
            (message.into(), "string_too_long")
        } else if message.starts_with("unknown variant ") {
            (message.into(), "enum")
        } else if message.starts_with("invalid type: ") {
            (message.into(), "type_error")
        } else if is_int_parse_error(message) {
            ("Input should be a valid integer".into(), "int_parsing")
        } else if message == "invalid float literal" {
            ("Input should be a valid number".into(), "float_parsing")
        } else if message == "provided string was not `true` or `false`" {
            ("Input should be a valid boolean".into(), "bool_parsing")
        } else {
            (message.into(), "value_error")
        };
    FieldError {
        loc,
        msg: msg.into_owned(),
        kind: kind.to_owned(),
    }
}

/// `"missing field `name`"` with prefix `"missing field "` gives `Some("name")`.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

/// The messages of `core::num::ParseIntError`, which serde_urlencoded passes through.
fn is_int_parse_error(message: &str) -> bool {
    matches!(
        message,
        "invalid digit found in string"
            | "cannot parse integer from empty string"
            | "number too large to fit in target type"
            | "number too small to fit in target type"
    )
}

/// A typed query string. `T` usually has `#[serde(default)]` fields; unparsable values and
/// missing required parameters are 422 with `loc: ["query", name]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(AppQuery)
    }
}

/// Deserializes a raw query string the way [`AppQuery`] does.
///
/// # Errors
/// 422 with `loc: ["query", name]`.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    // A NUL could reach a database as text (a filter), which PostgreSQL refuses.
    if let Some((name, _)) = form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(FieldError::query(&name, NUL_MESSAGE, "string_nul").into());
    }
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().clone();
        ApiError::from(field_error("query", &path, &err.into_inner().to_string()))
    })
}

/// The message of a query or path parameter holding U+0000.
const NUL_MESSAGE: &str = "Parameter should not contain the NUL character (U+0000)";

/// Typed path parameters; a value that does not parse (`/tasks/not-a-uuid`) is 422 with
/// `loc: ["path", name]` rather than axum's plain-text 400.
#[derive(Debug, Clone, Copy)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;

        if let Ok(params) = RawPathParams::from_request_parts(parts, state).await
            && let Some((name, _)) = params.iter().find(|(_, value)| value.contains('\0'))
        {
            return Err(FieldError::path(name, NUL_MESSAGE, "string_nul").into());
        }
        let rejection = match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => return Ok(AppPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => err,
            Err(other) => return Err(ApiError::internal(other.body_text())),
        };
        let (key, msg) = match rejection.kind() {
            ErrorKind::ParseErrorAtKey {
                key,
                value,
                expected_type,
            } => (
                Some(key.clone()),
                format!("Invalid value {value:?}: expected {expected_type}"),
            ),
            ErrorKind::DeserializeError {
                key,
                value,
                message,
            } => (
                Some(key.clone()),
                format!("Invalid value {value:?}: {message}"),
            ),
            ErrorKind::InvalidUtf8InPathParam { key } => (
                Some(key.clone()),
                "Path parameter is not valid UTF-8".to_owned(),
            ),
            other => (None, other.to_string()),
        };
        // Single-value extractors (`AppPath<Uuid>`) do not report the key: take the only one.
        let key = match key {
            Some(key) => key,
            None => match RawPathParams::from_request_parts(parts, state).await {
                Ok(params) if params.iter().count() == 1 => params
                    .iter()
                    .next()
                    .map(|(k, _)| k.to_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            },
        };
        Err(FieldError::path(&key, msg, "value_error").into())
    }
}

/// Collects field errors so a handler can report every invalid field in one 422.
///
/// ```
/// # use sparc_api::extract::Validator;
/// let (limit, offset) = (0, -1);
/// let mut v = Validator::new();
/// v.check((1..=100).contains(&limit), &["query", "limit"],
///         "Input should be between 1 and 100", "less_than_equal");
/// v.check(offset >= 0, &["query", "offset"],
///         "Input should be greater than or equal to 0", "greater_than_equal");
/// assert!(v.finish().is_err());
/// ```
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error at `loc` unless `ok` holds.
    pub fn check(&mut self, ok: bool, loc: &[&str], msg: &str, kind: &str) -> &mut Self {
        if !ok {
            self.errors
                .push(FieldError::new(loc.iter().copied(), msg, kind));
        }
        self
    }

    /// Records an error found elsewhere (a newtype's `parse`, for instance).
    pub fn push(&mut self, error: FieldError) -> &mut Self {
        self.errors.push(error);
        self
    }

    /// `Ok` if nothing was recorded.
    ///
    /// # Errors
    /// [`ApiError::Validation`] with every recorded error, in the order recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::DefaultBodyLimit;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use serde::Deserialize;
    use serde_json::{Value, json};
    use tower::ServiceExt;
    use uuid::Uuid;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct NewTask {
        skill_name: String,
        schedule_cron: String,
        #[serde(default)]
        params: Params,
    }

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        #[serde(default)]
        retries: u32,
    }

    #[derive(Debug, Deserialize)]
    struct ListQuery {
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        status: Option<String>,
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/tasks",
                post(|AppJson(task): AppJson<NewTask>| async move { AppJson(task) }),
            )
            .route(
                "/tasks",
                get(|AppQuery(q): AppQuery<ListQuery>| async move {
                    AppJson(json!({ "limit": q.limit, "status": q.status }))
                }),
            )
            .route(
                "/tasks/{id}",
                get(|AppPath(id): AppPath<Uuid>| async move { id.to_string() }),
            )
            .layer(DefaultBodyLimit::max(64))
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, Value) {
        let response = app()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post_json(body: &str) -> (StatusCode, Value) {
        send(
            axum::http::Request::post("/tasks")
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .expect("a valid request"),
        )
        .await
    }

    async fn get_uri(uri: &str) -> (StatusCode, Value) {
        send(
            axum::http::Request::get(uri)
                .body(Body::empty())
                .expect("a valid request"),
        )
        .await
    }

    #[tokio::test]
    async fn a_valid_body_round_trips() {
        let (status, body) = post_json(r#"{"skill_name":"a","schedule_cron":"* * * * *"}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["params"]["retries"], 0);
    }

    #[tokio::test]
    async fn malformed_json_is_400_invalid_json() {
        let (status, body) = post_json(r#"{"skill_name": "#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("Invalid JSON: ")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn trailing_garbage_after_the_json_value_is_400() {
        let (status, _) = post_json(r#"{"skill_name":"a","schedule_cron":"x"} x"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn malformed_json_is_400_even_when_a_field_before_the_error_does_not_fit() {
        for body in [
            r#"{"skill_name":"a"} x"#,
            r#"{"skill_name": 5, "schedule_cron": "#,
            r#"{"skill_name":"a","owner":"me",}"#,
        ] {
            let (status, body_json) = post_json(body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {body_json}");
        }
    }

    #[tokio::test]
    async fn a_missing_field_is_422_missing_at_the_field() {
        let (status, body) = post_json(r#"{"skill_name":"a"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            json!({"detail":[{"loc":["body","schedule_cron"],"msg":"Field required","type":"missing"}]})
        );
    }

    #[tokio::test]
    async fn an_unknown_field_is_422_extra_forbidden_at_the_field() {
        let (status, body) =
            post_json(r#"{"skill_name":"a","schedule_cron":"x","owner":"me"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["body", "owner"]));
        assert_eq!(body["detail"][0]["type"], "extra_forbidden");
    }

    #[tokio::test]
    async fn an_unknown_nested_field_is_reported_at_its_full_path() {
        let (status, body) =
            post_json(r#"{"skill_name":"a","schedule_cron":"x","params":{"retry":1}}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["body", "params", "retry"]));
        assert_eq!(body["detail"][0]["type"], "extra_forbidden");
    }

    #[tokio::test]
    async fn a_wrong_type_in_a_nested_field_is_422_with_the_full_path() {
        let (status, body) =
            post_json(r#"{"skill_name":"a","schedule_cron":"x","params":{"retries":"3"}}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "params", "retries"])
        );
        assert_eq!(body["detail"][0]["type"], "type_error");
        let msg = body["detail"][0]["msg"].as_str().unwrap_or_default();
        assert!(
            !msg.contains("line"),
            "the position should be stripped: {msg}"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_an_object_is_422_at_body() {
        let (status, body) = post_json(r#""a string""#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["body"]));
        // An array of the fields in order, which serde alone would read as the struct.
        let (status, body) = post_json(r#" ["x", 1, null] "#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["detail"][0]["loc"], json!(["body"]));
        let (status, _) = post_json(r#" ["x", 1"#).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "still 400 when it is not JSON"
        );
    }

    #[tokio::test]
    async fn a_missing_content_type_is_415() {
        let (status, body) = send(
            axum::http::Request::post("/tasks")
                .body(Body::from(r#"{"skill_name":"a","schedule_cron":"x"}"#))
                .expect("a valid request"),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            body,
            json!({"detail": "Content-Type must be application/json"})
        );
    }

    #[tokio::test]
    async fn a_json_content_type_with_charset_or_suffix_is_accepted() {
        for content_type in [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            let (status, _) = send(
                axum::http::Request::post("/tasks")
                    .header("content-type", content_type)
                    .body(Body::from(r#"{"skill_name":"a","schedule_cron":"x"}"#))
                    .expect("a valid request"),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{content_type}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_in_our_shape() {
        let big = format!(
            r#"{{"skill_name":"{}","schedule_cron":"x"}}"#,
            "a".repeat(100)
        );
        let (status, body) = post_json(&big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body, json!({"detail": "Request body too large"}));
    }

    #[tokio::test]
    async fn an_unparsable_query_value_is_422_at_the_query_parameter() {
        let (status, body) = get_uri("/tasks?limit=abc").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            json!({"detail":[{"loc":["query","limit"],"msg":"Input should be a valid integer","type":"int_parsing"}]})
        );
    }

    #[tokio::test]
    async fn a_valid_query_is_parsed_and_percent_decoded() {
        let (status, body) = get_uri("/tasks?limit=5&status=a%20b").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"limit": 5, "status": "a b"}));
    }

    #[tokio::test]
    async fn an_unparsable_path_parameter_is_422_at_the_path_parameter() {
        let (status, body) = get_uri("/tasks/not-a-uuid").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["path", "id"]));
    }

    #[tokio::test]
    async fn a_nul_in_a_body_is_422_in_the_contract_shape() {
        let (status, body) = post_json(r#"{"skill_name":"a\u0000","schedule_cron":"x"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            json!({"detail":[{
                "loc":["body","skill_name"],
                "msg":"String should not contain the NUL character (U+0000)",
                "type":"string_nul",
            }]})
        );
    }

    #[tokio::test]
    async fn a_refused_value_in_a_malformed_body_is_still_400() {
        for body in [r#"{"skill_name":"\u0000" x"#, r#"{"a":1,"a":2"#, "[1e400,"] {
            let (status, answer) = post_json(body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        }
    }

    #[test]
    fn a_body_nested_beyond_serde_json_is_422_too_deep_and_400_if_unterminated() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        match parse_json_body::<Value>(deep.as_bytes()) {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].kind, "json_too_deep"),
            other => panic!("expected a 422, got {other:?}"),
        }
        match parse_json_body::<Value>("[".repeat(100_000).as_bytes()) {
            Err(ApiError::BadRequest(message)) => assert!(message.starts_with("Invalid JSON")),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn the_body_may_nest_one_level_deeper_than_the_free_form_limit() {
        let limits = JsonLimits {
            max_depth: 2,
            max_bytes: 100,
        };
        assert!(parse_json_body_within::<Value>(br#"{"p":{"a":[]}}"#, limits).is_ok());
        match parse_json_body_within::<Value>(br#"{"p":{"a":[[]]}}"#, limits) {
            Err(ApiError::Validation(errors)) => {
                assert_eq!(errors[0].loc, ["body", "p", "a", "0"]);
                assert_eq!(errors[0].msg, "Value is nested deeper than 2 levels");
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_extractor_takes_its_limits_from_the_request() {
        let app = Router::new()
            .route(
                "/",
                post(|AppJson(v): AppJson<Value>| async move { AppJson(v) }),
            )
            .layer(axum::Extension(JsonLimits {
                max_depth: 1,
                max_bytes: 100,
            }));
        let send = |body: &'static str| {
            app.clone().oneshot(
                axum::http::Request::post("/")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("a valid request"),
            )
        };
        let ok = send(r#"{"a":[]}"#).await.expect("infallible");
        assert_eq!(ok.status(), StatusCode::OK);
        let deep = send(r#"{"a":[[]]}"#).await.expect("infallible");
        assert_eq!(deep.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[derive(Debug, Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: Text<3>,
        #[allow(dead_code)]
        #[serde(default)]
        tags: Vec<Text<2>>,
    }

    #[test]
    fn text_counts_characters_and_refuses_one_over_its_limit() {
        assert!(parse_json_body::<Named>(r#"{"name":"ééé","tags":["éé"]}"#.as_bytes()).is_ok());
        for (body, loc) in [
            (r#"{"name":"éééé"}"#, vec!["body", "name"]),
            (
                r#"{"name":"a","tags":["a","abc"]}"#,
                vec!["body", "tags", "1"],
            ),
        ] {
            match parse_json_body::<Named>(body.as_bytes()) {
                Err(ApiError::Validation(errors)) => {
                    assert_eq!(errors[0].loc, loc);
                    assert_eq!(errors[0].kind, "string_too_long");
                    assert!(errors[0].msg.starts_with(TOO_LONG), "{}", errors[0].msg);
                }
                other => panic!("{body}: expected a 422, got {other:?}"),
            }
        }
    }

    #[test]
    fn free_form_values_are_held_to_their_depth_and_size() {
        let limits = JsonLimits {
            max_depth: 2,
            max_bytes: 12,
        };
        let ok = json!({"a": [1, 2]});
        assert!(check_free_form("params", &ok, limits).is_ok());
        assert!(check_free_form("params", &json!(7), limits).is_ok());
        let deep = json!({"a": [[1]]});
        let error = check_free_form("params", &deep, limits).expect_err("too deep");
        assert_eq!(error.loc, ["body", "params"]);
        assert_eq!(error.kind, "json_too_deep");
        // `{"a":"1234567"}` is 15 bytes as compact JSON.
        let large = json!({"a": "1234567"});
        let error = check_free_form("params", &large, limits).expect_err("too large");
        assert_eq!(error.kind, "json_too_large");
        let exact = json!({"a": "1234"});
        assert_eq!(exact.to_string().len(), 12);
        assert!(check_free_form("params", &exact, limits).is_ok());
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_pass() {
        for url in [
            "https://example.com",
            "http://localhost:8080/a?b=c#d",
            "https://例え.jp/画像.png",
        ] {
            assert!(is_http_url(url), "{url}");
        }
        for url in [
            "",
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://example.com",
            "https://",
            "https:///x",
            "https://?x",
            "https://a b",
            "https://a\u{a0}b",
            "https://a\u{feff}",
            "HTTPS://example.com",
            " https://example.com",
        ] {
            assert!(!is_http_url(url), "{url:?}");
        }
    }

    #[tokio::test]
    async fn a_nul_in_a_query_or_path_parameter_is_422_at_it() {
        let (status, body) = get_uri("/tasks?status=a%00b").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["query", "status"]));
        assert_eq!(body["detail"][0]["type"], "string_nul");
        let (status, body) = get_uri("/tasks/%00").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["detail"][0]["loc"], json!(["path", "id"]));
        assert_eq!(body["detail"][0]["type"], "string_nul");
    }

    #[test]
    fn the_validator_collects_every_failed_check_in_order() {
        let mut v = Validator::new();
        v.check(
            false,
            &["query", "limit"],
            "too small",
            "greater_than_equal",
        )
        .check(true, &["query", "offset"], "unused", "unused")
        .push(FieldError::body("name", "blank", "value_error"));
        match v.finish() {
            Err(ApiError::Validation(errors)) => {
                assert_eq!(errors.len(), 2);
                assert_eq!(errors[0].loc, ["query", "limit"]);
                assert_eq!(errors[1].loc, ["body", "name"]);
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_validator_without_failures_finishes_ok() {
        let mut v = Validator::new();
        v.check(true, &["body", "name"], "unused", "unused");
        assert!(v.finish().is_ok());
    }
}
