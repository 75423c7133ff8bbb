//! What the handler annotations cannot say in the OpenAPI document.
//!
//! - The values a text field of the domain accepts, as string enums built from the domain's
//!   own lists (request bodies name these with `#[schema(schema_with = …)]`).
//! - The error answers, added once to the generated document ([`document_errors`]): the
//!   contract's three error bodies as schemas, and on every operation the error statuses that
//!   operations of its kind can answer (what the middleware, the extractors and the ownership
//!   checks produce, which no handler annotation lists), each with its body. Responses a
//!   handler documents keep their description and only gain a body schema if they had none.
//!
//! A client generated from the document then knows every status it may get, what comes with
//! it, and which values a field takes.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Value, json};
use sparc_domain::agent::{AgentStatus, AgentType};
use sparc_domain::execution::ExecutionStatus;
use sparc_domain::project::ProjectStatus;
use sparc_domain::task::TaskStatus;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Response, Schema};

use crate::middleware::rate_limit;

/// A string schema that accepts exactly `values`.
fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.into_iter().map(str::to_owned)))
}

/// An agent's `type`.
pub(crate) fn agent_type() -> ObjectBuilder {
    one_of(AgentType::ALL.iter().map(AgentType::as_str))
}

/// An agent's `status`.
pub(crate) fn agent_status() -> ObjectBuilder {
    one_of(AgentStatus::ALL.iter().map(AgentStatus::as_str))
}

/// A status an agent reports for a run.
pub(crate) fn execution_status() -> ObjectBuilder {
    one_of(ExecutionStatus::ALL.iter().map(ExecutionStatus::as_str))
}

/// A task status a client may set (not `running` nor `deleted`, which only the service sets).
pub(crate) fn settable_task_status() -> ObjectBuilder {
    one_of(TaskStatus::settable().map(|status| status.as_str()))
}

/// A project status a client may set.
pub(crate) fn settable_project_status() -> ObjectBuilder {
    one_of(ProjectStatus::settable().map(|status| status.as_str()))
}

/// `{detail: string}`: every 4xx but 422, and 503.
const ERROR_DETAIL: &str = "ErrorDetail";
/// `{detail: [{loc, msg, type}]}`: 422.
const VALIDATION_ERROR: &str = "ValidationError";
/// `{detail: "Internal server error", error_id}`: 500.
const INTERNAL_ERROR: &str = "InternalError";

/// The three error bodies, as component schemas.
fn schemas() -> [(&'static str, Value); 3] {
    [
        (
            ERROR_DETAIL,
            json!({
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "string", "description": "What went wrong."}}
            }),
        ),
        (
            VALIDATION_ERROR,
            json!({
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {
                    "type": "array",
                    "description": "Every invalid field at once.",
                    "items": {
                        "type": "object",
                        "required": ["loc", "msg", "type"],
                        "properties": {
                            "loc": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "Where the value came from (body, query, path, header), then the field's path."
                            },
                            "msg": {"type": "string"},
                            "type": {"type": "string", "description": "missing, extra_forbidden, value_error, …"}
                        }
                    }
                }}
            }),
        ),
        (
            INTERNAL_ERROR,
            json!({
                "type": "object",
                "required": ["detail", "error_id"],
                "properties": {
                    "detail": {"type": "string", "const": "Internal server error"},
                    "error_id": {"type": "string", "description": "The request id, to find the cause in the service's log."}
                }
            }),
        ),
    ]
}

/// The statuses an operation can answer whatever its handler does, with their descriptions.
fn common_errors(method: &Method, path: &str, operation: &Operation) -> Vec<(u16, &'static str)> {
    let authenticated = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let in_path = parameters
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let mut errors = vec![(500, "Internal error: the body carries only the request id")];
    if operation.request_body.is_some() {
        errors.extend([
            (400, "Malformed JSON"),
            (413, "Body over 1 MiB"),
            (415, "Body not sent as application/json"),
        ]);
    }
    if operation.request_body.is_some() || !parameters.is_empty() {
        errors.push((422, "Invalid fields or parameters"));
    }
    if authenticated {
        errors.push((
            401,
            "Missing, invalid or expired access token, or ended session",
        ));
        if in_path || path.starts_with("/api/v1/admin/") {
            errors.push((403, "Not the caller's resource, or not the caller's role"));
        }
    }
    if in_path {
        errors.push((404, "Not found"));
    }
    if rate_limit::is_limited(method, path) {
        errors.push((429, "Rate limit exceeded; see Retry-After"));
    }
    errors
}

/// A response whose body is the schema `name`.
fn with_body(description: &str, name: &str) -> Response {
    serde_json::from_value(json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}
    }))
    .expect("a valid response object")
}

/// The body schema of an error status.
fn body_of(status: u16) -> &'static str {
    match status {
        422 => VALIDATION_ERROR,
        500 => INTERNAL_ERROR,
        _ => ERROR_DETAIL,
    }
}

/// Adds the error bodies and every operation's common error answers to `openapi`.
pub fn document_errors(openapi: &mut OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas() {
        let schema: Schema = serde_json::from_value(schema).expect("a valid schema");
        components.schemas.insert(name.to_owned(), RefOr::T(schema));
    }
    for (path, item) in openapi.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let errors = common_errors(&method, path, operation);
            let responses: &mut BTreeMap<String, RefOr<Response>> =
                &mut operation.responses.responses;
            for (status, description) in errors {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(with_body(description, body_of(status))));
            }
            for (status, response) in responses.iter_mut() {
                let Ok(status) = status.parse::<u16>() else {
                    continue;
                };
                if let RefOr::T(response) = response
                    && status >= 400
                    && response.content.is_empty()
                {
                    *response = with_body(&response.description, body_of(status));
                }
            }
        }
    }
}
