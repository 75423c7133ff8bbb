//! Agents, black-box on both backends: who may write the registry, unique names, the list's
//! capability filter, order and paging, the detail with its execution statistics,
//! deregistration, and `POST /agents/activity` driving executions, tasks and agent statuses.

use std::collections::BTreeSet;

use crate::support::{Response, TestApp, TestUser, assert_422_at, both_backends, id_of, ids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::user::Role;

// ----- helpers -----

async fn register(app: &TestApp, writer: &TestUser, body: Value) -> Value {
    let created = app
        .post("/api/v1/agents", &writer.token, body.clone())
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "registering {body}: {}",
        created.body
    );
    created.body
}

async fn named(app: &TestApp, writer: &TestUser, name: &str) -> String {
    id_of(&register(app, writer, json!({"name": name, "type": "coder"})).await)
}

async fn task(app: &TestApp, owner: &TestUser) -> String {
    let created = app
        .post(
            "/api/v1/tasks",
            &owner.token,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

async fn report(app: &TestApp, reporter: &TestUser, body: Value) -> Response {
    app.post("/api/v1/agents/activity", &reporter.token, body)
        .await
}

async fn report_ok(app: &TestApp, reporter: &TestUser, body: Value) -> Value {
    let reported = report(app, reporter, body.clone()).await;
    assert_eq!(
        reported.status,
        StatusCode::CREATED,
        "reporting {body}: {}",
        reported.body
    );
    reported.body
}

async fn agent_detail(app: &TestApp, user: &TestUser, agent: &str) -> Value {
    let read = app
        .get(&format!("/api/v1/agents/{agent}"), &user.token)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    read.body
}

async fn task_detail(app: &TestApp, user: &TestUser, task: &str) -> Value {
    let read = app.get(&format!("/api/v1/tasks/{task}"), &user.token).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    read.body
}

async fn execution(app: &TestApp, owner: &TestUser, task: &str, execution: &str) -> Value {
    let list = app
        .get(&format!("/api/v1/tasks/{task}/executions"), &owner.token)
        .await;
    list.body["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .find(|e| e["id"] == execution)
        .unwrap_or_else(|| panic!("execution {execution} in {}", list.body))
        .clone()
}

// ----- who writes, names -----

both_backends!(
    only_admins_and_agents_write_the_registry_and_everyone_reads_it,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let service = app.user_with_role("bot", Role::Agent).await;
        let auditor = app.user_with_role("eye", Role::Auditor).await;
        let alice = app.user("alice").await;
        let by_admin = register(&app, &admin, json!({"name": "one", "type": "coder"})).await;
        assert_eq!(by_admin["status"], "idle", "the default status");
        assert_eq!(by_admin["capabilities"], json!([]));
        assert_eq!(by_admin["type"], "coder");
        assert_eq!(by_admin["version"], 1);
        assert_eq!(by_admin["last_active_at"], Value::Null);
        let by_agent = register(
            &app,
            &service,
            json!({"name": "two", "type": "api-designer", "capabilities": ["rust"], "status": "active"}),
        )
        .await;
        assert_eq!(by_agent["status"], "active");
        let agent = id_of(&by_admin);
        let owner_task = task(&app, &alice).await;
        for reader in [&alice, &auditor] {
            let refused = app
                .post(
                    "/api/v1/agents",
                    &reader.token,
                    json!({"name": "three", "type": "coder"}),
                )
                .await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            assert_eq!(
                refused.body["detail"],
                "You do not have permission to access this resource"
            );
            let changed = app
                .put(
                    &format!("/api/v1/agents/{agent}"),
                    &reader.token,
                    json!({"status": "busy"}),
                )
                .await;
            assert_eq!(changed.status, StatusCode::FORBIDDEN);
            let deleted = app
                .delete(&format!("/api/v1/agents/{agent}"), &reader.token)
                .await;
            assert_eq!(deleted.status, StatusCode::FORBIDDEN);
            let activity = report(
                &app,
                reader,
                json!({"agent_id": agent, "task_id": owner_task, "status": "running"}),
            )
            .await;
            assert_eq!(activity.status, StatusCode::FORBIDDEN);
            let list = app.get("/api/v1/agents", &reader.token).await;
            assert_eq!(list.status, StatusCode::OK);
            assert_eq!(list.body["total"], 2);
            let detail = agent_detail(&app, reader, &agent).await;
            assert_eq!(detail["status"], "idle", "nothing changed");
            assert_eq!(detail["version"], 1);
        }
        let task_read = task_detail(&app, &alice, &owner_task).await;
        assert_eq!(task_read["status"], "pending", "no run was started");
        let updated = app
            .put(
                &format!("/api/v1/agents/{agent}"),
                &service.token,
                json!({"capabilities": ["go", "rust"], "type": "tester"}),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        assert_eq!(updated.header("etag"), Some("\"2\""));
        assert_eq!(updated.body["capabilities"], json!(["go", "rust"]));
        assert_eq!(updated.body["type"], "tester");
        for (body, field) in [
            (json!({"name": "x", "type": "wizard"}), "type"),
            (
                json!({"name": "x", "type": "coder", "status": "asleep"}),
                "status",
            ),
            (json!({"name": "", "type": "coder"}), "name"),
            (
                json!({"name": "x", "type": "coder", "capabilities": ["a,b"]}),
                "capabilities",
            ),
        ] {
            let refused = app.post("/api/v1/agents", &admin.token, body).await;
            assert_422_at(&refused, json!(["body", field]));
        }
    }
);

both_backends!(
    a_duplicate_agent_name_is_409_and_a_freed_name_can_be_taken_again,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let first = named(&app, &admin, "scout").await;
        let duplicate = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "scout", "type": "tester"}),
            )
            .await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.body);
        assert!(duplicate.body["detail"].is_string());
        let padded = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "  scout ", "type": "tester"}),
            )
            .await;
        assert_eq!(padded.status, StatusCode::CONFLICT, "names are trimmed");
        let second = named(&app, &admin, "ranger").await;
        let renamed = app
            .put(
                &format!("/api/v1/agents/{second}"),
                &admin.token,
                json!({"name": "scout"}),
            )
            .await;
        assert_eq!(renamed.status, StatusCode::CONFLICT, "{}", renamed.body);
        assert_eq!(agent_detail(&app, &admin, &second).await["name"], "ranger");

        let moved = app
            .put(
                &format!("/api/v1/agents/{first}"),
                &admin.token,
                json!({"name": "pathfinder"}),
            )
            .await;
        assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
        let reused = app
            .put(
                &format!("/api/v1/agents/{second}"),
                &admin.token,
                json!({"name": "scout"}),
            )
            .await;
        assert_eq!(
            reused.status,
            StatusCode::OK,
            "a renamed agent frees its old name"
        );
        let gone = app
            .delete(&format!("/api/v1/agents/{first}"), &admin.token)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
        named(&app, &admin, "pathfinder").await;
        let list = app.get("/api/v1/agents", &admin.token).await;
        assert_eq!(list.body["total"], 2);
    }
);

// ----- the list -----

both_backends!(
    the_capability_filter_matches_any_and_is_applied_before_paging,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let mut by_name = std::collections::HashMap::new();
        for (name, capabilities) in [
            ("rusty", vec!["rust"]),
            ("snake", vec!["python"]),
            ("both", vec!["rust", "go"]),
            ("gopher", vec!["go"]),
            ("blank", vec![]),
            ("rustacean", vec!["rust-analyzer"]),
            ("sharp", vec!["c_sharp", "100%"]),
        ] {
            let agent = register(
                &app,
                &admin,
                json!({"name": name, "type": "coder", "capabilities": capabilities}),
            )
            .await;
            by_name.insert(name, id_of(&agent));
        }
        let expected: BTreeSet<String> = ["rusty", "both", "gopher"]
            .iter()
            .map(|n| by_name[n].clone())
            .collect();
        let mut seen = BTreeSet::new();
        for offset in 0..3 {
            let page = app
                .get(
                    &format!("/api/v1/agents?capabilities=rust,go&limit=1&offset={offset}"),
                    &admin.token,
                )
                .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            assert_eq!(page.body["total"], 3, "the filter is applied before paging");
            assert_eq!(page.body["has_more"], offset < 2, "offset {offset}");
            let page_ids = ids(&page.body, "agents");
            assert_eq!(page_ids.len(), 1);
            seen.extend(page_ids);
        }
        assert_eq!(seen, expected);
        for (query, names) in [
            ("capabilities=python", vec!["snake"]),
            ("capabilities=java", vec![]),
            ("capabilities=rust", vec!["rusty", "both"]),
            ("capabilities=%20go%20,", vec!["both", "gopher"]),
            ("capabilities=rust%25", vec![]),
            ("capabilities=rust_analyzer", vec![]),
            ("capabilities=c_sharp", vec!["sharp"]),
            ("capabilities=c%25sharp", vec![]),
            ("capabilities=100%25", vec!["sharp"]),
            ("capabilities=%25", vec![]),
        ] {
            let list = app
                .get(&format!("/api/v1/agents?{query}"), &admin.token)
                .await;
            let got: BTreeSet<String> = ids(&list.body, "agents").into_iter().collect();
            let want: BTreeSet<String> = names.iter().map(|n| by_name[n].clone()).collect();
            assert_eq!(got, want, "{query}");
            assert_eq!(list.body["total"], want.len(), "{query}");
        }
        let all = app.get("/api/v1/agents", &admin.token).await;
        assert_eq!(all.body["total"], 7);
        assert_eq!(all.body["limit"], 100, "agents default to 100 a page");
        let typed = app
            .get("/api/v1/agents?type=coder&status=idle", &admin.token)
            .await;
        assert_eq!(typed.body["total"], 7);
        for query in [
            "limit=0",
            "limit=1001",
            "offset=-1",
            "type=wizard",
            "status=asleep",
        ] {
            let refused = app
                .get(&format!("/api/v1/agents?{query}"), &admin.token)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{query}: {}",
                refused.body
            );
        }
        let widest = app.get("/api/v1/agents?limit=1000", &admin.token).await;
        assert_eq!(widest.status, StatusCode::OK);
    }
);

both_backends!(
    agents_are_ordered_by_last_activity_with_never_active_ones_last,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        let idle = named(&app, &admin, "never").await;
        let early = named(&app, &admin, "early").await;
        let late = named(&app, &admin, "late").await;
        let also_idle = named(&app, &admin, "never-either").await;
        let first_task = task(&app, &alice).await;
        let second_task = task(&app, &alice).await;
        report_ok(
            &app,
            &admin,
            json!({"agent_id": early, "task_id": first_task, "status": "running"}),
        )
        .await;
        report_ok(
            &app,
            &admin,
            json!({"agent_id": late, "task_id": second_task, "status": "running"}),
        )
        .await;
        let list = app.get("/api/v1/agents", &alice.token).await;
        let order = ids(&list.body, "agents");
        assert_eq!(order[..2], [late.clone(), early.clone()], "{}", list.body);
        let rest: BTreeSet<String> = order[2..].iter().cloned().collect();
        assert_eq!(rest, BTreeSet::from([idle, also_idle]));
        for agent in &list.body["agents"].as_array().expect("agents")[2..] {
            assert_eq!(agent["last_active_at"], Value::Null);
        }
        // Reporting again moves the early agent to the front.
        report_ok(
            &app,
            &admin,
            json!({"agent_id": early, "task_id": first_task, "status": "success"}),
        )
        .await;
        let list = app.get("/api/v1/agents", &alice.token).await;
        assert_eq!(ids(&list.body, "agents")[..2], [early, late]);
    }
);

// ----- detail, deregistration -----

both_backends!(
    the_detail_reports_execution_history_success_rate_and_average_duration,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &admin, "worker").await;
        let fresh = agent_detail(&app, &alice, &agent).await;
        assert_eq!(fresh["execution_history"], json!([]));
        assert_eq!(fresh["success_rate"], 0.0);
        assert_eq!(fresh["avg_duration_ms"], 0.0);
        let task_id = task(&app, &alice).await;
        let mut executions = Vec::new();
        for (status, duration) in [("success", 100), ("failed", 300), ("success", 200)] {
            let started = report_ok(
                &app,
                &admin,
                json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
            )
            .await;
            let execution_id = started["execution_id"].as_str().expect("an id").to_owned();
            report_ok(
                &app,
                &admin,
                json!({"agent_id": agent, "task_id": task_id, "execution_id": execution_id,
                       "status": status, "duration_ms": duration}),
            )
            .await;
            executions.push(execution_id);
        }
        let running = report_ok(
            &app,
            &admin,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        executions.push(running["execution_id"].as_str().expect("an id").to_owned());

        let detail = agent_detail(&app, &admin, &agent).await;
        assert_eq!(detail["name"], "worker");
        assert_eq!(detail["status"], "busy");
        let history: Vec<String> = ids(&detail, "execution_history");
        let newest_first: Vec<String> = executions.iter().rev().cloned().collect();
        assert_eq!(history, newest_first);
        let rate = detail["success_rate"].as_f64().expect("a rate");
        assert!(
            (rate - 2.0 / 3.0).abs() < 1e-9,
            "2 of 3 finished runs succeeded: {rate}"
        );
        assert_eq!(
            detail["avg_duration_ms"], 200.0,
            "the running one does not count"
        );
        let statuses: Vec<&str> = detail["execution_history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|e| e["status"].as_str().expect("a status"))
            .collect();
        assert_eq!(statuses, ["running", "success", "failed", "success"]);

        let limited = app
            .get(
                &format!("/api/v1/agents/{agent}?history_limit=2"),
                &admin.token,
            )
            .await;
        assert_eq!(ids(&limited.body, "execution_history"), newest_first[..2]);
        for limit in ["0", "501", "x"] {
            let refused = app
                .get(
                    &format!("/api/v1/agents/{agent}?history_limit={limit}"),
                    &admin.token,
                )
                .await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{limit}");
        }
        let unknown = app
            .get(
                "/api/v1/agents/0190a1b2-0000-7000-8000-000000000000",
                &admin.token,
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    }
);

both_backends!(
    deleting_an_agent_answers_204_takes_it_offline_and_out_of_the_list,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let stays = named(&app, &admin, "stays").await;
        let leaves = named(&app, &admin, "leaves").await;
        let deleted = app
            .delete(&format!("/api/v1/agents/{leaves}"), &admin.token)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
        let row = sparc_projections::agents::get(&app.db, leaves.parse().expect("a uuid"))
            .await
            .expect("the read model answers")
            .expect("the agent is kept");
        assert_eq!(row.state.status.as_str(), "offline");
        assert!(!row.state.registered);
        let list = app.get("/api/v1/agents", &admin.token).await;
        assert_eq!(ids(&list.body, "agents"), vec![stays]);
        assert_eq!(list.body["total"], 1);
        let offline = app.get("/api/v1/agents?status=offline", &admin.token).await;
        assert_eq!(
            offline.body["total"], 0,
            "a deregistered agent is in no list"
        );
        let read = app
            .get(&format!("/api/v1/agents/{leaves}"), &admin.token)
            .await;
        assert_eq!(read.status, StatusCode::NOT_FOUND);
        let again = app
            .delete(&format!("/api/v1/agents/{leaves}"), &admin.token)
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        let changed = app
            .put(
                &format!("/api/v1/agents/{leaves}"),
                &admin.token,
                json!({"status": "idle"}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::NOT_FOUND);
    }
);

// ----- activity -----

both_backends!(
    reporting_running_starts_an_execution_and_makes_the_agent_busy,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let reported = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        assert_eq!(reported["status"], "success");
        assert_eq!(reported["agent_id"], agent.as_str());
        assert_eq!(reported["task_id"], task_id.as_str());
        assert!(reported["stored_in_memory_mcp"].is_boolean());
        assert!(reported["broadcasted"].is_boolean());
        let execution_id = reported["execution_id"].as_str().expect("an execution id");
        let run = execution(&app, &alice, &task_id, execution_id).await;
        assert_eq!(run["status"], "running");
        assert_eq!(run["agent_id"], agent.as_str());
        let detail = agent_detail(&app, &alice, &agent).await;
        assert_eq!(detail["status"], "busy");
        assert!(detail["last_active_at"].is_string());
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["status"], "running");
        // Reporting running again claims the same execution instead of starting another.
        let again = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        assert_eq!(again["execution_id"], execution_id);
        let list = app
            .get(&format!("/api/v1/tasks/{task_id}/executions"), &alice.token)
            .await;
        assert_eq!(list.body["total"], 1);
    }
);

both_backends!(
    reporting_running_claims_the_execution_a_manual_run_started,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let run = app
            .post(
                &format!("/api/v1/tasks/{task_id}/run"),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED);
        let execution_id = id_of(&run.body);
        let claimed = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        assert_eq!(claimed["execution_id"], execution_id.as_str());
        let run = execution(&app, &alice, &task_id, &execution_id).await;
        assert_eq!(run["agent_id"], agent.as_str());
        assert_eq!(run["status"], "running");
        assert_eq!(agent_detail(&app, &alice, &agent).await["status"], "busy");
    }
);

both_backends!(
    reporting_success_finishes_the_execution_counts_the_run_and_idles_the_agent,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let started = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        let execution_id = started["execution_id"].as_str().expect("an id").to_owned();
        let finished = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "execution_id": execution_id,
                   "status": "success", "output": "all green", "duration_ms": 42}),
        )
        .await;
        assert_eq!(finished["execution_id"], execution_id.as_str());
        let run = execution(&app, &alice, &task_id, &execution_id).await;
        assert_eq!(run["status"], "success");
        assert_eq!(run["output_text"], "all green");
        assert_eq!(run["error_text"], Value::Null);
        assert_eq!(run["duration_ms"], 42);
        assert!(run["ended_at"].is_string());
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["run_count"], 1);
        assert_eq!(task_read["error_count"], 0);
        assert_eq!(
            task_read["status"], "pending",
            "the task is back to its schedule"
        );
        assert!(task_read["next_run_at"].is_string());
        assert_eq!(agent_detail(&app, &alice, &agent).await["status"], "idle");
        let twice = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "execution_id": execution_id, "status": "failed"}),
        )
        .await;
        assert_eq!(
            twice.status,
            StatusCode::CONFLICT,
            "a finished execution stays finished: {}",
            twice.body
        );
        assert_eq!(task_detail(&app, &alice, &task_id).await["error_count"], 0);
        // Without an execution id a final status finishes the task's running execution.
        let started = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        let finished = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "success"}),
        )
        .await;
        assert_eq!(finished["execution_id"], started["execution_id"]);
        assert_eq!(task_detail(&app, &alice, &task_id).await["run_count"], 2);
        let nothing_running = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "success"}),
        )
        .await;
        assert_eq!(nothing_running.status, StatusCode::NOT_FOUND);
    }
);

both_backends!(
    reporting_failed_or_timeout_sets_the_agent_to_error_and_counts_an_error,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        for (round, status) in [(1, "failed"), (2, "timeout")] {
            let started = report_ok(
                &app,
                &service,
                json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
            )
            .await;
            let execution_id = started["execution_id"].as_str().expect("an id").to_owned();
            report_ok(
                &app,
                &service,
                json!({"agent_id": agent, "task_id": task_id, "execution_id": execution_id,
                       "status": status, "error": "boom"}),
            )
            .await;
            let run = execution(&app, &alice, &task_id, &execution_id).await;
            assert_eq!(run["status"], status);
            assert_eq!(run["error_text"], "boom");
            assert!(run["duration_ms"].is_u64(), "a measured duration: {run}");
            let task_read = task_detail(&app, &alice, &task_id).await;
            assert_eq!(task_read["run_count"], round);
            assert_eq!(task_read["error_count"], round);
            assert_eq!(agent_detail(&app, &alice, &agent).await["status"], "error");
        }
    }
);

both_backends!(
    reporting_cancelled_returns_the_agent_to_idle_without_an_error,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let started = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
        )
        .await;
        assert_eq!(agent_detail(&app, &alice, &agent).await["status"], "busy");
        let execution_id = started["execution_id"].as_str().expect("an id").to_owned();
        report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "execution_id": execution_id, "status": "cancelled"}),
        )
        .await;
        assert_eq!(agent_detail(&app, &alice, &agent).await["status"], "idle");
        let run = execution(&app, &alice, &task_id, &execution_id).await;
        assert_eq!(run["status"], "cancelled");
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["error_count"], 0);
        assert_eq!(task_read["status"], "pending");
    }
);

both_backends!(
    an_invalid_activity_report_is_refused_and_changes_nothing,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let negative = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "running", "duration_ms": -1}),
        )
        .await;
        assert_422_at(&negative, json!(["body", "duration_ms"]));
        let bad_status = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "exploded"}),
        )
        .await;
        assert_422_at(&bad_status, json!(["body", "status"]));
        let unknown_agent = report(
            &app,
            &service,
            json!({"agent_id": "0190a1b2-0000-7000-8000-000000000000", "task_id": task_id, "status": "running"}),
        )
        .await;
        assert_eq!(unknown_agent.status, StatusCode::NOT_FOUND);
        let unknown_task = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": "0190a1b2-0000-7000-8000-000000000000", "status": "running"}),
        )
        .await;
        assert_eq!(unknown_task.status, StatusCode::NOT_FOUND);
        let unknown_execution = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id,
                   "execution_id": "0190a1b2-0000-7000-8000-000000000000", "status": "success"}),
        )
        .await;
        assert_eq!(
            unknown_execution.status,
            StatusCode::NOT_FOUND,
            "{}",
            unknown_execution.body
        );
        let detail = agent_detail(&app, &alice, &agent).await;
        assert_eq!(detail["status"], "idle");
        assert_eq!(detail["last_active_at"], Value::Null);
        assert_eq!(detail["version"], 1);
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["status"], "pending");
        assert_eq!(task_read["version"], 1);
        let list = app
            .get(&format!("/api/v1/tasks/{task_id}/executions"), &alice.token)
            .await;
        assert_eq!(list.body["total"], 0);
    }
);

both_backends!(
    a_final_report_naming_another_task_s_execution_is_refused_before_anything_changes,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let busy_task = task(&app, &alice).await;
        let other_task = task(&app, &alice).await;
        let started = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": busy_task, "status": "running"}),
        )
        .await;
        let execution_id = started["execution_id"].as_str().expect("an id").to_owned();
        let crossed = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": other_task, "execution_id": execution_id, "status": "success"}),
        )
        .await;
        assert_eq!(crossed.status, StatusCode::BAD_REQUEST, "{}", crossed.body);
        let run = execution(&app, &alice, &busy_task, &execution_id).await;
        assert_eq!(
            run["status"], "running",
            "the execution was not finished: {run}"
        );
        assert_eq!(
            task_detail(&app, &alice, &busy_task).await["status"],
            "running"
        );
        let claimed_elsewhere = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": other_task, "execution_id": execution_id, "status": "running"}),
        )
        .await;
        assert_eq!(claimed_elsewhere.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            task_detail(&app, &alice, &other_task).await["status"],
            "pending"
        );
        // The run can still be finished properly.
        report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": busy_task, "execution_id": execution_id, "status": "success"}),
        )
        .await;
        assert_eq!(task_detail(&app, &alice, &busy_task).await["run_count"], 1);
    }
);

both_backends!(
    reporting_running_with_a_new_execution_id_runs_the_task_under_that_id,
    |app: TestApp| async move {
        let service = app.user_with_role("bot", Role::Agent).await;
        let alice = app.user("alice").await;
        let agent = named(&app, &service, "worker").await;
        let task_id = task(&app, &alice).await;
        let chosen = "0190a1b2-1111-7000-8000-000000000001";
        let started = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "execution_id": chosen, "status": "running"}),
        )
        .await;
        assert_eq!(started["execution_id"], chosen);
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["status"], "running", "{task_read}");
        let run = execution(&app, &alice, &task_id, chosen).await;
        assert_eq!(run["agent_id"], agent.as_str());
        let second = report(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id,
                   "execution_id": "0190a1b2-1111-7000-8000-000000000002", "status": "running"}),
        )
        .await;
        assert_eq!(
            second.status,
            StatusCode::CONFLICT,
            "a second run while one is going: {}",
            second.body
        );
        let finished = report_ok(
            &app,
            &service,
            json!({"agent_id": agent, "task_id": task_id, "status": "success"}),
        )
        .await;
        assert_eq!(finished["execution_id"], chosen);
        let task_read = task_detail(&app, &alice, &task_id).await;
        assert_eq!(task_read["run_count"], 1);
        assert_eq!(task_read["status"], "pending");
        let list = app
            .get(&format!("/api/v1/tasks/{task_id}/executions"), &alice.token)
            .await;
        assert_eq!(list.body["total"], 1);
    }
);

both_backends!(
    renaming_an_agent_to_another_case_of_its_name_keeps_the_name_taken,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let scout = named(&app, &admin, "scout").await;
        let clash = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "SCOUT", "type": "coder"}),
            )
            .await;
        assert_eq!(
            clash.status,
            StatusCode::CONFLICT,
            "names are unique whatever their case"
        );
        let recased = app
            .put(
                &format!("/api/v1/agents/{scout}"),
                &admin.token,
                json!({"name": "Scout"}),
            )
            .await;
        assert_eq!(recased.status, StatusCode::OK, "{}", recased.body);
        assert_eq!(recased.body["name"], "Scout");
        let taken = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({"name": "scout", "type": "coder"}),
            )
            .await;
        assert_eq!(
            taken.status,
            StatusCode::CONFLICT,
            "the agent still holds its name: {}",
            taken.body
        );
    }
);

// ----- the activity feed -----

/// The feed's entries as `(execution_id, agent_name)`, and its `next_before`.
async fn feed(app: &TestApp, user: &TestUser, query: &str) -> (Vec<Value>, Value) {
    let read = app
        .get(&format!("/api/v1/agents/activity{query}"), &user.token)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{query}: {}", read.body);
    let entries = read.body["activity"].as_array().expect("a list").clone();
    (entries, read.body["next_before"].clone())
}

both_backends!(
    the_activity_feed_shows_runs_newest_first_to_their_owners_and_pages_by_cursor,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let auditor = app.user_with_role("audit", Role::Auditor).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let coder = named(&app, &admin, "coder-one").await;
        let tester = named(&app, &admin, "tester-two").await;
        let alices = task(&app, &alice).await;
        let bobs = task(&app, &bob).await;
        let mut runs = Vec::new();
        let long_output = "x".repeat(300);
        for (agent, task_id) in [(&coder, &alices), (&tester, &bobs), (&tester, &alices)] {
            let started = report_ok(
                &app,
                &admin,
                json!({"agent_id": agent, "task_id": task_id, "status": "running"}),
            )
            .await;
            runs.push(started["execution_id"].as_str().expect("an id").to_owned());
            if runs.len() == 1 {
                // A task runs once at a time: the first run ends before her next one starts.
                report_ok(
                    &app,
                    &admin,
                    json!({"agent_id": coder, "task_id": alices, "execution_id": runs[0],
                           "status": "failed", "output": long_output, "error": "boom"}),
                )
                .await;
            }
        }

        let execution_ids = |entries: &[Value]| -> Vec<String> {
            entries
                .iter()
                .map(|e| e["execution_id"].as_str().unwrap().to_owned())
                .collect()
        };
        let (everything, last) = feed(&app, &admin, "").await;
        assert_eq!(
            execution_ids(&everything),
            [runs[2].clone(), runs[1].clone(), runs[0].clone()],
            "newest started first; a run keeps its place as it ends"
        );
        assert_eq!(last, Value::Null, "one page holds it all");
        let finished = &everything[2];
        assert_eq!(finished["agent_name"], "coder-one");
        assert_eq!(finished["agent_id"], coder.as_str());
        assert_eq!(finished["task_id"], alices.as_str());
        assert_eq!(finished["status"], "failed");
        assert_eq!(finished["error"], "boom");
        assert_eq!(finished["output_preview"].as_str().map(str::len), Some(200));
        assert!(finished["started_at"].is_string() && finished["ended_at"].is_string());
        assert_eq!(finished["timestamp"], finished["ended_at"]);
        assert_eq!(
            everything[0]["timestamp"], everything[0]["started_at"],
            "still running"
        );

        let (audited, _) = feed(&app, &auditor, "").await;
        assert_eq!(execution_ids(&audited), execution_ids(&everything));
        let (own, _) = feed(&app, &alice, "").await;
        assert_eq!(
            execution_ids(&own),
            [runs[2].clone(), runs[0].clone()],
            "only her tasks' runs"
        );
        let (bobs_own, _) = feed(&app, &bob, "").await;
        assert_eq!(execution_ids(&bobs_own), [runs[1].clone()]);
        let (of_tester, _) = feed(&app, &admin, &format!("?agent_id={tester}")).await;
        assert_eq!(
            execution_ids(&of_tester),
            [runs[2].clone(), runs[1].clone()]
        );

        let mut paged = Vec::new();
        let mut query = "?limit=1".to_owned();
        loop {
            let (page, next) = feed(&app, &admin, &query).await;
            paged.extend(execution_ids(&page));
            match next.as_str() {
                Some(cursor) => query = format!("?limit=1&before={cursor}"),
                None => break,
            }
        }
        assert_eq!(
            paged,
            execution_ids(&everything),
            "no run skipped or repeated"
        );

        for bad in [
            "?limit=0",
            "?limit=201",
            "?before=yesterday",
            "?before=1~not-a-uuid",
        ] {
            let refused = app
                .get(&format!("/api/v1/agents/activity{bad}"), &admin.token)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {}",
                refused.body
            );
        }
    }
);
