//! What the handler annotations cannot say in the OpenAPI document.
//!
//! - The values a text field of the domain accepts, as string enums built from the domain's
//!   own lists (request bodies name these with `#[schema(schema_with = …)]`), and the other
//!   request fields whose schema an attribute cannot say (agent capabilities, http(s) URLs).
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
use sparc_domain::user::Role;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Response, Schema};

use crate::middleware::rate_limit;

/// The longest value of a field that takes one of a list of values (the longest listed is
/// `hierarchical-coordinator`, 24): such fields are [`crate::extract::Text`]s of this length,
/// so an unlisted value is refused before it is looked at.
pub(crate) const LISTED_VALUE_MAX: usize = 32;

/// A string schema that accepts exactly `values`.
fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(LISTED_VALUE_MAX))
        .enum_values(Some(values.into_iter().map(str::to_owned)))
}

/// An account's `role`.
pub(crate) fn role() -> ObjectBuilder {
    one_of(Role::ALL.iter().map(Role::as_str))
}

/// An agent's `capabilities`: at most 100 names of 1..100 characters without commas.
pub(crate) fn capabilities() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(100))
                .pattern(Some("^[^,]+$")),
        )
        .max_items(Some(100))
}

/// A URL of an `http` or `https` resource (see [`crate::extract::is_http_url`]).
pub(crate) fn http_url() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(500))
        .pattern(Some(crate::extract::HTTP_URL_PATTERN))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;
    use utoipa::PartialSchema;

    use super::*;
    use crate::error::ApiError;
    use crate::extract::parse_json_body;
    use crate::routes::{admin_users, agents, auth, projects, tasks};

    /// Whether a schema's `type` is (or, nullable, includes) `kind`.
    fn has_type(schema: &Value, kind: &str) -> bool {
        match &schema["type"] {
            Value::String(one) => one == kind,
            Value::Array(many) => many.iter().any(|t| t == kind),
            _ => false,
        }
    }

    /// Every string of `T`'s schema (a property, or the items of an array property) states a
    /// `maxLength`, which `T`'s deserialization enforces to the character: one more is a 422
    /// `string_too_long` at the field, exactly that many is not. The text is of two-byte
    /// characters, so a limit counted in bytes would show.
    fn limits_are_documented_and_enforced<T>(name: &str, problems: &mut Vec<String>)
    where
        T: DeserializeOwned + PartialSchema + Debug,
    {
        let schema = serde_json::to_value(T::schema()).expect("a schema is JSON");
        let properties = schema["properties"].as_object().expect("an object schema");
        for (field, property) in properties {
            let (text, in_array) = if has_type(property, "string") {
                (property, false)
            } else if has_type(property, "array") && has_type(&property["items"], "string") {
                (&property["items"], true)
            } else {
                continue;
            };
            if text["format"] == "uuid" {
                continue;
            }
            let Some(max) = text["maxLength"].as_u64() else {
                problems.push(format!("{name}.{field}: no maxLength"));
                continue;
            };
            let body = |chars: u64| {
                let text = "é".repeat(chars as usize);
                let value = if in_array { json!([text]) } else { json!(text) };
                serde_json::to_vec(&json!({ field: value })).expect("JSON")
            };
            let mut loc = vec!["body".to_owned(), field.clone()];
            if in_array {
                loc.push("0".to_owned());
            }
            match parse_json_body::<T>(&body(max + 1)) {
                Err(ApiError::Validation(errors))
                    if errors[0].loc == loc && errors[0].kind == "string_too_long" => {}
                other => problems.push(format!(
                    "{name}.{field}: {} characters are not refused as too long: {other:?}",
                    max + 1
                )),
            }
            if let Err(ApiError::Validation(errors)) = parse_json_body::<T>(&body(max))
                && errors[0].kind == "string_too_long"
            {
                problems.push(format!("{name}.{field}: {max} characters refused"));
            }
        }
    }

    #[test]
    fn every_string_of_every_request_body_has_its_documented_maximum_length() {
        let mut problems = Vec::new();
        let mut checked = BTreeSet::new();
        macro_rules! check {
            ($($body:ty),+ $(,)?) => {$(
                let name = stringify!($body).rsplit("::").next().unwrap_or_default().trim();
                limits_are_documented_and_enforced::<$body>(name, &mut problems);
                checked.insert(name.to_owned());
            )+};
        }
        check!(
            tasks::CreateTask,
            tasks::UpdateTask,
            projects::CreateProject,
            projects::UpdateProject,
            agents::RegisterAgent,
            agents::UpdateAgent,
            agents::ActivityReport,
            auth::RegisterRequest,
            auth::LoginRequest,
            auth::RefreshRequest,
            auth::ProfileRequest,
            auth::ChangePasswordRequest,
            admin_users::UpdateUser,
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));

        // Every request body of the document with a string in it is one of those checked.
        let (_, document) = crate::routes::api().split_for_parts();
        let document = serde_json::to_value(document).expect("the document is JSON");
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
                let Some(reference) = schema["$ref"].as_str() else {
                    continue;
                };
                let name = reference.rsplit('/').next().unwrap_or_default();
                let body = &document["components"]["schemas"][name];
                let has_text = body["properties"].as_object().is_some_and(|properties| {
                    properties.values().any(|p| {
                        has_type(p, "string")
                            || (has_type(p, "array") && has_type(&p["items"], "string"))
                    })
                });
                assert!(
                    !has_text || checked.contains(name),
                    "{method} {path}: the strings of {name} are not checked here"
                );
            }
        }
    }
}
