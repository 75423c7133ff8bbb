//! Overload, on both backends: a command whose stream is held busy past its request's deadline
//! is refused with 503 and `Retry-After` and commits nothing, while the command that held the
//! stream, once it has begun to commit, is answered as done however late; and a client with
//! as many requests in progress as it may have is refused with 429 at once, others not.

use std::time::Duration;

use crate::support::{Backend, TestApp, id_of};
use reqwest::StatusCode;
use serde_json::json;
use sparc_store::Database;

/// Holds the event log's write lock for `hold` (appends wait; reads go on), from a connection
/// of its own.
async fn hold_the_log(db: &Database, hold: Duration) -> tokio::task::JoinHandle<()> {
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.expect("a transaction");
            sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .expect("the lock");
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                tx.commit().await.expect("the lock ends");
            })
        }
        Database::Sqlite(pool) => {
            let tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .expect("the write lock");
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                tx.commit().await.expect("the lock ends");
            })
        }
    }
}

async fn a_command_queued_past_its_deadline_is_refused_and_commits_nothing(backend: Backend) {
    let Some(app) = with_one_second_deadlines(backend).await else {
        return;
    };
    let user = app.user("busy").await;
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = id_of(&created.body);
    let path = format!("/api/v1/tasks/{id}");
    // Read once, so that no request below waits for the read models, which the lock holds up.
    assert_eq!(app.get(&path, &user.token).await.status, StatusCode::OK);

    let held = hold_the_log(&app.db, Duration::from_millis(2500)).await;
    let app = std::sync::Arc::new(app);
    let first = tokio::spawn({
        let (app, path, token) = (app.clone(), path.clone(), user.token.clone());
        async move {
            app.put(&path, &token, json!({"schedule_cron": "*/7 * * * *"}))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = app
        .put(&path, &user.token, json!({"schedule_cron": "*/9 * * * *"}))
        .await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.body
    );
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(second.body["detail"].is_string(), "{}", second.body);

    let first = first.await.expect("the first update ends");
    assert_eq!(
        first.status,
        StatusCode::OK,
        "committed, so answered as done: {}",
        first.body
    );
    held.await.expect("the lock ended");
    let read = app.get(&path, &user.token).await;
    assert_eq!(read.body["schedule_cron"], "*/7 * * * *", "{}", read.body);
    assert_eq!(
        read.body["version"], 2,
        "the refused update committed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_past_its_deadline_is_refused_and_commits_nothing_on_postgres() {
    a_command_queued_past_its_deadline_is_refused_and_commits_nothing(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_past_its_deadline_is_refused_and_commits_nothing_on_sqlite() {
    a_command_queued_past_its_deadline_is_refused_and_commits_nothing(Backend::Sqlite).await;
}

/// Many concurrent changes of one stream through one instance: they take turns, so none loses
/// a race to another and every one commits.
async fn concurrent_changes_of_one_stream_all_commit(app: TestApp) {
    let user = app.user("hammer").await;
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
        )
        .await;
    let path = format!("/api/v1/tasks/{}", id_of(&created.body));
    let changes = (0..60).map(|i| {
        let body = json!({"params": {"round": i}});
        let (app, path, token) = (&app, &path, &user.token);
        async move { app.put(path, token, body).await.status }
    });
    let statuses = futures::future::join_all(changes).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    let read = app.get(&path, &user.token).await;
    assert_eq!(read.body["version"], 61, "{}", read.body);
}

crate::support::both_backends!(
    concurrent_changes_of_one_stream_take_turns_and_all_commit,
    concurrent_changes_of_one_stream_all_commit
);

async fn with_one_second_deadlines(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |settings| {
        settings.api.request_timeout_seconds = 1;
    })
    .await
}

async fn a_client_at_its_in_flight_cap_is_refused_at_once_and_others_are_not(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |settings| {
        settings.api.max_in_flight_per_client = 2;
    })
    .await
    else {
        return;
    };
    let greedy = app.user("greedy").await;
    let other = app.user("other").await;
    let created = app
        .post(
            "/api/v1/tasks",
            &greedy.token,
            json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let path = format!("/api/v1/tasks/{}", id_of(&created.body));
    assert_eq!(app.get(&path, &greedy.token).await.status, StatusCode::OK);

    let held = hold_the_log(&app.db, Duration::from_millis(1500)).await;
    let app = std::sync::Arc::new(app);
    let waiting: Vec<_> = (0..2)
        .map(|n| {
            let (app, path, token) = (app.clone(), path.clone(), greedy.token.clone());
            tokio::spawn(async move {
                app.put(&path, &token, json!({"params": {"n": n}}))
                    .await
                    .status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = app.get(&path, &greedy.token).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.body["detail"].is_string(), "{}", refused.body);
    let others = app.get("/api/v1/tasks", &other.token).await;
    assert_eq!(
        others.status,
        StatusCode::OK,
        "another client is not held back"
    );

    for put in waiting {
        assert_eq!(put.await.expect("the update ends"), StatusCode::OK);
    }
    held.await.expect("the lock ended");
    let again = app.get(&path, &greedy.token).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "answered requests free their places"
    );
    assert_eq!(again.body["version"], 3, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_in_flight_cap_is_refused_at_once_on_postgres() {
    a_client_at_its_in_flight_cap_is_refused_at_once_and_others_are_not(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_in_flight_cap_is_refused_at_once_on_sqlite() {
    a_client_at_its_in_flight_cap_is_refused_at_once_and_others_are_not(Backend::Sqlite).await;
}
