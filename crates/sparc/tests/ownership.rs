//! Ownership (BOLA), black-box on both backends: every endpoint that takes a task, project or
//! execution id answers another user 403 and an unknown id 404, lists only ever hold the caller's
//! own resources, an auditor reads everything and writes nothing, and an admin reads and writes
//! everything.

use crate::support::{Response, TestApp, TestUser, both_backends, id_of, ids};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;

const FORBIDDEN: &str = "You do not have permission to access this resource";
const UNKNOWN: &str = "0190a1b2-0000-7000-8000-000000000000";

/// What the owner has: a project with a task that ran once (its execution finished by an agent)
/// and one run still going.
struct Owned {
    project: String,
    task: String,
    execution: String,
}

async fn owned_resources(app: &TestApp, owner: &TestUser) -> Owned {
    let project = app
        .post(
            "/api/v1/projects",
            &owner.token,
            json!({"name": "Secret plans"}),
        )
        .await;
    assert_eq!(project.status, StatusCode::CREATED);
    let project = id_of(&project.body);
    let task = app
        .post(
            "/api/v1/tasks",
            &owner.token,
            json!({"skill_name": "secret-skill", "schedule_cron": "0 9 * * *", "project_id": project}),
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED);
    let task = id_of(&task.body);
    let run = app
        .post(
            &format!("/api/v1/tasks/{task}/run"),
            &owner.token,
            json!({}),
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED);
    Owned {
        project,
        task,
        execution: id_of(&run.body),
    }
}

/// Every request that reads one of the owner's resources by id, with `{task}` and `{project}`
/// to fill in.
fn reads() -> Vec<&'static str> {
    vec![
        "/api/v1/tasks/{task}",
        "/api/v1/tasks/{task}?version=1",
        "/api/v1/tasks/{task}?as_of=2100-01-01T00:00:00Z",
        "/api/v1/tasks/{task}/executions",
        "/api/v1/tasks/{task}/history",
        "/api/v1/projects/{project}",
        "/api/v1/projects/{project}?version=1",
        "/api/v1/projects/{project}?as_of=2100-01-01T00:00:00Z",
        "/api/v1/projects/{project}/history",
    ]
}

/// Every request that changes one of the owner's resources by id.
fn writes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::PUT,
            "/api/v1/tasks/{task}",
            Some(json!({"params": {"stolen": true}})),
        ),
        (Method::POST, "/api/v1/tasks/{task}/run", Some(json!({}))),
        (Method::DELETE, "/api/v1/tasks/{task}", None),
        (
            Method::PUT,
            "/api/v1/projects/{project}",
            Some(json!({"name": "Mine now"})),
        ),
        (Method::DELETE, "/api/v1/projects/{project}", None),
    ]
}

fn fill(path: &str, task: &str, project: &str) -> String {
    path.replace("{task}", task).replace("{project}", project)
}

async fn call(
    app: &TestApp,
    user: &TestUser,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    app.call(method, path, Some(&user.token), body).await
}

/// The owner's resources are exactly as they were made.
async fn assert_untouched(app: &TestApp, owner: &TestUser, owned: &Owned) {
    let task = app
        .get(&format!("/api/v1/tasks/{}", owned.task), &owner.token)
        .await;
    assert_eq!(task.status, StatusCode::OK);
    assert_eq!(
        task.body["version"], 2,
        "created and run, nothing else: {}",
        task.body
    );
    assert_eq!(task.body["status"], "running");
    assert_eq!(task.body["params"], json!({}));
    let executions = app
        .get(
            &format!("/api/v1/tasks/{}/executions", owned.task),
            &owner.token,
        )
        .await;
    assert_eq!(executions.body["total"], 1, "no second run");
    let project = app
        .get(&format!("/api/v1/projects/{}", owned.project), &owner.token)
        .await;
    assert_eq!(project.status, StatusCode::OK);
    assert_eq!(project.body["version"], 1);
    assert_eq!(project.body["name"], "Secret plans");
}

both_backends!(
    another_user_gets_403_on_every_endpoint_of_someone_elses_resources_and_404_on_unknown_ids,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let owned = owned_resources(&app, &alice).await;
        for path in reads() {
            let theirs = call(
                &app,
                &bob,
                Method::GET,
                &fill(path, &owned.task, &owned.project),
                None,
            )
            .await;
            assert_eq!(
                theirs.status,
                StatusCode::FORBIDDEN,
                "GET {path}: {}",
                theirs.body
            );
            assert_eq!(theirs.body["detail"], FORBIDDEN, "GET {path}");
            let unknown = call(&app, &bob, Method::GET, &fill(path, UNKNOWN, UNKNOWN), None).await;
            assert_eq!(
                unknown.status,
                StatusCode::NOT_FOUND,
                "GET {path} unknown: {}",
                unknown.body
            );
        }
        for (method, path, body) in writes() {
            let theirs = call(
                &app,
                &bob,
                method.clone(),
                &fill(path, &owned.task, &owned.project),
                body.clone(),
            )
            .await;
            assert_eq!(
                theirs.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {}",
                theirs.body
            );
            assert_eq!(theirs.body["detail"], FORBIDDEN, "{method} {path}");
            let unknown = call(
                &app,
                &bob,
                method.clone(),
                &fill(path, UNKNOWN, UNKNOWN),
                body,
            )
            .await;
            assert_eq!(
                unknown.status,
                StatusCode::NOT_FOUND,
                "{method} {path} unknown: {}",
                unknown.body
            );
        }
        // Even an empty change is refused for ownership first, as for tasks.
        for path in ["/api/v1/tasks/{task}", "/api/v1/projects/{project}"] {
            let empty = app
                .put(
                    &fill(path, &owned.task, &owned.project),
                    &bob.token,
                    json!({}),
                )
                .await;
            assert_eq!(
                empty.status,
                StatusCode::FORBIDDEN,
                "PUT {path} {{}}: {}",
                empty.body
            );
            let unknown = app
                .put(&fill(path, UNKNOWN, UNKNOWN), &bob.token, json!({}))
                .await;
            assert_eq!(unknown.status, StatusCode::NOT_FOUND, "PUT {path} {{}}");
        }
        // Nor can Bob attach his tasks to Alice's project.
        let into_theirs = app
            .post(
                "/api/v1/tasks",
                &bob.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "project_id": owned.project}),
            )
            .await;
        assert_eq!(
            into_theirs.status,
            StatusCode::FORBIDDEN,
            "{}",
            into_theirs.body
        );
        let own = app
            .post(
                "/api/v1/tasks",
                &bob.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        let moved = app
            .put(
                &format!("/api/v1/tasks/{}", id_of(&own.body)),
                &bob.token,
                json!({"project_id": owned.project}),
            )
            .await;
        assert_eq!(moved.status, StatusCode::FORBIDDEN, "{}", moved.body);
        // Nor finish Alice's execution through the agents' endpoint without the agent role.
        let activity = app
            .post(
                "/api/v1/agents/activity",
                &bob.token,
                json!({"agent_id": UNKNOWN, "task_id": owned.task, "execution_id": owned.execution, "status": "success"}),
            )
            .await;
        assert_eq!(activity.status, StatusCode::FORBIDDEN);
        assert_untouched(&app, &alice, &owned).await;
        let task_history = app
            .get(
                &format!("/api/v1/tasks/{}/history", owned.task),
                &alice.token,
            )
            .await;
        assert_eq!(
            task_history.body["events"]
                .as_array()
                .expect("events")
                .len(),
            2
        );
    }
);

both_backends!(
    another_user_s_lists_never_hold_someone_elses_resources,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let owned = owned_resources(&app, &alice).await;
        let deleted = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        app.delete(
            &format!("/api/v1/tasks/{}", id_of(&deleted.body)),
            &alice.token,
        )
        .await;
        let bobs_project = app
            .post(
                "/api/v1/projects",
                &bob.token,
                json!({"name": "Secret too"}),
            )
            .await;
        let bobs_project = id_of(&bobs_project.body);
        let bobs_task = app
            .post(
                "/api/v1/tasks",
                &bob.token,
                json!({"skill_name": "secret-skill", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        let bobs_task = id_of(&bobs_task.body);
        for (path, key, expected) in [
            ("/api/v1/tasks", "tasks", vec![bobs_task.clone()]),
            ("/api/v1/tasks?status=running", "tasks", vec![]),
            ("/api/v1/tasks?status=deleted", "tasks", vec![]),
            (
                "/api/v1/tasks?skill_name=secret-skill",
                "tasks",
                vec![bobs_task.clone()],
            ),
            (
                &format!("/api/v1/tasks?project_id={}", owned.project),
                "tasks",
                vec![],
            ),
            ("/api/v1/projects", "projects", vec![bobs_project.clone()]),
            (
                "/api/v1/projects?search=secret",
                "projects",
                vec![bobs_project.clone()],
            ),
            (
                "/api/v1/projects?sort_by=-tasks_count",
                "projects",
                vec![bobs_project.clone()],
            ),
        ] {
            let list = app.get(path, &bob.token).await;
            assert_eq!(list.status, StatusCode::OK, "{path}: {}", list.body);
            assert_eq!(ids(&list.body, key), expected, "{path}");
            assert_eq!(
                list.body["total"],
                expected.len(),
                "{path}: total counts only Bob's"
            );
        }
        let alices = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(ids(&alices.body, "tasks"), vec![owned.task.clone()]);
    }
);

both_backends!(
    an_agent_s_execution_history_shows_a_user_only_their_own_executions,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let service = app.user_with_role("bot", Role::Agent).await;
        let auditor = app.user_with_role("eye", Role::Auditor).await;
        let registered = app
            .post(
                "/api/v1/agents",
                &service.token,
                json!({"name": "shared", "type": "coder"}),
            )
            .await;
        let agent = id_of(&registered.body);
        let mut runs = std::collections::HashMap::new();
        for (user, duration) in [(&alice, 100), (&bob, 300)] {
            let task = app
                .post(
                    "/api/v1/tasks",
                    &user.token,
                    json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
                )
                .await;
            let task = id_of(&task.body);
            let started = app
                .post(
                    "/api/v1/agents/activity",
                    &service.token,
                    json!({"agent_id": agent, "task_id": task, "status": "running"}),
                )
                .await;
            assert_eq!(started.status, StatusCode::CREATED);
            let execution = started.body["execution_id"]
                .as_str()
                .expect("an id")
                .to_owned();
            let finished = app
                .post(
                    "/api/v1/agents/activity",
                    &service.token,
                    json!({"agent_id": agent, "task_id": task, "execution_id": execution,
                           "status": "success", "output": format!("{} secret output", user.username),
                           "duration_ms": duration}),
                )
                .await;
            assert_eq!(finished.status, StatusCode::CREATED);
            runs.insert(user.username.clone(), execution);
        }
        for (viewer, expected) in [
            (&alice, vec![runs["alice"].clone()]),
            (&bob, vec![runs["bob"].clone()]),
        ] {
            let detail = app
                .get(&format!("/api/v1/agents/{agent}"), &viewer.token)
                .await;
            assert_eq!(detail.status, StatusCode::OK);
            assert_eq!(
                ids(&detail.body, "execution_history"),
                expected,
                "{} sees only their own runs",
                viewer.username
            );
            assert_eq!(detail.body["success_rate"], 1.0);
            assert_eq!(
                detail.body["avg_duration_ms"], 200.0,
                "statistics describe the agent"
            );
        }
        for viewer in [&auditor, &service] {
            let detail = app
                .get(&format!("/api/v1/agents/{agent}"), &viewer.token)
                .await;
            let mut seen = ids(&detail.body, "execution_history");
            seen.sort();
            let mut all: Vec<String> = runs.values().cloned().collect();
            all.sort();
            assert_eq!(seen, all, "{} sees every run", viewer.username);
        }
    }
);

both_backends!(
    an_auditor_reads_everything_and_writes_nothing,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let auditor = app.user_with_role("eye", Role::Auditor).await;
        let owned = owned_resources(&app, &alice).await;
        for path in reads() {
            let read = call(
                &app,
                &auditor,
                Method::GET,
                &fill(path, &owned.task, &owned.project),
                None,
            )
            .await;
            assert_eq!(read.status, StatusCode::OK, "GET {path}: {}", read.body);
        }
        let executions = app
            .get(
                &format!("/api/v1/tasks/{}/executions", owned.task),
                &auditor.token,
            )
            .await;
        assert_eq!(
            ids(&executions.body, "executions"),
            vec![owned.execution.clone()]
        );
        let tasks = app.get("/api/v1/tasks", &auditor.token).await;
        assert!(ids(&tasks.body, "tasks").contains(&owned.task));
        let projects = app.get("/api/v1/projects", &auditor.token).await;
        assert!(ids(&projects.body, "projects").contains(&owned.project));
        for (method, path, body) in writes() {
            let refused = call(
                &app,
                &auditor,
                method.clone(),
                &fill(path, &owned.task, &owned.project),
                body,
            )
            .await;
            assert_eq!(
                refused.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {}",
                refused.body
            );
            assert_eq!(refused.body["detail"], FORBIDDEN);
        }
        let into_theirs = app
            .post(
                "/api/v1/tasks",
                &auditor.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "project_id": owned.project}),
            )
            .await;
        assert_eq!(into_theirs.status, StatusCode::FORBIDDEN);
        assert_untouched(&app, &alice, &owned).await;
    }
);

both_backends!(
    an_admin_reads_and_writes_other_users_resources,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let owned = owned_resources(&app, &alice).await;
        for path in reads() {
            let read = call(
                &app,
                &admin,
                Method::GET,
                &fill(path, &owned.task, &owned.project),
                None,
            )
            .await;
            assert_eq!(read.status, StatusCode::OK, "GET {path}: {}", read.body);
        }
        let tasks = app.get("/api/v1/tasks", &admin.token).await;
        assert!(ids(&tasks.body, "tasks").contains(&owned.task));
        let updated = app
            .put(
                &format!("/api/v1/tasks/{}", owned.task),
                &admin.token,
                json!({"params": {"by": "admin"}}),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        assert_eq!(
            updated.body["user_id"],
            alice.id.as_str(),
            "the owner stays the owner"
        );
        let renamed = app
            .put(
                &format!("/api/v1/projects/{}", owned.project),
                &admin.token,
                json!({"name": "Reviewed"}),
            )
            .await;
        assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
        let history = app
            .get(
                &format!("/api/v1/tasks/{}/history", owned.task),
                &alice.token,
            )
            .await;
        let last = history.body["events"]
            .as_array()
            .expect("events")
            .last()
            .expect("an event")
            .clone();
        assert_eq!(
            last["metadata"]["actor"],
            admin.id.as_str(),
            "the log names the admin"
        );

        let spare = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        let spare = id_of(&spare.body);
        let run = app
            .post(
                &format!("/api/v1/tasks/{spare}/run"),
                &admin.token,
                json!({}),
            )
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
        let deleted = app
            .delete(&format!("/api/v1/tasks/{}", owned.task), &admin.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        let project_deleted = app
            .delete(&format!("/api/v1/projects/{}", owned.project), &admin.token)
            .await;
        assert_eq!(project_deleted.status, StatusCode::NO_CONTENT);
        let read = app
            .get(&format!("/api/v1/tasks/{}", owned.task), &alice.token)
            .await;
        assert_eq!(read.body["status"], "deleted");
    }
);
