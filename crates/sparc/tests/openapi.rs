//! The OpenAPI document (`GET /api/openapi.json`): it is OpenAPI 3.1, it documents every
//! endpoint of the contract's Health, Auth and sessions, Scheduled tasks, Projects and Agents
//! sections with a response schema wherever the contract defines a body, and every documented
//! operation is actually served; every error the service answers to a request without a token,
//! with malformed JSON or with a text body is documented with its body; the values it lists for
//! a field or a list filter are the ones the service accepts.

use crate::support::{TestApp, both_backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;
use uuid::Uuid;

/// What the contract says a successful answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A JSON body.
    Json,
    /// No body (204).
    Empty,
    /// Not JSON (Prometheus text).
    Text,
}

use Answer::{Empty, Json, Text};

/// Every operation of API.md's Health, Auth and sessions, Scheduled tasks, Projects, Agents and
/// Memory sections, with the status of its success answer.
const CONTRACT: &[(&str, &str, u16, Answer)] = &[
    // Health and operations
    ("get", "/api/v1/health", 200, Json),
    ("get", "/api/v1/health/detailed", 200, Json),
    ("get", "/api/v1/readiness", 200, Json),
    ("get", "/api/v1/liveness", 200, Json),
    ("get", "/metrics", 200, Text),
    ("get", "/api/openapi.json", 200, Json),
    // Auth and sessions
    ("post", "/api/v1/auth/register", 201, Json),
    ("post", "/api/v1/auth/login", 200, Json),
    ("post", "/api/v1/auth/refresh", 200, Json),
    ("post", "/api/v1/auth/logout", 200, Json),
    ("get", "/api/v1/auth/me", 200, Json),
    ("put", "/api/v1/auth/me", 200, Json),
    ("patch", "/api/v1/auth/me", 200, Json),
    ("post", "/api/v1/auth/change-password", 200, Json),
    ("get", "/api/v1/auth/sessions", 200, Json),
    ("delete", "/api/v1/auth/sessions/{id}", 200, Json),
    ("delete", "/api/v1/auth/sessions", 200, Json),
    // Scheduled tasks
    ("post", "/api/v1/tasks", 201, Json),
    ("get", "/api/v1/tasks", 200, Json),
    ("get", "/api/v1/tasks/{id}", 200, Json),
    ("put", "/api/v1/tasks/{id}", 200, Json),
    ("patch", "/api/v1/tasks/{id}", 200, Json),
    ("delete", "/api/v1/tasks/{id}", 200, Json),
    ("post", "/api/v1/tasks/{id}/run", 202, Json),
    ("get", "/api/v1/tasks/{id}/executions", 200, Json),
    ("get", "/api/v1/tasks/{id}/history", 200, Json),
    // Projects
    ("post", "/api/v1/projects", 201, Json),
    ("get", "/api/v1/projects", 200, Json),
    ("get", "/api/v1/projects/{id}", 200, Json),
    ("put", "/api/v1/projects/{id}", 200, Json),
    ("patch", "/api/v1/projects/{id}", 200, Json),
    ("delete", "/api/v1/projects/{id}", 204, Empty),
    ("get", "/api/v1/projects/{id}/history", 200, Json),
    // Agents
    ("get", "/api/v1/agents", 200, Json),
    ("get", "/api/v1/agents/{id}", 200, Json),
    ("post", "/api/v1/agents", 201, Json),
    ("put", "/api/v1/agents/{id}", 200, Json),
    ("patch", "/api/v1/agents/{id}", 200, Json),
    ("delete", "/api/v1/agents/{id}", 204, Empty),
    ("post", "/api/v1/agents/activity", 201, Json),
    ("get", "/api/v1/agents/activity", 200, Json),
    ("get", "/ws", 101, Empty),
    ("get", "/ws/health", 200, Json),
    // Memory
    ("post", "/api/v1/memory/store", 201, Json),
    ("post", "/api/v1/memory/search", 200, Json),
    ("get", "/api/v1/memory/task/{task_id}", 200, Json),
    ("get", "/api/v1/memory/health", 200, Json),
    (
        "get",
        "/api/v1/memory/projects/{project_id}/summary",
        200,
        Json,
    ),
];

async fn document(app: &TestApp) -> Value {
    let response = app.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    response.body
}

/// Follows a `$ref` inside the document (`#/components/schemas/Task`).
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("a dangling $ref {reference}"))
        }
        None => node,
    }
}

both_backends!(the_document_is_openapi_3_1, |app: TestApp| async move {
    let doc = document(&app).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1, not {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the bearer scheme is declared"
    );
});

both_backends!(
    operation_ids_are_unique_and_patch_has_its_own,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("an item") {
                let Some(id) = operation["operationId"].as_str() else {
                    continue;
                };
                assert!(
                    seen.insert(id.to_owned()),
                    "{method} {path}: operation id {id} twice"
                );
            }
        }
        assert_eq!(
            doc["paths"]["/api/v1/tasks/{id}"]["patch"]["operationId"],
            "update_task_patch"
        );
    }
);

both_backends!(
    every_endpoint_of_the_contract_is_documented_with_its_response_schema,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let mut problems = Vec::new();
        for &(method, path, status, answer) in CONTRACT {
            let Some(operation) = doc["paths"][path].get(method) else {
                problems.push(format!("{method} {path}: not documented"));
                continue;
            };
            let Some(response) = operation["responses"].get(status.to_string()) else {
                problems.push(format!("{method} {path}: no {status} response documented"));
                continue;
            };
            let response = resolve(&doc, response);
            match answer {
                Json => {
                    let schema = &response["content"]["application/json"]["schema"];
                    if schema.is_null() {
                        problems.push(format!(
                            "{method} {path}: the {status} answer has no JSON schema"
                        ));
                    }
                }
                Text => {
                    if response["content"]
                        .as_object()
                        .is_none_or(|c| !c.keys().any(|k| k.starts_with("text/plain")))
                    {
                        problems.push(format!("{method} {path}: the {status} answer is not text"));
                    }
                }
                Empty => {
                    if response["content"]
                        .as_object()
                        .is_some_and(|c| !c.is_empty())
                    {
                        problems.push(format!("{method} {path}: a {status} answer has no body"));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
);

both_backends!(
    every_documented_operation_is_served,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let paths = doc["paths"].as_object().expect("paths");
        let mut problems = Vec::new();
        let mut checked = 0;
        for (path, operations) in paths {
            let concrete = path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') {
                        Uuid::now_v7().to_string()
                    } else {
                        segment.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            for method in operations.as_object().expect("operations").keys() {
                let Ok(verb) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                    continue;
                };
                if ![
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::PATCH,
                ]
                .contains(&verb)
                {
                    continue;
                }
                checked += 1;
                let response = app.call(verb, &concrete, None, None).await;
                if matches!(
                    response.status,
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) {
                    problems.push(format!("{method} {path} ({concrete}): {}", response.status));
                }
            }
        }
        assert!(
            checked >= CONTRACT.len(),
            "only {checked} operations documented"
        );
        assert!(problems.is_empty(), "not served:\n{}", problems.join("\n"));
    }
);

both_backends!(
    every_contract_endpoint_is_served,
    |app: TestApp| async move {
        let mut problems = Vec::new();
        for &(method, path, _, _) in CONTRACT {
            let concrete = path.replace("{id}", &Uuid::now_v7().to_string());
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let response = app.call(verb, &concrete, None, None).await;
            if matches!(
                response.status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) {
                problems.push(format!("{method} {path}: {}", response.status));
            }
        }
        assert!(problems.is_empty(), "not served:\n{}", problems.join("\n"));
    }
);

/// The error bodies the document declares, by schema name.
const ERROR_SCHEMAS: [&str; 3] = [
    "#/components/schemas/ErrorDetail",
    "#/components/schemas/ValidationError",
    "#/components/schemas/InternalError",
];

/// Error statuses whose body is an operation's own (readiness answers 503 with its reason).
fn operation_specific(status: &str) -> bool {
    status == "503"
}

both_backends!(
    every_error_answer_is_documented_with_its_body,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let user = app.user("documented").await;
        let paths = doc["paths"].as_object().expect("paths");
        let mut problems = Vec::new();
        for (path, operations) in paths {
            let concrete = path.replace("{id}", &Uuid::now_v7().to_string());
            let concrete = concrete.replace("{name}", "tasks");
            for (method, operation) in operations.as_object().expect("operations") {
                let Ok(verb) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                    continue;
                };
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    let error = status.parse::<u16>().is_ok_and(|s| s >= 400);
                    let schema = &resolve(&doc, response)["content"]["application/json"]["schema"];
                    let common = schema["$ref"]
                        .as_str()
                        .is_some_and(|s| ERROR_SCHEMAS.contains(&s));
                    let own = schema["$ref"].is_string() && operation_specific(status);
                    if error && !common && !own {
                        problems.push(format!("{method} {path}: {status} has no error body"));
                    }
                }
                if !responses.contains_key("500") {
                    problems.push(format!("{method} {path}: 500 not documented"));
                }
                let mut answers = Vec::new();
                let authenticated = operation["security"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty());
                if authenticated {
                    let anonymous = app.request(verb.clone(), &concrete, None).send().await;
                    answers.push(("without a token", anonymous));
                }
                if operation.get("requestBody").is_some() {
                    let bad_bodies = [
                        (
                            "with malformed JSON",
                            "application/json",
                            "{\"unfinished\": ",
                        ),
                        ("with a text body", "text/plain", "{}"),
                    ];
                    for (what, content_type, body) in bad_bodies {
                        let answer = app
                            .request(verb.clone(), &concrete, Some(&user.token))
                            .header("content-type", content_type)
                            .body(body)
                            .send()
                            .await;
                        answers.push((what, answer));
                    }
                }
                for (what, answer) in answers {
                    let status = answer.expect("the service answers").status();
                    if status.is_client_error() && !responses.contains_key(status.as_str()) {
                        problems.push(format!(
                            "{method} {path} {what}: {status} is not documented"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
);

/// The values the document lists for a field of a request body.
fn listed_values(doc: &Value, schema: &str, field: &str) -> Vec<String> {
    let schema = &doc["components"]["schemas"][schema]["properties"][field];
    schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{field} of {schema} lists its values"))
        .iter()
        .map(|value| value.as_str().expect("a text value").to_owned())
        .collect()
}

both_backends!(
    the_values_the_document_lists_are_the_ones_the_service_accepts,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let admin = app.user_with_role("lister", Role::Admin).await;
        let types = listed_values(&doc, "RegisterAgent", "type");
        let statuses = listed_values(&doc, "RegisterAgent", "status");
        assert!(types.len() > 1 && statuses.len() > 1);
        for (n, agent_type) in types.iter().enumerate() {
            let status = &statuses[n % statuses.len()];
            let body = json!({"name": format!("listed-{n}"), "type": agent_type, "status": status});
            let created = app.post("/api/v1/agents", &admin.token, body).await;
            assert_eq!(
                created.status,
                StatusCode::CREATED,
                "type {agent_type}: {}",
                created.body
            );
        }
        let unlisted = json!({"name": "unlisted", "type": "not-a-listed-type"});
        let refused = app.post("/api/v1/agents", &admin.token, unlisted).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

        let task_statuses = listed_values(&doc, "CreateTask", "status");
        for status in &task_statuses {
            let body =
                json!({"skill_name": "listed", "schedule_cron": "0 9 * * 1", "status": status});
            let created = app.post("/api/v1/tasks", &admin.token, body).await;
            assert_eq!(
                created.status,
                StatusCode::CREATED,
                "status {status}: {}",
                created.body
            );
        }
        for status in ["running", "deleted"] {
            assert!(
                !task_statuses.iter().any(|s| s == status),
                "{status} is the service's to set"
            );
            let body =
                json!({"skill_name": "listed", "schedule_cron": "0 9 * * 1", "status": status});
            let refused = app.post("/api/v1/tasks", &admin.token, body).await;
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "status {status}"
            );
        }
    }
);

both_backends!(
    every_value_the_document_lists_for_a_list_filter_is_accepted,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let admin = app.user_with_role("filterer", Role::Admin).await;
        let mut problems = Vec::new();
        let mut checked = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            let Some(list) = operations.get("get").filter(|_| !path.contains('{')) else {
                continue;
            };
            for parameter in list["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("a parameter name");
                let values = parameter["schema"]["enum"].as_array().cloned();
                for value in values.into_iter().flatten() {
                    let value = value.as_str().expect("a text value");
                    let query = format!("{path}?{name}={value}");
                    let answer = app
                        .call(Method::GET, &query, Some(&admin.token), None)
                        .await;
                    checked += 1;
                    if answer.status != StatusCode::OK {
                        problems.push(format!("{query}: {} {}", answer.status, answer.body));
                    }
                }
            }
        }
        assert!(checked >= 30, "only {checked} listed values");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let unlisted = app
            .call(
                Method::GET,
                "/api/v1/tasks?sort_by=owner",
                Some(&admin.token),
                None,
            )
            .await;
        assert_eq!(unlisted.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
);

/// Whether a schema's `type` is (or, nullable, includes) `kind`.
fn has_type(schema: &Value, kind: &str) -> bool {
    match &schema["type"] {
        Value::String(one) => one == kind,
        Value::Array(many) => many.iter().any(|t| t == kind),
        _ => false,
    }
}

both_backends!(
    every_string_a_request_body_takes_has_a_maximum_length,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let mut problems = Vec::new();
        let mut strings = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let body = &operation["requestBody"]["content"]["application/json"]["schema"];
                if body.is_null() {
                    continue;
                }
                let body = resolve(&doc, body);
                let properties = body["properties"].as_object().cloned().unwrap_or_default();
                for (field, property) in properties {
                    let text = if has_type(&property, "array") {
                        property["items"].clone()
                    } else {
                        property
                    };
                    if !has_type(&text, "string") || text["format"] == "uuid" {
                        continue;
                    }
                    strings += 1;
                    if !text["maxLength"].is_u64() {
                        problems.push(format!("{method} {path}: {field} has no maxLength"));
                    }
                }
            }
        }
        assert!(strings >= 30, "only {strings} strings in request bodies");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let create_task = &doc["components"]["schemas"]["CreateTask"]["properties"];
        for (field, max) in [
            ("skill_name", 255),
            ("schedule_cron", 255),
            ("timezone", 64),
        ] {
            assert_eq!(create_task[field]["maxLength"], max, "CreateTask.{field}");
        }
        let activity = &doc["components"]["schemas"]["ActivityReport"]["properties"];
        assert_eq!(activity["output"]["maxLength"], 65_536);
        assert_eq!(activity["error"]["maxLength"], 65_536);
        let login = &doc["components"]["schemas"]["LoginRequest"]["properties"];
        assert_eq!(login["username"]["maxLength"], 50);
        assert_eq!(login["password"]["maxLength"], 128);
        let profile = &doc["components"]["schemas"]["ProfileRequest"]["properties"];
        assert!(
            profile["avatar_url"]["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("^https?://")),
            "{}",
            profile["avatar_url"]
        );
    }
);

both_backends!(
    every_paging_parameter_states_its_range,
    |app: TestApp| async move {
        let doc = document(&app).await;
        let mut problems = Vec::new();
        let mut offsets = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let parameters = operation["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for parameter in parameters {
                    let name = parameter["name"].as_str().unwrap_or_default();
                    let schema = &parameter["schema"];
                    match name {
                        "offset" => {
                            offsets += 1;
                            if schema["maximum"] != 1_000_000 || schema["minimum"] != 0 {
                                problems.push(format!("{method} {path}: offset {schema}"));
                            }
                        }
                        "limit" | "history_limit"
                            if !schema["maximum"].is_number() || schema["minimum"] != 1 =>
                        {
                            problems.push(format!("{method} {path}: {name} {schema}"));
                        }
                        _ => {}
                    }
                }
            }
        }
        assert!(offsets >= 5, "only {offsets} offsets documented");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
);
