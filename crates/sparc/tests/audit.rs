//! The audit trail: `GET /api/v1/audit/events` (filters, paging in log order, who sees what,
//! redaction), `GET /api/v1/audit/verify`, and `sparc audit export`, on both backends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{TestApp, TestUser, both_backends};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc::audit::{ExportOptions, export, export_to};
use sparc_domain::user::Role;
use sparc_store::LogReader;

/// Every event `token` may see that `query` selects, walked page by page (`limit` per page).
async fn walk(app: &TestApp, token: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(
                &format!("/api/v1/audit/events?limit={limit}&after_position={after}{query}"),
                token,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{query}: {}", page.body);
        let batch = page.body["events"].as_array().expect("an events array");
        if batch.is_empty() {
            assert_eq!(page.body["next_after_position"], after);
            return events;
        }
        after = page.body["next_after_position"]
            .as_i64()
            .expect("a next_after_position");
        assert_eq!(
            Some(after),
            batch.last().and_then(|e| e["position"].as_i64())
        );
        events.extend(batch.iter().cloned());
    }
}

/// The whole log as `admin` sees it, once every stored event is visible (on Postgres, events
/// stay held back while an older transaction is still running).
async fn settled_log(app: &TestApp, admin: &TestUser) -> Vec<Value> {
    for _ in 0..200 {
        let stored = LogReader::new(&app.db)
            .stats()
            .await
            .expect("the log should be readable")
            .events;
        let events = walk(app, &admin.token, "", 1000).await;
        if events.len() as i64 == stored {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the audit log never showed every stored event");
}

/// `user` schedules a task and returns its id.
async fn task_of(app: &TestApp, user: &TestUser, skill: &str) -> String {
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": skill, "schedule_cron": "*/5 * * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    created.body["id"].as_str().expect("a task id").to_owned()
}

fn positions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["position"].as_i64().expect("a position"))
        .collect()
}

fn time_of(event: &Value) -> DateTime<Utc> {
    event["recorded_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .expect("an RFC 3339 recorded_at")
        .with_timezone(&Utc)
}

/// `query` (admin) selects exactly the events of `all` that `keep` accepts, and some.
async fn assert_narrows(
    app: &TestApp,
    admin: &TestUser,
    all: &[Value],
    query: &str,
    keep: impl Fn(&Value) -> bool,
) {
    let filtered = walk(app, &admin.token, query, 1000).await;
    let expected: Vec<Value> = all.iter().filter(|e| keep(e)).cloned().collect();
    assert!(!expected.is_empty(), "{query} should select something");
    assert!(expected.len() < all.len(), "{query} should narrow");
    assert_eq!(positions(&filtered), positions(&expected), "{query}");
}

both_backends!(
    each_filter_narrows_the_log_to_exactly_the_matching_events,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let alice_task = task_of(&app, &alice, "lint").await;
        task_of(&app, &bob, "build").await;
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "site"}))
            .await;
        assert_eq!(project.status, StatusCode::CREATED, "{}", project.body);
        let all = settled_log(&app, &admin).await;

        assert_narrows(&app, &admin, &all, "&aggregate_type=Task", |e| {
            e["aggregate_type"] == "Task"
        })
        .await;
        assert_narrows(
            &app,
            &admin,
            &all,
            &format!("&aggregate_id={alice_task}"),
            |e| e["aggregate_id"] == alice_task.as_str(),
        )
        .await;
        assert_narrows(&app, &admin, &all, &format!("&actor={}", alice.id), |e| {
            e["metadata"]["actor"] == alice.id.as_str()
        })
        .await;
        let scheduled = all
            .iter()
            .find(|e| e["aggregate_id"] == alice_task.as_str())
            .expect("the task's first event")["event_type"]
            .as_str()
            .expect("an event type")
            .to_owned();
        assert_narrows(
            &app,
            &admin,
            &all,
            &format!("&event_type={scheduled}"),
            |e| e["event_type"] == scheduled.as_str(),
        )
        .await;

        // `from` is inclusive and `to` exclusive: the two halves split the log.
        let last = all.iter().map(time_of).max().expect("some events");
        let at = last.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        assert_narrows(&app, &admin, &all, &format!("&from={at}"), |e| {
            time_of(e) >= last
        })
        .await;
        assert_narrows(&app, &admin, &all, &format!("&to={at}"), |e| {
            time_of(e) < last
        })
        .await;
        let both = format!("&aggregate_type=Task&actor={}&to={at}", bob.id);
        let combined = walk(&app, &admin.token, &both, 1000).await;
        assert!(combined.iter().all(|e| e["aggregate_type"] == "Task"
            && e["metadata"]["actor"] == bob.id.as_str()
            && time_of(e) < last));

        for bad in [
            "limit=0",
            "limit=1001",
            "from=yesterday",
            "to=2025-13-01T00:00:00Z",
            "after_position=-1",
            "after_position=999999",
        ] {
            let answer = app
                .get(&format!("/api/v1/audit/events?{bad}"), &admin.token)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {}",
                answer.body
            );
        }
    }
);

both_backends!(
    paging_by_after_position_walks_the_whole_log_without_gaps_or_duplicates,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        for i in 0..3 {
            task_of(&app, &alice, &format!("before-{i}")).await;
        }
        // Page in small steps while other requests keep writing.
        let writing = AtomicBool::new(true);
        let writer = async {
            for i in 0..8 {
                task_of(&app, &alice, &format!("during-{i}")).await;
            }
            writing.store(false, Ordering::Relaxed);
        };
        let pager = async {
            let mut seen = Vec::new();
            let mut after = 0;
            while writing.load(Ordering::Relaxed) {
                let page = app
                    .get(
                        &format!("/api/v1/audit/events?limit=2&after_position={after}"),
                        &admin.token,
                    )
                    .await;
                assert_eq!(page.status, StatusCode::OK, "{}", page.body);
                seen.extend(positions(page.body["events"].as_array().expect("events")));
                after = page.body["next_after_position"].as_i64().expect("a cursor");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (seen, after)
        };
        let ((), (mut seen, mut after)) = tokio::join!(writer, pager);
        // Then read on from the cursor until everything stored has been seen.
        let stored = settled_log(&app, &admin).await;
        loop {
            let page = app
                .get(
                    &format!("/api/v1/audit/events?limit=2&after_position={after}"),
                    &admin.token,
                )
                .await;
            let batch = positions(page.body["events"].as_array().expect("events"));
            if batch.is_empty() {
                break;
            }
            seen.extend(batch);
            after = page.body["next_after_position"].as_i64().expect("a cursor");
        }
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no event twice: {seen:?}");
        assert_eq!(seen, positions(&stored), "every event once, in log order");
    }
);

both_backends!(
    a_user_sees_only_their_own_aggregates_events_and_an_auditor_sees_all,
    |app: TestApp| async move {
        let auditor = app.user_with_role("inspector", Role::Auditor).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "site"}))
            .await;
        let project = project.body["id"]
            .as_str()
            .expect("a project id")
            .to_owned();
        let task = task_of(&app, &alice, "lint").await;
        let run = app
            .post(
                &format!("/api/v1/tasks/{task}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
        let execution = run.body["id"].as_str().expect("an execution id").to_owned();
        let bobs_task = task_of(&app, &bob, "build").await;
        let everything = settled_log(&app, &auditor).await;

        let mine: HashSet<(String, String)> = [
            ("User", alice.id.as_str()),
            ("Project", &project),
            ("Task", &task),
            ("Execution", &execution),
        ]
        .into_iter()
        .map(|(t, id)| (t.to_owned(), id.to_owned()))
        .collect();
        let key = |e: &Value| {
            (
                e["aggregate_type"].as_str().unwrap_or_default().to_owned(),
                e["aggregate_id"].as_str().unwrap_or_default().to_owned(),
            )
        };
        let seen = walk(&app, &alice.token, "", 3).await;
        let expected: Vec<Value> = everything
            .iter()
            .filter(|e| mine.contains(&key(e)))
            .cloned()
            .collect();
        assert_eq!(positions(&seen), positions(&expected));
        let seen_aggregates: HashSet<(String, String)> = seen.iter().map(key).collect();
        assert_eq!(
            seen_aggregates, mine,
            "each of alice's aggregates, nothing else"
        );

        let asked_for_bobs = walk(
            &app,
            &alice.token,
            &format!("&aggregate_id={bobs_task}"),
            100,
        )
        .await;
        assert!(asked_for_bobs.is_empty(), "{asked_for_bobs:?}");
        let auditor_sees: HashSet<(String, String)> = everything.iter().map(key).collect();
        assert!(auditor_sees.contains(&("Task".to_owned(), bobs_task)));
        assert!(auditor_sees.is_superset(&mine));
    }
);

both_backends!(
    password_hashes_never_appear_in_audit_events_or_the_export,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        let all = settled_log(&app, &admin).await;
        let own = walk(&app, &alice.token, "&aggregate_type=User", 100).await;
        assert!(!own.is_empty());
        let mut export_lines = Vec::new();
        export(&app.db, &ExportOptions::default(), &mut export_lines)
            .await
            .expect("the export should succeed");
        let exported = String::from_utf8(export_lines).expect("UTF-8 JSON lines");
        for text in [json!(all).to_string(), json!(own).to_string(), exported] {
            assert!(text.contains("\"password_hash\":\"[redacted]\""));
            assert!(!text.contains("$argon2"), "a password hash leaked");
        }
    }
);

both_backends!(
    verify_answers_an_auditor_and_an_admin_and_refuses_a_user,
    |app: TestApp| async move {
        let auditor = app.user_with_role("inspector", Role::Auditor).await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        for who in [&auditor, &admin] {
            let report = app.get("/api/v1/audit/verify", &who.token).await;
            assert_eq!(report.status, StatusCode::OK, "{}", report.body);
            assert_eq!(report.body["ok"], true, "{}", report.body);
            assert!(report.body["events_checked"].as_u64() >= Some(3));
            assert!(report.body.get("first_bad_position").is_none());
        }
        let refused = app.get("/api/v1/audit/verify", &alice.token).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    }
);

both_backends!(
    the_export_writes_the_log_in_log_order_as_the_api_shows_it,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        for i in 0..3 {
            task_of(&app, &alice, &format!("job-{i}")).await;
        }
        let all = settled_log(&app, &admin).await;

        let mut buffer = Vec::new();
        let written = export(&app.db, &ExportOptions::default(), &mut buffer)
            .await
            .expect("the export should succeed");
        let lines: Vec<Value> = String::from_utf8(buffer)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        assert_eq!(written as usize, all.len());
        assert_eq!(positions(&lines), positions(&all), "log order");
        // Same fields as the API; the chainer may have hashed events in between.
        let without_hash = |e: &Value| {
            let mut e = e.clone();
            e.as_object_mut().expect("an object").remove("hash");
            e
        };
        for (line, event) in lines.iter().zip(&all) {
            assert_eq!(without_hash(line), without_hash(event));
        }

        // A window, written to a file.
        let last = all.iter().map(time_of).max().expect("some events");
        let window = ExportOptions {
            since: Some(last),
            ..ExportOptions::default()
        };
        let path =
            std::env::temp_dir().join(format!("sparc-export-{}.jsonl", uuid::Uuid::now_v7()));
        export_to(&app.db, &window, Some(&path))
            .await
            .expect("the export should write the file");
        let text = std::fs::read_to_string(&path).expect("the export file");
        std::fs::remove_file(&path).ok();
        let expected: Vec<i64> = positions(
            &all.iter()
                .filter(|e| time_of(e) >= last)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let in_window: Vec<i64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("JSON")["position"]
                    .as_i64()
                    .expect("a position")
            })
            .collect();
        assert!(!expected.is_empty() && expected.len() < all.len());
        assert_eq!(in_window, expected);
    }
);

/// On Postgres a transaction can take a position, stay open, and commit after a transaction
/// with a later position: the page must hold the later event back until then, or a client
/// paging past it would never see the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_never_skips_an_event_whose_transaction_commits_late() {
    let Some(app) = TestApp::spawn(crate::support::Backend::Postgres).await else {
        return;
    };
    let admin = app.user_with_role("root", Role::Admin).await;
    let sparc_store::Database::Postgres(pool) = &app.db else {
        panic!("a postgres test database");
    };
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
        event_version, payload, metadata) VALUES ('Probe', $1, 1, 'Probed', '1.0', '{}', \
        '{\"actor\": \"probe\"}') RETURNING global_position";
    let mut slow = pool.begin().await.expect("a transaction");
    let slow_position: i64 = sqlx::query_scalar(insert)
        .bind("slow")
        .fetch_one(&mut *slow)
        .await
        .expect("the slow event is inserted");
    let fast_position: i64 = sqlx::query_scalar(insert)
        .bind("fast")
        .fetch_one(pool)
        .await
        .expect("the fast event is committed");
    assert!(slow_position < fast_position);

    let held = walk(&app, &admin.token, "&aggregate_type=Probe", 10).await;
    assert!(
        held.is_empty(),
        "the fast event waits for the slow one: {held:?}"
    );
    slow.commit().await.expect("the slow transaction commits");

    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = positions(&walk(&app, &admin.token, "&aggregate_type=Probe", 1).await);
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        seen,
        vec![slow_position, fast_position],
        "in commit-safe log order"
    );
}
