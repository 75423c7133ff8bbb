//! Greedy clients are capped per user, each cap answered in the contract's shape: live login
//! sessions (the oldest ends), live tasks, projects and registered agents (409), a task schedule
//! firing more often than the minimum interval (422 at `schedule_cron`), and list filters of
//! bounded length (422 at the parameter). On both backends, each with a small cap of its own.

use crate::support::{Backend, Response, TestApp, TestUser, assert_422_at, both_backends, id_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;

/// Asserts a 409 whose `detail` names the quota.
#[track_caller]
fn assert_over_quota(response: &Response, what: &str) {
    assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.body);
    let detail = response.body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("a detail: {}", response.body));
    assert!(
        detail.contains("quota") && detail.contains(what),
        "the detail names the {what} quota: {detail}"
    );
}

#[track_caller]
fn assert_created(response: &Response) -> String {
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
    id_of(&response.body)
}

async fn create_task(app: &TestApp, user: &TestUser, skill: &str) -> Response {
    app.post(
        "/api/v1/tasks",
        &user.token,
        json!({"skill_name": skill, "schedule_cron": "0 9 * * *"}),
    )
    .await
}

async fn me(app: &TestApp, user: &TestUser) -> StatusCode {
    app.get("/api/v1/auth/me", &user.token).await.status
}

both_backends!(
    a_login_beyond_the_session_cap_ends_the_oldest_session,
    |settings| settings.api.max_sessions_per_user = 3,
    |app: TestApp| async move {
        let first = app.user("many-tabs").await;
        let second = app.login("many-tabs").await;
        let third = app.login("many-tabs").await;
        for session in [&first, &second, &third] {
            assert_eq!(me(&app, session).await, StatusCode::OK);
        }

        let fourth = app.login("many-tabs").await;
        assert_eq!(
            me(&app, &first).await,
            StatusCode::UNAUTHORIZED,
            "the oldest session ended, its access token with it"
        );
        let refreshed = app
            .call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": first.refresh_token})),
            )
            .await;
        assert_eq!(
            refreshed.status,
            StatusCode::UNAUTHORIZED,
            "and its refresh token"
        );
        for session in [&second, &third, &fourth] {
            assert_eq!(me(&app, session).await, StatusCode::OK);
        }
        let sessions = app.get("/api/v1/auth/sessions", &fourth.token).await;
        assert_eq!(
            sessions.body.as_array().map(Vec::len),
            Some(3),
            "{}",
            sessions.body
        );

        // The next login ends the next oldest; another user's sessions are not touched.
        let other = app.user("one-tab").await;
        app.login("many-tabs").await;
        assert_eq!(me(&app, &second).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me(&app, &third).await, StatusCode::OK);
        assert_eq!(me(&app, &other).await, StatusCode::OK);
    }
);

both_backends!(
    a_task_over_the_quota_is_refused_until_one_is_deleted,
    |settings| settings.api.max_tasks_per_user = 3,
    |app: TestApp| async move {
        let busy = app.user("busy").await;
        let keyed = app
            .request(Method::POST, "/api/v1/tasks", Some(&busy.token))
            .header("idempotency-key", "first-task")
            .json(&json!({"skill_name": "first", "schedule_cron": "0 9 * * *"}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(keyed.status(), StatusCode::CREATED);
        let mut tasks = Vec::new();
        for skill in ["second", "third"] {
            tasks.push(assert_created(&create_task(&app, &busy, skill).await));
        }

        assert_over_quota(&create_task(&app, &busy, "fourth").await, "Task");
        // A repeated request still gets its first answer back at the cap.
        let replayed = app
            .request(Method::POST, "/api/v1/tasks", Some(&busy.token))
            .header("idempotency-key", "first-task")
            .json(&json!({"skill_name": "first", "schedule_cron": "0 9 * * *"}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(replayed.status(), StatusCode::CREATED);
        // The quota is each user's own.
        let idle = app.user("idle").await;
        assert_created(&create_task(&app, &idle, "mine").await);

        let deleted = app
            .delete(&format!("/api/v1/tasks/{}", tasks[0]), &busy.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        assert_created(&create_task(&app, &busy, "fourth").await);
        assert_over_quota(&create_task(&app, &busy, "fifth").await, "Task");
        let listed = app.get("/api/v1/tasks", &busy.token).await;
        assert_eq!(listed.body["total"], 3, "{}", listed.body);
    }
);

both_backends!(
    a_project_over_the_quota_is_refused_until_one_is_deleted,
    |settings| settings.api.max_projects_per_user = 2,
    |app: TestApp| async move {
        let planner = app.user("planner").await;
        let create = |name: &'static str| {
            let (app, token) = (&app, planner.token.clone());
            async move {
                app.post("/api/v1/projects", &token, json!({"name": name}))
                    .await
            }
        };
        let first = assert_created(&create("one").await);
        assert_created(&create("two").await);
        assert_over_quota(&create("three").await, "Project");

        let deleted = app
            .delete(&format!("/api/v1/projects/{first}"), &planner.token)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
        assert_created(&create("three").await);
        assert_over_quota(&create("four").await, "Project");
    }
);

both_backends!(
    an_agent_over_the_quota_is_refused_and_its_name_stays_free,
    |settings| settings.api.max_agents_per_user = 2,
    |app: TestApp| async move {
        let operator = app.user_with_role("operator", Role::Agent).await;
        let register = |name: &'static str| {
            let (app, token) = (&app, operator.token.clone());
            async move {
                app.post(
                    "/api/v1/agents",
                    &token,
                    json!({"name": name, "type": "coder"}),
                )
                .await
            }
        };
        let first = assert_created(&register("first").await);
        assert_created(&register("second").await);
        assert_over_quota(&register("third").await, "Agent");

        // Another writer registers on their own quota, and may take the refused name: the
        // refusal claimed nothing.
        let admin = app.user_with_role("root", Role::Admin).await;
        assert_created(
            &app.post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "third", "type": "coder"}),
            )
            .await,
        );

        let deregistered = app
            .delete(&format!("/api/v1/agents/{first}"), &operator.token)
            .await;
        assert_eq!(
            deregistered.status,
            StatusCode::NO_CONTENT,
            "{}",
            deregistered.body
        );
        assert_created(&register("fourth").await);
        assert_over_quota(&register("fifth").await, "Agent");
    }
);

both_backends!(
    a_schedule_firing_more_often_than_the_minimum_interval_is_refused,
    |settings| settings.api.min_schedule_interval_seconds = 2 * 60 * 60,
    |app: TestApp| async move {
        let user = app.user("scheduler").await;
        let create = |cron: &'static str| {
            let (app, token) = (&app, user.token.clone());
            async move {
                app.post(
                    "/api/v1/tasks",
                    &token,
                    json!({"skill_name": "s", "schedule_cron": cron}),
                )
                .await
            }
        };
        for too_often in ["* * * * *", "0 * * * *", "0 9,10 * * *", "0 0,23 * * *"] {
            let refused = create(too_often).await;
            assert_422_at(&refused, json!(["body", "schedule_cron"]));
        }
        let task = assert_created(&create("0 9,11 * * *").await);
        assert_created(&create("0 0,22 * * MON").await);

        let path = format!("/api/v1/tasks/{task}");
        let refused = app
            .put(&path, &user.token, json!({"schedule_cron": "*/30 * * * *"}))
            .await;
        assert_422_at(&refused, json!(["body", "schedule_cron"]));
        let unchanged = app.get(&path, &user.token).await;
        assert_eq!(unchanged.body["schedule_cron"], "0 9,11 * * *");
        let changed = app
            .put(&path, &user.token, json!({"schedule_cron": "30 6 * * *"}))
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    }
);

both_backends!(
    list_filters_are_bounded_in_length,
    |_| {},
    |app: TestApp| async move {
        let user = app.user("filterer").await;
        let admin = app.user_with_role("auditor-admin", Role::Admin).await;
        let skill = "s".repeat(255);
        let fits = app
            .get(&format!("/api/v1/tasks?skill_name={skill}"), &user.token)
            .await;
        assert_eq!(fits.status, StatusCode::OK, "{}", fits.body);
        let long = app
            .get(&format!("/api/v1/tasks?skill_name={skill}s"), &user.token)
            .await;
        assert_422_at(&long, json!(["query", "skill_name"]));

        let names = |count: usize, length: usize| vec!["c".repeat(length); count].join(",");
        for (capabilities, ok) in [
            (names(100, 100), true),
            (names(101, 1), false),
            (names(1, 101), false),
            (names(101, 100), false),
        ] {
            let answer = app
                .get(
                    &format!("/api/v1/agents?capabilities={capabilities}"),
                    &user.token,
                )
                .await;
            if ok {
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            } else {
                assert_422_at(&answer, json!(["query", "capabilities"]));
            }
        }

        for (parameter, max) in [
            ("aggregate_type", 100),
            ("aggregate_id", 1024),
            ("actor", 255),
            ("event_type", 100),
        ] {
            let path =
                |length: usize| format!("/api/v1/audit/events?{parameter}={}", "a".repeat(length));
            let fits = app.get(&path(max), &admin.token).await;
            assert_eq!(fits.status, StatusCode::OK, "{parameter}: {}", fits.body);
            assert_422_at(
                &app.get(&path(max + 1), &admin.token).await,
                json!(["query", parameter]),
            );
        }
    }
);

/// Every free-text string a list takes in its query has a `maxLength` in the document (values
/// from a list, times and UUIDs are bounded by what they must be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_free_text_query_parameter_has_a_maximum_length() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let doc: Value = app
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .body;
    let mut problems = Vec::new();
    let mut free_text = 0;
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for parameter in parameters.iter().filter(|p| p["in"] == "query") {
                let schema = &parameter["schema"];
                let types = match &schema["type"] {
                    Value::Array(types) => types.clone(),
                    one => vec![one.clone()],
                };
                // Every string has a pattern (no U+0000), which bounds nothing.
                let bounded_otherwise = !schema["enum"].is_null() || !schema["format"].is_null();
                if !types.contains(&json!("string")) || bounded_otherwise {
                    continue;
                }
                free_text += 1;
                if !schema["maxLength"].is_u64() {
                    problems.push(format!(
                        "{method} {path}: {} has no maxLength",
                        parameter["name"]
                    ));
                }
            }
        }
    }
    assert!(
        free_text >= 7,
        "only {free_text} free-text query parameters"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    app.stop().await;
}
