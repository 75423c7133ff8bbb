//! Concurrency, black-box on both backends: concurrent writes never lose an update, `If-Match`
//! guards writes with the version that `ETag` reports, and `Idempotency-Key` makes a repeated
//! create answer the first answer without recording a second event.

use crate::support::{Response, TestApp, TestUser, both_backends, id_of, send};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;
use sparc_store::on_backend;

async fn new_task(app: &TestApp, user: &TestUser) -> String {
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

/// How many events of `event_type` the log holds.
async fn events_of_type(app: &TestApp, event_type: &str) -> i64 {
    on_backend!(Database &app.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .expect("a count"))
}

async fn with_header(
    app: &TestApp,
    user: &TestUser,
    method: Method,
    path: &str,
    header: (&str, &str),
    body: Option<Value>,
) -> Response {
    let mut builder = app
        .request(method, path, Some(&user.token))
        .header(header.0, header.1);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    send(builder).await
}

async fn history_len(app: &TestApp, user: &TestUser, path: &str) -> usize {
    let history = app.get(&format!("{path}/history"), &user.token).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    history.body["events"].as_array().expect("events").len()
}

// ----- concurrent writes -----

both_backends!(
    fifty_concurrent_updates_without_if_match_lose_no_update,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task = new_task(&app, &alice).await;
        let path = format!("/api/v1/tasks/{task}");
        let answers = join_all((0..50).map(|n| {
            let path = path.clone();
            let app = &app;
            let token = alice.token.clone();
            async move {
                let answer = app
                    .put(&path, &token, json!({"params": {"writer": n}}))
                    .await;
                (n, answer)
            }
        }))
        .await;
        let mut won = Vec::new();
        for (n, answer) in &answers {
            match answer.status {
                StatusCode::OK => {
                    assert_eq!(
                        answer.body["params"],
                        json!({"writer": n}),
                        "{}",
                        answer.body
                    );
                    assert_eq!(
                        answer.header("etag"),
                        Some(format!("\"{}\"", answer.body["version"]).as_str())
                    );
                    won.push((answer.body["version"].as_i64().expect("a version"), *n));
                }
                StatusCode::CONFLICT => {}
                other => panic!("writer {n} got {other}: {}", answer.body),
            }
        }
        assert!(!won.is_empty(), "some writes succeed");
        let mut versions: Vec<i64> = won.iter().map(|(v, _)| *v).collect();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(
            versions.len(),
            won.len(),
            "no two writes claim the same version: {won:?}"
        );

        let read = app.get(&path, &alice.token).await;
        assert_eq!(
            read.body["version"],
            1 + won.len(),
            "one version per successful write ({} of 50)",
            won.len()
        );
        assert_eq!(
            read.header("etag"),
            Some(format!("\"{}\"", 1 + won.len()).as_str())
        );
        let (_, last_writer) = won.iter().max().expect("a winner");
        assert_eq!(
            read.body["params"],
            json!({"writer": last_writer}),
            "the final state is the last successful write"
        );
        let history = app.get(&format!("{path}/history"), &alice.token).await;
        let mut recorded: Vec<i64> = history.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["event_type"] == "TaskUpdated")
            .map(|e| {
                e["payload"]["TaskUpdated"]["changes"]["params"]["writer"]
                    .as_i64()
                    .expect("a writer")
            })
            .collect();
        recorded.sort_unstable();
        let mut winners: Vec<i64> = won.iter().map(|(_, n)| *n).collect();
        winners.sort_unstable();
        assert_eq!(
            recorded, winners,
            "exactly the successful writes are in the log"
        );
    }
);

both_backends!(
    concurrent_updates_with_the_same_if_match_let_exactly_one_win,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task = new_task(&app, &alice).await;
        let path = format!("/api/v1/tasks/{task}");
        let answers = join_all((0..10).map(|n| {
            with_header(
                &app,
                &alice,
                Method::PUT,
                &path,
                ("if-match", "\"1\""),
                Some(json!({"params": {"writer": n}})),
            )
        }))
        .await;
        let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == StatusCode::OK).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
                .count(),
            9,
            "{statuses:?}"
        );
        let read = app.get(&path, &alice.token).await;
        assert_eq!(read.body["version"], 2);
        assert_eq!(history_len(&app, &alice, &path).await, 2);
    }
);

// ----- If-Match and ETag -----

both_backends!(
    a_stale_if_match_is_412_and_records_nothing,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let task = new_task(&app, &alice).await;
        let task_path = format!("/api/v1/tasks/{task}");
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "P"}))
            .await;
        let project_path = format!("/api/v1/projects/{}", id_of(&project.body));
        let agent = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "a", "type": "coder"}),
            )
            .await;
        let agent_path = format!("/api/v1/agents/{}", id_of(&agent.body));
        // Move every resource to version 2, so "1" is stale.
        for (user, path, body) in [
            (&alice, &task_path, json!({"params": {"v": 2}})),
            (&alice, &project_path, json!({"name": "Q"})),
            (&admin, &agent_path, json!({"status": "active"})),
        ] {
            let updated = app.put(path, &user.token, body).await;
            assert_eq!(updated.status, StatusCode::OK, "{path}: {}", updated.body);
            assert_eq!(updated.header("etag"), Some("\"2\""), "{path}");
        }
        for (user, method, path, body) in [
            (
                &alice,
                Method::PUT,
                &task_path,
                Some(json!({"params": {"v": 3}})),
            ),
            (&alice, Method::DELETE, &task_path, None),
            (
                &alice,
                Method::PUT,
                &project_path,
                Some(json!({"name": "R"})),
            ),
            (&alice, Method::DELETE, &project_path, None),
            (
                &admin,
                Method::PUT,
                &agent_path,
                Some(json!({"status": "busy"})),
            ),
            (&admin, Method::DELETE, &agent_path, None),
        ] {
            for stale in ["\"1\"", "\"3\"", "1"] {
                let refused = with_header(
                    &app,
                    user,
                    method.clone(),
                    path,
                    ("if-match", stale),
                    body.clone(),
                )
                .await;
                assert_eq!(
                    refused.status,
                    StatusCode::PRECONDITION_FAILED,
                    "{method} {path} If-Match {stale}: {}",
                    refused.body
                );
            }
            let malformed = with_header(
                &app,
                user,
                method.clone(),
                path,
                ("if-match", "\"two\""),
                body.clone(),
            )
            .await;
            assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{method} {path}");
        }
        for (user, path) in [
            (&alice, &task_path),
            (&alice, &project_path),
            (&admin, &agent_path),
        ] {
            let read = app.get(path, &user.token).await;
            assert_eq!(read.status, StatusCode::OK, "{path} still exists");
            assert_eq!(read.body["version"], 2, "{path}: nothing was recorded");
            assert_eq!(read.header("etag"), Some("\"2\""), "{path}");
        }
        assert_eq!(history_len(&app, &alice, &task_path).await, 2);
        assert_eq!(history_len(&app, &alice, &project_path).await, 2);

        for (user, method, path, body, expected) in [
            (
                &alice,
                Method::PUT,
                &task_path,
                Some(json!({"params": {"v": 3}})),
                StatusCode::OK,
            ),
            (
                &alice,
                Method::PUT,
                &project_path,
                Some(json!({"name": "R"})),
                StatusCode::OK,
            ),
            (
                &admin,
                Method::PUT,
                &agent_path,
                Some(json!({"status": "busy"})),
                StatusCode::OK,
            ),
        ] {
            let accepted = with_header(
                &app,
                user,
                method.clone(),
                path,
                ("if-match", "\"2\""),
                body,
            )
            .await;
            assert_eq!(
                accepted.status, expected,
                "{method} {path}: {}",
                accepted.body
            );
            assert_eq!(accepted.header("etag"), Some("\"3\""));
            assert_eq!(accepted.body["version"], 3);
        }
        for (user, path, expected) in [
            (&alice, &task_path, StatusCode::OK),
            (&alice, &project_path, StatusCode::NO_CONTENT),
            (&admin, &agent_path, StatusCode::NO_CONTENT),
        ] {
            let deleted = with_header(
                &app,
                user,
                Method::DELETE,
                path,
                ("if-match", "\"3\""),
                None,
            )
            .await;
            assert_eq!(deleted.status, expected, "DELETE {path}: {}", deleted.body);
        }
        let any = with_header(
            &app,
            &alice,
            Method::PUT,
            &format!("/api/v1/tasks/{}", new_task(&app, &alice).await),
            ("if-match", "*"),
            Some(json!({"params": {"any": true}})),
        )
        .await;
        assert_eq!(
            any.status,
            StatusCode::OK,
            "If-Match: * matches any version"
        );
    }
);

both_backends!(
    the_etag_is_the_quoted_version_on_every_read_and_write,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let created = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        assert_eq!(created.header("etag"), Some("\"1\""));
        let task_path = format!("/api/v1/tasks/{}", id_of(&created.body));
        for step in 2..=4 {
            let updated = app
                .put(&task_path, &alice.token, json!({"params": {"step": step}}))
                .await;
            let etag = format!("\"{step}\"");
            assert_eq!(updated.header("etag"), Some(etag.as_str()));
            assert_eq!(updated.body["version"], step);
            let read = app.get(&task_path, &alice.token).await;
            assert_eq!(read.header("etag"), Some(etag.as_str()));
            assert_eq!(read.body["version"], step);
        }
        let as_of = app
            .get(&format!("{task_path}?version=2"), &alice.token)
            .await;
        assert_eq!(as_of.header("etag"), Some("\"2\""));
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "P"}))
            .await;
        assert_eq!(project.header("etag"), Some("\"1\""));
        let project_read = app
            .get(
                &format!("/api/v1/projects/{}", id_of(&project.body)),
                &alice.token,
            )
            .await;
        assert_eq!(project_read.header("etag"), Some("\"1\""));
        let agent = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "a", "type": "coder"}),
            )
            .await;
        assert_eq!(agent.header("etag"), Some("\"1\""));
        let agent_read = app
            .get(
                &format!("/api/v1/agents/{}", id_of(&agent.body)),
                &alice.token,
            )
            .await;
        assert_eq!(agent_read.header("etag"), Some("\"1\""));
        assert_eq!(agent_read.body["version"], 1);
    }
);

// ----- Idempotency-Key -----

async fn post_with_key(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    key: &str,
    body: Value,
) -> Response {
    with_header(
        app,
        user,
        Method::POST,
        path,
        ("idempotency-key", key),
        Some(body),
    )
    .await
}

both_backends!(
    the_same_idempotency_key_twice_creates_one_resource_and_answers_the_same,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        for (user, path, body, event_type, list) in [
            (
                &alice,
                "/api/v1/tasks",
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
                "TaskScheduled",
                "tasks",
            ),
            (
                &alice,
                "/api/v1/projects",
                json!({"name": "P"}),
                "ProjectCreated",
                "projects",
            ),
            (
                &admin,
                "/api/v1/agents",
                json!({"name": "a", "type": "coder"}),
                "AgentRegistered",
                "agents",
            ),
        ] {
            let first = post_with_key(&app, user, path, "key-1", body.clone()).await;
            assert_eq!(first.status, StatusCode::CREATED, "{path}: {}", first.body);
            let second = post_with_key(&app, user, path, "key-1", body.clone()).await;
            assert_eq!(second.status, first.status, "{path}");
            assert_eq!(
                second.body, first.body,
                "{path}: the first answer, replayed"
            );
            assert_eq!(second.header("etag"), first.header("etag"), "{path}");
            assert_eq!(
                events_of_type(&app, event_type).await,
                1,
                "{path}: one {event_type}"
            );
            let listed = app.get(path, &user.token).await;
            assert_eq!(listed.body["total"], 1, "{path}");
            assert_eq!(listed.body[list][0]["id"], first.body["id"]);
            // Another key is another resource.
            let mut other = body.clone();
            if other.get("name").is_some() {
                other["name"] = json!("other");
            }
            let third = post_with_key(&app, user, path, "key-2", other).await;
            assert_eq!(third.status, StatusCode::CREATED, "{path}: {}", third.body);
            assert_ne!(third.body["id"], first.body["id"]);
            assert_eq!(events_of_type(&app, event_type).await, 2, "{path}");
        }
    }
);

both_backends!(
    another_user_with_the_same_idempotency_key_gets_their_own_resource,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let service = app.user_with_role("bot", Role::Agent).await;
        for (first_user, second_user, path, first_body, second_body) in [
            (
                &alice,
                &bob,
                "/api/v1/tasks",
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            ),
            (
                &alice,
                &bob,
                "/api/v1/projects",
                json!({"name": "P"}),
                json!({"name": "P"}),
            ),
            (
                &admin,
                &service,
                "/api/v1/agents",
                json!({"name": "a", "type": "coder"}),
                json!({"name": "b", "type": "coder"}),
            ),
        ] {
            let first = post_with_key(&app, first_user, path, "shared-key", first_body).await;
            assert_eq!(first.status, StatusCode::CREATED, "{path}: {}", first.body);
            let second = post_with_key(&app, second_user, path, "shared-key", second_body).await;
            assert_eq!(
                second.status,
                StatusCode::CREATED,
                "{path}: {}",
                second.body
            );
            assert_ne!(second.body["id"], first.body["id"], "{path}");
            if second.body.get("user_id").is_some() {
                assert_eq!(second.body["user_id"], second_user.id.as_str(), "{path}");
            }
        }
        let bobs = app.get("/api/v1/tasks", &bob.token).await;
        assert_eq!(bobs.body["total"], 1);
        assert_eq!(events_of_type(&app, "TaskScheduled").await, 2);
        assert_eq!(events_of_type(&app, "AgentRegistered").await, 2);
    }
);

both_backends!(
    concurrent_requests_with_one_idempotency_key_create_one_task,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let answers = join_all((0..10).map(|_| {
            post_with_key(
                &app,
                &alice,
                "/api/v1/tasks",
                "race-key",
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
        }))
        .await;
        let created: Vec<&Response> = answers
            .iter()
            .filter(|a| a.status == StatusCode::CREATED)
            .collect();
        for answer in &answers {
            assert!(
                answer.status == StatusCode::CREATED || answer.status == StatusCode::CONFLICT,
                "{}: {}",
                answer.status,
                answer.body
            );
        }
        assert!(!created.is_empty());
        for answer in &created {
            assert_eq!(answer.body, created[0].body, "every 201 is the same answer");
        }
        assert_eq!(events_of_type(&app, "TaskScheduled").await, 1);
        let list = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(list.body["total"], 1);
    }
);

both_backends!(
    a_refused_create_does_not_use_up_its_idempotency_key,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let taken = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "taken", "type": "coder"}),
            )
            .await;
        assert_eq!(taken.status, StatusCode::CREATED);
        let refused = post_with_key(
            &app,
            &admin,
            "/api/v1/agents",
            "retry-key",
            json!({"name": "taken", "type": "coder"}),
        )
        .await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
        let retried = post_with_key(
            &app,
            &admin,
            "/api/v1/agents",
            "retry-key",
            json!({"name": "free", "type": "coder"}),
        )
        .await;
        assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
        assert_eq!(retried.body["name"], "free");
        let invalid = post_with_key(
            &app,
            &admin,
            "/api/v1/tasks",
            "other-key",
            json!({"skill_name": "s", "schedule_cron": "0 25 * * *"}),
        )
        .await;
        assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
        let fixed = post_with_key(
            &app,
            &admin,
            "/api/v1/tasks",
            "other-key",
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        assert_eq!(fixed.status, StatusCode::CREATED, "{}", fixed.body);
        let too_long = post_with_key(
            &app,
            &admin,
            "/api/v1/projects",
            &"k".repeat(256),
            json!({"name": "P"}),
        )
        .await;
        assert_eq!(
            too_long.status,
            StatusCode::BAD_REQUEST,
            "{}",
            too_long.body
        );
        assert_eq!(events_of_type(&app, "ProjectCreated").await, 0);
    }
);

both_backends!(
    one_idempotency_key_sent_to_two_endpoints_creates_one_of_each,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task = post_with_key(
            &app,
            &alice,
            "/api/v1/tasks",
            "same-key",
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        assert_eq!(task.status, StatusCode::CREATED);
        let project = post_with_key(
            &app,
            &alice,
            "/api/v1/projects",
            "same-key",
            json!({"name": "P"}),
        )
        .await;
        assert_eq!(project.status, StatusCode::CREATED, "{}", project.body);
        assert_eq!(
            project.body["name"], "P",
            "a project, not the task's answer: {}",
            project.body
        );
        assert_eq!(events_of_type(&app, "ProjectCreated").await, 1);
        assert_eq!(events_of_type(&app, "TaskScheduled").await, 1);
    }
);
