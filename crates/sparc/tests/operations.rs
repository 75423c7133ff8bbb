//! Operations: rebuilding a read model while the service takes writes and reads. No read
//! fails, the rebuilt read model equals a rebuild from scratch, and the rebuild fires no side
//! effects (no outbox rows, no commands from policies).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{TestApp, both_backends};
use reqwest::StatusCode;
use serde_json::json;
use sparc_domain::user::Role;
use sparc_projections::catalog::read_model;
use sparc_projections::rebuild::differences;
use sparc_store::LogReader;
use sparc_store::on_backend;

async fn outbox_rows(app: &TestApp) -> i64 {
    on_backend!(Database &app.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(pool).await.expect("a count"))
}

async fn wait_until_caught_up(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses =
            sparc_projections::status::statuses(&app.db, sparc_projections::status::STALLED_AFTER)
                .await
                .expect("statuses");
        if statuses
            .iter()
            .filter(|s| s.name != "chain")
            .all(|s| s.lag_events == 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rebuild_and_wait(app: &TestApp, admin: &str) -> serde_json::Value {
    let started = app
        .post("/api/v1/admin/projections/tasks/rebuild", admin, json!({}))
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert!(started.body["rebuild_id"].is_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = app
            .get("/api/v1/admin/projections/tasks/rebuild", admin)
            .await;
        assert_eq!(status.status, StatusCode::OK);
        match status.body["status"].as_str() {
            Some("completed") => return status.body,
            Some("running") => {}
            other => panic!("rebuild ended as {other:?}: {}", status.body),
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    rebuilding_tasks_while_writes_and_reads_continue_fails_no_read_and_matches_a_fresh_rebuild,
    |app: TestApp| async move {
        let admin = app.user_with_role("ops", Role::Admin).await;
        let owner = app.user("owner").await;
        for i in 0..60 {
            let created = app
                .post(
                    "/api/v1/tasks",
                    &owner.token,
                    json!({"skill_name": format!("s{i}"), "schedule_cron": "*/5 * * * *"}),
                )
                .await;
            assert_eq!(created.status, StatusCode::CREATED);
        }
        let app = Arc::new(app);
        let stop = Arc::new(AtomicBool::new(false));
        let failed_reads = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let writer = {
            let (app, stop, token) = (app.clone(), stop.clone(), owner.token.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let created = app
                        .post(
                            "/api/v1/tasks",
                            &token,
                            json!({"skill_name": format!("w{n}"), "schedule_cron": "0 * * * *"}),
                        )
                        .await;
                    assert_eq!(
                        created.status,
                        StatusCode::CREATED,
                        "a write failed during the rebuild: {}",
                        created.body
                    );
                }
            })
        };
        let reader = {
            let (app, stop, token, failed, reads) = (
                app.clone(),
                stop.clone(),
                owner.token.clone(),
                failed_reads.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let page = app.get("/api/v1/tasks?limit=100", &token).await;
                    reads.fetch_add(1, Ordering::Relaxed);
                    if page.status != StatusCode::OK
                        || page.body["total"].as_i64().unwrap_or(0) < 60
                    {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let report = rebuild_and_wait(&app, &admin.token).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("the writer");
        reader.await.expect("the reader");
        assert!(
            reads.load(Ordering::Relaxed) > 0,
            "the reader should have read during the rebuild"
        );
        assert_eq!(
            failed_reads.load(Ordering::Relaxed),
            0,
            "reads failed or saw a partial table during the rebuild"
        );
        assert!(report["processed"].as_u64().unwrap_or(0) >= 60, "{report}");

        wait_until_caught_up(&app).await;
        let tasks = read_model("tasks").expect("tasks");
        assert_eq!(
            differences(&app.db, tasks).await.expect("a comparison"),
            Vec::<String>::new()
        );

        // With writes stopped, a second rebuild changes nothing downstream: no outbox rows, no events.
        let outbox_before = outbox_rows(&app).await;
        let events_before = LogReader::new(&app.db).stats().await.expect("stats").events;
        rebuild_and_wait(&app, &admin.token).await;
        assert_eq!(
            outbox_rows(&app).await,
            outbox_before,
            "a rebuild published changes again"
        );
        assert_eq!(
            LogReader::new(&app.db).stats().await.expect("stats").events,
            events_before,
            "a rebuild issued commands"
        );

        let listed = app.get("/api/v1/admin/projections", &admin.token).await;
        assert_eq!(listed.status, StatusCode::OK);
        let tasks_status = listed
            .body
            .as_array()
            .expect("a list")
            .iter()
            .find(|p| p["name"] == "tasks")
            .cloned()
            .expect("tasks listed");
        assert_eq!(tasks_status["status"], "live");
        assert!(tasks_status["rebuilt_at"].is_string());
    }
);

both_backends!(only_admins_operate_projections, |app: TestApp| async move {
    let user = app.user("plain").await;
    assert_eq!(
        app.get("/api/v1/admin/projections", &user.token)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post(
            "/api/v1/admin/projections/tasks/rebuild",
            &user.token,
            json!({})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let admin = app.user_with_role("root", Role::Admin).await;
    assert_eq!(
        app.post(
            "/api/v1/admin/projections/nope/rebuild",
            &admin.token,
            json!({})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
});

/// On PostgreSQL the projection loops and the outbox relay run on pools of their own (whose
/// connections plan each statement once; see `Database::dedicated`), named so that an operator
/// can tell them apart from the requests' connections in `pg_stat_activity`.
#[tokio::test]
async fn the_loops_and_the_relay_run_on_connections_of_their_own_named_for_operators() {
    let Some(app) = TestApp::spawn(crate::support::Backend::Postgres).await else {
        return;
    };
    let owner = app.user("owner").await;
    let created = app
        .post(
            "/api/v1/tasks",
            &owner.token,
            json!({"skill_name": "named", "schedule_cron": "0 * * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    wait_until_caught_up(&app).await;
    let sparc_store::Database::Postgres(pool) = &app.db else {
        unreachable!("spawned on PostgreSQL");
    };
    let wanted = [
        sparc_projections::runner::LOOPS_APPLICATION_NAME,
        sparc::realtime::RELAY_APPLICATION_NAME,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT application_name FROM pg_stat_activity \
             WHERE datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .expect("the database's sessions");
        if wanted
            .iter()
            .all(|name| names.iter().any(|seen| seen == name))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions named {wanted:?} expected among {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// The niceness in a thread's `/proc/…/stat`.
fn niceness_in(stat: &str) -> Option<i32> {
    // The fields after the command's closing parenthesis start at the 3rd; the 19th is the
    // niceness.
    stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
}

/// The niceness of each thread of this process named `name`.
fn niceness_of_threads_named(name: &str) -> Vec<i32> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("this process's threads");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            niceness_in(&std::fs::read_to_string(path.join("stat")).ok()?)
        })
        .collect()
}

/// The projection loops, the chainer and the scheduler run on threads of their own, which
/// the kernel runs behind the requests' threads.
#[tokio::test]
async fn the_background_work_runs_on_threads_of_lower_priority_than_the_requests() {
    let Some(app) = TestApp::spawn(crate::support::Backend::Sqlite).await else {
        return;
    };
    let background = niceness_of_threads_named(sparc::background::BACKGROUND_THREAD_NAME);
    assert!(!background.is_empty(), "no background thread is running");
    assert!(
        background
            .iter()
            .all(|&nice| nice == sparc::background::BACKGROUND_NICENESS),
        "background threads' niceness: {background:?}"
    );
    // The test's runtime serves the requests, on this thread.
    let this_thread = niceness_in(
        &std::fs::read_to_string("/proc/thread-self/stat").expect("this thread's stat"),
    )
    .expect("this thread's niceness");
    assert!(this_thread < sparc::background::BACKGROUND_NICENESS);
    app.stop().await;
}
