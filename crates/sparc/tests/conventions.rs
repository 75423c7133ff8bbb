//! The conventions every endpoint follows, black-box on both backends: request ids, security
//! headers, the error shapes (400, 404, 405, 413, 415, 422), rate limits with their headers,
//! gzip for large responses, and what browsers on other origins need: CORS for the listed
//! origins only, the `Origin` check of WebSocket upgrades, and `PATCH` wherever `PUT` updates.

use crate::support::{PASSWORD, Response, TestApp, both_backends, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::{Role, User, UserCommand};
use sparc_domain::values::{Email, Username};
use sparc_store::{CommandBus, EventMetadata, LogReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A JSON-typed request with `body` sent as is.
async fn post_raw(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> Response {
    send(
        app.request(Method::POST, path, None)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

#[track_caller]
fn assert_security_headers(response: &Response, what: &str) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'self'"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(response.header(name), Some(value), "{what}: {name}");
    }
    assert!(
        response.header("x-request-id").is_some(),
        "{what}: X-Request-ID"
    );
}

#[track_caller]
fn assert_detail_message(response: &Response, status: StatusCode, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    assert!(
        response.body["detail"].is_string(),
        "{what}: a {{\"detail\": message}} body, not {}",
        response.body
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: JSON"
    );
}

#[track_caller]
fn assert_generated_request_id(response: &Response, what: &str) {
    let id = response.header("x-request-id").expect("an X-Request-ID");
    assert!(
        Uuid::parse_str(id).is_ok(),
        "{what}: a generated UUID, not {id:?}"
    );
}

fn header_number(response: &Response, name: &str) -> u64 {
    response
        .header(name)
        .unwrap_or_else(|| panic!("a {name} header on {}", response.status))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a whole number"))
}

// ----- request ids -----

both_backends!(
    a_sane_client_request_id_is_echoed_on_every_answer,
    |app: TestApp| async move {
        for (method, path) in [
            (Method::GET, "/api/v1/health"),
            (Method::GET, "/api/v1/auth/me"),
            (Method::GET, "/api/v1/nowhere"),
            (Method::PATCH, "/api/v1/health"),
        ] {
            let response = send(
                app.request(method.clone(), path, None)
                    .header("x-request-id", "client-req.42_A"),
            )
            .await;
            assert_eq!(
                response.header("x-request-id"),
                Some("client-req.42_A"),
                "{method} {path} ({})",
                response.status
            );
        }
        let longest = "r".repeat(128);
        let response = send(
            app.request(Method::GET, "/api/v1/liveness", None)
                .header("x-request-id", longest.as_str()),
        )
        .await;
        assert_eq!(response.header("x-request-id"), Some(longest.as_str()));
    }
);

both_backends!(
    a_missing_or_insane_request_id_is_replaced_by_a_uuid,
    |app: TestApp| async move {
        let absent = send(app.request(Method::GET, "/api/v1/liveness", None)).await;
        assert_generated_request_id(&absent, "absent");
        let again = send(app.request(Method::GET, "/api/v1/liveness", None)).await;
        assert_ne!(
            absent.header("x-request-id"),
            again.header("x-request-id"),
            "each request gets its own id"
        );
        let too_long = "r".repeat(129);
        for (value, what) in [
            (&b"has space"[..], "a space"),
            (&b"<script>alert(1)</script>"[..], "markup"),
            (&b"a/b"[..], "a slash"),
            (too_long.as_bytes(), "129 characters"),
            ("caf\u{e9}".as_bytes(), "non-ASCII"),
        ] {
            let response = send(app.request(Method::GET, "/api/v1/liveness", None).header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(value).expect("a header value"),
            ))
            .await;
            assert_generated_request_id(&response, what);
        }
    }
);

both_backends!(
    the_request_id_becomes_the_metadata_of_the_events_a_request_writes,
    |app: TestApp| async move {
        let response = send(
            app.request(Method::POST, "/api/v1/auth/register", None)
                .header("x-request-id", "register-abc-1")
                .header("user-agent", "conventions-test/2")
                .json(&json!({"username": "alice", "email": "alice@example.com", "password": PASSWORD})),
        )
        .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        let id = response.body["id"].as_str().expect("a user id");
        let events = LogReader::new(&app.db)
            .aggregate_events("User", id, 0, 100)
            .await
            .expect("the user's events");
        assert!(!events.is_empty());
        for event in events {
            let metadata = &event.metadata;
            assert_eq!(metadata["request_id"], "register-abc-1", "{metadata}");
            assert_eq!(metadata["correlation_id"], "register-abc-1", "{metadata}");
            assert_eq!(metadata["ip"], "127.0.0.1", "{metadata}");
            assert_eq!(metadata["user_agent"], "conventions-test/2", "{metadata}");
        }
    }
);

both_backends!(
    a_500_answers_the_request_id_as_error_id_and_leaks_nothing,
    |app: TestApp| async move {
        // A user whose stored hash is not a PHC string: verifying a login against it fails
        // inside the service.
        let user_id = Uuid::now_v7();
        CommandBus::new(&app.db)
            .execute::<User>(
                &user_id.to_string(),
                UserCommand::Register {
                    user_id,
                    username: Username::parse("broken").expect("a username"),
                    email: Email::parse("broken@example.com").expect("an email"),
                    password_hash: "plaintext-not-a-phc-hash".to_owned(),
                    role: Role::User,
                    full_name: None,
                    at: chrono::Utc::now(),
                },
                &EventMetadata::new("system", Uuid::now_v7().to_string()),
                None,
            )
            .await
            .expect("the user should be recorded");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let response = loop {
            let response = send(
                app.request(Method::POST, "/api/v1/auth/login", None)
                    .header("x-request-id", "boom-req-7")
                    .json(&json!({"username": "broken", "password": PASSWORD})),
            )
            .await;
            // 401 until the users read model has the account.
            if response.status != StatusCode::UNAUTHORIZED {
                break response;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the user never appeared"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.body,
            json!({"detail": "Internal server error", "error_id": "boom-req-7"})
        );
        assert_eq!(response.header("x-request-id"), Some("boom-req-7"));
        assert_security_headers(&response, "500");
    }
);

// ----- security headers -----

both_backends!(
    every_answer_carries_the_security_headers,
    |app: TestApp| async move {
        let cases = [
            (Method::GET, "/api/v1/health", None, StatusCode::OK),
            (Method::GET, "/api/openapi.json", None, StatusCode::OK),
            (Method::GET, "/api/v1/nowhere", None, StatusCode::NOT_FOUND),
            (
                Method::GET,
                "/api/v1/auth/me",
                None,
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::DELETE,
                "/api/v1/health",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::POST,
                "/api/v1/auth/login",
                Some("{"),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/api/v1/auth/login",
                Some("{}"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        for (method, path, body, status) in cases {
            let mut builder = app.request(method.clone(), path, None);
            if let Some(body) = body {
                builder = builder
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = send(builder).await;
            assert_eq!(response.status, status, "{method} {path}");
            assert_security_headers(&response, &format!("{method} {path}"));
            assert!(
                response.header("strict-transport-security").is_none(),
                "HSTS only when configured"
            );
        }
    }
);

both_backends!(
    hsts_is_sent_when_configured,
    |s| s.api.hsts = true,
    |app: TestApp| async move {
        for path in ["/api/v1/health", "/api/v1/nowhere"] {
            let response = send(app.request(Method::GET, path, None)).await;
            assert!(
                response
                    .header("strict-transport-security")
                    .is_some_and(|v| v.starts_with("max-age=")),
                "{path}"
            );
        }
    }
);

// ----- error shapes -----

both_backends!(
    malformed_json_is_400_with_a_detail_message,
    |app: TestApp| async move {
        for body in [
            r#"{"username": "a","#,
            "",
            "{'username': 'a'}",
            r#"{"a":1} x"#,
        ] {
            let response = post_raw(&app, "/api/v1/auth/login", body).await;
            assert_detail_message(&response, StatusCode::BAD_REQUEST, body);
        }
    }
);

both_backends!(
    a_body_without_a_json_content_type_is_415_in_our_shape,
    |app: TestApp| async move {
        let response = send(
            app.request(Method::POST, "/api/v1/auth/login", None)
                .header("content-type", "text/plain")
                .body(r#"{"username":"a","password":"b"}"#),
        )
        .await;
        assert_detail_message(&response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain");
    }
);

both_backends!(
    invalid_fields_are_422_with_a_loc_msg_type_list,
    |app: TestApp| async move {
        let missing = post_raw(&app, "/api/v1/auth/register", "{}").await;
        assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
        let detail = missing.body["detail"].as_array().expect("a detail list");
        assert!(!detail.is_empty());
        for error in detail {
            let loc = error["loc"].as_array().expect("loc is a list");
            assert_eq!(loc[0], "body", "{error}");
            assert!(loc.iter().all(Value::is_string), "{error}");
            assert!(
                error["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{error}"
            );
            assert_eq!(error["type"], "missing", "{error}");
        }

        let cases = [
            (
                json!({"username": 5, "password": "x"}),
                json!(["body", "username"]),
                "type_error",
            ),
            (
                json!({"username": "a", "password": "x", "remember_me": true}),
                json!(["body", "remember_me"]),
                "extra_forbidden",
            ),
        ];
        for (body, loc, kind) in cases {
            let response = app
                .call(
                    Method::POST,
                    "/api/v1/auth/register",
                    None,
                    Some(body.clone()),
                )
                .await;
            assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(
                response.body["detail"]
                    .as_array()
                    .expect("a detail list")
                    .iter()
                    .any(|e| e["loc"] == loc && e["type"] == kind),
                "{body}: {}",
                response.body
            );
        }
        let not_an_object = post_raw(&app, "/api/v1/auth/login", "[1, 2]").await;
        assert_eq!(not_an_object.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(not_an_object.body["detail"].is_array());
    }
);

both_backends!(
    an_unknown_route_is_404_and_a_wrong_method_405_in_our_shape,
    |app: TestApp| async move {
        for path in [
            "/api/v1/nowhere",
            "/nowhere",
            "/api/v2/health",
            "/api/v1/tasks/x/y/z",
        ] {
            let response = send(app.request(Method::GET, path, None)).await;
            assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(response.body, json!({"detail": "Not Found"}), "{path}");
        }
        for (method, path) in [
            (Method::DELETE, "/api/v1/auth/login"),
            (Method::PATCH, "/api/v1/health"),
            (Method::POST, "/api/v1/auth/me"),
        ] {
            let response = send(app.request(method.clone(), path, None)).await;
            assert_eq!(
                response.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                response.body,
                json!({"detail": "Method Not Allowed"}),
                "{method} {path}"
            );
            assert!(
                response.header("allow").is_some(),
                "{method} {path}: a 405 says which methods are allowed"
            );
        }
    }
);

/// A registration padded with spaces (insignificant JSON whitespace) to exactly `len` bytes.
fn padded_registration(len: usize) -> String {
    let body =
        json!({"username": "big", "email": "big@example.com", "password": "Weak"}).to_string();
    let inner = &body[1..];
    format!("{{{}{}", " ".repeat(len - body.len()), inner)
}

both_backends!(
    a_body_over_one_mebibyte_is_413_and_one_of_exactly_one_is_read,
    |app: TestApp| async move {
        const MIB: usize = 1024 * 1024;
        // Several times: the client is still sending when the answer is ready, and it must
        // get the 413, not a reset connection.
        for _ in 0..3 {
            let over = post_raw(&app, "/api/v1/auth/register", padded_registration(MIB + 1)).await;
            assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(over.body, json!({"detail": "Request body too large"}));
            assert_security_headers(&over, "413");
        }

        let exact = post_raw(&app, "/api/v1/auth/register", padded_registration(MIB)).await;
        assert_eq!(
            exact.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a 1 MiB body is read (and its weak password refused): {}",
            exact.body
        );
    }
);

both_backends!(
    a_chunked_body_over_one_mebibyte_without_a_length_is_413,
    |app: TestApp| async move {
        let addr = app.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("the service should accept a connection");
        let head = format!(
            "POST /api/v1/auth/register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let body = padded_registration(1024 * 1024 + 4096);
        let mut written = Ok(());
        for chunk in body.as_bytes().chunks(64 * 1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            written = stream.write_all(&framed).await;
            if written.is_err() {
                break;
            }
        }
        if written.is_ok() {
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "a streamed body over the limit is refused: {answer}"
        );
        assert!(
            answer.contains(r#"{"detail":"Request body too large"}"#),
            "{answer}"
        );
        // Uses the whole `app`, so the async block owns it and the service runs to the end.
        app.stop().await;
    }
);

// ----- rate limits -----

both_backends!(
    the_general_limit_counts_down_in_headers_then_answers_429_with_retry_after,
    |s| s.api.rate_limit_per_minute = 3,
    |app: TestApp| async move {
        for remaining in [2, 1, 0] {
            let response = send(app.request(Method::GET, "/api/v1/tasks", None)).await;
            assert_eq!(response.status, StatusCode::UNAUTHORIZED);
            assert_eq!(header_number(&response, "x-ratelimit-limit"), 3);
            assert_eq!(header_number(&response, "x-ratelimit-remaining"), remaining);
            let reset = header_number(&response, "x-ratelimit-reset");
            assert!(
                (1..=60).contains(&reset),
                "reset within the minute: {reset}"
            );
        }
        let refused = send(app.request(Method::GET, "/api/v1/tasks", None)).await;
        assert_detail_message(&refused, StatusCode::TOO_MANY_REQUESTS, "over the limit");
        assert_eq!(refused.body, json!({"detail": "Rate limit exceeded"}));
        let retry_after = header_number(&refused, "retry-after");
        assert!(
            (1..=20).contains(&retry_after),
            "one request frees every 60/3 s: {retry_after}"
        );
        assert_eq!(header_number(&refused, "x-ratelimit-limit"), 3);
        assert_eq!(header_number(&refused, "x-ratelimit-remaining"), 0);
        assert_security_headers(&refused, "429");
    }
);

both_backends!(
    authenticated_callers_are_limited_per_user,
    |s| s.api.rate_limit_per_minute = 3,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        for _ in 0..3 {
            assert_eq!(
                app.get("/api/v1/tasks", &alice.token).await.status,
                StatusCode::OK
            );
        }
        let refused = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.header("retry-after").is_some());
        let other_user = app.get("/api/v1/tasks", &bob.token).await;
        assert_eq!(
            other_user.status,
            StatusCode::OK,
            "bob, on the same IP, has his own bucket"
        );
        assert_eq!(header_number(&other_user, "x-ratelimit-remaining"), 2);
        let anonymous = send(app.request(Method::GET, "/api/v1/tasks", None)).await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "anonymous calls from the same IP count separately"
        );
    }
);

both_backends!(
    auth_endpoints_are_limited_per_ip_whoever_calls,
    |s| {
        s.api.auth_rate_limit_per_minute = 4;
        s.api.rate_limit_per_minute = 0;
    },
    |app: TestApp| async move {
        // Registering and logging in are the first 2 of 4.
        let alice = app.user("alice").await;
        let first = app.get("/api/v1/auth/me", &alice.token).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(header_number(&first, "x-ratelimit-limit"), 4);
        assert_eq!(header_number(&first, "x-ratelimit-remaining"), 1);
        let wrong = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "alice", "password": "Wrong-passw0rd"})),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let refused_login = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "alice", "password": PASSWORD})),
            )
            .await;
        assert_eq!(refused_login.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(header_number(&refused_login, "retry-after") >= 1);
        let refused_me = app.get("/api/v1/auth/me", &alice.token).await;
        assert_eq!(
            refused_me.status,
            StatusCode::TOO_MANY_REQUESTS,
            "a token does not buy a separate auth bucket"
        );
        let tasks = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(
            tasks.status,
            StatusCode::OK,
            "the general class is separate"
        );
        assert!(
            tasks.header("x-ratelimit-limit").is_none(),
            "a limit of 0 is off"
        );
    }
);

both_backends!(
    a_forged_x_forwarded_for_does_not_buy_a_fresh_bucket,
    |s| s.api.auth_rate_limit_per_minute = 2,
    |app: TestApp| async move {
        let mut statuses = Vec::new();
        for forged in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
            let response = send(
                app.request(Method::POST, "/api/v1/auth/login", None)
                    .header("x-forwarded-for", forged)
                    .json(&json!({"username": "x", "password": "y"})),
            )
            .await;
            statuses.push(response.status);
        }
        assert_eq!(
            statuses,
            [
                StatusCode::UNAUTHORIZED,
                StatusCode::UNAUTHORIZED,
                StatusCode::TOO_MANY_REQUESTS
            ],
            "without trust_forwarded_for the socket peer is the client"
        );
    }
);

both_backends!(
    behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket,
    |s| {
        s.api.auth_rate_limit_per_minute = 1;
        s.api.trust_forwarded_for = sparc_api::middleware::TrustedProxies::Peer;
    },
    |app: TestApp| async move {
        let login = |forwarded: &'static str| {
            send(
                app.request(Method::POST, "/api/v1/auth/login", None)
                    .header("x-forwarded-for", forwarded)
                    .json(&json!({"username": "x", "password": "y"})),
            )
        };
        assert_eq!(login("198.51.100.1").await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            login("198.51.100.1").await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(login("198.51.100.2").await.status, StatusCode::UNAUTHORIZED);
    }
);

both_backends!(
    behind_trusted_proxy_networks_a_client_cannot_pick_its_bucket_with_a_forged_entry,
    |s| {
        s.api.auth_rate_limit_per_minute = 1;
        s.api.trust_forwarded_for =
            sparc_api::middleware::TrustedProxies::networks(["127.0.0.0/8", "10.0.0.0/8"])
                .expect("networks");
    },
    |app: TestApp| async move {
        // The test client is the proxy at 127.0.0.1; 10.1.1.1 a second proxy; the entry each
        // proxy appended for 198.51.100.1 is the client, whatever it wrote on the left.
        let login = |forwarded: &'static str| {
            send(
                app.request(Method::POST, "/api/v1/auth/login", None)
                    .header("x-forwarded-for", forwarded)
                    .json(&json!({"username": "x", "password": "y"})),
            )
        };
        assert_eq!(
            login("203.0.113.1, 198.51.100.1, 10.1.1.1").await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            login("203.0.113.99, 198.51.100.1, 10.1.1.1").await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "a forged entry on the left does not make a new client"
        );
        assert_eq!(
            login("198.51.100.2, 10.1.1.1").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
);

both_backends!(
    probes_are_never_rate_limited,
    |s| s.api.rate_limit_per_minute = 1,
    |app: TestApp| async move {
        for _ in 0..5 {
            for path in ["/api/v1/health", "/api/v1/liveness", "/api/v1/readiness"] {
                let response = send(app.request(Method::GET, path, None)).await;
                assert_eq!(response.status, StatusCode::OK, "{path}");
            }
        }
    }
);

// ----- compression -----

both_backends!(
    large_answers_are_gzipped_when_the_client_accepts_it,
    |app: TestApp| async move {
        let response = app
            .request(Method::GET, "/api/openapi.json", None)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("the service should answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some("gzip")
        );
        assert!(response.headers().contains_key("x-request-id"));
        let bytes = response.bytes().await.expect("a body");
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip stream");

        let plain = app
            .request(Method::GET, "/api/openapi.json", None)
            .send()
            .await
            .expect("the service should answer");
        assert!(
            !plain.headers().contains_key("content-encoding"),
            "no gzip unless accepted"
        );
        let text = plain.bytes().await.expect("a body");
        assert!(text.len() > 1024);
        assert!(serde_json::from_slice::<Value>(&text).is_ok());
    }
);

/// `GET path` as `token`, accepting gzip: the `Content-Encoding` and the body, unpacked.
async fn get_gzipped(app: &TestApp, path: &str, token: &str) -> (Option<String>, Value) {
    let response = app
        .request(Method::GET, path, Some(token))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("the service should answer");
    assert_eq!(response.status(), StatusCode::OK);
    let encoding = response
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bytes = response.bytes().await.expect("a body");
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut json)
        .expect("a gzip stream");
    (
        encoding,
        serde_json::from_slice(&json).expect("JSON inside"),
    )
}

both_backends!(
    a_list_kept_for_gzip_is_sent_compressed_and_is_fresh_after_a_write,
    |app: TestApp| async move {
        let user = app.user("gzipped").await;
        let create = |skill: String| {
            let (app, token) = (&app, user.token.clone());
            async move {
                let body = json!({"skill_name": skill, "schedule_cron": "0 9 * * *"});
                let created = app.post("/api/v1/tasks", &token, body).await;
                assert_eq!(created.status, StatusCode::CREATED);
            }
        };
        for i in 0..12 {
            create(format!("compressed-{i}")).await;
        }
        let path = "/api/v1/tasks?limit=50";
        let plain = app.get(path, &user.token).await;
        assert_eq!(
            plain.header("content-encoding"),
            None,
            "gzip only when accepted"
        );
        for _ in 0..2 {
            // Read (and kept), then answered from what was kept: the same answer both times.
            let (encoding, body) = get_gzipped(&app, path, &user.token).await;
            assert_eq!(encoding.as_deref(), Some("gzip"));
            assert_eq!(body, plain.body);
        }

        create("after".into()).await;
        let (_, body) = get_gzipped(&app, path, &user.token).await;
        assert_eq!(body["total"], 13, "a write moves the kept answer on");
        assert_eq!(body["tasks"].as_array().map(Vec::len), Some(13));
    }
);

both_backends!(
    small_answers_are_not_compressed,
    |app: TestApp| async move {
        let response = app
            .request(Method::GET, "/api/v1/liveness", None)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("the service should answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("content-encoding"));
        let body: Value = response.json().await.expect("plain JSON");
        assert_eq!(body["alive"], true);
    }
);

// ----- browsers on other origins -----

const DASHBOARD: &str = "http://dash.example.test:3000";
const ELSEWHERE: &str = "https://elsewhere.example.test";

fn listing_the_dashboard(settings: &mut sparc::config::Settings) {
    settings.api.cors_origins =
        sparc_api::middleware::CorsOrigins::parse([DASHBOARD]).expect("a valid origin");
}

#[track_caller]
fn assert_no_cors_headers(response: &Response, what: &str) {
    let cors: Vec<_> = response
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{what}: no CORS headers, got {cors:?}");
}

/// A WebSocket upgrade sent with `origin` (if any): the HTTP status it got (101 when switched).
async fn upgrade_from(app: &TestApp, token: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = app
        .ws_url(&format!("token={token}"))
        .into_client_request()
        .expect("a valid URL");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("a valid header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("the upgrade failed otherwise: {other}"),
    }
}

both_backends!(
    a_listed_origin_gets_preflights_and_cors_headers_on_every_answer,
    listing_the_dashboard,
    |app: TestApp| async move {
        let user = app.user("browser").await;
        let preflight = send(
            app.request(Method::OPTIONS, "/api/v1/tasks/some-id", None)
                .header("origin", DASHBOARD)
                .header("access-control-request-method", "PATCH")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type, if-match, idempotency-key, x-request-id",
                ),
        )
        .await;
        assert!(preflight.status.is_success(), "{}", preflight.status);
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some(DASHBOARD)
        );
        let methods = preflight
            .header("access-control-allow-methods")
            .unwrap_or_default();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(methods.contains(method), "{method} in {methods:?}");
        }
        let headers = preflight
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for header in [
            "authorization",
            "content-type",
            "if-match",
            "idempotency-key",
            "x-request-id",
        ] {
            assert!(headers.contains(header), "{header} in {headers:?}");
        }
        assert_eq!(preflight.header("access-control-allow-credentials"), None);

        let listed = send(
            app.request(Method::GET, "/api/v1/tasks", Some(&user.token))
                .header("origin", DASHBOARD),
        )
        .await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(
            listed.header("access-control-allow-origin"),
            Some(DASHBOARD)
        );
        let exposed = listed
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for header in [
            "etag",
            "x-request-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
        ] {
            assert!(exposed.contains(header), "{header} in {exposed:?}");
        }
        let refused = send(
            app.request(Method::GET, "/api/v1/tasks", None)
                .header("origin", DASHBOARD),
        )
        .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.header("access-control-allow-origin"),
            Some(DASHBOARD),
            "the page may read an error too"
        );

        assert_eq!(upgrade_from(&app, &user.token, Some(DASHBOARD)).await, 101);
        assert_eq!(
            upgrade_from(&app, &user.token, None).await,
            101,
            "not a browser"
        );
    }
);

both_backends!(
    another_origin_gets_no_cors_headers_and_no_websocket,
    listing_the_dashboard,
    |app: TestApp| async move {
        let user = app.user("stranger").await;
        let preflight = send(
            app.request(Method::OPTIONS, "/api/v1/tasks", None)
                .header("origin", ELSEWHERE)
                .header("access-control-request-method", "POST"),
        )
        .await;
        assert_no_cors_headers(&preflight, "a preflight from another origin");
        let listed = send(
            app.request(Method::GET, "/api/v1/tasks", Some(&user.token))
                .header("origin", ELSEWHERE),
        )
        .await;
        assert_eq!(
            listed.status,
            StatusCode::OK,
            "CORS is the browser's to enforce"
        );
        assert_no_cors_headers(&listed, "an answer to another origin");
        assert_eq!(upgrade_from(&app, &user.token, Some(ELSEWHERE)).await, 403);
    }
);

both_backends!(
    without_origins_listed_no_answer_has_cors_headers,
    |app: TestApp| async move {
        let user = app.user("sameorigin").await;
        let listed = send(
            app.request(Method::GET, "/api/v1/tasks", Some(&user.token))
                .header("origin", DASHBOARD),
        )
        .await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_no_cors_headers(&listed, "no origins listed");
        assert_eq!(upgrade_from(&app, &user.token, Some(DASHBOARD)).await, 101);
    }
);

both_backends!(
    patch_updates_wherever_put_does_with_the_same_body_and_answers,
    |app: TestApp| async move {
        let admin = app.user_with_role("patcher", Role::Admin).await;
        let task = app
            .post(
                "/api/v1/tasks",
                &admin.token,
                json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
            )
            .await;
        let project = app
            .post("/api/v1/projects", &admin.token, json!({"name": "Patched"}))
            .await;
        let agent = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "patchy", "type": "coder"}),
            )
            .await;
        let other = app.user("patched").await;
        let changes = [
            (
                format!("/api/v1/tasks/{}", crate::support::id_of(&task.body)),
                json!({"schedule_cron": "*/7 * * * *"}),
                "schedule_cron",
                json!("*/7 * * * *"),
            ),
            (
                format!("/api/v1/projects/{}", crate::support::id_of(&project.body)),
                json!({"description": "via PATCH"}),
                "description",
                json!("via PATCH"),
            ),
            (
                format!("/api/v1/agents/{}", crate::support::id_of(&agent.body)),
                json!({"capabilities": ["rust"]}),
                "capabilities",
                json!(["rust"]),
            ),
            (
                format!("/api/v1/admin/users/{}", other.id),
                json!({"is_active": false}),
                "is_active",
                json!(false),
            ),
            (
                "/api/v1/auth/me".to_owned(),
                json!({"bio": "patched"}),
                "bio",
                json!("patched"),
            ),
        ];
        for (path, body, field, value) in changes {
            let patched = app
                .call(Method::PATCH, &path, Some(&admin.token), Some(body.clone()))
                .await;
            assert_eq!(
                patched.status,
                StatusCode::OK,
                "PATCH {path}: {}",
                patched.body
            );
            assert_eq!(patched.body[field], value, "PATCH {path}: {}", patched.body);
            if !path.starts_with("/api/v1/admin/users/") {
                let read = app.get(&path, &admin.token).await;
                assert_eq!(
                    read.body[field], value,
                    "GET {path} after PATCH: {}",
                    read.body
                );
            }
        }

        let path = format!("/api/v1/tasks/{}", crate::support::id_of(&task.body));
        let stale = send(
            app.request(Method::PATCH, &path, Some(&admin.token))
                .header("if-match", "\"1\"")
                .json(&json!({"schedule_cron": "*/9 * * * *"})),
        )
        .await;
        assert_eq!(
            stale.status,
            StatusCode::PRECONDITION_FAILED,
            "If-Match holds for PATCH"
        );
        let invalid = app
            .call(
                Method::PATCH,
                &path,
                Some(&admin.token),
                Some(json!({"schedule_cron": "never"})),
            )
            .await;
        assert_eq!(
            invalid.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            invalid.body
        );
    }
);

// ----- ids the client chooses -----

both_backends!(
    a_create_uses_the_id_the_client_chose_and_a_taken_one_is_409,
    |app: TestApp| async move {
        let admin = app.user_with_role("chooser", Role::Admin).await;
        let creates = [
            (
                "/api/v1/tasks",
                json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
            ),
            ("/api/v1/projects", json!({"name": "Chosen"})),
            ("/api/v1/agents", json!({"name": "chosen", "type": "coder"})),
        ];
        for (path, body) in creates {
            let id = Uuid::new_v4().to_string();
            let mut chosen = body.clone();
            chosen["id"] = json!(id);
            let created = app.post(path, &admin.token, chosen.clone()).await;
            assert_eq!(
                created.status,
                StatusCode::CREATED,
                "{path}: {}",
                created.body
            );
            assert_eq!(created.body["id"], id.as_str(), "{path}");
            let read = app.get(&format!("{path}/{id}"), &admin.token).await;
            assert_eq!(read.status, StatusCode::OK, "{path}/{id}");

            // The same id again (for agents under another name, which is free).
            if path == "/api/v1/agents" {
                chosen["name"] = json!("chosen-again");
            }
            let again = app.post(path, &admin.token, chosen).await;
            assert_eq!(again.status, StatusCode::CONFLICT, "{path}: {}", again.body);
            assert!(again.body["detail"].is_string(), "{}", again.body);

            let mut malformed = body;
            malformed["id"] = json!("not-a-uuid");
            let refused = app.post(path, &admin.token, malformed).await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        }
        let freed = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "chosen-again", "type": "coder"}),
            )
            .await;
        assert_eq!(
            freed.status,
            StatusCode::CREATED,
            "a refused registration leaves its name free: {}",
            freed.body
        );

        // An agent's own id and name again (a restarted worker registering): 409, and the name
        // stays the agent's.
        let kept = json!({"id": Uuid::new_v4().to_string(), "name": "kept", "type": "coder"});
        let first = app.post("/api/v1/agents", &admin.token, kept.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
        let again = app.post("/api/v1/agents", &admin.token, kept).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
        let other = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "kept", "type": "coder"}),
            )
            .await;
        assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    }
);
