//! The edge accepts only what every backend stores and every reader reads back unchanged,
//! black-box on both backends: U+0000 anywhere in a body (strings, keys, free-form `params`),
//! in a query or in a path is 422 at its field; free-form JSON is held to its depth and size;
//! numbers a 64-bit integer or float would change and repeated keys are refused; every string
//! field has a maximum length; `avatar_url` is http(s); `offset` is bounded. What is accepted
//! reads back exactly as sent, and a refused request leaves the service working.

use crate::support::{Response, TestApp, TestUser, assert_422_at, both_backends, id_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;
use uuid::Uuid;

/// A JSON request whose body is sent byte for byte (`json!` cannot write a repeated key, a
/// 65-bit integer or a float it would round).
async fn send_raw(app: &TestApp, method: Method, path: &str, token: &str, body: &str) -> Response {
    let answer = app
        .request(method, path, Some(token))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the service should answer");
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    Response {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn post_raw(app: &TestApp, path: &str, token: &str, body: &str) -> Response {
    send_raw(app, Method::POST, path, token, body).await
}

/// Asserts a 422 at `loc` whose error is of `kind`.
#[track_caller]
fn assert_refused(response: &Response, loc: Value, kind: &str) {
    assert_422_at(response, loc.clone());
    let errors = response.body["detail"]
        .as_array()
        .expect("a list of errors");
    assert!(
        errors.iter().any(|e| e["loc"] == loc && e["type"] == kind),
        "a {kind} error at {loc}: {}",
        response.body
    );
}

/// `{"params": <params>}` as a task's body, sent as written.
fn task_body(params: &str) -> String {
    format!(r#"{{"skill_name":"edge","schedule_cron":"0 9 * * *","params":{params}}}"#)
}

/// Creates a task with raw `params` and returns its id; the answer must be 201.
async fn task_with(app: &TestApp, user: &TestUser, params: &str) -> String {
    let created = post_raw(app, "/api/v1/tasks", &user.token, &task_body(params)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

/// The task's `params` as the read model (and the list) gives them back.
async fn params_read_back(app: &TestApp, user: &TestUser, id: &str) -> Value {
    let read = app.get(&format!("/api/v1/tasks/{id}"), &user.token).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let listed = app.get("/api/v1/tasks?limit=100", &user.token).await;
    let in_list = listed.body["tasks"]
        .as_array()
        .expect("a task list")
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} in the list: {}", listed.body))["params"]
        .clone();
    assert_eq!(
        in_list, read.body["params"],
        "the list and the detail agree"
    );
    read.body["params"].clone()
}

/// `{"a":{"a":…{"a":1}…}}` with `levels` objects.
fn nested(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

/// The service still takes and shows a plain write after a refusal.
async fn still_works(app: &TestApp, user: &TestUser) {
    let created = app
        .post("/api/v1/projects", &user.token, json!({"name": "after"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let listed = app.get("/api/v1/projects", &user.token).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body["projects"]
            .as_array()
            .is_some_and(|all| all.iter().any(|p| p["id"] == created.body["id"])),
        "{}",
        listed.body
    );
}

// ----- U+0000 -----

both_backends!(
    a_nul_in_a_project_description_is_422_at_the_field,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let refused = post_raw(
            &app,
            "/api/v1/projects",
            &alice.token,
            r#"{"name":"p","description":"d\u0000"}"#,
        )
        .await;
        assert_refused(&refused, json!(["body", "description"]), "string_nul");
        let listed = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(listed.body["total"], 0, "nothing was created");
        still_works(&app, &alice).await;
    }
);

both_backends!(
    a_nul_in_task_params_is_422_at_its_path,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let refused = post_raw(
            &app,
            "/api/v1/tasks",
            &alice.token,
            &task_body(r#"{"a":{"b":["ok","a\u0000b"]}}"#),
        )
        .await;
        assert_refused(
            &refused,
            json!(["body", "params", "a", "b", "1"]),
            "string_nul",
        );
        let id = task_with(&app, &alice, "{}").await;
        let updated = send_raw(
            &app,
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            &alice.token,
            r#"{"params":{"x":"\u0000"}}"#,
        )
        .await;
        assert_refused(&updated, json!(["body", "params", "x"]), "string_nul");
        still_works(&app, &alice).await;
    }
);

both_backends!(
    a_nul_in_an_object_key_is_422_at_that_key,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let refused = post_raw(
            &app,
            "/api/v1/tasks",
            &alice.token,
            &task_body(r#"{"a\u0000b":1}"#),
        )
        .await;
        assert_refused(&refused, json!(["body", "params", "a\u{0}b"]), "string_nul");
    }
);

both_backends!(
    a_nul_in_an_agent_name_is_422_not_500,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let refused = post_raw(
            &app,
            "/api/v1/agents",
            &admin.token,
            r#"{"name":"a\u0000b","type":"coder"}"#,
        )
        .await;
        assert_refused(&refused, json!(["body", "name"]), "string_nul");
        let created = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "ab", "type": "coder"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
);

both_backends!(
    a_nul_in_a_query_or_path_parameter_is_422_at_it,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let query = app
            .get("/api/v1/tasks?skill_name=a%00b", &admin.token)
            .await;
        assert_refused(&query, json!(["query", "skill_name"]), "string_nul");
        let search = app.get("/api/v1/projects?search=%00", &admin.token).await;
        assert_refused(&search, json!(["query", "search"]), "string_nul");
        let path = app.get("/api/v1/tasks/a%00b", &admin.token).await;
        assert_422_at(&path, json!(["path", "id"]));
        let named = app
            .get("/api/v1/admin/projections/ta%00sks/rebuild", &admin.token)
            .await;
        assert_refused(&named, json!(["path", "name"]), "string_nul");
    }
);

// ----- free-form JSON: depth and size -----

both_backends!(
    params_nested_32_levels_are_kept_and_33_refused,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let deep = nested(32);
        let id = task_with(&app, &alice, &deep).await;
        let expected: Value = serde_json::from_str(&deep).expect("JSON");
        assert_eq!(params_read_back(&app, &alice, &id).await, expected);
        let refused = post_raw(&app, "/api/v1/tasks", &alice.token, &task_body(&nested(33))).await;
        let errors = refused.body["detail"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(errors[0]["type"], "json_too_deep", "{}", refused.body);
        assert_eq!(errors[0]["loc"][1], "params");
        let update = send_raw(
            &app,
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            &alice.token,
            &format!(r#"{{"params":{}}}"#, nested(33)),
        )
        .await;
        assert_eq!(
            update.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            update.body
        );
    }
);

both_backends!(
    a_body_nested_beyond_what_the_parser_reads_is_a_clean_422,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for levels in [125, 200, 100_000] {
            let refused = post_raw(
                &app,
                "/api/v1/tasks",
                &alice.token,
                &task_body(&nested(levels)),
            )
            .await;
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{levels} levels: {}",
                refused.body
            );
            assert_eq!(refused.body["detail"][0]["type"], "json_too_deep");
        }
        let brackets = format!("{}{}", "[".repeat(300_000), "]".repeat(300_000));
        let anywhere = post_raw(&app, "/api/v1/projects", &alice.token, &brackets).await;
        assert_eq!(
            anywhere.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            anywhere.body
        );
        // Unterminated, it is malformed JSON: 400, whatever its depth.
        let open = post_raw(&app, "/api/v1/projects", &alice.token, &"[".repeat(300_000)).await;
        assert_eq!(open.status, StatusCode::BAD_REQUEST, "{}", open.body);
        still_works(&app, &alice).await;
    }
);

both_backends!(
    params_of_64_kib_are_kept_and_one_byte_more_refused,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        // `{"s":"…"}` is 8 bytes around the text; "é" is 2 bytes, so the limit counts bytes.
        let text = format!("{}{}", "é".repeat(1000), "x".repeat(65_536 - 8 - 2000));
        let exact = json!({ "s": text }).to_string();
        assert_eq!(exact.len(), 65_536);
        let id = task_with(&app, &alice, &exact).await;
        assert_eq!(
            params_read_back(&app, &alice, &id).await,
            json!({ "s": text })
        );
        let over = json!({ "s": format!("{text}x") }).to_string();
        let refused = post_raw(&app, "/api/v1/tasks", &alice.token, &task_body(&over)).await;
        assert_refused(&refused, json!(["body", "params"]), "json_too_large");
    }
);

// ----- numbers and keys -----

both_backends!(
    integers_beyond_64_bits_are_refused_and_the_64_bit_extremes_kept,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for number in [
            "18446744073709551616",
            "-9223372036854775809",
            "1e2000000000000000000000",
        ] {
            let refused = post_raw(
                &app,
                "/api/v1/tasks",
                &alice.token,
                &task_body(&format!(r#"{{"n":{number}}}"#)),
            )
            .await;
            assert_422_at(&refused, json!(["body", "params", "n"]));
        }
        let extremes = r#"{"max":18446744073709551615,"min":-9223372036854775808,"zero":0}"#;
        let id = task_with(&app, &alice, extremes).await;
        let back = params_read_back(&app, &alice, &id).await;
        assert_eq!(back["max"].as_u64(), Some(u64::MAX));
        assert_eq!(back["min"].as_i64(), Some(i64::MIN));
        assert_eq!(back["zero"].as_u64(), Some(0));
    }
);

both_backends!(
    floats_a_64_bit_float_would_change_are_refused_and_others_read_back_exactly,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for (number, kind) in [
            ("0.30000000000000000001", "float_precision"),
            ("9007199254740993.0", "float_precision"),
            ("1e-400", "float_precision"),
            ("1e400", "float_out_of_range"),
        ] {
            let refused = post_raw(
                &app,
                "/api/v1/tasks",
                &alice.token,
                &task_body(&format!(r#"{{"x":{number}}}"#)),
            )
            .await;
            assert_refused(&refused, json!(["body", "params", "x"]), kind);
        }
        let floats: [f64; 8] = [
            0.1,
            0.30000000000000004,
            1.5,
            -2.5e-7,
            1e22,
            123_456_789.123_456_78,
            1.797_693_134_862_315_7e308,
            5e-324,
        ];
        let sent = json!({ "f": floats });
        let id = task_with(&app, &alice, &sent.to_string()).await;
        let back = params_read_back(&app, &alice, &id).await;
        let read: Vec<f64> = back["f"]
            .as_array()
            .expect("the floats")
            .iter()
            .map(|v| v.as_f64().expect("a float"))
            .collect();
        assert_eq!(
            read.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
            floats.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
            "{back}"
        );
    }
);

both_backends!(
    a_repeated_key_is_refused_rather_than_the_last_one_kept,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let refused = post_raw(
            &app,
            "/api/v1/tasks",
            &alice.token,
            &task_body(r#"{"a":1,"b":{"c":1,"c":2}}"#),
        )
        .await;
        assert_refused(
            &refused,
            json!(["body", "params", "b", "c"]),
            "duplicate_key",
        );
        let top = post_raw(
            &app,
            "/api/v1/projects",
            &alice.token,
            r#"{"name":"first","name":"second"}"#,
        )
        .await;
        assert_refused(&top, json!(["body", "name"]), "duplicate_key");
    }
);

both_backends!(
    accepted_params_read_back_exactly,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let params = json!({
            "text": "tab\t newline\n quote\" backslash\\ control\u{1} del\u{7f}",
            "unicode": "é 漢字 😀 \u{fffe}\u{ffff} \u{10ffff} \u{200b}",
            "\u{1}key": "a key with a control character",
            "": "an empty key",
            "nested": {"list": [1, -1, 0.5, true, false, null, [], {}], "deep": {"a": {"b": "c"}}},
            "big": 9_223_372_036_854_775_807_i64,
        });
        let id = task_with(&app, &alice, &params.to_string()).await;
        assert_eq!(params_read_back(&app, &alice, &id).await, params);
        let changed = json!({"replaced": ["whole", {"x": 1.25}]});
        let updated = app
            .put(
                &format!("/api/v1/tasks/{id}"),
                &alice.token,
                json!({ "params": changed }),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        assert_eq!(updated.body["params"], changed);
        assert_eq!(params_read_back(&app, &alice, &id).await, changed);
        let history = app
            .get(&format!("/api/v1/tasks/{id}/history"), &alice.token)
            .await;
        assert_eq!(
            history.body["events"][0]["payload"]["TaskScheduled"]["params"], params,
            "the log keeps them"
        );
        let description = "line\nsecond\t\u{1} 😀 \u{ffff}";
        let project = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"name": "exact", "description": description}),
            )
            .await;
        assert_eq!(project.status, StatusCode::CREATED, "{}", project.body);
        let read = app
            .get(
                &format!("/api/v1/projects/{}", id_of(&project.body)),
                &alice.token,
            )
            .await;
        assert_eq!(read.body["description"], description);
    }
);

// ----- lengths, URLs, paging -----

/// A string of `chars` characters of two bytes each, so a limit in bytes would show.
fn chars(chars: usize) -> String {
    "é".repeat(chars)
}

both_backends!(
    every_string_field_is_refused_one_character_over_its_limit,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let task = Uuid::now_v7();
        let cases: Vec<(Method, String, Option<&str>, Value, &str)> = vec![
            (
                Method::POST,
                "/api/v1/tasks".into(),
                Some(&alice.token),
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "timezone": chars(65)}),
                "timezone",
            ),
            (
                Method::POST,
                "/api/v1/tasks".into(),
                Some(&alice.token),
                json!({"skill_name": "s", "schedule_cron": format!("0 9 * * *{}", " ".repeat(247))}),
                "schedule_cron",
            ),
            (
                Method::PUT,
                format!("/api/v1/tasks/{task}"),
                Some(&alice.token),
                json!({"timezone": chars(65)}),
                "timezone",
            ),
            (
                Method::POST,
                "/api/v1/projects".into(),
                Some(&alice.token),
                json!({"name": chars(256)}),
                "name",
            ),
            (
                Method::POST,
                "/api/v1/projects".into(),
                Some(&alice.token),
                json!({"name": "p", "description": chars(2001)}),
                "description",
            ),
            (
                Method::POST,
                "/api/v1/agents".into(),
                Some(&admin.token),
                json!({"name": chars(256), "type": "coder"}),
                "name",
            ),
            (
                Method::POST,
                "/api/v1/agents".into(),
                Some(&admin.token),
                json!({"name": "a", "type": chars(33)}),
                "type",
            ),
            (
                Method::POST,
                "/api/v1/agents/activity".into(),
                Some(&admin.token),
                json!({"agent_id": task, "task_id": task, "status": "success", "output": chars(65_537)}),
                "output",
            ),
            (
                Method::POST,
                "/api/v1/agents/activity".into(),
                Some(&admin.token),
                json!({"agent_id": task, "task_id": task, "status": "failed", "error": chars(65_537)}),
                "error",
            ),
            (
                Method::POST,
                "/api/v1/auth/register".into(),
                None,
                json!({"username": "a".repeat(51), "email": "a@example.com", "password": "Sup3rSecret!"}),
                "username",
            ),
            (
                Method::POST,
                "/api/v1/auth/register".into(),
                None,
                json!({"username": "abc", "email": format!("{}@example.com", "a".repeat(243)), "password": "Sup3rSecret!"}),
                "email",
            ),
            (
                Method::POST,
                "/api/v1/auth/register".into(),
                None,
                json!({"username": "abc", "email": "a@example.com", "password": format!("Aa1{}", chars(126))}),
                "password",
            ),
            (
                Method::POST,
                "/api/v1/auth/login".into(),
                None,
                json!({"username": "a".repeat(51), "password": "x"}),
                "username",
            ),
            (
                Method::POST,
                "/api/v1/auth/login".into(),
                None,
                json!({"username": "alice", "password": chars(129)}),
                "password",
            ),
            (
                Method::POST,
                "/api/v1/auth/refresh".into(),
                None,
                json!({"refresh_token": "a".repeat(2049)}),
                "refresh_token",
            ),
            (
                Method::POST,
                "/api/v1/auth/change-password".into(),
                Some(&alice.token),
                json!({"current_password": chars(129), "new_password": "Sup3rSecret!2"}),
                "current_password",
            ),
            (
                Method::PUT,
                "/api/v1/auth/me".into(),
                Some(&alice.token),
                json!({"bio": chars(501)}),
                "bio",
            ),
            (
                Method::PUT,
                "/api/v1/auth/me".into(),
                Some(&alice.token),
                json!({"avatar_url": format!("https://example.com/{}", "a".repeat(481))}),
                "avatar_url",
            ),
            (
                Method::PUT,
                format!("/api/v1/admin/users/{}", alice.id),
                Some(&admin.token),
                json!({"role": chars(33)}),
                "role",
            ),
        ];
        for (method, path, token, body, field) in cases {
            let answer = app.call(method.clone(), &path, token, Some(body)).await;
            assert!(
                answer.status == StatusCode::UNPROCESSABLE_ENTITY
                    && answer.body["detail"][0]["loc"] == json!(["body", field])
                    && answer.body["detail"][0]["type"] == "string_too_long",
                "{method} {path} {field}: {} {}",
                answer.status,
                answer.body
            );
        }
        // At the limit, counted in characters, the same fields pass the length check.
        let at_limit = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"name": chars(255), "description": chars(2000)}),
            )
            .await;
        assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.body);
        assert_eq!(at_limit.body["description"], chars(2000));
    }
);

both_backends!(
    a_run_reports_output_and_error_up_to_64_k_characters,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = app
            .post(
                "/api/v1/agents",
                &service.token,
                json!({"name": "worker", "type": "coder"}),
            )
            .await;
        let agent = id_of(&agent.body);
        let task = id_of(
            &app.post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await
            .body,
        );
        let running = app
            .post(
                "/api/v1/agents/activity",
                &service.token,
                json!({"agent_id": agent, "task_id": task, "status": "running"}),
            )
            .await;
        assert_eq!(running.status, StatusCode::CREATED, "{}", running.body);
        let output = format!("{}\u{1}", chars(65_535));
        let finished = app
            .post(
                "/api/v1/agents/activity",
                &service.token,
                json!({"agent_id": agent, "task_id": task, "status": "failed", "output": output, "error": chars(65_536)}),
            )
            .await;
        assert_eq!(finished.status, StatusCode::CREATED, "{}", finished.body);
        let runs = app
            .get(&format!("/api/v1/tasks/{task}/executions"), &alice.token)
            .await;
        assert_eq!(runs.body["executions"][0]["output_text"], output);
        assert_eq!(runs.body["executions"][0]["error_text"], chars(65_536));
    }
);

both_backends!(
    an_avatar_url_must_be_http_or_https,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for url in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "ftp://example.com/a.png",
            "//example.com/a.png",
            "https://",
            "https:///path",
            "https://exa mple.com/",
            "HTTPS://example.com/",
            "",
        ] {
            let refused = app
                .put("/api/v1/auth/me", &alice.token, json!({"avatar_url": url}))
                .await;
            assert_refused(&refused, json!(["body", "avatar_url"]), "url_scheme");
        }
        for url in [
            "https://example.com/a.png?size=2#x",
            "http://localhost:8080/me",
        ] {
            let accepted = app
                .put("/api/v1/auth/me", &alice.token, json!({"avatar_url": url}))
                .await;
            assert_eq!(accepted.status, StatusCode::OK, "{url}: {}", accepted.body);
            let me = app.get("/api/v1/auth/me", &alice.token).await;
            assert_eq!(me.body["avatar_url"], url);
        }
    }
);

both_backends!(
    an_offset_beyond_a_million_is_422,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let task = Uuid::now_v7();
        for list in [
            "/api/v1/tasks",
            "/api/v1/projects",
            "/api/v1/agents",
            "/api/v1/admin/users",
        ] {
            let over = app
                .get(&format!("{list}?offset=1000001"), &admin.token)
                .await;
            assert_422_at(&over, json!(["query", "offset"]));
            let huge = app
                .get(&format!("{list}?offset=9223372036854775807"), &admin.token)
                .await;
            assert_422_at(&huge, json!(["query", "offset"]));
            let last = app
                .get(&format!("{list}?offset=1000000"), &admin.token)
                .await;
            assert_eq!(last.status, StatusCode::OK, "{list}: {}", last.body);
            assert_eq!(last.body["has_more"], false);
        }
        let runs = app
            .get(
                &format!("/api/v1/tasks/{task}/executions?offset=1000001"),
                &admin.token,
            )
            .await;
        assert!(
            matches!(
                runs.status,
                StatusCode::UNPROCESSABLE_ENTITY | StatusCode::NOT_FOUND
            ),
            "{}",
            runs.status
        );
    }
);
