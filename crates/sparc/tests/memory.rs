//! The agents' memory, black-box on both backends: the five `/api/v1/memory` endpoints with
//! their validation and ownership, the fallback read model (full-text search, best first), the
//! Memory MCP server over the real protocol (the npm `@modelcontextprotocol/server-memory`,
//! started and killed by the tests), the circuit breaker opening on a killed, hanging or
//! malformed server and closing when it is back, entries stored meanwhile synced to it in log
//! order exactly once (across a restart too), and `POST /agents/activity` answering
//! `stored_in_memory_mcp` and `broadcasted` truthfully.

use std::time::{Duration, Instant};

use crate::support::memory_server::{HttpMemoryServer, MemoryServer, Misbehaviour, eventually};
use crate::support::{Backend, TestApp, TestUser, assert_422_at, both_backends, id_of};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::user::Role;

// ----- helpers -----

/// How long the breaker stays open in a test whose server comes back (short, so the test sees
/// it close), and in one whose server never behaves (long, so it stays open while the test
/// looks).
const REOPENS_SOON: u64 = 1;
const STAYS_OPEN: u64 = 60;

/// The settings of a service using `server`, whose breaker stays open `open_seconds`.
fn server_settings(
    server: &MemoryServer,
    open_seconds: u64,
) -> impl FnOnce(&mut sparc::config::Settings) + use<> {
    let command = server.command();
    move |settings| {
        settings.api.memory_mcp_command = Some(command);
        settings.api.memory_breaker_open_seconds = open_seconds;
    }
}

/// Runs `body` against a service on `backend` using a server made by `make`; skips (or fails
/// in CI) when node or the package is missing.
async fn run_with<F, Fut>(
    backend: Backend,
    make: fn() -> Option<MemoryServer>,
    open_seconds: u64,
    body: F,
) where
    F: FnOnce(TestApp, MemoryServer) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(server) = make() else { return };
    let Some(app) = TestApp::spawn_with(backend, server_settings(&server, open_seconds)).await
    else {
        return;
    };
    body(app, server).await;
}

/// `with_server!(name, make, open_seconds, |app, server| async move { … })`: the test on both
/// backends.
macro_rules! with_server {
    ($name:ident, $make:expr, $open_seconds:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run_with(Backend::Postgres, $make, $open_seconds, $body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run_with(Backend::Sqlite, $make, $open_seconds, $body).await;
            }
        }
    };
}

async fn store(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let stored = app
        .post("/api/v1/memory/store", &user.token, body.clone())
        .await;
    assert_eq!(
        stored.status,
        StatusCode::CREATED,
        "storing {body}: {}",
        stored.body
    );
    stored.body
}

async fn search(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let found = app
        .post("/api/v1/memory/search", &user.token, body.clone())
        .await;
    assert_eq!(
        found.status,
        StatusCode::OK,
        "searching {body}: {}",
        found.body
    );
    found.body
}

async fn memory_health(app: &TestApp, user: &TestUser) -> Value {
    let health = app.get("/api/v1/memory/health", &user.token).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    health.body
}

/// Waits until the service has connected to its Memory MCP server (the supervisor starts it
/// with the service; node takes a moment).
async fn until_connected(app: &TestApp, user: &TestUser) {
    let connected = eventually(Duration::from_secs(20), || async move {
        memory_health(app, user).await["mcp_available"] == true
    })
    .await;
    assert!(
        connected,
        "the Memory MCP server should connect: {}",
        memory_health(app, user).await
    );
}

async fn task(app: &TestApp, owner: &TestUser, project: Option<&str>) -> String {
    let mut body = json!({"skill_name": "s", "schedule_cron": "0 9 * * *"});
    if let Some(project) = project {
        body["project_id"] = json!(project);
    }
    let created = app.post("/api/v1/tasks", &owner.token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

async fn project(app: &TestApp, owner: &TestUser) -> String {
    let created = app
        .post("/api/v1/projects", &owner.token, json!({"name": "p"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

fn result_ids(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results in {found}"))
        .iter()
        .map(id_of)
        .collect()
}

/// How often `name` is an entity of the server's file.
fn held(server: &MemoryServer, id: &str) -> usize {
    let name = format!("mem:{id}");
    server.entity_names().iter().filter(|n| **n == name).count()
}

// ----- without a server: the fallback alone -----

both_backends!(
    without_a_server_memory_runs_on_the_fallback_and_ranks_full_text_matches_best_first,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let both = store(
            &app,
            &alice,
            json!({"content": "axum extractors run in declaration order", "intent": "research"}),
        )
        .await;
        assert_eq!(both["status"], "success");
        assert_eq!(both["storage"], "fallback");
        assert!(both.get("warning").is_none(), "{both}");
        assert_eq!(both["metadata"]["why"]["intent"], "research");
        assert_eq!(both["metadata"]["who"]["user_id"], alice.id.as_str());
        assert!(both["metadata"]["when"]["unix_timestamp"].is_i64());
        let one = store(
            &app,
            &alice,
            json!({"content": "extractors of tower services", "intent": "implementation"}),
        )
        .await;
        store(
            &app,
            &alice,
            json!({"content": "nothing to see here", "intent": "planning"}),
        )
        .await;

        let found = search(&app, &alice, json!({"query": "axum extractors"})).await;
        assert_eq!(found["source"], "fallback");
        assert_eq!(result_ids(&found), vec![id_of(&both), id_of(&one)]);
        assert_eq!(found["total_results"], 2);
        let scores: Vec<f64> = found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["similarity_score"].as_f64().expect("a score"))
            .collect();
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
        assert!(scores[0] > scores[1], "best first: {scores:?}");
        // Narrowed to one intent.
        let research = search(
            &app,
            &alice,
            json!({"query": "extractors", "task_type": "implementation"}),
        )
        .await;
        assert_eq!(result_ids(&research), vec![id_of(&one)]);

        let health = memory_health(&app, &alice).await;
        assert_eq!(health["circuit_breaker_state"], "CLOSED");
        assert_eq!(health["mcp_available"], false);
        assert_eq!(health["fallback_available"], true);
        assert_eq!(health["pending_sync"], 0);
        assert_eq!(health["status"], "healthy");
        assert!(health["stats"]["fallback_requests"].as_u64().unwrap() >= 4);
        let service = app
            .call(reqwest::Method::GET, "/api/v1/health", None, None)
            .await;
        assert_eq!(service.body["memory_mcp"], "disabled");
    }
);

both_backends!(
    memory_requests_are_validated_with_the_field_at_fault,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bad = [
            (
                json!({"content": "", "intent": "research"}),
                json!(["body", "content"]),
            ),
            (
                json!({"content": "x", "intent": "whim"}),
                json!(["body", "intent"]),
            ),
            (json!({"content": "x"}), json!(["body", "intent"])),
            (
                json!({"content": "x", "intent": "research", "additional_metadata": [1]}),
                json!(["body", "additional_metadata"]),
            ),
            (
                json!({"content": "x", "intent": "research", "task_id": "nope"}),
                json!(["body", "task_id"]),
            ),
        ];
        for (body, loc) in bad {
            let refused = app.post("/api/v1/memory/store", &alice.token, body).await;
            assert_422_at(&refused, loc);
        }
        let bad_searches = [
            (json!({"query": ""}), json!(["body", "query"])),
            (json!({"query": "x", "limit": 0}), json!(["body", "limit"])),
            (json!({"query": "x", "limit": 51}), json!(["body", "limit"])),
            (
                json!({"query": "x", "task_type": "whim"}),
                json!(["body", "task_type"]),
            ),
            (json!({"query": "x".repeat(1001)}), json!(["body", "query"])),
        ];
        for (body, loc) in bad_searches {
            let refused = app.post("/api/v1/memory/search", &alice.token, body).await;
            assert_422_at(&refused, loc);
        }
        let anonymous = app
            .call(reqwest::Method::GET, "/api/v1/memory/health", None, None)
            .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    }
);

both_backends!(
    a_user_sees_only_their_own_memories_and_admins_see_all,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let auditor = app.user_with_role("eve", Role::Auditor).await;
        let project_id = project(&app, &alice).await;
        let task_id = task(&app, &alice, Some(&project_id)).await;
        let mine = store(
            &app,
            &alice,
            json!({"content": "secret plan of alice", "intent": "planning", "task_id": task_id}),
        )
        .await;
        // The task's project is the entry's project.
        assert_eq!(
            mine["metadata"]["project"]["project_id"],
            project_id.as_str()
        );
        store(
            &app,
            &bob,
            json!({"content": "secret plan of bob", "intent": "planning"}),
        )
        .await;
        for (user, expected) in [(&alice, 1), (&bob, 1), (&admin, 2), (&auditor, 2)] {
            let found = search(&app, user, json!({"query": "secret plan"})).await;
            assert_eq!(
                found["total_results"], expected,
                "{}: {found}",
                user.username
            );
        }
        // Another user's task or project: 403, as elsewhere; an unknown one: 404.
        let foreign = app
            .post(
                "/api/v1/memory/store",
                &bob.token,
                json!({"content": "x", "intent": "testing", "task_id": task_id}),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN);
        let foreign = app
            .post(
                "/api/v1/memory/search",
                &bob.token,
                json!({"query": "x", "project_id": project_id}),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN);
        for path in [
            format!("/api/v1/memory/task/{task_id}"),
            format!("/api/v1/memory/projects/{project_id}/summary"),
        ] {
            assert_eq!(
                app.get(&path, &bob.token).await.status,
                StatusCode::FORBIDDEN,
                "{path}"
            );
            assert_eq!(
                app.get(&path, &admin.token).await.status,
                StatusCode::OK,
                "{path}"
            );
        }
        let unknown = uuid::Uuid::new_v4();
        let missing = app
            .post(
                "/api/v1/memory/store",
                &alice.token,
                json!({"content": "x", "intent": "testing", "task_id": unknown}),
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        for path in [
            format!("/api/v1/memory/task/{unknown}"),
            format!("/api/v1/memory/projects/{unknown}/summary"),
        ] {
            assert_eq!(
                app.get(&path, &alice.token).await.status,
                StatusCode::NOT_FOUND
            );
        }
        // Auditors see the store in the log; bob does not see alice's.
        let audit = app
            .get("/api/v1/audit/events?aggregate_type=Memory", &auditor.token)
            .await;
        assert_eq!(
            audit.body["events"].as_array().unwrap().len(),
            2,
            "{}",
            audit.body
        );
        let audit = app
            .get("/api/v1/audit/events?aggregate_type=Memory", &bob.token)
            .await;
        let events = audit.body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{}", audit.body);
        assert_eq!(events[0]["event_type"], "MemoryStored");
    }
);

both_backends!(
    a_project_summary_counts_by_intent_and_agent_and_shows_the_newest_ten,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let project_id = project(&app, &alice).await;
        let task_id = task(&app, &alice, Some(&project_id)).await;
        let other_task = task(&app, &alice, Some(&project_id)).await;
        let agent = uuid::Uuid::new_v4();
        let mut stored = Vec::new();
        for n in 0..12 {
            let body = json!({
                "content": format!("note {n}"),
                "intent": if n % 3 == 0 { "testing" } else { "bugfix" },
                "task_id": if n == 11 { &other_task } else { &task_id },
                "additional_metadata": if n < 4 { json!({"agent_id": agent}) } else { json!({}) },
            });
            stored.push(id_of(&store(&app, &alice, body).await));
        }
        let summary = app
            .get(
                &format!("/api/v1/memory/projects/{project_id}/summary"),
                &alice.token,
            )
            .await;
        assert_eq!(summary.status, StatusCode::OK, "{}", summary.body);
        assert_eq!(summary.body["total_entries"], 12);
        assert_eq!(
            summary.body["by_intent"],
            json!({"testing": 4, "bugfix": 8})
        );
        assert_eq!(summary.body["by_agent"][agent.to_string()], 4);
        assert_eq!(summary.body["by_agent"]["none"], 8);
        let recent: Vec<String> = summary.body["recent"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect();
        let newest: Vec<String> = stored.iter().rev().take(10).cloned().collect();
        assert_eq!(recent, newest);

        let of_task = app
            .get(&format!("/api/v1/memory/task/{task_id}"), &alice.token)
            .await;
        assert_eq!(of_task.status, StatusCode::OK, "{}", of_task.body);
        assert_eq!(of_task.body["source"], "fallback");
        assert_eq!(of_task.body["task"]["total_entries"], 11);
        assert_eq!(
            of_task.body["related_tasks"],
            json!([{"task_id": other_task, "entries": 1}])
        );
        let alone = app
            .get(
                &format!("/api/v1/memory/task/{task_id}?include_related=false"),
                &alice.token,
            )
            .await;
        assert_eq!(alone.body["related_tasks"], json!([]));
    }
);

// ----- the real server -----

with_server!(
    stores_reach_the_server_and_are_found_through_it,
    MemoryServer::real,
    REOPENS_SOON,
    |app: TestApp, server: MemoryServer| async move {
        let alice = app.user("alice").await;
        until_connected(&app, &alice).await;
        let task_id = task(&app, &alice, None).await;
        let stored = store(
            &app,
            &alice,
            json!({"content": "tokio select is biased on request", "intent": "research", "task_id": task_id}),
        )
        .await;
        assert_eq!(stored["storage"], "memory_mcp", "{stored}");
        assert_eq!(stored["status"], "success");
        assert_eq!(held(&server, stored["id"].as_str().unwrap()), 1);
        let found = search(&app, &alice, json!({"query": "select biased"})).await;
        assert_eq!(found["source"], "memory_mcp", "{found}");
        assert_eq!(result_ids(&found), vec![id_of(&stored)]);
        assert_eq!(found["results"][0]["similarity_score"], 1.0);
        // Bob's search through the server does not see alice's entry.
        let bob = app.user("bob").await;
        let theirs = search(&app, &bob, json!({"query": "select biased"})).await;
        assert_eq!(theirs["total_results"], 0);
        let of_task = app
            .get(&format!("/api/v1/memory/task/{task_id}"), &alice.token)
            .await;
        assert_eq!(of_task.body["source"], "memory_mcp", "{}", of_task.body);
        assert_eq!(of_task.body["task"]["total_entries"], 1);
        let health = memory_health(&app, &alice).await;
        assert_eq!(health["circuit_breaker_state"], "CLOSED");
        assert_eq!(health["mcp_available"], true);
        assert_eq!(health["status"], "healthy");
        assert!(health["last_check"].is_string());
        let service = app
            .call(reqwest::Method::GET, "/api/v1/health", None, None)
            .await;
        assert_eq!(service.body["memory_mcp"], "available");
    }
);

with_server!(
    a_killed_server_opens_the_breaker_the_fallback_answers_and_its_return_syncs_what_it_missed,
    MemoryServer::real,
    REOPENS_SOON,
    |app: TestApp, server: MemoryServer| async move {
        let alice = app.user("alice").await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let (mut admin_socket, _) = app.ws(&admin.token, None).await;
        until_connected(&app, &alice).await;
        let before = store(
            &app,
            &alice,
            json!({"content": "before the outage", "intent": "testing"}),
        )
        .await;
        assert_eq!(before["storage"], "memory_mcp");

        server.take_down();
        let mut pending = Vec::new();
        for n in 0..3 {
            let stored = store(
                &app,
                &alice,
                json!({"content": format!("during the outage {n}"), "intent": "testing"}),
            )
            .await;
            assert_eq!(stored["storage"], "fallback", "{stored}");
            assert_eq!(stored["status"], "degraded");
            assert!(stored["warning"].is_string());
            pending.push(id_of(&stored));
        }
        // Within three calls the breaker is open; the endpoints answer from the fallback.
        let health = memory_health(&app, &alice).await;
        assert_eq!(health["circuit_breaker_state"], "OPEN", "{health}");
        assert_eq!(health["mcp_available"], false);
        assert_eq!(health["pending_sync"], 3);
        assert_eq!(health["status"], "degraded");
        assert!(health["stats"]["circuit_opens"].as_u64().unwrap() >= 1);
        let found = search(&app, &alice, json!({"query": "outage"})).await;
        assert_eq!(found["source"], "fallback");
        assert_eq!(found["total_results"], 4);
        let service = app
            .call(reqwest::Method::GET, "/api/v1/health", None, None)
            .await;
        assert_ne!(service.body["memory_mcp"], "available");
        let metrics = app
            .request(reqwest::Method::GET, "/metrics", None)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("sparc_memory_mcp_breaker_state{state=\"OPEN\"} 1")
                || metrics.contains("sparc_memory_mcp_breaker_state{state=\"HALF_OPEN\"} 1"),
            "{metrics}"
        );
        let opened = breaker_frame(&mut admin_socket).await;
        assert_eq!(opened["payload"]["to"], "OPEN", "{opened}");

        // Back: within the open interval and a couple of calls it closes, and the entries
        // stored meanwhile reach the server once each, in the order they were stored.
        server.let_up();
        let started = Instant::now();
        let (app_ref, alice_ref) = (&app, &alice);
        let synced = eventually(Duration::from_secs(20), || async move {
            let health = memory_health(app_ref, alice_ref).await;
            search(app_ref, alice_ref, json!({"query": "outage"})).await;
            health["pending_sync"] == 0 && health["circuit_breaker_state"] == "CLOSED"
        })
        .await;
        assert!(
            synced,
            "synced and closed: {}",
            memory_health(&app, &alice).await
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        let names = server.entity_names();
        for id in pending.iter().chain([&id_of(&before)]) {
            assert_eq!(held(&server, id), 1, "{id} in {names:?}");
        }
        let order: Vec<&String> = names
            .iter()
            .filter(|n| pending.iter().any(|id| n.ends_with(id.as_str())))
            .collect();
        let expected: Vec<String> = pending.iter().map(|id| format!("mem:{id}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>(), "log order");
        let closed = loop {
            let frame = breaker_frame(&mut admin_socket).await;
            if frame["payload"]["to"] == "CLOSED" {
                break frame;
            }
        };
        assert_eq!(closed["type"], "memory_circuit_breaker");
        let found = search(&app, &alice, json!({"query": "outage"})).await;
        assert_eq!(found["source"], "memory_mcp", "{found}");
        assert_eq!(found["total_results"], 4);
    }
);

/// The next `memory_circuit_breaker` frame (changes and pings skipped).
async fn breaker_frame(socket: &mut crate::support::WsClient) -> Value {
    loop {
        let frame = socket.frame_within(Duration::from_secs(20)).await;
        if frame["type"] == "memory_circuit_breaker" {
            return frame;
        }
    }
}

with_server!(
    a_restart_in_the_middle_of_a_sync_repeats_nothing_and_loses_nothing,
    MemoryServer::real,
    REOPENS_SOON,
    |mut app: TestApp, server: MemoryServer| async move {
        let alice = app.user("alice").await;
        server.take_down();
        let mut pending = Vec::new();
        for n in 0..4 {
            let stored = store(
                &app,
                &alice,
                json!({"content": format!("kept {n}"), "intent": "analysis"}),
            )
            .await;
            pending.push(id_of(&stored));
        }
        app.restart_with(|_| {}).await;
        // The second entry reached the server before the crash, but its sync was not recorded.
        server.add_entity_offline(&format!("mem:{}", pending[1]), "analysis");
        server.let_up();
        app.restart_with(server_settings(&server, REOPENS_SOON))
            .await;
        let (app_ref, alice_ref) = (&app, &alice);
        let synced = eventually(Duration::from_secs(20), || async move {
            memory_health(app_ref, alice_ref).await["pending_sync"] == 0
        })
        .await;
        assert!(synced, "{}", memory_health(&app, &alice).await);
        for id in &pending {
            assert_eq!(held(&server, id), 1, "{id}: {:?}", server.entity_names());
        }
        // Another restart pushes nothing again: each entry was marked synced once.
        app.restart_with(server_settings(&server, REOPENS_SOON))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let admin = app.user_with_role("root", Role::Admin).await;
        let synced = app
            .get("/api/v1/audit/events?event_type=MemorySynced", &admin.token)
            .await;
        assert_eq!(
            synced.body["events"].as_array().unwrap().len(),
            4,
            "{}",
            synced.body
        );
        assert_eq!(memory_health(&app, &alice).await["pending_sync"], 0);
    }
);

fn hanging() -> Option<MemoryServer> {
    MemoryServer::fake(Misbehaviour::Hang)
}

with_server!(
    a_hanging_server_is_cut_off_by_the_timeouts,
    hanging,
    STAYS_OPEN,
    |app: TestApp, server: MemoryServer| async move {
        let _running = &server;
        let alice = app.user("alice").await;
        until_connected(&app, &alice).await;
        for n in 0..3 {
            let started = Instant::now();
            let stored = store(
                &app,
                &alice,
                json!({"content": format!("slow {n}"), "intent": "testing"}),
            )
            .await;
            assert_eq!(stored["storage"], "fallback", "{stored}");
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "{:?}",
                started.elapsed()
            );
        }
        let started = Instant::now();
        let found = search(&app, &alice, json!({"query": "slow"})).await;
        assert_eq!(found["source"], "fallback");
        assert_eq!(found["total_results"], 3);
        assert!(started.elapsed() < Duration::from_millis(2500));
        let health = memory_health(&app, &alice).await;
        assert_eq!(health["circuit_breaker_state"], "OPEN", "{health}");
        assert_eq!(health["mcp_available"], false);
    }
);

fn garbage() -> Option<MemoryServer> {
    MemoryServer::fake(Misbehaviour::Garbage)
}

fn wrong_shape() -> Option<MemoryServer> {
    MemoryServer::fake(Misbehaviour::Shape)
}

fn not_json() -> Option<MemoryServer> {
    MemoryServer::fake(Misbehaviour::Text)
}

/// Three stores against a malformed server: each answered from the fallback within its
/// timeout, and the breaker open after them.
async fn malformed_answers_open_the_breaker(app: TestApp) {
    let alice = app.user("alice").await;
    until_connected(&app, &alice).await;
    for n in 0..3 {
        let started = Instant::now();
        let stored = store(
            &app,
            &alice,
            json!({"content": format!("odd {n}"), "intent": "testing"}),
        )
        .await;
        assert_eq!(stored["storage"], "fallback", "{stored}");
        assert!(started.elapsed() < Duration::from_millis(2500));
    }
    let health = memory_health(&app, &alice).await;
    assert_eq!(health["circuit_breaker_state"], "OPEN", "{health}");
    let found = search(&app, &alice, json!({"query": "odd"})).await;
    assert_eq!(found["source"], "fallback");
    assert_eq!(found["total_results"], 3);
}

with_server!(
    a_server_answering_lines_that_are_not_json_opens_the_breaker,
    garbage,
    STAYS_OPEN,
    |app: TestApp, server: MemoryServer| async move {
        let _running = &server;
        malformed_answers_open_the_breaker(app).await
    }
);

with_server!(
    a_server_answering_results_of_the_wrong_shape_opens_the_breaker,
    wrong_shape,
    STAYS_OPEN,
    |app: TestApp, server: MemoryServer| async move {
        let _running = &server;
        malformed_answers_open_the_breaker(app).await
    }
);

with_server!(
    a_server_answering_tool_text_that_is_not_json_opens_the_breaker,
    not_json,
    STAYS_OPEN,
    |app: TestApp, server: MemoryServer| async move {
        let _running = &server;
        malformed_answers_open_the_breaker(app).await
    }
);

// ----- agent activity -----

/// An agent finishes a run of a task of alice's; the answer of the final report.
async fn finished_run(app: &TestApp, output: &str) -> (Value, String, TestUser) {
    let service = app.user_with_role("bot", Role::Agent).await;
    let alice = app.user("alice").await;
    let agent = app
        .post(
            "/api/v1/agents",
            &service.token,
            json!({"name": "worker", "type": "coder"}),
        )
        .await;
    assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.body);
    let agent_id = id_of(&agent.body);
    let task_id = task(app, &alice, None).await;
    let started = app
        .post(
            "/api/v1/agents/activity",
            &service.token,
            json!({"agent_id": agent_id, "task_id": task_id, "status": "running"}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    assert_eq!(
        started.body["stored_in_memory_mcp"], false,
        "a start stores nothing"
    );
    let finished = app
        .post(
            "/api/v1/agents/activity",
            &service.token,
            json!({"agent_id": agent_id, "task_id": task_id, "status": "success", "output": output}),
        )
        .await;
    assert_eq!(finished.status, StatusCode::CREATED, "{}", finished.body);
    (finished.body, task_id, alice)
}

with_server!(
    a_finished_run_is_stored_in_the_server_and_broadcast,
    MemoryServer::real,
    REOPENS_SOON,
    |app: TestApp, server: MemoryServer| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        until_connected(&app, &admin).await;
        let (mut socket, _) = app.ws(&admin.token, None).await;
        let output = "x".repeat(10_000);
        let (answer, task_id, alice) = finished_run(&app, &output).await;
        assert_eq!(answer["stored_in_memory_mcp"], true, "{answer}");
        assert_eq!(answer["broadcasted"], true, "{answer}");
        let of_task = app
            .get(&format!("/api/v1/memory/task/{task_id}"), &alice.token)
            .await;
        assert_eq!(of_task.body["source"], "memory_mcp", "{}", of_task.body);
        let entries = of_task.body["task"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        let content = entries[0]["content"].as_str().unwrap();
        assert!(
            content.len() < 4100,
            "the output is bounded: {}",
            content.len()
        );
        assert_eq!(held(&server, entries[0]["id"].as_str().unwrap()), 1);
        // Broadcast: the admin's socket gets the agent's activity.
        let agent_id = answer["agent_id"].as_str().unwrap().to_owned();
        let idle = loop {
            let frame = socket.change().await;
            if frame["type"] == "agent_activity_update"
                && frame["payload"]["agentId"] == agent_id.as_str()
                && frame["payload"]["status"] == "idle"
            {
                break frame;
            }
        };
        assert_eq!(idle["payload"]["agentId"], agent_id.as_str());

        server.take_down();
        let (down, _, _) = finished_run_again(&app, &alice).await;
        assert_eq!(down["stored_in_memory_mcp"], false, "{down}");
    }
);

/// Another finished run by a second agent, on a new task of `alice`'s.
async fn finished_run_again(app: &TestApp, alice: &TestUser) -> (Value, String, String) {
    let service = app.user_with_role("bot2", Role::Agent).await;
    let agent = app
        .post(
            "/api/v1/agents",
            &service.token,
            json!({"name": "worker2", "type": "coder"}),
        )
        .await;
    let agent_id = id_of(&agent.body);
    let task_id = task(app, alice, None).await;
    for status in ["running", "failed"] {
        let reported = app
            .post(
                "/api/v1/agents/activity",
                &service.token,
                json!({"agent_id": agent_id, "task_id": task_id, "status": status, "error": "boom"}),
            )
            .await;
        assert_eq!(reported.status, StatusCode::CREATED, "{}", reported.body);
        if status == "failed" {
            return (reported.body, task_id, agent_id);
        }
    }
    unreachable!()
}

both_backends!(
    without_a_server_a_finished_run_is_stored_in_the_fallback_only,
    |app: TestApp| async move {
        let (answer, task_id, alice) = finished_run(&app, "done").await;
        assert_eq!(answer["stored_in_memory_mcp"], false, "{answer}");
        assert_eq!(answer["broadcasted"], true, "{answer}");
        let of_task = app
            .get(&format!("/api/v1/memory/task/{task_id}"), &alice.token)
            .await;
        assert_eq!(of_task.body["source"], "fallback");
        assert_eq!(of_task.body["task"]["total_entries"], 1);
        assert!(
            of_task.body["task"]["entries"][0]["content"]
                .as_str()
                .unwrap()
                .ends_with(": done")
        );
    }
);

// ----- another server's tools, through configuration -----

both_backends!(
    a_server_with_memory_store_and_vector_search_tools_plugs_in_through_configuration,
    |_: &mut sparc::config::Settings| {},
    |app: TestApp| async move {
        let Some(server) = MemoryServer::seed_style() else {
            return;
        };
        let mut app = app;
        let command = server.command();
        app.restart_with(move |settings| {
            settings.api.memory_mcp_command = Some(command);
            settings.api.memory_mcp_tools = Some(
                json!({
                    "store": {"tool": "memory_store", "arguments": {"key": "{{id}}", "value": "{{content}}", "metadata": "{{metadata}}"}},
                    "search": {"tool": "vector_search", "arguments": {"query": "{{query}}", "limit": "{{limit}}"}},
                })
                .to_string(),
            );
        })
        .await;
        let alice = app.user("alice").await;
        until_connected(&app, &alice).await;
        let stored = store(
            &app,
            &alice,
            json!({"content": "vector search in the seed server", "intent": "research"}),
        )
        .await;
        assert_eq!(stored["storage"], "memory_mcp", "{stored}");
        store(
            &app,
            &alice,
            json!({"content": "unrelated", "intent": "research"}),
        )
        .await;
        let found = search(&app, &alice, json!({"query": "seed vector"})).await;
        assert_eq!(found["source"], "memory_mcp", "{found}");
        assert_eq!(result_ids(&found), vec![id_of(&stored)]);
        assert_eq!(found["results"][0]["similarity_score"], 1.0);
        // No task tool configured: a task's entries come from the read model.
        let alice_task = task(&app, &alice, None).await;
        let of_task = app
            .get(&format!("/api/v1/memory/task/{alice_task}"), &alice.token)
            .await;
        assert_eq!(of_task.body["source"], "fallback");
        assert!(of_task.body.get("warning").is_none(), "{}", of_task.body);
    }
);

// ----- streamable HTTP -----

both_backends!(
    a_server_reached_over_streamable_http_takes_stores_and_answers_searches,
    |_: &mut sparc::config::Settings| {},
    |app: TestApp| async move {
        let Some(server) = HttpMemoryServer::start() else {
            return;
        };
        let mut app = app;
        let url = server.url.clone();
        app.restart_with(move |settings| settings.api.memory_mcp_url = Some(url))
            .await;
        let alice = app.user("alice").await;
        until_connected(&app, &alice).await;
        let stored = store(
            &app,
            &alice,
            json!({"content": "streamable http transport", "intent": "research"}),
        )
        .await;
        assert_eq!(stored["storage"], "memory_mcp", "{stored}");
        let found = search(&app, &alice, json!({"query": "streamable transport"})).await;
        assert_eq!(found["source"], "memory_mcp", "{found}");
        assert_eq!(result_ids(&found), vec![id_of(&stored)]);
        // Gone: the breaker opens and the fallback answers.
        drop(server);
        for n in 0..3 {
            let stored = store(
                &app,
                &alice,
                json!({"content": format!("after {n}"), "intent": "testing"}),
            )
            .await;
            assert_eq!(stored["storage"], "fallback", "{stored}");
        }
        let found = search(&app, &alice, json!({"query": "streamable"})).await;
        assert_eq!(found["source"], "fallback", "{found}");
        assert_eq!(result_ids(&found), vec![id_of(&stored)]);
    }
);
