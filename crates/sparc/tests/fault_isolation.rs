//! No request and no event can stop the service, on both backends: the requests that once
//! poisoned the pipeline are refused at the edge and leave every consumer live; an event put
//! into the log around the service that no upcaster can read is parked by the one read model
//! that cannot apply it, which shows as degraded to operators while everything else goes on;
//! and events stored before the edge had limits are still read, chained and exported.

use std::time::{Duration, Instant};

use crate::support::{TestApp, TestUser, both_backends, id_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;
use sparc_store::Database;

/// `{"a":{"a":…1…}}`, `depth` objects deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// Runs `sql` with one text argument `$1`, on either backend (`::json` casts are dropped on
/// SQLite, whose JSON is text).
async fn execute(db: &Database, sql: &str, argument: &str) {
    match db {
        Database::Postgres(pool) => sqlx::query(sql)
            .bind(argument)
            .execute(pool)
            .await
            .map(|_| ()),
        Database::Sqlite(pool) => sqlx::query(&sql.replace("::json", ""))
            .bind(argument)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("the statement should run");
}

/// Appends to the stream of task `id` an event of `event_type` with `payload`, after its last
/// event and with its first event's metadata: what an operator's script or an older version
/// might have written.
async fn append_to_task(db: &Database, id: &str, event_type: &str, payload: &str) {
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) \
         SELECT 'Task', aggregate_id, (SELECT max(sequence) + 1 FROM events WHERE aggregate_id = $1), \
         '{event_type}', '1.0', '{}'::json, metadata FROM events WHERE aggregate_id = $1 AND sequence = 1",
        payload.replace('\'', "''")
    );
    execute(db, &sql, id).await;
}

/// Waits until every consumer of the log is listed and has read all of it, and returns their
/// statuses (from the admin endpoint).
async fn caught_up(app: &TestApp, admin: &TestUser) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = app.get("/api/v1/admin/projections", &admin.token).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        let consumers = listed.body.as_array().expect("a list").clone();
        // The chainer is listed once it has saved a first position.
        let chain_listed = consumers.iter().any(|c| c["name"] == "chain");
        if chain_listed && consumers.iter().all(|c| c["lag_events"] == 0) {
            return consumers;
        }
        assert!(Instant::now() < deadline, "not caught up: {consumers:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn status_of<'a>(consumers: &'a [Value], name: &str) -> &'a Value {
    consumers
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no consumer {name}: {consumers:?}"))
}

async fn the_log_verifies(app: &TestApp, admin: &TestUser) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let verified = app.get("/api/v1/audit/verify", &admin.token).await;
        assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
        assert_eq!(verified.body["ok"], true, "{}", verified.body);
        let chained = status_of(&caught_up(app, admin).await, "chain")["lag_events"] == 0;
        if chained {
            return;
        }
        assert!(Instant::now() < deadline, "the chainer did not catch up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

both_backends!(
    the_requests_that_once_stopped_the_service_are_refused_and_every_consumer_stays_live,
    |app: TestApp| async move {
        let admin = app.user_with_role("ops", Role::Admin).await;
        let user = app.user("mallory").await;
        let task = |params: Value| json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *", "params": params});
        let attempts = [
            ("/api/v1/tasks", task(nested(125))),
            ("/api/v1/tasks", task(json!({"note": "a\u{0}b"}))),
            (
                "/api/v1/projects",
                json!({"name": "p", "description": "d\u{0}"}),
            ),
            (
                "/api/v1/agents",
                json!({"name": "a\u{0}b", "type": "coder", "capabilities": ["lint"]}),
            ),
        ];
        for (path, body) in attempts {
            let answer = app.post(path, &user.token, body.clone()).await;
            assert!(
                answer.status.is_client_error(),
                "{path} {body}: {} {}",
                answer.status,
                answer.body
            );
            assert!(answer.body["detail"].is_array() || answer.body["detail"].is_string());
        }

        for consumer in caught_up(&app, &admin).await {
            assert_eq!(consumer["status"], "live", "{consumer}");
            assert_eq!(consumer["parked"], 0, "{consumer}");
        }
        let health = app.get("/api/v1/health", &admin.token).await;
        assert_eq!(health.body["status"], "healthy", "{}", health.body);

        // A new user can register, log in, write and read the write back.
        let newcomer = app.user("newcomer").await;
        let created = app
            .post("/api/v1/tasks", &newcomer.token, task(nested(20)))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let read = app
            .get(
                &format!("/api/v1/tasks/{}", id_of(&created.body)),
                &newcomer.token,
            )
            .await;
        assert_eq!(read.body["params"], nested(20));
        the_log_verifies(&app, &admin).await;
    }
);

both_backends!(
    an_unreadable_event_degrades_only_its_read_model_and_operators_see_it,
    |app: TestApp| async move {
        let admin = app.user_with_role("ops", Role::Admin).await;
        let user = app.user("alice").await;
        let create = |skill: &str| json!({"skill_name": skill, "schedule_cron": "*/5 * * * *"});
        let poisoned = id_of(
            &app.post("/api/v1/tasks", &user.token, create("a"))
                .await
                .body,
        );
        let healthy = id_of(
            &app.post("/api/v1/tasks", &user.token, create("b"))
                .await
                .body,
        );
        append_to_task(&app.db, &poisoned, "TaskUpdated", r#"{"TaskUpdated": 42}"#).await;

        // The service goes on: writes land and read back, through the same read model.
        let updated = app
            .put(
                &format!("/api/v1/tasks/{healthy}"),
                &user.token,
                json!({"schedule_cron": "*/7 * * * *"}),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        let later = id_of(
            &app.post("/api/v1/tasks", &user.token, create("c"))
                .await
                .body,
        );
        let listed = app.get("/api/v1/tasks?limit=100", &user.token).await;
        let seen: Vec<(&str, &str)> = listed.body["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| {
                (
                    t["skill_name"].as_str().expect("a skill"),
                    t["schedule_cron"].as_str().expect("a cron"),
                )
            })
            .collect();
        assert!(
            seen.contains(&("b", "*/7 * * * *")) && seen.contains(&("c", "*/5 * * * *")),
            "{seen:?}"
        );
        assert_eq!(
            app.get(&format!("/api/v1/tasks/{later}"), &user.token)
                .await
                .status,
            StatusCode::OK
        );

        let consumers = caught_up(&app, &admin).await;
        for consumer in &consumers {
            let expected = if consumer["name"] == "tasks" {
                json!(["degraded", 1])
            } else {
                json!(["live", 0])
            };
            assert_eq!(
                json!([consumer["status"], consumer["parked"]]),
                expected,
                "{consumer}"
            );
        }
        let health = app.get("/api/v1/health", &admin.token).await;
        assert_eq!(health.body["status"], "degraded", "{}", health.body);
        let detailed = app.get("/api/v1/health/detailed", &admin.token).await;
        let tasks = status_of(
            detailed.body["projections"].as_array().expect("a list"),
            "tasks",
        );
        assert_eq!(
            (
                tasks["status"].clone(),
                tasks["parked"].clone(),
                tasks["lag_events"].clone()
            ),
            (json!("degraded"), json!(1), json!(0))
        );
        let metrics = app
            .request(Method::GET, "/metrics", None)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("sparc_projection_parked_events{projection=\"tasks\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("sparc_projection_status{projection=\"tasks\",status=\"degraded\"} 1")
        );

        let parked = app
            .get("/api/v1/admin/projections/tasks/parked", &admin.token)
            .await;
        assert_eq!(parked.status, StatusCode::OK, "{}", parked.body);
        let entry = &parked.body["parked"][0];
        assert_eq!(entry["aggregate_id"], poisoned.as_str(), "{}", parked.body);
        assert_eq!(entry["event_type"], "TaskUpdated");
        assert!(
            entry["error"]
                .as_str()
                .expect("an error")
                .contains("could not be read")
        );
        assert_eq!(entry["attempts"], 1);
        let forbidden = app
            .get("/api/v1/admin/projections/tasks/parked", &user.token)
            .await;
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        let unknown = app
            .get("/api/v1/admin/projections/nothing/parked", &admin.token)
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        // A later event of the same stream, well formed, waits behind it (applied alone it
        // would build on a state that misses the parked one).
        let update_payload = sparc_store::LogReader::new(&app.db)
            .aggregate_events("Task", &healthy, 1, 1)
            .await
            .expect("the update's event")[0]
            .payload
            .to_string();
        append_to_task(&app.db, &poisoned, "TaskUpdated", &update_payload).await;
        let consumers = caught_up(&app, &admin).await;
        assert_eq!(status_of(&consumers, "tasks")["parked"], 2, "{consumers:?}");
        let parked = app
            .get("/api/v1/admin/projections/tasks/parked", &admin.token)
            .await;
        let behind = parked.body["parked"][1]["error"]
            .as_str()
            .expect("an error");
        assert!(
            behind.starts_with("its stream is parked at position"),
            "{behind}"
        );
        let read = app
            .get(&format!("/api/v1/tasks/{poisoned}"), &user.token)
            .await;
        assert_eq!(read.body["version"], 1, "{}", read.body);
        // A replay of its past stops where the read model does.
        let past = app
            .get(&format!("/api/v1/tasks/{poisoned}?version=3"), &user.token)
            .await;
        assert_eq!(past.status, StatusCode::OK, "{}", past.body);
        assert_eq!(past.body["version"], 1, "{}", past.body);

        // Retried without a fix, both stay parked, one more attempt counted.
        let retried = app
            .post(
                "/api/v1/admin/projections/tasks/parked/retry",
                &admin.token,
                json!({}),
            )
            .await;
        assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
        assert_eq!(retried.body, json!({"applied": 0, "still_parked": 2}));
        let parked = app
            .get("/api/v1/admin/projections/tasks/parked", &admin.token)
            .await;
        assert_eq!(parked.body["parked"][0]["attempts"], 2);

        // The chainer hashed the stored bytes: the log, poisoned event included, verifies.
        the_log_verifies(&app, &admin).await;
    }
);

both_backends!(
    events_stored_before_the_edge_had_limits_are_read_chained_and_exported,
    |app: TestApp| async move {
        let admin = app.user_with_role("ops", Role::Admin).await;
        let user = app.user("legacy").await;
        let created = app
            .post(
                "/api/v1/tasks",
                &user.token,
                json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
            )
            .await;
        let id = id_of(&created.body);
        // An older version took params 125 levels deep: stored, they are deeper than serde's
        // default limit once inside the event.
        let deep = nested(125);
        let payload =
            json!({"TaskUpdated": {"changes": {"params": deep}, "at": "2026-03-02T09:00:00Z"}});
        append_to_task(&app.db, &id, "TaskUpdated", &payload.to_string()).await;

        for consumer in caught_up(&app, &admin).await {
            assert_eq!(
                (consumer["status"].clone(), consumer["parked"].clone()),
                (json!("live"), json!(0)),
                "{consumer}"
            );
        }
        let raw = app
            .request(
                Method::GET,
                &format!("/api/v1/tasks/{id}"),
                Some(&user.token),
            )
            .send()
            .await
            .expect("an answer")
            .text()
            .await
            .expect("text");
        let task = sparc_store::json::parse(&raw).expect("JSON at any depth");
        assert_eq!(task["params"], deep);
        assert_eq!(task["version"], 2, "{}", task["version"]);
        // The aggregate loads at that depth and takes commands.
        let renamed = app
            .put(
                &format!("/api/v1/tasks/{id}"),
                &user.token,
                json!({"schedule_cron": "*/7 * * * *"}),
            )
            .await;
        assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
        let audit = app
            .request(
                Method::GET,
                &format!("/api/v1/audit/events?aggregate_id={id}"),
                Some(&admin.token),
            )
            .send()
            .await
            .expect("an answer");
        assert_eq!(audit.status(), StatusCode::OK);
        let audit = sparc_store::json::parse(&audit.text().await.expect("text")).expect("JSON");
        assert_eq!(
            audit["events"].as_array().expect("events").len(),
            3,
            "{audit}"
        );
        the_log_verifies(&app, &admin).await;
    }
);

/// Settings for a service that reports a consumer stalled after one second.
fn stall_after_a_second(settings: &mut sparc::config::Settings) {
    settings.projection_stall_seconds = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_makes_no_progress_is_reported_stalled_on_postgres() {
    if let Some(app) =
        TestApp::spawn_with(crate::support::Backend::Postgres, stall_after_a_second).await
    {
        a_consumer_that_makes_no_progress_is_reported_stalled(app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_makes_no_progress_is_reported_stalled_on_sqlite() {
    if let Some(app) =
        TestApp::spawn_with(crate::support::Backend::Sqlite, stall_after_a_second).await
    {
        a_consumer_that_makes_no_progress_is_reported_stalled(app).await;
    }
}

/// A failure that is not the events' fault (here a read-model table gone, as in a botched
/// manual migration) is retried, never parked; while it lasts the loop's consumers are
/// reported stalled.
async fn a_consumer_that_makes_no_progress_is_reported_stalled(app: TestApp) {
    let admin = app.user_with_role("ops", Role::Admin).await;
    let user = app.user("bob").await;
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    caught_up(&app, &admin).await;
    execute(&app.db, "DROP TABLE executions", "").await;
    // The run's answer waits for the read models, which cannot apply its execution: not awaited.
    let run = app
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{}/run", id_of(&created.body)),
            Some(&user.token),
        )
        .send();
    let _run = tokio::spawn(run);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let detailed = app.get("/api/v1/health/detailed", &admin.token).await;
        let consumers = detailed.body["projections"]
            .as_array()
            .expect("a list")
            .clone();
        let tasks = status_of(&consumers, "tasks");
        if tasks["status"] == "stalled" {
            assert_eq!(tasks["parked"], 0, "a transient failure parks nothing");
            assert_eq!(detailed.body["status"], "degraded", "{}", detailed.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported stalled: {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
