//! What the handler annotations cannot say in the OpenAPI document.
//!
//! - The values a text field of the domain accepts, as string enums built from the domain's
//!   own lists (request bodies name these with `#[schema(schema_with = …)]`), and the other
//!   request fields whose schema an attribute cannot say (agent capabilities, http(s) URLs).
//! - The error answers, added once to the generated document ([`document_errors`]): the
//!   contract's three error bodies as schemas, and on every operation the error statuses that
//!   operations of its kind can answer (what the middleware, the extractors, the ownership
//!   checks, the `If-Match` and `Idempotency-Key` headers and the command queues under load
//!   produce, which no handler annotation lists), each with its body. Responses a handler documents keep their
//!   description, followed by the common causes of the same status, and gain a body schema if
//!   they had none.
//! - What requests must be that the types cannot say ([`document_requests`]): U+0000 is refused
//!   in any string of a request body, a query or a path, so every such string without a
//!   pattern, a format or a list of values gets [`NUL_FREE`] as its pattern (a pattern written
//!   here excludes U+0000 itself), as do the field names of objects that take fields they do
//!   not list; and the bodies of [`AT_LEAST_ONE_FIELD`] name a field.
//!
//! A client generated from the document then knows every status it may get, what comes with
//! it, and which values a field takes.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Value, json};
use sparc_domain::agent::{AgentStatus, AgentType};
use sparc_domain::execution::ExecutionStatus;
use sparc_domain::memory::Intent;
use sparc_domain::project::ProjectStatus;
use sparc_domain::task::TaskStatus;
use sparc_domain::user::Role;
use sparc_domain::values::TimeZoneName;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Response, Schema};

use crate::middleware::rate_limit;

/// The longest value of a field that takes one of a list of values (the longest listed is
/// `hierarchical-coordinator`, 24): such fields are [`crate::extract::Text`]s of this length,
/// so an unlisted value is refused before it is looked at.
pub(crate) const LISTED_VALUE_MAX: usize = 32;

/// No U+0000 anywhere: the pattern of every free-text string the service reads.
pub(crate) const NUL_FREE: &str = r"^[^\u0000]*$";

/// What Rust's `str::trim` removes (Unicode `White_Space`), as the inside of an ECMA-262
/// character class. Written out because `\s` differs between dialects (ECMA-262, which JSON
/// Schema names, leaves out U+0085; Python, which schemathesis uses, adds U+001C..U+001F).
const TRIMMED: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A name that is trimmed and must not be blank (an agent's, a project's): 1..255 characters,
/// at least one of them neither white space nor U+0000.
pub(crate) fn name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some(format!(r"^[^\u0000]*[^\u0000{TRIMMED}][^\u0000]*$")))
}

/// A new password ([`sparc_accounts::password::password_policy`]): 8..128 characters with an upper-case
/// letter, a lower-case letter and a digit. The pattern asks for ASCII letters; the service
/// takes any cased letter.
pub(crate) fn new_password() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(sparc_accounts::password::MIN_PASSWORD_CHARS))
        .max_length(Some(sparc_accounts::password::MAX_PASSWORD_CHARS))
        .pattern(Some(
            r"^(?=[^A-Z]*[A-Z])(?=[^a-z]*[a-z])(?=[^0-9]*[0-9])[^\u0000]*$",
        ))
}

/// A task's time zone: one of the IANA names the service knows.
pub(crate) fn time_zone() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(64))
        .enum_values(Some(TimeZoneName::names()))
        .examples([json!("Europe/Berlin")])
}

/// A string schema that accepts exactly `values`.
pub(crate) fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(LISTED_VALUE_MAX))
        .enum_values(Some(values.into_iter().map(str::to_owned)))
}

/// A memory entry's `intent` (and the `task_type` a search narrows to).
pub(crate) fn intent() -> ObjectBuilder {
    one_of(Intent::ALL.iter().map(Intent::as_str))
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
                .pattern(Some(r"^[^,\u0000]+$")),
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

/// Any task status, as a list filter.
pub(crate) fn task_status() -> ObjectBuilder {
    one_of(TaskStatus::ALL.iter().map(TaskStatus::as_str))
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
    // Every write but the read-model operations of admins runs commands (and the auth writes
    // hash passwords), whose queues refuse work under load.
    let writes = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method);
    if writes && !path.starts_with("/api/v1/admin/projections") {
        errors.push((
            503,
            "Overloaded: the request could not be done before its deadline, or too many wait \
             for the same resource; nothing was changed; see Retry-After",
        ));
    }
    let header = |name: &str| {
        parameters.iter().any(|p| {
            matches!(p.parameter_in, ParameterIn::Header) && p.name.eq_ignore_ascii_case(name)
        })
    };
    if header(IF_MATCH) {
        errors.extend([
            (400, "If-Match is not a quoted version"),
            (412, "If-Match names another version"),
        ]);
    }
    if header(IDEMPOTENCY_KEY) {
        errors.extend([
            (
                400,
                "Idempotency-Key is empty or longer than 255 characters",
            ),
            (
                409,
                "A request with this Idempotency-Key is still in progress",
            ),
        ]);
    }
    errors
}

/// The header of a conditional write ([`crate::routes::if_match`]).
pub(crate) const IF_MATCH: &str = "If-Match";
/// The header of a repeatable create ([`crate::idempotency`]).
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

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

/// Gives each `PATCH` that shares its handler with a `PUT` (the contract's partial update, same
/// body and answers) an operation id of its own, `<put's id>_patch`: ids must be unique.
pub fn document_patches(openapi: &mut OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        if let (Some(put), Some(patch)) = (&item.put, &mut item.patch)
            && patch.operation_id.is_some()
            && patch.operation_id == put.operation_id
        {
            patch.operation_id = put.operation_id.as_ref().map(|id| format!("{id}_patch"));
        }
    }
}

/// Documents the WebSocket gateway's two routes (`/ws`, `/ws/health`), which the gateway serves
/// beside these handlers; the frames themselves are in the contract's WebSocket section.
pub fn document_websocket(openapi: &mut OpenApi) {
    let paths = [
        (
            "/ws",
            json!({"get": {
                "tags": ["websocket"],
                "operationId": "websocket",
                "summary": "Upgrades to the WebSocket of live changes",
                "description": "Sends `ack`, then every change the user may see as `{type, event_id, timestamp, payload}` frames (after a replay of those since `last_event_id`). A refused token closes the socket with 1008 after the upgrade; over a connection cap the upgrade is refused with 429; a page of an origin not in `SPARC_CORS_ORIGINS` is refused with 403.",
                "parameters": [
                    {"name": "token", "in": "query", "required": false,
                     "description": "The access token (or `Sec-WebSocket-Protocol: bearer, <token>`).",
                     "schema": {"type": "string", "maxLength": 4096}},
                    {"name": "last_event_id", "in": "query", "required": false,
                     "description": "Resume after this change's `event_id`.",
                     "schema": {"type": "string", "maxLength": 64}}
                ],
                "responses": {
                    "101": {"description": "Switched to the WebSocket protocol"},
                    "400": {"description": "Not a WebSocket upgrade request"},
                    "403": {"description": "A page of an origin that is not allowed"},
                    "426": {"description": "The connection cannot be upgraded"},
                    "429": {"description": "Over the user's or the process's WebSocket connections"}
                }
            }}),
        ),
        (
            "/ws/health",
            json!({"get": {
                "tags": ["websocket"],
                "operationId": "websocket_health",
                "summary": "The gateway's health and connection counts",
                "responses": {"200": {
                    "description": "`degraded` while the change bus is unreachable",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["status", "connections"],
                        "properties": {
                            "status": {"type": "string", "enum": ["healthy", "degraded"]},
                            "connections": {
                                "type": "object",
                                "required": ["local", "total"],
                                "properties": {
                                    "local": {"type": "integer", "minimum": 0},
                                    "total": {"type": "integer", "minimum": 0}
                                }
                            }
                        }
                    }}}
                }}
            }}),
        ),
    ];
    for (path, item) in paths {
        let item = serde_json::from_value(item).expect("a valid path item");
        openapi.paths.paths.insert(path.to_owned(), item);
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
            let mut errors: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
            for (status, description) in common_errors(&method, path, operation) {
                errors.entry(status).or_default().push(description);
            }
            let responses: &mut BTreeMap<String, RefOr<Response>> =
                &mut operation.responses.responses;
            for (status, descriptions) in errors {
                let common = descriptions.join("; ");
                match responses.get_mut(&status.to_string()) {
                    Some(RefOr::T(documented)) if !documented.description.contains(&common) => {
                        documented.description = format!("{}; {common}", documented.description);
                    }
                    Some(_) => {}
                    None => {
                        let response = with_body(&common, body_of(status));
                        responses.insert(status.to_string(), RefOr::T(response));
                    }
                }
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

/// The update bodies that must name at least one field (else 400 `No fields to update`), by
/// schema name. Set here because utoipa-gen 5.5 writes `#[schema(min_properties = 1)]` as
/// `maxProperties`.
pub(crate) const AT_LEAST_ONE_FIELD: [&str; 4] =
    ["UpdateTask", "UpdateProject", "UpdateAgent", "UpdateUser"];

/// Gives every free-text string a request can carry (body fields and the items of body arrays,
/// in the bodies' schemas and the schemas they name; query, path and header parameters) the
/// pattern [`NUL_FREE`], unless it already has a pattern, a format or a list of values, and so
/// the names of the fields an object takes beyond those it lists; and the bodies of
/// [`AT_LEAST_ONE_FIELD`] `minProperties: 1`.
pub fn document_requests(openapi: &mut OpenApi) {
    let mut bodies = Vec::new();
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if let Some(schema) = parameter.schema.as_mut() {
                    edit(schema, forbid_nul);
                }
            }
            let Some(body) = operation.request_body.as_mut() else {
                continue;
            };
            for content in body.content.values_mut() {
                if let Some(schema) = content.schema.as_mut() {
                    edit(schema, |schema| {
                        bodies.extend(references(schema));
                        forbid_nul_in_fields(schema);
                    });
                }
            }
        }
    }
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    let mut done = std::collections::BTreeSet::new();
    while let Some(name) = bodies.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = components.schemas.get_mut(&name) {
            edit(schema, |schema| {
                bodies.extend(references(schema));
                forbid_nul_in_fields(schema);
            });
        }
    }
    for name in AT_LEAST_ONE_FIELD {
        if let Some(schema) = components.schemas.get_mut(name) {
            edit(schema, |schema| schema["minProperties"] = json!(1));
        }
    }
}

/// Applies `change` to a schema as JSON.
fn edit(schema: &mut RefOr<Schema>, change: impl FnOnce(&mut Value)) {
    let mut json = serde_json::to_value(&*schema).expect("a schema is JSON");
    change(&mut json);
    *schema = serde_json::from_value(json).expect("still a schema");
}

/// The component schemas `schema` names (`$ref`), at any depth.
fn references(schema: &Value) -> Vec<String> {
    match schema {
        Value::Object(members) => members
            .iter()
            .flat_map(|(key, value)| match (key.as_str(), value) {
                ("$ref", Value::String(reference)) => reference
                    .strip_prefix("#/components/schemas/")
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                _ => references(value),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(references).collect(),
        _ => Vec::new(),
    }
}

/// [`forbid_nul`] on each field of an object schema (of each alternative of a `oneOf`/`allOf`),
/// and [`NUL_FREE`] for the names of the fields it takes beyond those it lists.
fn forbid_nul_in_fields(schema: &mut Value) {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(forbid_nul);
    }
    forbid_nul_in_names(schema);
    for combinator in ["allOf", "oneOf", "anyOf"] {
        if let Some(Value::Array(alternatives)) = schema.get_mut(combinator) {
            alternatives.iter_mut().for_each(forbid_nul_in_fields);
        }
    }
}

/// `propertyNames` [`NUL_FREE`] for an object schema that takes fields it does not list (a
/// free-form object's deeper keys and strings are held to the rule too, which a schema
/// without recursion cannot say).
fn forbid_nul_in_names(schema: &mut Value) {
    let is_object = match &schema["type"] {
        Value::String(kind) => kind == "object",
        Value::Array(kinds) => kinds.iter().any(|kind| kind == "object"),
        _ => schema.get("properties").is_some(),
    };
    if is_object
        && schema.get("additionalProperties") != Some(&Value::Bool(false))
        && schema.get("propertyNames").is_none()
        && let Some(members) = schema.as_object_mut()
    {
        members.insert(
            "propertyNames".to_owned(),
            json!({ "type": "string", "pattern": NUL_FREE }),
        );
    }
}

/// Gives a string schema (or the strings of an array schema, or of the alternatives of a
/// `oneOf`) the pattern [`NUL_FREE`] unless it says otherwise what it takes, and an object
/// schema's field names [`forbid_nul_in_names`].
fn forbid_nul(schema: &mut Value) {
    forbid_nul_in_names(schema);
    let kinds = match &schema["type"] {
        Value::String(kind) => vec![kind.clone()],
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if kinds.iter().any(|kind| kind == "array")
        && let Some(items) = schema.get_mut("items")
    {
        forbid_nul(items);
    }
    for combinator in ["allOf", "oneOf", "anyOf"] {
        if let Some(Value::Array(alternatives)) = schema.get_mut(combinator) {
            alternatives.iter_mut().for_each(forbid_nul);
        }
    }
    let says_otherwise = ["pattern", "format", "enum", "const"]
        .iter()
        .any(|key| schema.get(key).is_some());
    if kinds.iter().any(|kind| kind == "string")
        && !says_otherwise
        && let Some(members) = schema.as_object_mut()
    {
        members.insert("pattern".to_owned(), json!(NUL_FREE));
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
    use crate::routes::{admin_users, agents, auth, memory, projects, tasks};

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
            memory::StoreMemory,
            memory::SearchMemories,
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

    /// The document as the service serves it.
    fn served_document() -> Value {
        let (_, mut document) = crate::routes::api().split_for_parts();
        document_errors(&mut document);
        document_requests(&mut document);
        serde_json::to_value(document).expect("the document is JSON")
    }

    /// Whether a pattern written for this document refuses every string holding U+0000: it is
    /// anchored, has no `.`, and each negated class outside its lookaheads names U+0000 (a
    /// positive class or a literal never matches it unless it names it).
    fn refuses_nul(pattern: &str) -> bool {
        let mut consuming = String::new();
        let mut rest = pattern;
        while let Some(start) = rest.find("(?=") {
            consuming.push_str(&rest[..start]);
            let mut depth = 0;
            let end = rest[start..]
                .char_indices()
                .find(|&(_, c)| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    depth == 0
                })
                .map_or(rest.len(), |(at, _)| start + at + 1);
            rest = &rest[end..];
        }
        consuming.push_str(rest);
        let negated_classes_name_nul = consuming.split("[^").skip(1).all(|class| {
            class
                .split(']')
                .next()
                .is_some_and(|c| c.contains(r"\u0000"))
        });
        pattern.starts_with('^')
            && pattern.ends_with('$')
            && !consuming.contains('.')
            && !pattern.contains(r"\x00")
            && negated_classes_name_nul
    }

    #[test]
    fn the_nul_check_reads_patterns_as_meant() {
        assert!(refuses_nul(NUL_FREE));
        assert!(refuses_nul("^[A-Za-z0-9_-]+$"));
        assert!(refuses_nul(&name().build().pattern.expect("a pattern")));
        assert!(refuses_nul(
            &new_password().build().pattern.expect("a pattern")
        ));
        assert!(refuses_nul(crate::extract::HTTP_URL_PATTERN));
        assert!(!refuses_nul("^[^,]+$"));
        assert!(!refuses_nul("^.*$"));
        assert!(!refuses_nul("[a-z]"));
        assert!(!refuses_nul(r"^(?=[^\u0000]*)[^a]*$"));
    }

    /// Every string schema in `schema` (following `$ref`s into the document's components, once
    /// each), with where it was found.
    fn strings<'a>(
        document: &'a Value,
        schema: &'a Value,
        at: String,
        seen: &mut BTreeSet<String>,
        found: &mut Vec<(String, &'a Value)>,
    ) {
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.rsplit('/').next().unwrap_or_default();
            if seen.insert(name.to_owned()) {
                let target = &document["components"]["schemas"][name];
                strings(document, target, format!("{at} ({name})"), seen, found);
            }
            return;
        }
        if has_type(schema, "string") {
            found.push((at.clone(), schema));
        }
        if schema["propertyNames"].is_object() {
            found.push((format!("{at} (field names)"), &schema["propertyNames"]));
        } else if has_type(schema, "object") && schema["additionalProperties"] != Value::Bool(false)
        {
            found.push((format!("{at} (field names)"), &Value::Null));
        }
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            strings(document, property, format!("{at}.{field}"), seen, found);
        }
        if schema["items"].is_object() {
            strings(document, &schema["items"], format!("{at}[]"), seen, found);
        }
        for combinator in ["allOf", "oneOf", "anyOf"] {
            for alternative in schema[combinator].as_array().into_iter().flatten() {
                strings(document, alternative, at.clone(), seen, found);
            }
        }
    }

    #[test]
    fn no_string_a_request_carries_may_hold_nul_by_the_document() {
        let document = served_document();
        let mut problems = Vec::new();
        let mut checked = 0;
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let mut found = Vec::new();
                let mut seen = BTreeSet::new();
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let at = format!("{method} {path} {}", parameter["name"]);
                    strings(&document, &parameter["schema"], at, &mut seen, &mut found);
                }
                let body = &operation["requestBody"]["content"]["application/json"]["schema"];
                let at = format!("{method} {path} body");
                strings(&document, body, at, &mut seen, &mut found);
                for (at, schema) in found {
                    checked += 1;
                    let listed = ["enum", "const", "format"]
                        .iter()
                        .any(|key| schema.get(key).is_some());
                    let refused = schema["pattern"].as_str().is_some_and(refuses_nul);
                    if !listed && !refused {
                        problems.push(format!("{at}: {schema}"));
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} strings found");
        assert!(
            problems.is_empty(),
            "strings that may hold U+0000:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn every_parameter_is_where_the_document_says() {
        let document = served_document();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let parameters = operation["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let in_path: BTreeSet<String> = parameters
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| format!("{{{}}}", p["name"].as_str().unwrap_or_default()))
                    .collect();
                let templated: BTreeSet<String> = path
                    .split('/')
                    .filter(|segment| segment.starts_with('{'))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(in_path, templated, "{method} {path}: path parameters");
                for parameter in &parameters {
                    assert!(
                        ["path", "query", "header"]
                            .contains(&parameter["in"].as_str().unwrap_or_default()),
                        "{method} {path}: {parameter}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_update_bodies_that_need_a_field_say_so() {
        let document = served_document();
        for name in AT_LEAST_ONE_FIELD {
            assert_eq!(
                document["components"]["schemas"][name]["minProperties"], 1,
                "{name}"
            );
        }
    }
}
