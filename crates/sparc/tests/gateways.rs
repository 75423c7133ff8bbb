//! Scale-out, shown on the real binary: one `sparc serve` and three `sparc gateway` processes
//! that share nothing but NATS (127.0.0.1:4222, under a namespace of the test's own) and the
//! database. Every change reaches exactly the users allowed to see it on whichever gateway they
//! are connected to, with the same event ids everywhere; a client resumes on another gateway
//! than the one it left, and on a gateway restarted after it was killed under it;
//! `/ws/health` counts the connections of all gateways.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparc_store::testing::postgres_test_database;

use crate::support::process::{Process, start, start_on};
use crate::support::{NATS_URL, WsClient, delete_nats_stream, nats_namespace};

const SECRET: &str = "gateways-test-signing-key-0123456789abcdef";
const PASSWORD: &str = "Sc4le0utFine!";

async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the service should answer");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("a JSON answer")
}

async fn login(base: &str, username: &str) -> String {
    let answer = post(
        base,
        "/api/v1/auth/login",
        None,
        json!({"username": username, "password": PASSWORD}),
    )
    .await;
    answer["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

async fn register(base: &str, username: &str) -> String {
    post(
        base,
        "/api/v1/auth/register",
        None,
        json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
    )
    .await;
    login(base, username).await
}

async fn create_task(base: &str, token: &str, skill: &str) -> String {
    let task = post(
        base,
        "/api/v1/tasks",
        Some(token),
        json!({"skill_name": skill, "schedule_cron": "0 0 1 1 *"}),
    )
    .await;
    task["id"].as_str().expect("a task id").to_owned()
}

/// Connects to `gateway` and returns the socket and the ack.
async fn connect(gateway: &Process, token: &str, last_event_id: Option<i64>) -> (WsClient, Value) {
    let mut url = format!(
        "{}/ws?token={token}",
        gateway.base.replacen("http://", "ws://", 1)
    );
    if let Some(last) = last_event_id {
        url.push_str(&format!("&last_event_id={last}"));
    }
    let mut socket = WsClient::connect(&url).await;
    let ack = socket.change().await;
    assert_eq!(ack["type"], "ack");
    (socket, ack)
}

/// The next task change on `socket`: (task id, event id).
async fn task_change(socket: &mut WsClient) -> (String, i64) {
    assert_eq!(socket.change().await["type"], "task_status_update");
    let full = socket.change().await;
    assert_eq!(full["type"], "task_updated");
    let id = full["payload"]["task"]["id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    let event = full["event_id"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .expect("an event id");
    (id, event)
}

async fn total_connections(gateway: &Process) -> u64 {
    let health: Value = reqwest::get(format!("{}/ws/health", gateway.base))
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("JSON");
    health["connections"]["total"].as_u64().expect("a total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_deliver_each_change_to_its_users_and_resume_across_gateways() {
    let Some(namespace) = nats_namespace(NATS_URL).await else {
        return;
    };
    let Some(database) = postgres_test_database().await else {
        return;
    };
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("NATS_URL", NATS_URL),
        ("SPARC_NATS_NAMESPACE", namespace.as_str()),
        ("SPARC_JWT_SECRET", SECRET),
        ("SPARC_RATE_LIMIT_PER_MINUTE", "0"),
        ("SPARC_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
        ("RUST_LOG", "warn"),
    ];
    let serve = start("serve", &env, "/api/v1/readiness").await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(start("gateway", &env, "/ws/health").await);
    }

    let alice = register(&serve.base, "alice").await;
    let bob = register(&serve.base, "bob").await;
    let created = Command::new(env!("CARGO_BIN_EXE_sparc"))
        .args([
            "user",
            "create",
            "--username",
            "audrey",
            "--email",
            "audrey@example.com",
        ])
        .args(["--role", "auditor"])
        .envs(env.iter().copied())
        .env("SPARC_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .status()
        .expect("sparc user create runs");
    assert!(created.success());
    let mut auditor = None;
    for _ in 0..100 {
        let attempt = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/login", serve.base))
            .json(&json!({"username": "audrey", "password": PASSWORD}))
            .send()
            .await
            .expect("the service answers");
        if attempt.status().is_success() {
            let body: Value = attempt.json().await.expect("JSON");
            auditor = body["access_token"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auditor = auditor.expect("the auditor can log in");

    let (mut alice_on_0, _) = connect(&gateways[0], &alice, None).await;
    let (mut bob_on_1, _) = connect(&gateways[1], &bob, None).await;
    let (mut auditor_on_2, _) = connect(&gateways[2], &auditor, None).await;
    let (mut alice_on_2, _) = connect(&gateways[2], &alice, None).await;

    let a1 = create_task(&serve.base, &alice, "a1").await;
    let b1 = create_task(&serve.base, &bob, "b1").await;
    let a2 = create_task(&serve.base, &alice, "a2").await;

    let alice_sees = [
        task_change(&mut alice_on_0).await,
        task_change(&mut alice_on_0).await,
    ];
    assert_eq!(
        [&alice_sees[0].0, &alice_sees[1].0],
        [&a1, &a2],
        "alice sees her own changes only"
    );
    let other_tab = [
        task_change(&mut alice_on_2).await,
        task_change(&mut alice_on_2).await,
    ];
    assert_eq!(
        other_tab, alice_sees,
        "the same changes and ids on another gateway"
    );
    let bob_sees = task_change(&mut bob_on_1).await;
    assert_eq!(bob_sees.0, b1);
    let audited: Vec<String> = [
        task_change(&mut auditor_on_2).await.0,
        task_change(&mut auditor_on_2).await.0,
        task_change(&mut auditor_on_2).await.0,
    ]
    .into();
    assert_eq!(audited, [a1, b1, a2.clone()]);

    // Alice leaves gateway 0; what she misses meanwhile she gets from gateway 1.
    let last_seen = alice_sees[1].1;
    drop(alice_on_0);
    create_task(&serve.base, &bob, "b2").await;
    let a3 = create_task(&serve.base, &alice, "a3").await;
    let a4 = create_task(&serve.base, &alice, "a4").await;
    for _ in 0..2 {
        task_change(&mut alice_on_2).await;
    }
    let (mut alice_on_1, ack) = connect(&gateways[1], &alice, Some(last_seen)).await;
    assert_eq!(ack["payload"]["replayed"], 2);
    assert_eq!(task_change(&mut alice_on_1).await.0, a3);
    let (seen, a4_event) = task_change(&mut alice_on_1).await;
    assert_eq!(seen, a4);

    // Gateways announce their counts every 5 s; each sees all four connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let totals = [
            total_connections(&gateways[0]).await,
            total_connections(&gateways[1]).await,
            total_connections(&gateways[2]).await,
        ];
        if totals == [4, 4, 4] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every gateway should count the four connections: {totals:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Gateway 1 is killed under alice; what is written while it is down she gets from the
    // gateway restarted in its place, by her last event id, then live changes.
    let port: u16 = gateways[1]
        .base
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port");
    gateways[1].child.kill().expect("the gateway can be killed");
    gateways[1].child.wait().expect("the gateway exits");
    let a5 = create_task(&serve.base, &alice, "a5").await;
    let a6 = create_task(&serve.base, &alice, "a6").await;
    // A create answers before its change is numbered in the outbox; once alice's other tab
    // has both, they are there to replay.
    let other_tab = [
        task_change(&mut alice_on_2).await,
        task_change(&mut alice_on_2).await,
    ];
    gateways[1] = start_on(port, "gateway", &env, "/ws/health").await;
    let (mut alice_back, ack) = connect(&gateways[1], &alice, Some(a4_event)).await;
    assert_eq!(ack["payload"]["replayed"], 2, "{ack}");
    let missed = [
        task_change(&mut alice_back).await,
        task_change(&mut alice_back).await,
    ];
    assert_eq!([&missed[0].0, &missed[1].0], [&a5, &a6]);
    assert!(a4_event < missed[0].1 && missed[0].1 < missed[1].1);
    let a7 = create_task(&serve.base, &alice, "a7").await;
    let live = task_change(&mut alice_back).await;
    assert_eq!(live.0, a7);
    assert!(live.1 > missed[1].1);
    assert_eq!(other_tab, missed);
    assert_eq!(task_change(&mut alice_on_2).await, live);
    drop((bob_on_1, auditor_on_2, alice_on_1, alice_back));
    delete_nats_stream(NATS_URL, &namespace).await;
}
