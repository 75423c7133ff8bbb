//! Reads while others write: one user's writes show at once in their own lists and in the
//! all-seeing ones, and leave other users' lists as they were; every list's `total` (kept as
//! counts beside the rows) is the number of rows its pages walk, under every filter, after
//! creates, status changes, moves between projects and deletes, and after a rebuild.

use crate::support::{TestApp, TestUser, both_backends, id_of, ids, sorted};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::user::Role;

async fn task(app: &TestApp, user: &TestUser, skill: &str, project: Option<&str>) -> String {
    let mut body = json!({"skill_name": skill, "schedule_cron": "0 9 * * *"});
    if let Some(project) = project {
        body["project_id"] = json!(project);
    }
    let created = app.post("/api/v1/tasks", &user.token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

async fn project(app: &TestApp, user: &TestUser, name: &str) -> String {
    let created = app
        .post("/api/v1/projects", &user.token, json!({"name": name}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

/// The ids of `user`'s task list and its `total`.
async fn task_list(app: &TestApp, user: &TestUser) -> (Vec<String>, i64) {
    let listed = app.get("/api/v1/tasks?limit=100", &user.token).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let total = listed.body["total"].as_i64().expect("a total");
    (sorted(ids(&listed.body, "tasks")), total)
}

/// Every page of `path` (a list with `query`, which may be empty) walked 3 at a time: the ids
/// seen and the `total` each page gave, which must agree.
async fn walk(app: &TestApp, user: &TestUser, path: &str, key: &str, query: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut totals = Vec::new();
    loop {
        let page = app
            .get(
                &format!("{path}?limit=3&offset={}{query}", seen.len()),
                &user.token,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{path}{query}: {}", page.body);
        totals.push(page.body["total"].as_i64().expect("a total"));
        let got = ids(&page.body, key);
        if got.is_empty() {
            break;
        }
        seen.extend(got);
    }
    assert!(
        totals.iter().all(|total| *total == seen.len() as i64),
        "{path}{query}: the pages said {totals:?}, they held {}",
        seen.len()
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "{path}{query}: a row twice");
    seen
}

both_backends!(
    one_user_s_writes_show_at_once_to_them_and_the_auditor_and_leave_another_s_list_as_it_was,
    |app: TestApp| async move {
        let ada = app.user("ada").await;
        let bob = app.user("bob").await;
        let auditor = app.user_with_role("audra", Role::Auditor).await;
        let ada_tasks = sorted(vec![
            task(&app, &ada, "review", None).await,
            task(&app, &ada, "deploy", None).await,
        ]);
        let first_of_bob = task(&app, &bob, "review", None).await;
        // Read (and so kept) by each of them before bob writes.
        assert_eq!(task_list(&app, &ada).await, (ada_tasks.clone(), 2));
        assert_eq!(task_list(&app, &bob).await.1, 1);
        assert_eq!(task_list(&app, &auditor).await.1, 3);

        let second_of_bob = task(&app, &bob, "deploy", None).await;
        assert_eq!(
            task_list(&app, &bob).await,
            (sorted(vec![first_of_bob.clone(), second_of_bob.clone()]), 2),
            "bob's own create shows in his very next read"
        );
        assert_eq!(task_list(&app, &auditor).await.1, 4, "and in the auditor's");
        assert_eq!(task_list(&app, &ada).await, (ada_tasks.clone(), 2));

        let deleted = app
            .delete(&format!("/api/v1/tasks/{second_of_bob}"), &bob.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        assert_eq!(task_list(&app, &bob).await, (vec![first_of_bob], 1));
        assert_eq!(task_list(&app, &auditor).await.1, 3);

        let third_of_ada = task(&app, &ada, "test", None).await;
        let (listed, total) = task_list(&app, &ada).await;
        assert!(listed.contains(&third_of_ada), "ada's create shows to ada");
        assert_eq!(total, 3);
        assert_eq!(task_list(&app, &auditor).await.1, 4);
    }
);

/// The filters of the task list `walk` checks, for projects `p` and `q`.
fn task_filters(p: &str, q: &str) -> Vec<String> {
    vec![
        String::new(),
        "&status=pending".to_owned(),
        "&status=disabled".to_owned(),
        "&status=deleted".to_owned(),
        format!("&project_id={p}"),
        format!("&project_id={q}"),
        format!("&project_id={p}&status=disabled"),
        "&skill_name=review".to_owned(),
        "&skill_name=nothing".to_owned(),
        "&sort_by=next_run_at&sort_order=asc".to_owned(),
    ]
}

/// Walks every task and project list of `user` under every filter; each project's
/// `tasks_count` must be the number of its live tasks.
async fn every_total_matches(app: &TestApp, user: &TestUser, p: &str, q: &str) {
    for filter in task_filters(p, q) {
        walk(app, user, "/api/v1/tasks", "tasks", &filter).await;
    }
    for filter in ["", "&status=active", "&search=ro"] {
        walk(app, user, "/api/v1/projects", "projects", filter).await;
    }
    let projects = app.get("/api/v1/projects?limit=100", &user.token).await;
    for listed in projects.body["projects"].as_array().expect("projects") {
        let id = id_of(listed);
        let live = walk(
            app,
            user,
            "/api/v1/tasks",
            "tasks",
            &format!("&project_id={id}"),
        )
        .await;
        assert_eq!(
            listed["tasks_count"].as_i64(),
            Some(live.len() as i64),
            "tasks_count of {id}"
        );
    }
}

both_backends!(
    every_list_total_is_the_rows_its_pages_hold_under_every_filter_after_any_writes,
    |app: TestApp| async move {
        let ada = app.user("ada").await;
        let bob = app.user("bob").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let (p, q) = (
            project(&app, &ada, "Frontend").await,
            project(&app, &ada, "Robots").await,
        );
        let _of_bob = project(&app, &bob, "Bob's").await;
        let mut of_ada = Vec::new();
        for (i, skill) in [
            "review", "deploy", "review", "test", "review", "deploy", "lint",
        ]
        .into_iter()
        .enumerate()
        {
            let project = [Some(p.as_str()), Some(q.as_str()), None][i % 3];
            of_ada.push(task(&app, &ada, skill, project).await);
        }
        for skill in ["review", "deploy"] {
            task(&app, &bob, skill, None).await;
        }
        let change = |id: &String, body: Value| {
            let path = format!("/api/v1/tasks/{id}");
            let app = &app;
            let token = ada.token.clone();
            async move {
                let changed = app.put(&path, &token, body).await;
                assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
            }
        };
        change(&of_ada[0], json!({"status": "disabled"})).await;
        change(&of_ada[3], json!({"status": "disabled"})).await;
        change(&of_ada[1], json!({"project_id": p})).await;
        change(&of_ada[2], json!({"project_id": q, "status": "disabled"})).await;
        for id in [&of_ada[4], &of_ada[0]] {
            let deleted = app.delete(&format!("/api/v1/tasks/{id}"), &ada.token).await;
            assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        }
        let everything = walk(&app, &admin, "/api/v1/tasks", "tasks", "").await;
        assert_eq!(everything.len(), 7, "5 of ada's live tasks and bob's 2");
        for user in [&ada, &admin] {
            every_total_matches(&app, user, &p, &q).await;
        }
        for (name, kind) in [("one", "coder"), ("two", "tester"), ("three", "coder")] {
            let registered = app
                .post(
                    "/api/v1/agents",
                    &admin.token,
                    json!({"name": name, "type": kind, "capabilities": ["rust"]}),
                )
                .await;
            assert_eq!(
                registered.status,
                StatusCode::CREATED,
                "{}",
                registered.body
            );
        }
        for filter in ["", "&status=idle", "&type=coder", "&capabilities=rust"] {
            let listed = walk(&app, &admin, "/api/v1/agents", "agents", filter).await;
            assert!(!listed.is_empty(), "agents{filter}");
        }

        // A rebuild replaces the rows and their counts together.
        let started = app
            .post(
                "/api/v1/admin/projections/tasks/rebuild",
                &admin.token,
                json!({}),
            )
            .await;
        assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
        for _ in 0..200 {
            let status = app
                .get("/api/v1/admin/projections/tasks/rebuild", &admin.token)
                .await;
            if status.body["status"] == "completed" {
                break;
            }
            assert_ne!(status.body["status"], "failed", "{}", status.body);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for user in [&ada, &admin] {
            every_total_matches(&app, user, &p, &q).await;
        }
        assert_eq!(
            walk(&app, &admin, "/api/v1/tasks", "tasks", "").await.len(),
            7
        );
    }
);
