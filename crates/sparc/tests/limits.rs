//! Greedy clients are capped, each limit answered in the contract's shape: WebSocket upgrades
//! pass the REST rate limiter and carry its request id and security headers; WebSocket
//! connections per user and per process; a replay's bytes; open HTTP connections; and the time a
//! client may take to send its headers. On both backends, each with a small limit of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{TestApp, TestUser, WsClient, both_backends};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// What an upgrade got: the switch, or the HTTP answer that refused it.
enum Upgrade {
    Switched(Box<WsClient>, tungstenite::http::HeaderMap),
    Refused(
        tungstenite::http::StatusCode,
        tungstenite::http::HeaderMap,
        Value,
    ),
}

impl Upgrade {
    /// The refusal's status, headers and JSON body; panics on a switch.
    #[track_caller]
    fn refused(self) -> (u16, tungstenite::http::HeaderMap, Value) {
        match self {
            Self::Refused(status, headers, body) => (status.as_u16(), headers, body),
            Self::Switched(..) => panic!("the upgrade should have been refused"),
        }
    }

    /// The client and the 101's headers; panics on a refusal.
    #[track_caller]
    fn switched(self) -> (WsClient, tungstenite::http::HeaderMap) {
        match self {
            Self::Switched(client, headers) => (*client, headers),
            Self::Refused(status, _, body) => panic!("the upgrade was refused: {status} {body}"),
        }
    }
}

/// `GET /ws?token=…` with `headers`.
async fn upgrade(app: &TestApp, token: &str, headers: &[(&'static str, &str)]) -> Upgrade {
    let mut request = app
        .ws_url(&format!("token={token}"))
        .into_client_request()
        .expect("a valid URL");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("a valid header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => Upgrade::Switched(
            Box::new(WsClient::from_socket(socket)),
            response.headers().clone(),
        ),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .unwrap_or(Value::Null);
            Upgrade::Refused(response.status(), response.headers().clone(), body)
        }
        Err(error) => panic!("the upgrade failed: {error}"),
    }
}

/// Upgrades until the gateway lets `token` in again (a closed connection frees its place once
/// the gateway has seen it close).
async fn upgrade_once_room(app: &TestApp, token: &str) -> WsClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match upgrade(app, token, &[]).await {
            Upgrade::Switched(client, _) => return *client,
            Upgrade::Refused(status, ..) if Instant::now() < deadline => {
                assert_eq!(status, 429);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Upgrade::Refused(status, _, body) => panic!("still refused: {status} {body}"),
        }
    }
}

/// The security headers and the request id every answer carries.
#[track_caller]
fn assert_standard_headers(headers: &tungstenite::http::HeaderMap) {
    for (name, value) in [
        ("x-content-type-options", Some("nosniff")),
        ("x-frame-options", Some("DENY")),
        ("content-security-policy", Some("default-src 'self'")),
        ("referrer-policy", Some("no-referrer")),
        ("x-request-id", None),
    ] {
        let found = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name} is missing: {headers:?}"));
        if let Some(value) = value {
            assert_eq!(found, value, "{name}");
        }
    }
}

fn header<'a>(headers: &'a tungstenite::http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{name} is missing: {headers:?}"))
}

both_backends!(
    websocket_upgrades_pass_the_rate_limiter_with_the_request_id_and_security_headers,
    |settings: &mut sparc::config::Settings| settings.api.rate_limit_per_minute = 2,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (mut ws, headers) = upgrade(&app, &alice.token, &[("x-request-id", "upgrade-1")])
            .await
            .switched();
        assert_standard_headers(&headers);
        assert_eq!(header(&headers, "x-request-id"), "upgrade-1");
        assert_eq!(header(&headers, "x-ratelimit-limit"), "2");
        assert_eq!(header(&headers, "x-ratelimit-remaining"), "1");
        assert_eq!(ws.frame().await["type"], "ack");
        let (_second, _) = upgrade(&app, &alice.token, &[]).await.switched();

        let (status, headers, body) = upgrade(&app, &alice.token, &[]).await.refused();
        assert_eq!(status, 429, "{body}");
        assert_eq!(body, json!({"detail": "Rate limit exceeded"}));
        assert!(
            header(&headers, "retry-after")
                .parse::<u64>()
                .is_ok_and(|s| s >= 1)
        );
        assert_eq!(header(&headers, "x-ratelimit-remaining"), "0");
        assert_standard_headers(&headers);

        // Counted per user, as REST is: Bob, from the same address, has his own budget.
        let bob = app.user("bob").await;
        let (mut bobs, _) = upgrade(&app, &bob.token, &[]).await.switched();
        assert_eq!(bobs.frame().await["type"], "ack");
        // And REST draws from the same budget as the upgrades.
        let tasks = app.get("/api/v1/tasks", &alice.token).await;
        assert_eq!(tasks.status, 429, "{}", tasks.body);
    }
);

both_backends!(
    a_user_over_their_websocket_connections_is_refused_with_429,
    |settings: &mut sparc::config::Settings| settings.websocket_connections_per_user = 2,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (first, _) = app.ws(&alice.token, None).await;
        let (_second, _) = app.ws(&alice.token, None).await;

        let (status, headers, body) = upgrade(&app, &alice.token, &[]).await.refused();
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            body,
            json!({"detail": "Too many WebSocket connections: at most 2 per user"})
        );
        assert!(
            header(&headers, "retry-after")
                .parse::<u64>()
                .is_ok_and(|s| s >= 1)
        );
        assert_standard_headers(&headers);

        let bob = app.user("bob").await;
        let (_bobs, _) = app.ws(&bob.token, None).await;
        // Alice's other session counts against the same cap.
        let elsewhere = app.login("alice").await;
        assert_eq!(upgrade(&app, &elsewhere.token, &[]).await.refused().0, 429);

        first.close().await;
        let mut again = upgrade_once_room(&app, &alice.token).await;
        assert_eq!(again.frame().await["type"], "ack");
    }
);

both_backends!(
    upgrades_over_the_process_websocket_cap_are_refused_with_429,
    |settings: &mut sparc::config::Settings| settings.websocket_max_connections = 2,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let carol = app.user("carol").await;
        let (alices, _) = app.ws(&alice.token, None).await;
        let (_bobs, _) = app.ws(&bob.token, None).await;

        let (status, headers, body) = upgrade(&app, &carol.token, &[]).await.refused();
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            body,
            json!({"detail": "Too many WebSocket connections: this server holds at most 2"})
        );
        assert!(
            header(&headers, "retry-after")
                .parse::<u64>()
                .is_ok_and(|s| s >= 1)
        );
        assert_standard_headers(&headers);
        // Checked before the token: a full server spends nothing on one.
        assert_eq!(upgrade(&app, "not-a-jwt", &[]).await.refused().0, 429);

        alices.close().await;
        let mut carols = upgrade_once_room(&app, &carol.token).await;
        assert_eq!(carols.frame().await["type"], "ack");
        let health = app
            .call(reqwest::Method::GET, "/ws/health", None, None)
            .await;
        assert_eq!(health.body["connections"]["local"], 2, "{}", health.body);
    }
);

/// Creates one of `user`'s tasks whose `params` take `padding` bytes more; returns its id.
async fn create_task(app: &TestApp, user: &TestUser, name: &str, padding: usize) -> String {
    let created = app
        .post(
            "/api/v1/tasks",
            &user.token,
            json!({"skill_name": name, "schedule_cron": "0 0 1 1 *",
                   "params": {"padding": "x".repeat(padding)}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.body["id"].as_str().expect("a task id").to_owned()
}

/// The two frames of a task change: its task id and event id.
async fn task_change(ws: &mut WsClient) -> (String, i64) {
    let status = ws.change().await;
    assert_eq!(status["type"], "task_status_update", "{status}");
    let full = ws.change().await;
    assert_eq!(full["type"], "task_updated", "{full}");
    let event = full["event_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a numeric event id");
    let task = full["payload"]["task"]["id"].as_str().expect("a task id");
    (task.to_owned(), event)
}

both_backends!(
    a_replay_over_its_bytes_asks_for_a_resync_and_one_within_them_is_replayed,
    // Two of the tasks below (3 KB of params each) fit; three do not.
    |settings: &mut sparc::config::Settings| settings.websocket_replay_max_bytes = 8 * 1024,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (mut watcher, _) = app.ws(&alice.token, None).await;
        create_task(&app, &alice, "small", 0).await;
        let (_, before) = task_change(&mut watcher).await;
        let mut changes = Vec::new();
        for n in 0..3 {
            let task = create_task(&app, &alice, &format!("large-{n}"), 3000).await;
            let change = task_change(&mut watcher).await;
            assert_eq!(change.0, task);
            changes.push(change);
        }

        let (mut over, ack) = app.ws(&alice.token, Some(&before.to_string())).await;
        assert_eq!(ack["payload"]["replayed"], 0, "{ack}");
        let resync = over.change().await;
        assert_eq!(resync["type"], "resync_required", "{resync}");
        assert_eq!(
            resync["payload"],
            json!({"lastEventId": before.to_string(), "reason": "beyond retention"})
        );

        let (mut within, ack) = app.ws(&alice.token, Some(&changes[0].1.to_string())).await;
        assert_eq!(ack["payload"]["replayed"], 2, "{ack}");
        assert_eq!(task_change(&mut within).await, changes[1]);
        assert_eq!(task_change(&mut within).await, changes[2]);
    }
);

/// The service's socket address.
fn address(app: &TestApp) -> SocketAddr {
    app.base
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address")
}

/// `GET /api/v1/health` on a connection of its own.
async fn health_on_a_new_connection(app: &TestApp) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/api/v1/health", app.base))
        .send()
        .await
        .expect("the service should answer")
}

both_backends!(
    a_connection_over_the_servers_cap_is_answered_503_and_closed,
    |settings: &mut sparc::config::Settings| settings.max_connections = 3,
    |app: TestApp| async move {
        // Idle connections hold every place (whatever the test client's own pool holds).
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(address(&app)).await.expect("connects"));
        }
        let refused = health_on_a_new_connection(&app).await;
        assert_eq!(refused.status(), 503);
        let headers = refused.headers().clone();
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["connection"], "close");
        for name in [
            "x-request-id",
            "x-content-type-options",
            "x-frame-options",
            "content-security-policy",
            "referrer-policy",
        ] {
            assert!(headers.contains_key(name), "{name} is missing: {headers:?}");
        }
        let body: Value = refused.json().await.expect("a JSON body");
        assert_eq!(
            body,
            json!({"detail": "The service is busy: it holds its most connections (3); nothing was done"})
        );

        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = health_on_a_new_connection(&app).await;
            if answer.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "still {}", answer.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
);

/// Reads until the server closes the connection; panics if it answers anything.
async fn closed_by_the_server(stream: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut buffer = [0u8; 1024];
    match stream.read(&mut buffer).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "the server answered: {}",
            String::from_utf8_lossy(&buffer[..n])
        ),
    }
}

both_backends!(
    a_client_that_sends_its_headers_slowly_is_cut_off_while_others_are_served,
    |settings: &mut sparc::config::Settings| settings.header_read_timeout_seconds = 1,
    |app: TestApp| async move {
        let started = Instant::now();
        let (mut slow_reader, mut slow) = TcpStream::connect(address(&app))
            .await
            .expect("connects")
            .into_split();
        let (mut silent_reader, _silent) = TcpStream::connect(address(&app))
            .await
            .expect("connects")
            .into_split();
        slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: sparc\r\nX-Slow: ")
            .await
            .expect("writes");
        // One more byte of a header every 100 ms, never the blank line that ends them.
        let drip = tokio::spawn(async move {
            while slow.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let cut = tokio::spawn(async move {
            closed_by_the_server(&mut slow_reader).await;
            started.elapsed()
        });
        let silence_cut = tokio::spawn(async move {
            closed_by_the_server(&mut silent_reader).await;
            started.elapsed()
        });

        // Meanwhile everyone else is served at once.
        for _ in 0..5 {
            let asked = Instant::now();
            let answer = health_on_a_new_connection(&app).await;
            assert_eq!(answer.status(), 200);
            assert!(asked.elapsed() < Duration::from_millis(900));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        for (what, cut) in [("trickling", cut), ("silent", silence_cut)] {
            let after = tokio::time::timeout(Duration::from_secs(10), cut)
                .await
                .unwrap_or_else(|_| panic!("the {what} client was never cut off"))
                .expect("the reader ends");
            assert!(
                after >= Duration::from_millis(900) && after < Duration::from_secs(5),
                "the {what} client was cut off after {after:?}, not about 1 s"
            );
        }
        drip.abort();
    }
);
