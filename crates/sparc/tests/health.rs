//! Health and operations endpoints (no auth), black-box on both backends: the shapes of
//! `/health`, `/health/detailed`, `/readiness` and `/liveness`.

use crate::support::{Response, TestApp, both_backends};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn anonymous_get(app: &TestApp, path: &str) -> Response {
    app.call(Method::GET, path, None, None).await
}

#[track_caller]
fn assert_recent_utc_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"));
    assert!(text.ends_with('Z'), "RFC 3339 in UTC with Z: {text}");
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("RFC 3339: {text}: {e}"))
        .with_timezone(&chrono::Utc);
    let skew = (chrono::Utc::now() - at).num_seconds().abs();
    assert!(skew < 60, "the timestamp is now, not {text}");
}

#[track_caller]
fn assert_one_of(value: &Value, allowed: &[&str], field: &str) {
    assert!(
        value.as_str().is_some_and(|v| allowed.contains(&v)),
        "{field} is one of {allowed:?}, not {value}"
    );
}

/// The fields `/health` and `/health/detailed` share.
#[track_caller]
fn assert_health_fields(body: &Value) {
    assert_eq!(body["status"], "healthy", "{body}");
    assert_recent_utc_timestamp(&body["timestamp"]);
    assert_eq!(body["database"], "connected", "{body}");
    assert_one_of(
        &body["bus"],
        &["connected", "disconnected", "embedded"],
        "bus",
    );
    assert_eq!(body["bus"], "embedded", "no NATS is configured in tests");
    assert_one_of(
        &body["memory_mcp"],
        &["available", "degraded", "unavailable", "disabled"],
        "memory_mcp",
    );
    assert!(
        body["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{body}"
    );
}

both_backends!(
    health_reports_a_connected_database_without_auth,
    |app: TestApp| async move {
        let response = anonymous_get(&app, "/api/v1/health").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_health_fields(&response.body);
        let keys: Vec<&str> = response
            .body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in &keys {
            assert!(
                [
                    "status",
                    "timestamp",
                    "database",
                    "bus",
                    "memory_mcp",
                    "version"
                ]
                .contains(key),
                "unexpected field {key}"
            );
        }
    }
);

both_backends!(
    detailed_health_adds_uptime_environment_projections_and_websocket,
    |app: TestApp| async move {
        let response = anonymous_get(&app, "/api/v1/health/detailed").await;
        assert_eq!(response.status, StatusCode::OK);
        let body = &response.body;
        assert_health_fields(body);
        assert!(
            body["uptime_seconds"].as_i64().is_some_and(|s| s >= 0),
            "uptime_seconds is a whole number of seconds: {body}"
        );
        assert_eq!(body["environment"], "development", "{body}");
        assert!(
            body["websocket"]["connections"]
                .as_u64()
                .is_some_and(|c| c == 0),
            "{body}"
        );
        let user = app.user("watcher").await;
        let (_socket, _ack) = app.ws(&user.token, None).await;
        let with_socket = anonymous_get(&app, "/api/v1/health/detailed").await;
        assert_eq!(
            with_socket.body["websocket"]["connections"], 1,
            "an open WebSocket is counted: {}",
            with_socket.body
        );
        let projections = body["projections"].as_array().expect("a projections list");
        let names: Vec<&str> = projections
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for read_model in ["tasks", "projects", "agents", "users", "executions"] {
            assert!(
                names.contains(&read_model),
                "the {read_model} projection is listed: {names:?}"
            );
        }
        for projection in projections {
            assert!(projection["position"].is_i64(), "{projection}");
            assert!(
                projection["lag_events"].as_i64().is_some_and(|l| l >= 0),
                "{projection}"
            );
            assert!(projection["lag_seconds"].is_number(), "{projection}");
            assert_one_of(
                &projection["status"],
                &["live", "rebuilding", "stalled"],
                "status",
            );
        }
    }
);

both_backends!(
    readiness_is_200_ready_when_the_store_is_up_and_migrated,
    |app: TestApp| async move {
        let response = anonymous_get(&app, "/api/v1/readiness").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert_eq!(response.body["ready"], true);
        assert_recent_utc_timestamp(&response.body["timestamp"]);
    }
);

both_backends!(liveness_is_200_alive, |app: TestApp| async move {
    let response = anonymous_get(&app, "/api/v1/liveness").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body["alive"], true);
    assert_recent_utc_timestamp(&response.body["timestamp"]);
});

both_backends!(
    probes_answer_even_with_a_bad_bearer_token,
    |app: TestApp| async move {
        for path in [
            "/api/v1/health",
            "/api/v1/health/detailed",
            "/api/v1/readiness",
            "/api/v1/liveness",
        ] {
            let response = app.get(path, "not-a-token").await;
            assert_eq!(response.status, StatusCode::OK, "{path}");
        }
    }
);

both_backends!(
    metrics_count_commands_by_outcome_events_by_type_and_websocket_messages,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (mut ws, _ack) = app.ws(&alice.token, None).await;
        ws.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(ws.frame().await["type"], "pong");
        let created = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                serde_json::json!({"skill_name": "lint", "schedule_cron": "0 0 1 1 *"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let task_id = created.body["id"].as_str().expect("a task id").to_owned();
        let stale = app
            .request(
                Method::PUT,
                &format!("/api/v1/tasks/{task_id}"),
                Some(&alice.token),
            )
            .header("If-Match", "\"7\"")
            .json(&serde_json::json!({"params": {"depth": 1}}))
            .send()
            .await
            .expect("the service should answer");
        assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);

        let text = app
            .request(Method::GET, "/metrics", None)
            .send()
            .await
            .expect("the service should answer")
            .text()
            .await
            .expect("a text body");
        let sample = |series: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("a sample {series} in:\n{text}"))
        };
        assert!(text.contains("# TYPE sparc_commands_total counter"));
        assert_eq!(
            sample(
                r#"sparc_commands_total{aggregate="Task",command="Schedule",outcome="committed"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(r#"sparc_events_recorded_total{aggregate="Task",event_type="TaskScheduled"}"#),
            1.0
        );
        assert_eq!(
            sample(r#"sparc_commands_total{aggregate="Task",command="Update",outcome="conflict"}"#),
            1.0,
            "the stale If-Match"
        );
        assert!(
            sample(
                r#"sparc_commands_total{aggregate="User",command="Register",outcome="committed"}"#
            ) >= 1.0
        );
        assert!(
            sample(r#"sparc_websocket_messages_total{direction="received"}"#) >= 1.0,
            "the ping"
        );
        assert!(
            sample(r#"sparc_websocket_messages_total{direction="sent"}"#) >= 2.0,
            "the ack and the pong"
        );
        assert!(!text.contains(&task_id), "ids never become labels");
    }
);

both_backends!(
    metrics_are_prometheus_text_with_requests_by_route_and_projection_lag,
    |app: TestApp| async move {
        for _ in 0..2 {
            anonymous_get(&app, "/api/v1/liveness").await;
        }
        let task_id = uuid::Uuid::now_v7();
        let unauthorized = anonymous_get(&app, &format!("/api/v1/tasks/{task_id}")).await;
        assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);

        let response = app
            .request(Method::GET, "/metrics", None)
            .send()
            .await
            .expect("the service should answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/plain")),
            "the Prometheus text format"
        );
        let text = response.text().await.expect("a text body");
        let sample = |prefix: &str| -> f64 {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("a sample {prefix}… in:\n{text}"))
        };
        assert!(
            sample(
                r#"sparc_http_requests_total{method="GET",route="/api/v1/liveness",status="200"}"#
            ) >= 2.0
        );
        assert_eq!(
            sample(
                r#"sparc_http_requests_total{method="GET",route="/api/v1/tasks/{id}",status="401"}"#
            ),
            1.0,
            "requests are labelled by route template"
        );
        assert!(
            !text.contains(&task_id.to_string()),
            "ids never become labels"
        );
        assert!(
            sample(
                r#"sparc_http_request_duration_seconds_count{method="GET",route="/api/v1/liveness",status="200"}"#
            ) >= 2.0
        );
        assert!(text.contains("# TYPE sparc_http_request_duration_seconds histogram"));
        assert!(sample(r#"sparc_projection_lag_events{projection="tasks"}"#) >= 0.0);
        assert!(sample(r#"sparc_projection_position{projection="users"}"#) >= 0.0);
        assert_eq!(sample("sparc_websocket_connections"), 0.0);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "a numeric sample: {line}");
        }
    }
);
