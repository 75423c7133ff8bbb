//! The one HTTP error type of the API, [`ApiError`], and the FastAPI-compatible bodies it renders.
//!
//! Every handler, extractor and middleware of the API answers failures with an `ApiError`; each
//! variant has exactly one status. Which one to use:
//!
//! - [`ApiError::BadRequest`] (400): the request is well-formed but refused for a reason that is
//!   not about one field: `"No fields to update"`, `"Username already registered"`, malformed JSON.
//! - [`ApiError::Validation`] (422): one or more fields are invalid. Collect them with
//!   [`crate::extract::Validator`] so the client sees every problem at once.
//! - [`ApiError::Unauthorized`] (401, with `WWW-Authenticate: Bearer`): no credentials, or
//!   credentials that do not check out (bad token, revoked session, wrong password).
//! - [`ApiError::Forbidden`] (403): authenticated, but not allowed to touch this resource (BOLA)
//!   or lacking the role.
//! - [`ApiError::NotFound`] (404): the id is unknown (to everyone, not just to the caller).
//! - [`ApiError::Conflict`] (409): a uniqueness rule or a concurrent write without `If-Match`.
//! - [`ApiError::PreconditionFailed`] (412): `If-Match` names another version.
//! - [`ApiError::MethodNotAllowed`], [`ApiError::PayloadTooLarge`],
//!   [`ApiError::UnsupportedMediaType`], [`ApiError::TooManyRequests`]: produced by the router,
//!   the extractors and the middleware; handlers rarely need them.
//! - [`ApiError::Unavailable`] (503): a dependency is down; the client may retry later.
//! - [`ApiError::Internal`] (500): anything else. The cause is logged, never returned: the body is
//!   `{"detail":"Internal server error","error_id":"<request id>"}`. `IntoResponse` cannot see the
//!   request, so it attaches the cause to the response as an extension and the request-id
//!   middleware ([`crate::middleware::request_id`]) logs it and writes the final body.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// The message of every 500 body; the details go to the log only.
pub const INTERNAL_ERROR_MESSAGE: &str = "Internal server error";

/// The contract's message for a 403.
pub const FORBIDDEN_MESSAGE: &str = "You do not have permission to access this resource";

/// A boxed error, the cause carried by [`ApiError::Internal`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// An HTTP error answer; see the module docs for when to use which variant.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `{"detail": msg}`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401 `{"detail": msg}` with `WWW-Authenticate: Bearer`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403 with the contract's fixed message.
    #[error("forbidden")]
    Forbidden,
    /// 404 `{"detail": msg}`.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405 `{"detail": "Method Not Allowed"}`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `{"detail": msg}`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 412: the `If-Match` version is not the current one.
    #[error("precondition failed")]
    PreconditionFailed,
    /// 413: the body is over the limit (1 MiB).
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: a JSON body was sent without `Content-Type: application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 422 `{"detail": [FieldError, ...]}`.
    #[error("validation failed: {0:?}")]
    Validation(Vec<FieldError>),
    /// 429 with `Retry-After`.
    #[error("too many requests")]
    TooManyRequests {
        /// Whole seconds after which a retry can succeed (at least 1).
        retry_after_secs: u64,
    },
    /// 429 with `Retry-After`: the client already has as many requests in progress as it may.
    #[error("too many requests in flight")]
    TooManyInFlight,
    /// 503 `{"detail": msg}`.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: refused unattempted, under load (a full queue, or a deadline
    /// that passed while the request waited); nothing was changed.
    #[error("overloaded: {detail}")]
    Overloaded {
        /// What was full or late.
        detail: String,
        /// Whole seconds after which a retry may succeed (at least 1).
        retry_after_secs: u64,
    },
    /// 500; the cause is logged with the request id and never shown.
    #[error("internal error: {0}")]
    Internal(BoxError),
}

impl ApiError {
    /// The 503 of work refused unattempted under load.
    pub fn overloaded(overloaded: sparc_store::overload::Overloaded) -> Self {
        Self::Overloaded {
            detail: match overloaded {
                sparc_store::overload::Overloaded::DeadlinePassed => {
                    "The service is busy: the request could not be done in time; nothing was changed"
                }
                sparc_store::overload::Overloaded::QueueFull => {
                    "The service is busy: too many requests wait for the same resource; nothing was changed"
                }
            }
            .to_owned(),
            retry_after_secs: overloaded.retry_after().as_secs().max(1),
        }
    }

    /// Wraps any error as a 500, for `map_err(ApiError::internal)`.
    pub fn internal(err: impl Into<BoxError>) -> Self {
        Self::Internal(err.into())
    }

    /// The one status of this variant.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } | Self::TooManyInFlight => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The final 500 answer, once the request id is known. Used by the request-id middleware.
    pub(crate) fn internal_response(request_id: &str) -> Response {
        let body = json!({ "detail": INTERNAL_ERROR_MESSAGE, "error_id": request_id });
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match self {
            Self::Validation(errors) => {
                return (status, Json(json!({ "detail": errors }))).into_response();
            }
            Self::Internal(cause) => {
                // The request-id middleware replaces this body with one carrying the error id.
                let mut response = detail_response(status, INTERNAL_ERROR_MESSAGE);
                response
                    .extensions_mut()
                    .insert(InternalErrorCause(Arc::from(cause)));
                return response;
            }
            Self::Overloaded {
                detail,
                retry_after_secs,
            } => {
                let mut response = detail_response(status, &detail);
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                return response;
            }
            Self::TooManyRequests { retry_after_secs } => {
                let mut response = detail_response(status, "Rate limit exceeded");
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                return response;
            }
            Self::TooManyInFlight => {
                let mut response = detail_response(
                    status,
                    "Too many requests of this client are in progress; retry once one is answered",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
                return response;
            }
            Self::Unauthorized(message) => {
                let mut response = detail_response(status, &message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            Self::BadRequest(message)
            | Self::NotFound(message)
            | Self::Conflict(message)
            | Self::Unavailable(message) => message,
            Self::Forbidden => FORBIDDEN_MESSAGE.to_owned(),
            Self::MethodNotAllowed => "Method Not Allowed".to_owned(),
            Self::PreconditionFailed => {
                "Precondition failed: the resource has been modified (If-Match does not match)"
                    .to_owned()
            }
            Self::PayloadTooLarge => "Request body too large".to_owned(),
            Self::UnsupportedMediaType => "Content-Type must be application/json".to_owned(),
        };
        detail_response(status, &detail)
    }
}

/// `{"detail": message}` with the given status: the shape of every non-422 error.
pub(crate) fn detail_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "detail": message }))).into_response()
}

/// The cause of a 500, carried from [`ApiError::into_response`] to the request-id middleware,
/// which logs it next to the request id.
#[derive(Clone)]
pub(crate) struct InternalErrorCause(pub(crate) Arc<dyn StdError + Send + Sync>);

impl fmt::Display for InternalErrorCause {
    /// The error and its `source()` chain, `outer: inner: innermost`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// One entry of a 422 body: `{"loc": ["body", "schedule_cron"], "msg": "...", "type": "..."}`.
///
/// `loc` starts with where the value came from (`body`, `query`, `path`, `header`) followed by
/// the field path; array indices are written as strings (`["body", "capabilities", "0"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where the bad value is.
    pub loc: Vec<String>,
    /// A human-readable message.
    pub msg: String,
    /// A machine-readable kind, pydantic-style: `missing`, `extra_forbidden`, `value_error`...
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// An error at an arbitrary location.
    pub fn new<L, S>(loc: L, msg: impl Into<String>, kind: impl Into<String>) -> Self
    where
        L: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            loc: loc.into_iter().map(Into::into).collect(),
            msg: msg.into(),
            kind: kind.into(),
        }
    }

    /// An error in a top-level field of the JSON body: `loc = ["body", field]`.
    pub fn body(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        Self::new(["body", field], msg, kind)
    }

    /// An error in a query parameter: `loc = ["query", field]`.
    pub fn query(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        Self::new(["query", field], msg, kind)
    }

    /// An error in a path parameter: `loc = ["path", field]`.
    pub fn path(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        Self::new(["path", field], msg, kind)
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use serde_json::Value;

    async fn body_json(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body should be readable");
        serde_json::from_slice(&bytes).expect("the body should be JSON")
    }

    #[tokio::test]
    async fn each_variant_answers_with_its_status_and_a_detail_body() {
        let cases = [
            (
                ApiError::BadRequest("No fields to update".into()),
                400,
                "No fields to update",
            ),
            (
                ApiError::Unauthorized("Not authenticated".into()),
                401,
                "Not authenticated",
            ),
            (ApiError::Forbidden, 403, FORBIDDEN_MESSAGE),
            (
                ApiError::NotFound("Task not found".into()),
                404,
                "Task not found",
            ),
            (ApiError::MethodNotAllowed, 405, "Method Not Allowed"),
            (
                ApiError::Conflict("Agent name already exists".into()),
                409,
                "Agent name already exists",
            ),
            (ApiError::PayloadTooLarge, 413, "Request body too large"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "Content-Type must be application/json",
            ),
            (
                ApiError::TooManyRequests {
                    retry_after_secs: 3,
                },
                429,
                "Rate limit exceeded",
            ),
            (
                ApiError::Unavailable("Event store unreachable".into()),
                503,
                "Event store unreachable",
            ),
        ];
        for (error, status, detail) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(body_json(response).await, json!({ "detail": detail }));
        }
    }

    #[tokio::test]
    async fn precondition_failed_is_412_with_a_detail_message() {
        let response = ApiError::PreconditionFailed.into_response();
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        assert!(body_json(response).await["detail"].is_string());
    }

    #[test]
    fn unauthorized_carries_www_authenticate_bearer() {
        let response =
            ApiError::Unauthorized("Could not validate credentials".into()).into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn too_many_requests_carries_retry_after_of_at_least_one_second() {
        let response = ApiError::TooManyRequests {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = ApiError::TooManyRequests {
            retry_after_secs: 0,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn validation_renders_the_fastapi_list_shape() {
        let error = ApiError::Validation(vec![FieldError::body(
            "schedule_cron",
            "invalid cron expression",
            "value_error",
        )]);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body_json(response).await,
            json!({"detail": [{
                "loc": ["body", "schedule_cron"],
                "msg": "invalid cron expression",
                "type": "value_error",
            }]})
        );
    }

    #[tokio::test]
    async fn internal_never_shows_its_cause_and_hands_it_to_the_middleware() {
        let cause = std::io::Error::other("connection refused to postgres://admin:hunter2@db");
        let response = ApiError::internal(cause).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let carried = response
            .extensions()
            .get::<InternalErrorCause>()
            .expect("the cause should ride along for the middleware to log")
            .to_string();
        assert!(carried.contains("hunter2"));
        let body = body_json(response).await;
        assert_eq!(body, json!({ "detail": "Internal server error" }));
    }

    #[test]
    fn the_logged_cause_includes_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("loading task")]
        struct Outer(#[source] std::io::Error);
        let cause = InternalErrorCause(Arc::new(Outer(std::io::Error::other("disk gone"))));
        assert_eq!(cause.to_string(), "loading task: disk gone");
    }

    #[tokio::test]
    async fn the_final_internal_body_carries_the_error_id() {
        let response = ApiError::internal_response("req-42");
        assert_eq!(
            body_json(response).await,
            json!({ "detail": "Internal server error", "error_id": "req-42" })
        );
    }
}
