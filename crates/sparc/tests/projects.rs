//! Projects, black-box on both backends: creation and its validation, search, every order, the
//! detail with its live tasks, updates and archiving, and deletion, whose cascade deletes every
//! task of the project through the task's own event.

use std::time::{Duration, Instant};

use crate::support::{TestApp, TestUser, assert_422_at, both_backends, id_of, ids, sorted};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::task::{Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, SkillName, TimeZoneName};
use sparc_store::{CommandBus, EventMetadata};

// ----- helpers -----

async fn create_project(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let created = app
        .post("/api/v1/projects", &user.token, body.clone())
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "creating {body}: {}",
        created.body
    );
    created.body
}

async fn task_in(app: &TestApp, user: &TestUser, project_id: &str, body: Value) -> String {
    let mut body = body;
    body["project_id"] = json!(project_id);
    let created = app.post("/api/v1/tasks", &user.token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

async fn simple_task_in(app: &TestApp, user: &TestUser, project_id: &str) -> String {
    task_in(
        app,
        user,
        project_id,
        json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
    )
    .await
}

// ----- creation -----

both_backends!(
    creating_a_project_answers_201_active_with_no_tasks,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let created = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"name": "  Apollo  ", "description": "to the moon"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.header("etag"), Some("\"1\""));
        let project = &created.body;
        assert_eq!(project["name"], "Apollo", "the name is trimmed");
        assert_eq!(project["description"], "to the moon");
        assert_eq!(project["status"], "active");
        assert_eq!(project["tasks_count"], 0);
        assert_eq!(project["user_id"], alice.id.as_str());
        assert_eq!(project["version"], 1);
        assert!(
            project["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(project["updated_at"].is_string());
        let bare = create_project(&app, &alice, json!({"name": "Bare"})).await;
        assert_eq!(bare["description"], Value::Null);
        let read = app
            .get(
                &format!("/api/v1/projects/{}", id_of(project)),
                &alice.token,
            )
            .await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body["name"], "Apollo");
        assert_eq!(read.body["tasks"], json!([]));
    }
);

both_backends!(
    a_blank_name_or_a_description_over_2000_characters_is_422,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for name in ["", "   ", "\t\n"] {
            let refused = app
                .post("/api/v1/projects", &alice.token, json!({"name": name}))
                .await;
            assert_422_at(&refused, json!(["body", "name"]));
        }
        let missing = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"description": "d"}),
            )
            .await;
        assert_422_at(&missing, json!(["body", "name"]));
        let too_long_name = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"name": "n".repeat(256)}),
            )
            .await;
        assert_422_at(&too_long_name, json!(["body", "name"]));
        let too_long = app
            .post(
                "/api/v1/projects",
                &alice.token,
                json!({"name": "P", "description": "d".repeat(2001)}),
            )
            .await;
        assert_422_at(&too_long, json!(["body", "description"]));
        let list = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(list.body["total"], 0, "nothing was created");
        // The limits themselves are fine (in characters, not bytes).
        create_project(
            &app,
            &alice,
            json!({"name": "é".repeat(255), "description": "é".repeat(2000)}),
        )
        .await;
    }
);

// ----- the list -----

both_backends!(
    search_matches_the_name_or_the_description_case_insensitively,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let apollo = id_of(&create_project(&app, &alice, json!({"name": "Apollo Rocket"})).await);
        let gemini = id_of(
            &create_project(
                &app,
                &alice,
                json!({"name": "Gemini", "description": "A ROCKET program"}),
            )
            .await,
        );
        let mercury = id_of(
            &create_project(
                &app,
                &alice,
                json!({"name": "Mercury", "description": "one capsule, 100% crewed"}),
            )
            .await,
        );
        for (search, expected) in [
            ("rocket", vec![&apollo, &gemini]),
            ("ROCKET", vec![&apollo, &gemini]),
            ("apollo", vec![&apollo]),
            ("CapSule", vec![&mercury]),
            ("100%25", vec![&mercury]),
            ("%25", vec![&mercury]),
            ("_", vec![]),
            ("saturn", vec![]),
        ] {
            let list = app
                .get(&format!("/api/v1/projects?search={search}"), &alice.token)
                .await;
            assert_eq!(list.status, StatusCode::OK, "{search}: {}", list.body);
            let expected: Vec<String> = expected.into_iter().cloned().collect();
            assert_eq!(
                sorted(ids(&list.body, "projects")),
                sorted(expected.clone()),
                "search={search}"
            );
            assert_eq!(list.body["total"], expected.len(), "search={search}");
        }
        let paged = app
            .get("/api/v1/projects?search=rocket&limit=1", &alice.token)
            .await;
        assert_eq!(paged.body["total"], 2);
        assert_eq!(paged.body["has_more"], true);
        assert_eq!(ids(&paged.body, "projects").len(), 1);
    }
);

both_backends!(
    projects_sort_by_each_allowed_order_and_default_to_newest_first,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let b = id_of(&create_project(&app, &alice, json!({"name": "beta"})).await);
        let a = id_of(&create_project(&app, &alice, json!({"name": "Alpha"})).await);
        let c = id_of(&create_project(&app, &alice, json!({"name": "gamma"})).await);
        simple_task_in(&app, &alice, &b).await;
        simple_task_in(&app, &alice, &b).await;
        simple_task_in(&app, &alice, &c).await;
        // A deleted task does not count.
        let gone = simple_task_in(&app, &alice, &a).await;
        let deleted = app
            .delete(&format!("/api/v1/tasks/{gone}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK);
        for (sort, expected) in [
            ("created_at", [&b, &a, &c]),
            ("-created_at", [&c, &a, &b]),
            ("name", [&a, &b, &c]),
            ("-name", [&c, &b, &a]),
            ("tasks_count", [&a, &c, &b]),
            ("-tasks_count", [&b, &c, &a]),
        ] {
            let list = app
                .get(&format!("/api/v1/projects?sort_by={sort}"), &alice.token)
                .await;
            assert_eq!(list.status, StatusCode::OK, "{sort}: {}", list.body);
            let expected: Vec<String> = expected.into_iter().cloned().collect();
            assert_eq!(ids(&list.body, "projects"), expected, "sort_by={sort}");
        }
        let default = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(
            ids(&default.body, "projects"),
            vec![c.clone(), a.clone(), b.clone()]
        );
        let counts: Vec<(String, i64)> = default.body["projects"]
            .as_array()
            .expect("projects")
            .iter()
            .map(|p| (id_of(p), p["tasks_count"].as_i64().expect("a count")))
            .collect();
        assert_eq!(counts, vec![(c, 1), (a, 0), (b, 2)]);
        for query in [
            "sort_by=owner",
            "sort_by=-status",
            "sort_by=",
            "limit=0",
            "limit=101",
            "offset=-1",
            "status=deleted",
        ] {
            let refused = app
                .get(&format!("/api/v1/projects?{query}"), &alice.token)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{query}: {}",
                refused.body
            );
        }
    }
);

// ----- detail and update -----

both_backends!(
    the_detail_lists_the_project_s_live_tasks,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = id_of(&create_project(&app, &alice, json!({"name": "P"})).await);
        let first = simple_task_in(&app, &alice, &project).await;
        let second = simple_task_in(&app, &alice, &project).await;
        let gone = simple_task_in(&app, &alice, &project).await;
        let elsewhere = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        assert_eq!(elsewhere.status, StatusCode::CREATED);
        app.delete(&format!("/api/v1/tasks/{gone}"), &alice.token)
            .await;
        let detail = app
            .get(&format!("/api/v1/projects/{project}"), &alice.token)
            .await;
        assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
        assert_eq!(detail.header("etag"), Some("\"1\""));
        assert_eq!(ids(&detail.body, "tasks"), vec![first, second]);
        assert_eq!(detail.body["tasks_count"], 2);
        for task in detail.body["tasks"].as_array().expect("tasks") {
            assert_eq!(task["project_id"], project.as_str());
            assert_eq!(task["status"], "pending");
        }
        let list = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(list.body["projects"][0]["tasks_count"], 2);
        assert!(list.body["projects"][0].get("tasks").is_none());
        let unknown = app
            .get(
                "/api/v1/projects/0190a1b2-0000-7000-8000-000000000000",
                &alice.token,
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.body["detail"], "Project not found");
    }
);

both_backends!(
    an_empty_update_is_400_and_an_unknown_field_is_422,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = id_of(&create_project(&app, &alice, json!({"name": "P"})).await);
        let path = format!("/api/v1/projects/{project}");
        let empty = app.put(&path, &alice.token, json!({})).await;
        assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
        assert_eq!(empty.body["detail"], "No fields to update");
        let unknown = app
            .put(&path, &alice.token, json!({"name": "Q", "owner": "bob"}))
            .await;
        assert_422_at(&unknown, json!(["body", "owner"]));
        for (body, field) in [
            (json!({"name": "  "}), "name"),
            (json!({"description": "d".repeat(2001)}), "description"),
            (json!({"status": "deleted"}), "status"),
            (json!({"status": "paused"}), "status"),
        ] {
            let refused = app.put(&path, &alice.token, body).await;
            assert_422_at(&refused, json!(["body", field]));
        }
        let read = app.get(&path, &alice.token).await;
        assert_eq!(read.body["name"], "P");
        assert_eq!(read.body["version"], 1, "nothing was recorded");

        let renamed = app
            .put(
                &path,
                &alice.token,
                json!({"name": " Q ", "description": "new"}),
            )
            .await;
        assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
        assert_eq!(renamed.header("etag"), Some("\"2\""));
        assert_eq!(renamed.body["name"], "Q");
        assert_eq!(renamed.body["description"], "new");
        assert_eq!(renamed.body["version"], 2);
        assert_ne!(renamed.body["updated_at"], read.body["updated_at"]);
        let same = app.put(&path, &alice.token, json!({"name": "Q"})).await;
        assert_eq!(same.status, StatusCode::OK);
        assert_eq!(
            same.body["version"], 2,
            "an update that changes nothing records nothing"
        );
    }
);

both_backends!(
    archiving_through_status_keeps_the_project_readable_and_filterable,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let kept = id_of(&create_project(&app, &alice, json!({"name": "Kept"})).await);
        let shelved = id_of(&create_project(&app, &alice, json!({"name": "Shelved"})).await);
        let task = simple_task_in(&app, &alice, &shelved).await;
        let archived = app
            .put(
                &format!("/api/v1/projects/{shelved}"),
                &alice.token,
                json!({"status": "archived"}),
            )
            .await;
        assert_eq!(archived.status, StatusCode::OK, "{}", archived.body);
        assert_eq!(archived.body["status"], "archived");
        assert_eq!(archived.body["tasks_count"], 1);
        let read = app
            .get(&format!("/api/v1/projects/{shelved}"), &alice.token)
            .await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body["status"], "archived");
        let only_archived = app
            .get("/api/v1/projects?status=archived", &alice.token)
            .await;
        assert_eq!(ids(&only_archived.body, "projects"), vec![shelved.clone()]);
        let only_active = app
            .get("/api/v1/projects?status=active", &alice.token)
            .await;
        assert_eq!(ids(&only_active.body, "projects"), vec![kept]);
        let all = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(all.body["total"], 2, "archived projects stay in the list");
        let task_read = app
            .get(&format!("/api/v1/tasks/{task}"), &alice.token)
            .await;
        assert_eq!(
            task_read.body["status"], "pending",
            "archiving touches no task"
        );
        let reactivated = app
            .put(
                &format!("/api/v1/projects/{shelved}"),
                &alice.token,
                json!({"status": "active"}),
            )
            .await;
        assert_eq!(reactivated.body["status"], "active");
        assert_eq!(reactivated.body["version"], 3);
    }
);

// ----- deletion and its cascade -----

/// Polls until every one of `tasks` reads as deleted, for up to 5 seconds.
async fn wait_until_deleted(app: &TestApp, user: &TestUser, tasks: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut pending = Vec::new();
        for task in tasks {
            let read = app.get(&format!("/api/v1/tasks/{task}"), &user.token).await;
            assert_eq!(read.status, StatusCode::OK, "{}", read.body);
            if read.body["status"] != "deleted" {
                pending.push(read.body);
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cascade did not delete these tasks within 5 s: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    deleting_a_project_answers_204_then_404_and_deletes_each_task_through_its_own_event,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = id_of(&create_project(&app, &alice, json!({"name": "Doomed"})).await);
        let pending = simple_task_in(&app, &alice, &project).await;
        let disabled = task_in(
            &app,
            &alice,
            &project,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "status": "disabled"}),
        )
        .await;
        let updated = simple_task_in(&app, &alice, &project).await;
        let changed = app
            .put(
                &format!("/api/v1/tasks/{updated}"),
                &alice.token,
                json!({"params": {"a": 1}}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK);
        let already_deleted = simple_task_in(&app, &alice, &project).await;
        app.delete(&format!("/api/v1/tasks/{already_deleted}"), &alice.token)
            .await;
        let outside = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await;
        let outside = id_of(&outside.body);
        let other_project = id_of(&create_project(&app, &alice, json!({"name": "Other"})).await);
        let neighbour = simple_task_in(&app, &alice, &other_project).await;

        let deleted = app
            .delete(&format!("/api/v1/projects/{project}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
        assert_eq!(deleted.body, Value::Null, "204 has no body");
        let read = app
            .get(&format!("/api/v1/projects/{project}"), &alice.token)
            .await;
        assert_eq!(read.status, StatusCode::NOT_FOUND);
        let list = app.get("/api/v1/projects", &alice.token).await;
        assert_eq!(ids(&list.body, "projects"), vec![other_project.clone()]);
        let again = app
            .delete(&format!("/api/v1/projects/{project}"), &alice.token)
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        let change = app
            .put(
                &format!("/api/v1/projects/{project}"),
                &alice.token,
                json!({"name": "Back"}),
            )
            .await;
        assert_eq!(change.status, StatusCode::NOT_FOUND);

        let cascaded = [pending, disabled, updated];
        wait_until_deleted(&app, &alice, &cascaded).await;
        for task in cascaded.iter().chain([&already_deleted]) {
            let history = app
                .get(&format!("/api/v1/tasks/{task}/history"), &alice.token)
                .await;
            let events = history.body["events"].as_array().expect("events");
            let deletions: Vec<&Value> = events
                .iter()
                .filter(|e| e["event_type"] == "TaskDeleted")
                .collect();
            assert_eq!(deletions.len(), 1, "one TaskDeleted for {task}: {events:?}");
            assert_eq!(
                events.last().expect("an event")["event_type"],
                "TaskDeleted"
            );
        }
        let project_history = app
            .get(&format!("/api/v1/projects/{project}/history"), &alice.token)
            .await;
        let project_deleted = project_history.body["events"]
            .as_array()
            .expect("events")
            .last()
            .expect("an event")
            .clone();
        assert_eq!(project_deleted["event_type"], "ProjectDeleted");
        for task in &cascaded {
            let history = app
                .get(&format!("/api/v1/tasks/{task}/history"), &alice.token)
                .await;
            let deletion = history.body["events"]
                .as_array()
                .expect("events")
                .last()
                .expect("an event")
                .clone();
            assert_eq!(
                deletion["metadata"]["causation_id"],
                project_deleted["position"].to_string(),
                "the project's deletion caused {deletion}"
            );
            assert_eq!(
                deletion["metadata"]["correlation_id"],
                project_deleted["metadata"]["correlation_id"],
                "{deletion}"
            );
        }
        let project_tasks = app
            .get(&format!("/api/v1/tasks?project_id={project}"), &alice.token)
            .await;
        assert_eq!(project_tasks.body["total"], 0);
        let deleted_tasks = app
            .get(
                &format!("/api/v1/tasks?project_id={project}&status=deleted"),
                &alice.token,
            )
            .await;
        assert_eq!(deleted_tasks.body["total"], 4);
        for survivor in [&outside, &neighbour] {
            let read = app
                .get(&format!("/api/v1/tasks/{survivor}"), &alice.token)
                .await;
            assert_eq!(
                read.body["status"], "pending",
                "{survivor} is not in the project"
            );
        }
        let history = app
            .get(&format!("/api/v1/projects/{project}/history"), &alice.token)
            .await;
        assert_eq!(
            history.status,
            StatusCode::OK,
            "the history outlives the project"
        );
        let types: Vec<&str> = history.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event_type"].as_str().expect("a type"))
            .collect();
        assert_eq!(types, ["ProjectCreated", "ProjectDeleted"]);
        let new_task = app
            .post(
                "/api/v1/tasks",
                &alice.token,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *", "project_id": project}),
            )
            .await;
        assert_eq!(
            new_task.status,
            StatusCode::NOT_FOUND,
            "no task joins a deleted project: {}",
            new_task.body
        );
    }
);

both_backends!(
    a_task_scheduled_into_a_project_that_was_deleted_meanwhile_is_deleted_too,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = id_of(&create_project(&app, &alice, json!({"name": "Racing"})).await);
        let deleted = app
            .delete(&format!("/api/v1/projects/{project}"), &alice.token)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);

        // A create that checked the project just before its deletion commits just after it:
        // the same command the API issues, straight on the command bus.
        let task_id = uuid::Uuid::now_v7();
        CommandBus::new(&app.db)
            .create::<Task>(
                &task_id.to_string(),
                TaskCommand::Schedule {
                    task_id,
                    user_id: alice.id.parse().expect("a uuid"),
                    skill_name: SkillName::parse("s").expect("a skill"),
                    schedule_cron: CronSchedule::parse("0 9 * * *").expect("a cron"),
                    timezone: TimeZoneName::parse("UTC").expect("a zone"),
                    params: json!({}),
                    status: TaskStatus::Pending,
                    project_id: Some(project.parse().expect("a uuid")),
                    run: sparc_domain::task::RunPolicy::default(),
                    at: chrono::Utc::now(),
                },
                &EventMetadata::new(alice.id.clone(), uuid::Uuid::now_v7().to_string()),
            )
            .await
            .expect("the task should be scheduled");

        // The task reaches the read model (it was created behind the API's back), then the
        // policy deletes it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let read = app
                .get(&format!("/api/v1/tasks/{task_id}"), &alice.token)
                .await;
            if read.status == StatusCode::OK && read.body["status"] == "deleted" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not deleted within 5 s: {}",
                read.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let history = app
            .get(&format!("/api/v1/tasks/{task_id}/history"), &alice.token)
            .await;
        let types: Vec<&Value> = history.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| &e["event_type"])
            .collect();
        assert_eq!(types, [&json!("TaskScheduled"), &json!("TaskDeleted")]);
    }
);
both_backends!(
    a_project_s_history_lists_its_events_oldest_first_with_metadata,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project = id_of(&create_project(&app, &alice, json!({"name": "P"})).await);
        for name in ["Q", "R", "S"] {
            let renamed = app
                .put(
                    &format!("/api/v1/projects/{project}"),
                    &alice.token,
                    json!({"name": name}),
                )
                .await;
            assert_eq!(renamed.status, StatusCode::OK);
        }
        let history = app
            .get(&format!("/api/v1/projects/{project}/history"), &alice.token)
            .await;
        let events = history.body["events"].as_array().expect("events");
        let sequences: Vec<i64> = events
            .iter()
            .map(|e| e["sequence"].as_i64().expect("a sequence"))
            .collect();
        assert_eq!(sequences, [1, 2, 3, 4]);
        for event in events {
            assert_eq!(event["aggregate_type"], "Project");
            assert_eq!(event["metadata"]["actor"], alice.id.as_str());
            assert!(event["metadata"]["request_id"].is_string());
            assert!(event["recorded_at"].is_string());
        }
        let page = app
            .get(
                &format!("/api/v1/projects/{project}/history?after_version=2&limit=1"),
                &alice.token,
            )
            .await;
        assert_eq!(page.body["events"][0]["sequence"], 3);
        assert_eq!(page.body["events"].as_array().expect("events").len(), 1);
        let second = app
            .get(
                &format!("/api/v1/projects/{project}?version=2"),
                &alice.token,
            )
            .await;
        assert_eq!(second.body["name"], "Q");
        assert_eq!(second.body["version"], 2);
    }
);
