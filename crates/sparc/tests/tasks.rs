//! Scheduled tasks, black-box on both backends: creation and its `next_run_at` in the task's
//! zone, cron and zone validation, the list's filters, orders and paging, the detail with its
//! last executions, updates, soft deletion, manual runs and their executions, reads as of a
//! version or a time, and the task's history with its metadata.

use crate::support::{TestApp, TestUser, assert_422_at, both_backends, id_of, ids, send, sorted};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;

// ----- helpers -----

/// Creates a task and returns it, asserting 201.
async fn create_task(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let created = app.post("/api/v1/tasks", &user.token, body.clone()).await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "creating {body}: {}",
        created.body
    );
    created.body
}

async fn simple_task(app: &TestApp, user: &TestUser, skill: &str) -> Value {
    create_task(
        app,
        user,
        json!({"skill_name": skill, "schedule_cron": "0 9 * * *"}),
    )
    .await
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a time, not {value}"));
    assert!(text.ends_with('Z'), "{text} is UTC with Z");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|_| panic!("{text} is RFC 3339"))
        .with_timezone(&Utc)
}

/// The last Sunday of `month` in `year`.
fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let next_month = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .expect("a valid date");
    let mut day = next_month.pred_opt().expect("a valid date");
    while day.weekday() != Weekday::Sun {
        day = day.pred_opt().expect("a valid date");
    }
    day
}

/// Berlin's offset from UTC in hours at `at`: summer time (+2) from 01:00 UTC on the last Sunday
/// of March to 01:00 UTC on the last Sunday of October, else +1 (EU rules since 1996).
fn berlin_offset_hours(at: DateTime<Utc>) -> i64 {
    let start = Utc.from_utc_datetime(
        &last_sunday(at.year(), 3)
            .and_hms_opt(1, 0, 0)
            .expect("a time"),
    );
    let end = Utc.from_utc_datetime(
        &last_sunday(at.year(), 10)
            .and_hms_opt(1, 0, 0)
            .expect("a time"),
    );
    if at >= start && at < end { 2 } else { 1 }
}

/// An agent account and a registered agent it reports for.
async fn agent(app: &TestApp, name: &str) -> (TestUser, String) {
    let account = app
        .user_with_role(&format!("{name}-svc"), Role::Agent)
        .await;
    let registered = app
        .post(
            "/api/v1/agents",
            &account.token,
            json!({"name": name, "type": "coder"}),
        )
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    let agent_id = id_of(&registered.body);
    (account, agent_id)
}

/// Runs a task by hand and lets the agent finish the run with `status`; returns the execution.
async fn run_and_finish(
    app: &TestApp,
    owner: &TestUser,
    agent: &(TestUser, String),
    task_id: &str,
    status: &str,
) -> String {
    let execution_id = start_run(app, owner, task_id).await;
    finish_run(app, agent, task_id, &execution_id, status).await;
    execution_id
}

/// Runs a task by hand; returns the running execution's id.
async fn start_run(app: &TestApp, owner: &TestUser, task_id: &str) -> String {
    let run = app
        .post(
            &format!("/api/v1/tasks/{task_id}/run"),
            &owner.token,
            json!({}),
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    id_of(&run.body)
}

/// The agent reports the execution finished with `status`.
async fn finish_run(
    app: &TestApp,
    agent: &(TestUser, String),
    task_id: &str,
    execution_id: &str,
    status: &str,
) {
    let finished = app
        .post(
            "/api/v1/agents/activity",
            &agent.0.token,
            json!({"agent_id": agent.1, "task_id": task_id, "execution_id": execution_id,
                   "status": status, "duration_ms": 10}),
        )
        .await;
    assert_eq!(finished.status, StatusCode::CREATED, "{}", finished.body);
}

// ----- creation and validation -----

both_backends!(
    creating_a_task_answers_201_with_next_run_at_computed_in_its_zone,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let before = Utc::now();
        let created = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "daily-report", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let task = &created.body;
        assert_eq!(created.header("etag"), Some("\"1\""));
        assert_eq!(task["version"], 1);
        assert_eq!(task["skill_name"], "daily-report");
        assert_eq!(task["schedule_cron"], "0 9 * * *");
        assert_eq!(task["timezone"], "UTC");
        assert_eq!(task["params"], json!({}));
        assert_eq!(task["status"], "pending");
        assert_eq!(task["project_id"], Value::Null);
        assert_eq!(task["user_id"], alice.id.as_str());
        assert_eq!(task["run_count"], 0);
        assert_eq!(task["error_count"], 0);
        assert_eq!(task["last_run_at"], Value::Null);
        time(&task["created_at"]);
        time(&task["updated_at"]);
        let utc_next = time(&task["next_run_at"]);
        assert_eq!(
            (utc_next.hour(), utc_next.minute(), utc_next.second()),
            (9, 0, 0)
        );
        assert!(utc_next > before && utc_next <= before + Duration::hours(24));

        let berlin = create_task(
            &app,
            &alice,
            json!({"skill_name": "daily-report", "schedule_cron": "0 9 * * *",
                   "timezone": "Europe/Berlin", "params": {"depth": 2}}),
        )
        .await;
        assert_eq!(berlin["timezone"], "Europe/Berlin");
        assert_eq!(berlin["params"], json!({"depth": 2}));
        let next = time(&berlin["next_run_at"]);
        assert!(
            next.hour() == 7 || next.hour() == 8,
            "09:00 in Berlin is 07:00 or 08:00 UTC, not {next}"
        );
        assert_eq!((next.minute(), next.second()), (0, 0));
        let local = next + Duration::hours(berlin_offset_hours(next));
        assert_eq!(local.hour(), 9, "{next} is 09:00 Berlin time");
        assert!(next > before && next <= before + Duration::hours(25));
    }
);

both_backends!(
    a_burst_of_creates_is_in_full_in_the_very_next_reads_of_its_author_and_of_an_auditor,
    |app: TestApp| async move {
        // Creates answer once committed; the next reads wait for the read models.
        let alice = app.user("alice").await;
        let auditor = app.user_with_role("audrey", Role::Auditor).await;
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "burst"}))
            .await;
        assert_eq!(project.status, StatusCode::CREATED, "{}", project.body);
        let project_id = id_of(&project.body);
        let in_project = create_task(
            &app,
            &alice,
            json!({"skill_name": "in-project", "schedule_cron": "0 9 * * *",
                   "project_id": project_id}),
        )
        .await;
        let skills: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
        let burst =
            futures::future::join_all(skills.iter().map(|skill| simple_task(&app, &alice, skill)))
                .await;

        let listed = app.get("/api/v1/tasks?limit=100", &alice.token).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(listed.body["total"], 21, "{}", listed.body);
        let mut expected: Vec<String> = burst.iter().map(id_of).collect();
        expected.push(id_of(&in_project));
        assert_eq!(sorted(ids(&listed.body, "tasks")), sorted(expected));
        let detail = app
            .get(&format!("/api/v1/projects/{project_id}"), &alice.token)
            .await;
        assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
        assert_eq!(ids(&detail.body, "tasks"), vec![id_of(&in_project)]);
        let last = burst.last().expect("twenty tasks");
        let read = app
            .get(&format!("/api/v1/tasks/{}", id_of(last)), &alice.token)
            .await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert_eq!(read.body["skill_name"], "burst-19");

        let late = simple_task(&app, &alice, "late").await;
        let audited = app
            .get(&format!("/api/v1/tasks/{}", id_of(&late)), &auditor.token)
            .await;
        assert_eq!(audited.status, StatusCode::OK, "{}", audited.body);
        assert_eq!(audited.body["skill_name"], "late");
    }
);

both_backends!(
    the_contract_s_invalid_cron_expressions_are_422_at_schedule_cron,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for cron in [
            "invalid",
            "60 0 * * *",
            "0 25 * * *",
            "",
            "* * * *",
            "0 9 * * * *",
        ] {
            let refused = app
                .post(
                    "/api/v1/tasks",
                    &alice.token,
                    json!({"skill_name": "s", "schedule_cron": cron}),
                )
                .await;
            assert_422_at(&refused, json!(["body", "schedule_cron"]));
        }
        let list = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(list.body["total"], 0, "no task was created: {}", list.body);
    }
);

both_backends!(
    ranges_lists_steps_and_day_names_are_accepted_cron_expressions,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for cron in [
            "0 9-17 * * 1-5",
            "0,15,30,45 * * * *",
            "*/15 * * * *",
            "0 9 * * MON",
            "30 8 1 JAN,JUL MON-FRI",
            "5 4 * * SUN",
        ] {
            let task = create_task(
                &app,
                &alice,
                json!({"skill_name": "s", "schedule_cron": cron}),
            )
            .await;
            assert_eq!(task["schedule_cron"], cron);
            assert!(task["next_run_at"].is_string(), "{cron}: {task}");
        }
        let monday = create_task(
            &app,
            &alice,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * MON"}),
        )
        .await;
        let next = time(&monday["next_run_at"]);
        assert_eq!(next.weekday(), Weekday::Mon, "{next}");
        assert_eq!((next.hour(), next.minute()), (9, 0));
        let quarter = create_task(
            &app,
            &alice,
            json!({"skill_name": "s", "schedule_cron": "*/15 * * * *"}),
        )
        .await;
        let next = time(&quarter["next_run_at"]);
        assert_eq!(next.minute() % 15, 0, "{next}");
        assert!(next <= Utc::now() + Duration::minutes(15));
    }
);

both_backends!(
    an_unknown_time_zone_or_a_bad_skill_name_is_422_at_its_field,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for zone in ["Mars/Olympus", "", "UTC+25"] {
            let refused = app
                .post(
                    "/api/v1/tasks",
                    &alice.token,
                    json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "timezone": zone}),
                )
                .await;
            assert_422_at(&refused, json!(["body", "timezone"]));
        }
        for skill in ["", "has space", "a/b", &"x".repeat(256)] {
            let refused = app
                .post(
                    "/api/v1/tasks",
                    &alice.token,
                    json!({"skill_name": skill, "schedule_cron": "0 9 * * *"}),
                )
                .await;
            assert_422_at(&refused, json!(["body", "skill_name"]));
        }
        let list = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(list.body["total"], 0);
    }
);

// ----- the list -----

both_backends!(
    the_list_filters_by_status_skill_name_and_project_id,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = app
            .post("/api/v1/projects", &alice.token, json!({"name": "P"}))
            .await;
        assert_eq!(project.status, StatusCode::CREATED);
        let project_id = id_of(&project.body);
        let in_project_pending = create_task(
            &app,
            &alice,
            json!({"skill_name": "alpha", "schedule_cron": "0 9 * * *", "project_id": project_id}),
        )
        .await;
        let in_project_disabled = create_task(
            &app,
            &alice,
            json!({"skill_name": "beta", "schedule_cron": "0 9 * * *", "project_id": project_id, "status": "disabled"}),
        )
        .await;
        let loose_disabled = create_task(
            &app,
            &alice,
            json!({"skill_name": "alpha", "schedule_cron": "0 9 * * *", "status": "disabled"}),
        )
        .await;
        let loose_pending = simple_task(&app, &alice, "gamma").await;
        let [a, b, c, d] = [
            &in_project_pending,
            &in_project_disabled,
            &loose_disabled,
            &loose_pending,
        ]
        .map(id_of);
        for (query, expected) in [
            ("", vec![&a, &b, &c, &d]),
            ("status=pending", vec![&a, &d]),
            ("status=disabled", vec![&b, &c]),
            ("status=completed", vec![]),
            ("skill_name=alpha", vec![&a, &c]),
            ("skill_name=gamma", vec![&d]),
            (&format!("project_id={project_id}"), vec![&a, &b]),
            ("skill_name=alpha&status=disabled", vec![&c]),
            (&format!("project_id={project_id}&status=pending"), vec![&a]),
        ] {
            let list = app
                .get(&format!("/api/v1/tasks?{query}"), &alice.token)
                .await;
            assert_eq!(list.status, StatusCode::OK, "{query}: {}", list.body);
            let expected: Vec<String> = expected.into_iter().cloned().collect();
            assert_eq!(
                sorted(ids(&list.body, "tasks")),
                sorted(expected.clone()),
                "{query}"
            );
            assert_eq!(list.body["total"], expected.len(), "{query}");
        }
    }
);

/// Whether `values` are in `ascending`/descending order, with nulls last either way.
fn in_order(values: &[Value], ascending: bool) -> bool {
    let non_null: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
    let nulls_last = values.iter().skip(non_null.len()).all(Value::is_null);
    let ordered = non_null.windows(2).all(|w| {
        if ascending {
            w[0] <= w[1]
        } else {
            w[0] >= w[1]
        }
    });
    nulls_last && ordered
}

both_backends!(
    the_list_sorts_by_each_allowed_field_in_both_orders,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let first = create_task(
            &app,
            &alice,
            json!({"skill_name": "a", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        let second = create_task(
            &app,
            &alice,
            json!({"skill_name": "b", "schedule_cron": "*/5 * * * *", "status": "disabled"}),
        )
        .await;
        let third = create_task(
            &app,
            &alice,
            json!({"skill_name": "c", "schedule_cron": "0 0 1 1 *"}),
        )
        .await;
        let fourth = create_task(
            &app,
            &alice,
            json!({"skill_name": "d", "schedule_cron": "*/5 * * * *", "status": "completed"}),
        )
        .await;
        // The first task becomes the most recently updated.
        let touched = app
            .put(
                &format!("/api/v1/tasks/{}", id_of(&first)),
                &alice.token,
                json!({"params": {"touched": true}}),
            )
            .await;
        assert_eq!(touched.status, StatusCode::OK);
        let created_order: Vec<String> = [&first, &second, &third, &fourth].map(id_of).to_vec();

        let default = app.get("/api/v1/tasks", &alice.token).await;
        let mut newest_first = created_order.clone();
        newest_first.reverse();
        assert_eq!(
            ids(&default.body, "tasks"),
            newest_first,
            "default: created_at desc"
        );
        let oldest_first = app
            .get(
                "/api/v1/tasks?sort_by=created_at&sort_order=asc",
                &alice.token,
            )
            .await;
        assert_eq!(ids(&oldest_first.body, "tasks"), created_order);
        let recently_updated = app
            .get(
                "/api/v1/tasks?sort_by=updated_at&sort_order=desc",
                &alice.token,
            )
            .await;
        assert_eq!(ids(&recently_updated.body, "tasks")[0], id_of(&first));

        for field in ["created_at", "next_run_at", "updated_at", "status"] {
            for order in ["asc", "desc"] {
                let list = app
                    .get(
                        &format!("/api/v1/tasks?sort_by={field}&sort_order={order}"),
                        &alice.token,
                    )
                    .await;
                assert_eq!(
                    list.status,
                    StatusCode::OK,
                    "{field} {order}: {}",
                    list.body
                );
                let tasks = list.body["tasks"].as_array().expect("tasks");
                assert_eq!(tasks.len(), 4, "{field} {order}");
                let values: Vec<Value> = tasks.iter().map(|t| t[field].clone()).collect();
                assert!(
                    in_order(&values, order == "asc"),
                    "{field} {order}: {values:?}"
                );
            }
        }
        let by_next_run = app
            .get(
                "/api/v1/tasks?sort_by=next_run_at&sort_order=asc",
                &alice.token,
            )
            .await;
        assert_eq!(
            ids(&by_next_run.body, "tasks")[..2],
            [id_of(&first), id_of(&third)],
            "tasks that never run come after the ones that do"
        );
    }
);

both_backends!(
    paging_reports_total_and_has_more_and_walks_every_task_once,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for i in 0..5 {
            simple_task(&app, &alice, &format!("s{i}")).await;
        }
        let mut seen = Vec::new();
        for (offset, expected_len, has_more) in [(0, 2, true), (2, 2, true), (4, 1, false)] {
            let page = app
                .get(
                    &format!("/api/v1/tasks?limit=2&offset={offset}"),
                    &alice.token,
                )
                .await;
            assert_eq!(page.status, StatusCode::OK);
            assert_eq!(page.body["total"], 5);
            assert_eq!(page.body["limit"], 2);
            assert_eq!(page.body["offset"], offset);
            assert_eq!(page.body["has_more"], has_more, "offset {offset}");
            let page_ids = ids(&page.body, "tasks");
            assert_eq!(page_ids.len(), expected_len);
            seen.extend(page_ids);
        }
        let all = app.get("/api/v1/tasks?limit=100", &alice.token).await;
        assert_eq!(
            seen,
            ids(&all.body, "tasks"),
            "pages are disjoint and complete"
        );
        let edge = app
            .get("/api/v1/tasks?limit=2&offset=3", &alice.token)
            .await;
        assert_eq!(edge.body["has_more"], false, "3 + 2 is not below 5");
        let beyond = app.get("/api/v1/tasks?offset=10", &alice.token).await;
        assert_eq!(beyond.body["tasks"], json!([]));
        assert_eq!(beyond.body["total"], 5);
        let default = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(default.body["limit"], 20);
        assert_eq!(default.body["offset"], 0);
    }
);

both_backends!(
    out_of_range_or_unknown_list_parameters_are_422_never_clamped,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("offset=-1", "offset"),
            ("sort_by=owner", "sort_by"),
            ("sort_order=sideways", "sort_order"),
            ("status=sleeping", "status"),
            ("project_id=not-a-uuid", "project_id"),
        ] {
            let refused = app
                .get(&format!("/api/v1/tasks?{query}"), &alice.token)
                .await;
            assert_422_at(&refused, json!(["query", field]));
        }
        let widest = app.get("/api/v1/tasks?limit=100", &alice.token).await;
        assert_eq!(widest.status, StatusCode::OK);
        let narrowest = app.get("/api/v1/tasks?limit=1", &alice.token).await;
        assert_eq!(narrowest.status, StatusCode::OK);
    }
);

both_backends!(
    deleted_tasks_are_left_out_of_the_list_unless_status_is_deleted,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let kept = id_of(&simple_task(&app, &alice, "kept").await);
        let gone = id_of(&simple_task(&app, &alice, "gone").await);
        let deleted = app
            .delete(&format!("/api/v1/tasks/{gone}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK);
        let list = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(ids(&list.body, "tasks"), vec![kept.clone()]);
        assert_eq!(list.body["total"], 1);
        let only_deleted = app.get("/api/v1/tasks?status=deleted", &alice.token).await;
        assert_eq!(ids(&only_deleted.body, "tasks"), vec![gone]);
        assert_eq!(only_deleted.body["total"], 1);
        assert_eq!(only_deleted.body["tasks"][0]["status"], "deleted");
    }
);

// ----- detail, update, delete -----

both_backends!(
    the_detail_holds_the_last_10_execution_results_newest_first,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let worker = agent(&app, "worker").await;
        let task_id = id_of(&simple_task(&app, &alice, "s").await);
        let fresh = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(fresh.status, StatusCode::OK);
        assert_eq!(fresh.body["execution_results"], json!([]));
        let mut runs = Vec::new();
        for _ in 0..12 {
            runs.push(run_and_finish(&app, &alice, &worker, &task_id, "success").await);
        }
        let detail = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(detail.status, StatusCode::OK);
        assert_eq!(
            detail.header("etag"),
            Some(format!("\"{}\"", detail.body["version"]).as_str())
        );
        assert_eq!(detail.body["run_count"], 12);
        let results = detail.body["execution_results"]
            .as_array()
            .expect("execution_results");
        let newest_ten: Vec<String> = runs.iter().rev().take(10).cloned().collect();
        assert_eq!(results.iter().map(id_of).collect::<Vec<_>>(), newest_ten);
        for result in results {
            assert_eq!(result["status"], "success");
            assert_eq!(result["task_id"], task_id.as_str());
            assert_eq!(result["agent_id"], worker.1.as_str());
        }
        let list = app.get("/api/v1/tasks", &alice.token).await;
        assert!(
            list.body["tasks"][0].get("execution_results").is_none(),
            "only the detail carries execution_results"
        );
    }
);

both_backends!(
    changing_the_cron_or_the_zone_recomputes_next_run_at,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task = simple_task(&app, &alice, "s").await;
        let task_id = id_of(&task);
        let updated = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"schedule_cron": "30 18 * * *"}),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        assert_eq!(updated.header("etag"), Some("\"2\""));
        assert_eq!(updated.body["version"], 2);
        assert_eq!(updated.body["schedule_cron"], "30 18 * * *");
        let next = time(&updated.body["next_run_at"]);
        assert_eq!((next.hour(), next.minute()), (18, 30));
        assert!(next > Utc::now() && next <= Utc::now() + Duration::hours(24));

        let zoned = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"timezone": "Asia/Tokyo"}),
            )
            .await;
        assert_eq!(zoned.status, StatusCode::OK, "{}", zoned.body);
        let next = time(&zoned.body["next_run_at"]);
        // 18:30 in Tokyo (UTC+9, no summer time) is 09:30 UTC.
        assert_eq!((next.hour(), next.minute()), (9, 30));

        let paused = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"status": "disabled"}),
            )
            .await;
        assert_eq!(paused.body["status"], "disabled");
        assert_eq!(
            paused.body["next_run_at"],
            Value::Null,
            "a disabled task never fires"
        );
        let resumed = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"status": "pending"}),
            )
            .await;
        assert_eq!(resumed.body["next_run_at"], zoned.body["next_run_at"]);

        let params_only = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"params": {"x": 1}}),
            )
            .await;
        assert_eq!(params_only.body["params"], json!({"x": 1}));
        assert_eq!(params_only.body["next_run_at"], resumed.body["next_run_at"]);
        let read = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(read.body["version"], params_only.body["version"]);
        assert_eq!(read.body["params"], json!({"x": 1}));
    }
);

both_backends!(
    an_empty_update_is_400_no_fields_to_update_and_skill_name_cannot_change,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task_id = id_of(&simple_task(&app, &alice, "fixed").await);
        let empty = app
            .put(&format!("/api/v1/tasks/{task_id}"), &alice.token, json!({}))
            .await;
        assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
        assert_eq!(empty.body["detail"], "No fields to update");
        let renamed = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"skill_name": "other"}),
            )
            .await;
        assert_422_at(&renamed, json!(["body", "skill_name"]));
        for (body, field) in [
            (json!({"schedule_cron": "0 25 * * *"}), "schedule_cron"),
            (json!({"timezone": "Nowhere/Land"}), "timezone"),
            (json!({"status": "deleted"}), "status"),
            (json!({"status": "running"}), "status"),
            (json!({"params": [1, 2]}), "params"),
        ] {
            let refused = app
                .put(&format!("/api/v1/tasks/{task_id}"), &alice.token, body)
                .await;
            assert_422_at(&refused, json!(["body", field]));
        }
        let read = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(read.body["version"], 1, "nothing was recorded");
        assert_eq!(read.body["skill_name"], "fixed");
    }
);

both_backends!(
    deleting_a_task_answers_the_contract_body_and_leaves_it_readable_as_deleted,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task_id = id_of(&simple_task(&app, &alice, "s").await);
        let deleted = app
            .delete(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        assert_eq!(
            deleted.body,
            json!({"message": "Task successfully deleted", "task_id": task_id, "status": "deleted"})
        );
        let read = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body["status"], "deleted");
        assert_eq!(read.body["next_run_at"], Value::Null);
        assert_eq!(read.body["version"], 2);
        let changed = app
            .put(
                &format!("/api/v1/tasks/{task_id}"),
                &alice.token,
                json!({"params": {"a": 1}}),
            )
            .await;
        assert_eq!(
            changed.status,
            StatusCode::CONFLICT,
            "a deleted task cannot change"
        );
        let run = app
            .post(
                &format!("/api/v1/tasks/{task_id}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(
            run.status,
            StatusCode::CONFLICT,
            "a deleted task cannot run"
        );
        let again = app
            .delete(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(again.status, StatusCode::OK, "deleting twice is harmless");
        let read = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(read.body["version"], 2, "and records nothing");
    }
);

// ----- runs and executions -----

both_backends!(
    running_a_task_answers_202_with_a_running_execution_listed_newest_first,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let worker = agent(&app, "worker").await;
        let task_id = id_of(&simple_task(&app, &alice, "s").await);
        let first = run_and_finish(&app, &alice, &worker, &task_id, "success").await;
        let second = run_and_finish(&app, &alice, &worker, &task_id, "failed").await;
        let run = app
            .post(
                &format!("/api/v1/tasks/{task_id}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
        let execution = &run.body;
        assert_eq!(execution["status"], "running");
        assert_eq!(execution["task_id"], task_id.as_str());
        assert_eq!(execution["agent_id"], Value::Null);
        assert_eq!(execution["ended_at"], Value::Null);
        assert_eq!(execution["duration_ms"], Value::Null);
        time(&execution["started_at"]);
        time(&execution["scheduled_for"]);
        let third = id_of(execution);

        let task = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(task.body["status"], "running");
        assert_eq!(task.body["last_run_at"], execution["started_at"]);
        let overlapping = app
            .post(
                &format!("/api/v1/tasks/{task_id}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(
            overlapping.status,
            StatusCode::CONFLICT,
            "a run while one is going: {}",
            overlapping.body
        );

        let all = app
            .get(&format!("/api/v1/tasks/{task_id}/executions"), &alice.token)
            .await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.body);
        assert_eq!(
            ids(&all.body, "executions"),
            vec![third.clone(), second.clone(), first.clone()]
        );
        assert_eq!(all.body["total"], 3);
        assert_eq!(all.body["has_more"], false);
        assert_eq!(all.body["limit"], 20);
        let statuses: Vec<&str> = all.body["executions"]
            .as_array()
            .expect("executions")
            .iter()
            .map(|e| e["status"].as_str().expect("a status"))
            .collect();
        assert_eq!(statuses, ["running", "failed", "success"]);

        let page = app
            .get(
                &format!("/api/v1/tasks/{task_id}/executions?limit=2&offset=1"),
                &alice.token,
            )
            .await;
        assert_eq!(
            ids(&page.body, "executions"),
            vec![second.clone(), first.clone()]
        );
        assert_eq!(page.body["has_more"], false);
        let head = app
            .get(
                &format!("/api/v1/tasks/{task_id}/executions?limit=1"),
                &alice.token,
            )
            .await;
        assert_eq!(head.body["has_more"], true);
        let successes = app
            .get(
                &format!("/api/v1/tasks/{task_id}/executions?status=success"),
                &alice.token,
            )
            .await;
        assert_eq!(ids(&successes.body, "executions"), vec![first]);
        assert_eq!(successes.body["total"], 1);
        for query in ["limit=0", "limit=101", "status=done"] {
            let refused = app
                .get(
                    &format!("/api/v1/tasks/{task_id}/executions?{query}"),
                    &alice.token,
                )
                .await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        }
    }
);

// ----- as of, history -----

both_backends!(
    a_past_detail_shows_the_executions_as_they_stood_then,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let worker = agent(&app, "worker").await;
        let task_id = id_of(&simple_task(&app, &alice, "s").await);
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
        let first = run_and_finish(&app, &alice, &worker, &task_id, "success").await;
        pause().await;
        let after_first = Utc::now();
        pause().await;
        let second = start_run(&app, &alice, &task_id).await;
        pause().await;
        let while_second_ran = Utc::now();
        pause().await;
        finish_run(&app, &worker, &task_id, &second, "failed").await;

        let results_at = |query: String| {
            let (app, alice, task_id) = (&app, &alice, &task_id);
            async move {
                let detail = app
                    .get(&format!("/api/v1/tasks/{task_id}?{query}"), &alice.token)
                    .await;
                assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
                detail.body["execution_results"]
                    .as_array()
                    .expect("execution_results")
                    .iter()
                    .map(|e| (id_of(e), e["status"].as_str().expect("a status").to_owned()))
                    .collect::<Vec<_>>()
            }
        };
        let at = |moment: DateTime<Utc>| {
            format!(
                "as_of={}",
                moment.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )
        };
        assert_eq!(results_at("version=1".to_owned()).await, vec![]);
        assert_eq!(
            results_at(at(after_first)).await,
            vec![(first.clone(), "success".to_owned())]
        );
        assert_eq!(
            results_at(at(while_second_ran)).await,
            vec![
                (second.clone(), "running".to_owned()),
                (first.clone(), "success".to_owned())
            ]
        );
        assert_eq!(
            results_at("as_of=2999-01-01T00:00:00Z".to_owned()).await,
            vec![(second, "failed".to_owned()), (first, "success".to_owned())]
        );
    }
);

both_backends!(
    version_and_as_of_rebuild_every_intermediate_state_of_a_task_changed_five_times,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let task = create_task(
            &app,
            &alice,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "params": {"step": 0}}),
        )
        .await;
        let task_id = id_of(&task);
        let mut states = vec![task];
        for step in 1..=5 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let body = if step == 3 {
                json!({"params": {"step": step}, "schedule_cron": "15 10 * * *"})
            } else {
                json!({"params": {"step": step}})
            };
            let updated = app
                .put(&format!("/api/v1/tasks/{task_id}"), &alice.token, body)
                .await;
            assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
            assert_eq!(updated.body["version"], step + 1);
            states.push(updated.body);
        }
        let history = app
            .get(&format!("/api/v1/tasks/{task_id}/history"), &alice.token)
            .await;
        let events = history.body["events"].as_array().expect("events").clone();
        assert_eq!(events.len(), 6);
        for (index, expected) in states.iter().enumerate() {
            let version = index + 1;
            let by_version = app
                .get(
                    &format!("/api/v1/tasks/{task_id}?version={version}"),
                    &alice.token,
                )
                .await;
            assert_eq!(by_version.status, StatusCode::OK, "{}", by_version.body);
            assert_eq!(
                by_version.header("etag"),
                Some(format!("\"{version}\"").as_str())
            );
            let recorded_at = events[index]["recorded_at"].as_str().expect("a time");
            let by_time = app
                .get(
                    &format!("/api/v1/tasks/{task_id}?as_of={recorded_at}"),
                    &alice.token,
                )
                .await;
            assert_eq!(by_time.status, StatusCode::OK, "{}", by_time.body);
            for read in [&by_version.body, &by_time.body] {
                assert_eq!(read["version"], version, "as of version {version}: {read}");
                for field in [
                    "params",
                    "schedule_cron",
                    "next_run_at",
                    "status",
                    "updated_at",
                    "created_at",
                ] {
                    assert_eq!(read[field], expected[field], "{field} at version {version}");
                }
            }
        }
        let before = time(&events[0]["recorded_at"]) - Duration::seconds(1);
        let too_early = app
            .get(
                &format!(
                    "/api/v1/tasks/{task_id}?as_of={}",
                    before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ),
                &alice.token,
            )
            .await;
        assert_eq!(
            too_early.status,
            StatusCode::NOT_FOUND,
            "{}",
            too_early.body
        );
        let now = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(
            now.body["params"],
            json!({"step": 5}),
            "the live state is the latest"
        );
        for query in ["version=0", "version=-1", "as_of=yesterday"] {
            let refused = app
                .get(&format!("/api/v1/tasks/{task_id}?{query}"), &alice.token)
                .await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        }
    }
);

both_backends!(
    the_history_lists_events_oldest_first_with_their_metadata_and_pages_after_version,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let created = send(
            app.request(Method::POST, "/api/v1/tasks", Some(&alice.token))
                .header("x-request-id", "create-task-1")
                .header("user-agent", "tasks-test/1")
                .json(&json!({"skill_name": "s", "schedule_cron": "0 9 * * *"})),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let task_id = id_of(&created.body);
        for step in 1..=3 {
            let updated = send(
                app.request(
                    Method::PUT,
                    &format!("/api/v1/tasks/{task_id}"),
                    Some(&alice.token),
                )
                .header("x-request-id", format!("update-task-{step}"))
                .header("user-agent", "tasks-test/1")
                .json(&json!({"params": {"step": step}})),
            )
            .await;
            assert_eq!(updated.status, StatusCode::OK);
        }
        let deleted = app
            .delete(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK);

        let history = app
            .get(&format!("/api/v1/tasks/{task_id}/history"), &alice.token)
            .await;
        assert_eq!(history.status, StatusCode::OK, "{}", history.body);
        let events = history.body["events"].as_array().expect("events");
        let types: Vec<&str> = events
            .iter()
            .map(|e| e["event_type"].as_str().expect("a type"))
            .collect();
        assert_eq!(
            types,
            [
                "TaskScheduled",
                "TaskUpdated",
                "TaskUpdated",
                "TaskUpdated",
                "TaskDeleted"
            ]
        );
        let mut previous_position = 0;
        let mut previous_time = String::new();
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event["sequence"], index + 1);
            assert_eq!(event["aggregate_type"], "Task");
            assert_eq!(event["aggregate_id"], task_id.as_str());
            let position = event["position"].as_i64().expect("a position");
            assert!(position > previous_position, "log order");
            previous_position = position;
            let recorded_at = event["recorded_at"].as_str().expect("a time").to_owned();
            time(&event["recorded_at"]);
            assert!(recorded_at >= previous_time, "oldest first");
            previous_time = recorded_at;
            let metadata = &event["metadata"];
            assert_eq!(metadata["actor"], alice.id.as_str(), "{metadata}");
            assert_eq!(metadata["ip"], "127.0.0.1", "{metadata}");
            time(&metadata["recorded_at"]);
            if index < 4 {
                assert_eq!(metadata["user_agent"], "tasks-test/1", "{metadata}");
            }
        }
        assert_eq!(events[0]["metadata"]["request_id"], "create-task-1");
        assert_eq!(events[2]["metadata"]["request_id"], "update-task-2");
        assert_eq!(
            events[2]["payload"]["TaskUpdated"]["changes"]["params"],
            json!({"step": 2}),
            "{}",
            events[2]
        );

        let page = app
            .get(
                &format!("/api/v1/tasks/{task_id}/history?after_version=1&limit=2"),
                &alice.token,
            )
            .await;
        let sequences: Vec<i64> = page.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["sequence"].as_i64().expect("a sequence"))
            .collect();
        assert_eq!(sequences, [2, 3]);
        let rest = app
            .get(
                &format!("/api/v1/tasks/{task_id}/history?after_version=3"),
                &alice.token,
            )
            .await;
        assert_eq!(rest.body["events"].as_array().expect("events").len(), 2);
        let past_end = app
            .get(
                &format!("/api/v1/tasks/{task_id}/history?after_version=5"),
                &alice.token,
            )
            .await;
        assert_eq!(past_end.body["events"], json!([]));
        for query in ["after_version=-1", "limit=0"] {
            let refused = app
                .get(
                    &format!("/api/v1/tasks/{task_id}/history?{query}"),
                    &alice.token,
                )
                .await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        }
    }
);

both_backends!(
    a_task_deleted_while_it_runs_stays_deleted_when_the_run_finishes,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let worker = agent(&app, "worker").await;
        let task_id = id_of(&simple_task(&app, &alice, "s").await);
        let run = app
            .post(
                &format!("/api/v1/tasks/{task_id}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED);
        let deleted = app
            .delete(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK);
        let finished = app
            .post(
                "/api/v1/agents/activity",
                &worker.0.token,
                json!({"agent_id": worker.1, "task_id": task_id, "execution_id": id_of(&run.body), "status": "success"}),
            )
            .await;
        assert!(
            finished.status.is_success() || finished.status == StatusCode::CONFLICT,
            "{}: {}",
            finished.status,
            finished.body
        );
        let read = app
            .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
            .await;
        assert_eq!(read.body["status"], "deleted", "{}", read.body);
        assert_eq!(
            read.body["next_run_at"],
            Value::Null,
            "a deleted task never fires again"
        );
        let listed = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(listed.body["total"], 0);
    }
);

async fn tasks_counts(app: &TestApp, user: &TestUser, projects: &[String]) -> Vec<i64> {
    let mut counts = Vec::new();
    for project in projects {
        let read = app
            .get(&format!("/api/v1/projects/{project}"), &user.token)
            .await;
        counts.push(read.body["tasks_count"].as_i64().expect("a count"));
    }
    counts
}

both_backends!(
    a_task_moves_between_the_owner_s_projects_and_only_into_live_ones,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let mut projects = Vec::new();
        for name in ["First", "Second"] {
            let project = app
                .post("/api/v1/projects", &alice.token, json!({"name": name}))
                .await;
            assert_eq!(project.status, StatusCode::CREATED);
            projects.push(id_of(&project.body));
        }
        let task = create_task(
            &app,
            &alice,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "project_id": projects[0]}),
        )
        .await;
        let path = format!("/api/v1/tasks/{}", id_of(&task));
        assert_eq!(tasks_counts(&app, &alice, &projects).await, [1, 0]);
        let moved = app
            .put(&path, &alice.token, json!({"project_id": projects[1]}))
            .await;
        assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
        assert_eq!(moved.body["project_id"], projects[1].as_str());
        assert_eq!(tasks_counts(&app, &alice, &projects).await, [0, 1]);
        let unknown = app
            .put(
                &path,
                &alice.token,
                json!({"project_id": "0190a1b2-0000-7000-8000-000000000000"}),
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
        let unknown_on_create = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *",
                       "project_id": "0190a1b2-0000-7000-8000-000000000000"}),
            )
            .await;
        assert_eq!(unknown_on_create.status, StatusCode::NOT_FOUND);
        let removed = app
            .delete(&format!("/api/v1/projects/{}", projects[0]), &alice.token)
            .await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        let into_deleted = app
            .put(&path, &alice.token, json!({"project_id": projects[0]}))
            .await;
        assert_eq!(
            into_deleted.status,
            StatusCode::NOT_FOUND,
            "{}",
            into_deleted.body
        );
        let read = app.get(&path, &alice.token).await;
        assert_eq!(read.body["project_id"], projects[1].as_str());
    }
);

both_backends!(
    a_list_read_again_right_after_a_create_shows_the_new_task,
    |app: TestApp| async move {
        let user = app.user("ada").await;
        let first = simple_task(&app, &user, "review").await;
        let before = app.get("/api/v1/tasks", &user.token).await;
        assert_eq!(ids(&before.body, "tasks"), vec![id_of(&first)]);

        let second = simple_task(&app, &user, "deploy").await;
        let after = app.get("/api/v1/tasks", &user.token).await;
        assert_eq!(
            sorted(ids(&after.body, "tasks")),
            sorted(vec![id_of(&first), id_of(&second)]),
            "the list answered before the create must not be served again"
        );
        assert_eq!(after.body["total"], 2);
    }
);

/// Two instances on one Postgres database, as a scaled-out deployment runs: a task list one
/// instance has answered (and keeps in memory) shows a task created through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_one_instance_keeps_shows_a_task_created_through_another_instance() {
    let Some(first) = TestApp::spawn(crate::support::Backend::Postgres).await else {
        return;
    };
    let second = first.spawn_beside().await;
    let user = first.user("ada").await;
    let empty = second.get("/api/v1/tasks", &user.token).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(empty.body["total"], 0);

    let created = simple_task(&first, &user, "review").await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = ids(
            &second.get("/api/v1/tasks", &user.token).await.body,
            "tasks",
        );
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed, vec![id_of(&created)]);
    second.stop().await;
    first.stop().await;
}
