//! The WebSocket gateway end to end: REST writes become frames on `/ws` for exactly the users
//! allowed to see them, a client that reconnects with `last_event_id` gets exactly what it
//! missed, and the protocol's control frames. On both backends with the in-process bus, and on
//! Postgres with NATS JetStream.

use std::collections::BTreeSet;

use crate::support::{
    Backend, NATS_URL, TestApp, TestUser, WsClient, both_backends, delete_nats_stream,
    nats_namespace,
};
use serde_json::{Value, json};
use sparc_domain::user::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A cron that never fires during a test (the scheduler would add run frames).
const YEARLY: &str = "0 0 1 1 *";

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object expected: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn event_id(frame: &Value) -> i64 {
    frame["event_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a numeric event id expected: {frame}"))
}

async fn create_task(app: &TestApp, user: &TestUser, skill: &str, project: Option<&str>) -> String {
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": skill, "schedule_cron": YEARLY, "project_id": project}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.body["id"].as_str().expect("a task id").to_owned()
}

/// The two frames of one task change; returns the task id and the change's event id.
async fn task_change(ws: &mut WsClient) -> (String, i64) {
    let status = ws.change().await;
    let full = ws.change().await;
    assert_eq!(status["type"], "task_status_update", "{status}");
    assert_eq!(full["type"], "task_updated", "{full}");
    assert_eq!(status["event_id"], full["event_id"]);
    let task = full["payload"]["task"]["id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    assert_eq!(status["payload"]["taskId"], task.as_str());
    (task, event_id(&full))
}

async fn changes_arrive_as_the_contracts_frames(app: TestApp) {
    let alice = app.user("alice").await;
    let (mut ws, ack) = app.ws(&alice.token, None).await;
    assert_eq!(
        keys(&ack),
        BTreeSet::from(["event_id", "payload", "timestamp", "type"])
    );
    assert_eq!(
        keys(&ack["payload"]),
        BTreeSet::from(["ackEventId", "connectionId", "replayed"])
    );
    assert_eq!(ack["payload"]["ackEventId"], "initial_connect");
    assert_eq!(ack["payload"]["replayed"], 0);

    let project = app
        .post("/api/v1/projects", &alice.token, json!({"name": "site"}))
        .await;
    assert_eq!(project.status, 201, "{}", project.body);
    let project_id = project.body["id"].as_str().expect("a project id");
    let frame = ws.change().await;
    assert_eq!(
        keys(&frame),
        BTreeSet::from(["event_id", "payload", "timestamp", "type"])
    );
    assert_eq!(frame["type"], "project_updated");
    assert_eq!(frame["payload"]["project"]["id"], project_id);
    assert_eq!(frame["payload"]["project"]["name"], "site");
    let project_event = event_id(&frame);

    let task = create_task(&app, &alice, "lint", Some(project_id)).await;
    let status = ws.change().await;
    assert_eq!(status["type"], "task_status_update");
    assert_eq!(
        keys(&status["payload"]),
        BTreeSet::from([
            "assignee",
            "error",
            "output",
            "projectId",
            "status",
            "taskId",
            "updatedAt"
        ])
    );
    assert_eq!(status["payload"]["taskId"], task.as_str());
    assert_eq!(status["payload"]["projectId"], project_id);
    assert_eq!(status["payload"]["status"], "pending");
    let full = ws.change().await;
    assert_eq!(full["type"], "task_updated");
    assert_eq!(full["payload"]["task"]["id"], task.as_str());
    assert_eq!(full["payload"]["task"]["skill_name"], "lint");
    assert_eq!(event_id(&full), project_event + 1);

    // The shared agent registry: every signed-in user sees it.
    let admin = app.user_with_role("root", Role::Admin).await;
    let agent = app
        .post(
            "/api/v1/agents",
            &admin.token,
            json!({"name": "reviewer-1", "type": "reviewer"}),
        )
        .await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    let agent_id = agent.body["id"].as_str().expect("an agent id");
    let activity = ws.change().await;
    assert_eq!(activity["type"], "agent_activity_update");
    assert_eq!(
        keys(&activity["payload"]),
        BTreeSet::from(["agentId", "currentTask", "status", "timestamp"])
    );
    assert_eq!(activity["payload"]["agentId"], agent_id);
    let full = ws.change().await;
    assert_eq!(full["type"], "agent_updated");
    assert_eq!(full["payload"]["agent"]["id"], agent_id);

    // An agent's report moves the execution, the task and the agent.
    let report = app
        .post(
            "/api/v1/agents/activity",
            &admin.token,
            json!({"agent_id": agent_id, "task_id": task, "status": "running"}),
        )
        .await;
    assert_eq!(report.status, 201, "{}", report.body);
    let mut seen = BTreeSet::new();
    let mut last = event_id(&full);
    while !(seen.contains("execution_update") && seen.contains("task_updated")) {
        let frame = ws.change().await;
        assert!(event_id(&frame) >= last, "event ids never go back: {frame}");
        last = event_id(&frame);
        if frame["type"] == "execution_update" {
            assert_eq!(frame["payload"]["execution"]["task_id"], task.as_str());
            assert_eq!(frame["payload"]["execution"]["status"], "running");
        }
        if frame["type"] == "task_status_update" {
            assert_eq!(frame["payload"]["status"], "running", "{frame}");
            assert_eq!(frame["payload"]["assignee"], agent_id, "{frame}");
            assert_eq!(frame["payload"]["output"], Value::Null);
        }
        seen.insert(frame["type"].as_str().expect("a type").to_owned());
    }

    // The finished report: the task's status update carries what the run reported.
    let report = app
        .post(
            "/api/v1/agents/activity",
            &admin.token,
            json!({"agent_id": agent_id, "task_id": task, "status": "failed",
                   "output": "2 findings", "error": "exit status 1"}),
        )
        .await;
    assert_eq!(report.status, 201, "{}", report.body);
    let status = loop {
        let frame = ws.change().await;
        if frame["type"] == "task_status_update" {
            break frame;
        }
    };
    assert_eq!(status["payload"]["taskId"], task.as_str());
    assert_eq!(status["payload"]["status"], "pending", "back to pending");
    assert_eq!(status["payload"]["assignee"], agent_id);
    assert_eq!(status["payload"]["output"], "2 findings");
    assert_eq!(status["payload"]["error"], "exit status 1");
}

both_backends!(changes_arrive_as_the_contracts_frames, |app| {
    changes_arrive_as_the_contracts_frames(app)
});

async fn a_client_that_reconnects_gets_exactly_what_it_missed_then_live_changes(app: TestApp) {
    let alice = app.user("alice").await;
    let (mut ws, _) = app.ws(&alice.token, None).await;
    // A second tab stays connected: once it has the 100th change, every one is published.
    let (mut other_tab, _) = app.ws(&alice.token, None).await;
    create_task(&app, &alice, "first", None).await;
    let (_, last_seen) = task_change(&mut ws).await;
    ws.close().await;

    let mut missed = Vec::new();
    for n in 0..100 {
        missed.push(create_task(&app, &alice, &format!("missed-{n}"), None).await);
    }
    for _ in 0..=100 {
        task_change(&mut other_tab).await;
    }

    let (mut ws, ack) = app.ws(&alice.token, Some(&last_seen.to_string())).await;
    assert_eq!(ack["payload"]["ackEventId"], last_seen.to_string());
    assert_eq!(ack["payload"]["replayed"], 100);
    let mut replayed = Vec::new();
    for expected in last_seen + 1..=last_seen + 100 {
        let (task, event) = task_change(&mut ws).await;
        assert_eq!(event, expected, "in order, without a gap or a repeat");
        replayed.push(task);
    }
    assert_eq!(replayed, missed);

    let live = create_task(&app, &alice, "live", None).await;
    assert_eq!(task_change(&mut ws).await, (live, last_seen + 101));
}

both_backends!(
    a_client_that_reconnects_gets_exactly_what_it_missed_then_live_changes,
    |app| { a_client_that_reconnects_gets_exactly_what_it_missed_then_live_changes(app) }
);

async fn users_see_only_their_own_changes_and_auditors_everyones(app: TestApp) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let auditor = app.user_with_role("auditor", Role::Auditor).await;
    let (mut alice_ws, _) = app.ws(&alice.token, None).await;
    let (mut bob_ws, _) = app.ws(&bob.token, None).await;
    let (mut auditor_ws, _) = app.ws(&auditor.token, None).await;

    let alices_first = create_task(&app, &alice, "a1", None).await;
    let bobs = create_task(&app, &bob, "b1", None).await;
    let alices_second = create_task(&app, &alice, "a2", None).await;

    // Each one's next frames are their own changes: the other's, sent in between, never came.
    assert_eq!(task_change(&mut alice_ws).await.0, alices_first);
    assert_eq!(task_change(&mut alice_ws).await.0, alices_second);
    assert_eq!(task_change(&mut bob_ws).await.0, bobs);
    let seen: Vec<String> = [
        task_change(&mut auditor_ws).await.0,
        task_change(&mut auditor_ws).await.0,
        task_change(&mut auditor_ws).await.0,
    ]
    .into();
    assert_eq!(seen, [alices_first, bobs.clone(), alices_second]);

    // Replay is filtered the same way.
    let (mut bob_again, ack) = app.ws(&bob.token, Some("0")).await;
    assert_eq!(ack["payload"]["replayed"], 1);
    assert_eq!(task_change(&mut bob_again).await.0, bobs);
}

both_backends!(
    users_see_only_their_own_changes_and_auditors_everyones,
    |app| { users_see_only_their_own_changes_and_auditors_everyones(app) }
);

both_backends!(
    a_ping_gets_a_pong_and_a_malformed_frame_an_error_on_an_open_connection,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (mut ws, _) = app.ws(&alice.token, None).await;
        ws.send_text(r#"{"type":"ping"}"#).await;
        let pong = ws.change().await;
        assert_eq!(pong["type"], "pong");
        assert_eq!(
            keys(&pong),
            BTreeSet::from(["event_id", "payload", "timestamp", "type"])
        );
        for malformed in ["not json", r#"{"type":"subscribe"}"#, r#"{"no":"type"}"#] {
            ws.send_text(malformed).await;
            let error = ws.change().await;
            assert_eq!(error["type"], "error");
            assert_eq!(error["payload"], json!({"error": "Invalid message format"}));
        }
        ws.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(
            ws.change().await["type"],
            "pong",
            "the connection stayed open"
        );
        // A fresh token of the same user is accepted in band.
        let fresh = app.login("alice").await;
        ws.send_text(
            &json!({"type": "authenticate", "payload": {"token": fresh.token}}).to_string(),
        )
        .await;
        assert_eq!(ws.change().await["type"], "authenticated");
    }
);

both_backends!(
    a_bad_token_is_closed_with_1008_and_a_token_may_come_as_a_subprotocol,
    |app: TestApp| async move {
        for query in ["token=not-a-jwt", ""] {
            let mut ws = WsClient::connect(&app.ws_url(query)).await;
            assert_eq!(
                ws.closed_with().await,
                (1008, "Authentication failed".to_owned()),
                "{query:?}"
            );
        }
        let alice = app.user("alice").await;
        let mut request = app.ws_url("").into_client_request().expect("a valid URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("bearer, {}", alice.token)
                .parse()
                .expect("a valid header"),
        );
        let mut ws = WsClient::connect_with(request).await;
        assert_eq!(ws.frame().await["type"], "ack");
    }
);

both_backends!(
    the_gateway_health_counts_connections,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (_ws, _) = app.ws(&alice.token, None).await;
        let health = app
            .call(reqwest::Method::GET, "/ws/health", None, None)
            .await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body["status"], "healthy");
        assert_eq!(health.body["connections"], json!({"local": 1, "total": 1}));
    }
);

/// The same scenarios with the production bus: Postgres and NATS JetStream.
mod over_nats {
    use super::*;

    async fn spawn() -> Option<(TestApp, String)> {
        let namespace = nats_namespace(NATS_URL).await?;
        let configured = namespace.clone();
        let app = TestApp::spawn_with(Backend::Postgres, move |settings| {
            settings.nats_url = Some(NATS_URL.to_owned());
            settings.nats_namespace = configured;
        })
        .await?;
        Some((app, namespace))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_arrive_as_the_contracts_frames() {
        if let Some((app, namespace)) = spawn().await {
            super::changes_arrive_as_the_contracts_frames(app).await;
            delete_nats_stream(NATS_URL, &namespace).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_reconnects_gets_exactly_what_it_missed_then_live_changes() {
        if let Some((app, namespace)) = spawn().await {
            super::a_client_that_reconnects_gets_exactly_what_it_missed_then_live_changes(app)
                .await;
            delete_nats_stream(NATS_URL, &namespace).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_see_only_their_own_changes_and_auditors_everyones() {
        if let Some((app, namespace)) = spawn().await {
            super::users_see_only_their_own_changes_and_auditors_everyones(app).await;
            delete_nats_stream(NATS_URL, &namespace).await;
        }
    }
}

/// Faults: a NATS server of the test's own (its own port and store directory), stopped and
/// started again; only that process is ever killed.
mod faults {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    struct OwnNats {
        port: u16,
        store: std::path::PathBuf,
        process: Option<Child>,
    }

    impl OwnNats {
        /// Starts `nats-server` with JetStream on a free port, or `None` (after saying so) when
        /// the binary is missing outside CI.
        async fn start() -> Option<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let store = std::env::temp_dir().join(format!("sparc-nats-{}", uuid::Uuid::new_v4()));
            let mut nats = Self {
                port,
                store,
                process: None,
            };
            if let Err(error) = nats.run().await {
                sparc_store::testing::service_missing(&format!(
                    "a nats-server of the test's own ({error})"
                ));
                return None;
            }
            Some(nats)
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        /// Starts the server process on this port and store, and waits until it accepts.
        async fn run(&mut self) -> std::io::Result<()> {
            let child = Command::new("nats-server")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(&self.store)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.process = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::io::Error::other(
                "nats-server did not accept connections",
            ))
        }

        /// Kills this server process (and only it).
        fn stop(&mut self) {
            if let Some(mut child) = self.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for OwnNats {
        fn drop(&mut self) {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_while_nats_is_down_all_arrive_once_it_is_back() {
        let Some(mut nats) = OwnNats::start().await else {
            return;
        };
        let url = nats.url();
        let Some(app) = TestApp::spawn_with(Backend::Postgres, move |settings| {
            settings.nats_url = Some(url);
        })
        .await
        else {
            return;
        };
        let alice = app.user("alice").await;
        let (mut ws, _) = app.ws(&alice.token, None).await;
        let (mut other_tab, _) = app.ws(&alice.token, None).await;
        create_task(&app, &alice, "before", None).await;
        let (_, before) = task_change(&mut ws).await;
        assert_eq!(task_change(&mut other_tab).await.1, before);
        // The other tab goes away for the outage and reconnects once NATS is back.
        drop(other_tab);

        nats.stop();
        let outage = Instant::now();
        let mut written = Vec::new();
        while outage.elapsed() < Duration::from_secs(30) {
            // The API keeps accepting writes: they are committed, with their outbox rows.
            written
                .push(create_task(&app, &alice, &format!("during-{}", written.len()), None).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let health = app
            .call(reqwest::Method::GET, "/ws/health", None, None)
            .await;
        assert_eq!(health.body["status"], "degraded", "{}", health.body);
        let service = app
            .call(reqwest::Method::GET, "/api/v1/health", None, None)
            .await;
        assert_eq!(service.body["bus"], "disconnected", "{}", service.body);
        assert_eq!(service.body["status"], "degraded", "{}", service.body);
        nats.run().await.expect("nats-server should start again");

        for (n, expected) in written.iter().enumerate() {
            let status = ws.change_within(Duration::from_secs(60)).await;
            assert_eq!(status["type"], "task_status_update", "{status}");
            let (task, event) = task_change_after(status, &mut ws).await;
            assert_eq!(&task, expected);
            assert_eq!(event, before + 1 + n as i64, "in order, none lost");
        }
        let (mut other_tab, ack) = app.ws(&alice.token, Some(&before.to_string())).await;
        assert_eq!(ack["payload"]["replayed"], written.len(), "{ack}");
        for (n, expected) in written.iter().enumerate() {
            assert_eq!(
                task_change(&mut other_tab).await,
                (expected.clone(), before + 1 + n as i64),
                "the reconnecting tab gets every change it missed, in order"
            );
        }
        let after = create_task(&app, &alice, "after", None).await;
        let live = (after, before + 1 + written.len() as i64);
        assert_eq!(task_change(&mut ws).await, live);
        assert_eq!(task_change(&mut other_tab).await, live);
        let service = app
            .call(reqwest::Method::GET, "/api/v1/health", None, None)
            .await;
        assert_eq!(service.body["bus"], "connected", "{}", service.body);
    }

    /// The rest of a task change whose first frame was already read.
    async fn task_change_after(status: Value, ws: &mut WsClient) -> (String, i64) {
        let full = ws.change().await;
        assert_eq!(full["type"], "task_updated", "{full}");
        assert_eq!(status["event_id"], full["event_id"]);
        let task = full["payload"]["task"]["id"]
            .as_str()
            .expect("a task id")
            .to_owned();
        (task, event_id(&full))
    }
}

/// A connection lives as long as its login session: at the gateway's next ping (every second
/// here) it is closed with 1008 once the session has ended, by a logout or an admin's role
/// change, while the same user's other sessions stay connected.
async fn a_connection_closes_when_its_session_ends(backend: Backend) {
    let Some(app) =
        TestApp::spawn_with(backend, |settings| settings.websocket_ping_seconds = 1).await
    else {
        return;
    };
    let admin = app.user_with_role("root", Role::Admin).await;
    let alice = app.user("alice").await;
    let alice_elsewhere = app.login("alice").await;
    let bob = app.user("bob").await;
    let (mut alices, _) = app.ws(&alice.token, None).await;
    let (mut alices_other, _) = app.ws(&alice_elsewhere.token, None).await;
    let (mut bobs, _) = app.ws(&bob.token, None).await;

    let logout = app
        .post(
            "/api/v1/auth/logout",
            &alice.token,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(logout.status, 200);
    assert_eq!(
        alices.closed_with().await,
        (1008, "Session ended".to_owned())
    );
    let task = create_task(&app, &alice_elsewhere, "still-here", None).await;
    let change = alices_other.change().await;
    assert_eq!(change["payload"]["taskId"], task.as_str(), "{change}");

    let demoted = app
        .put(
            &format!("/api/v1/admin/users/{}", bob.id),
            &admin.token,
            json!({"role": "auditor"}),
        )
        .await;
    assert_eq!(demoted.status, 200);
    assert_eq!(bobs.closed_with().await, (1008, "Session ended".to_owned()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_when_its_session_ends_on_postgres() {
    a_connection_closes_when_its_session_ends(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_when_its_session_ends_on_sqlite() {
    a_connection_closes_when_its_session_ends(Backend::Sqlite).await;
}
