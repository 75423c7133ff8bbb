//! One WebSocket connection, from the `ack` to the close, in one task.
//!
//! The connection subscribes to the hub *before* it replays, so no change can fall between the
//! two: the replay reads the outbox up to its last event id at that moment, then the live
//! changes queued meanwhile are sent, skipping those the replay already sent. One `select!`
//! serves the live queue, the client's frames, the shared heartbeat tick and the eviction
//! signal; a write that the client does not take in time evicts the connection like a full
//! queue does.
//!
//! It is written over any `Sink`/`Stream` of WebSocket messages, so tests drive it through
//! channels without a socket.

use std::fmt::Display;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use chrono::Utc;
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::Viewer;
use crate::frames::{self, ChangeFrames, ClientFrame};
use crate::hub::Subscription;
use crate::{SeatedViewer, Shared, Tick};

/// Close code: the token was refused (RFC 6455 policy violation).
pub(crate) const POLICY: u16 = 1008;
/// Close code: the client could not keep up.
pub(crate) const SLOW_CONSUMER: u16 = 4008;
/// Close code: the client was silent for too long.
const HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code: the gateway is stopping.
const GOING_AWAY: u16 = 1001;
/// Close code: the gateway failed (the client should reconnect).
pub(crate) const INTERNAL_ERROR: u16 = 1011;

/// How long the close frame may take to write.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Changes replayed per outbox query.
const REPLAY_PAGE: i64 = 500;

/// At most this many queued changes are written together (one flush), so a connection with a
/// backlog still yields to the others between writes.
const CHANGES_PER_WRITE: usize = 32;

/// Why the connection ends.
struct Close {
    code: u16,
    reason: &'static str,
}

impl Close {
    const fn new(code: u16, reason: &'static str) -> Option<Self> {
        Some(Self { code, reason })
    }
}

/// The client went away (or the socket broke): nothing more to send.
const GONE: Option<Close> = None;

/// Serves an authenticated connection until either side ends it.
pub(crate) async fn serve<Tx, Rx, E>(
    shared: Arc<Shared>,
    mut tx: Tx,
    mut rx: Rx,
    viewer: Viewer,
    resume_from: Option<String>,
) where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
    Rx: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut viewer = shared.seat(viewer);
    let mut subscription = shared.hub.subscribe(viewer.visibility());
    let mut ticks = shared.ticks.clone();
    let connection_id = Uuid::new_v4();
    tracing::debug!(%connection_id, user = %viewer.user_id, "connected");
    let ending = match start(
        &shared,
        &mut tx,
        &viewer,
        connection_id,
        resume_from,
        &subscription,
    )
    .await
    {
        Err(close) => close,
        Ok(replayed_through) => {
            live(
                &shared,
                &mut tx,
                &mut rx,
                &mut viewer,
                &mut subscription,
                &mut ticks,
                replayed_through,
            )
            .await
        }
    };
    drop(subscription);
    if let Some(close) = ending {
        let frame = Message::Close(Some(CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from_static(close.reason),
        }));
        // A slow consumer may not take even this; it is not waited for long.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.send(frame)).await;
    }
    tracing::debug!(%connection_id, "disconnected");
}

/// Sends the `ack` and, when the client resumes, the changes it missed. Returns the last event
/// id sent or known to be before the connection (live changes up to it are skipped).
async fn start<Tx>(
    shared: &Shared,
    tx: &mut Tx,
    viewer: &Viewer,
    connection_id: Uuid,
    resume_from: Option<String>,
    subscription: &Subscription,
) -> Result<i64, Option<Close>>
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
{
    let head = subscription.head;
    let evicted = &subscription.evicted;
    let Some(raw) = resume_from else {
        let ack = frames::ack(connection_id, head, "initial_connect", 0);
        write_within(shared, tx, [ack], evicted).await?;
        return Ok(head);
    };
    let unavailable = |error: sparc_bus::OutboxError| {
        tracing::warn!(%error, "replay failed");
        Close::new(INTERNAL_ERROR, "Internal error")
    };
    let retained = shared.outbox.retained().await.map_err(unavailable)?;
    let through = retained.head.max(head);
    // The replay, as (after, count), or why the client must reload instead.
    let plan = match raw.trim().parse::<i64>() {
        Err(_) => Err("unknown event id"),
        Ok(after) if after > through => Err("unknown event id"),
        Ok(after) if after < retained.pruned_through => Err("beyond retention"),
        Ok(after) => {
            let visibility = viewer.visibility();
            let limit = shared.config.replay_limit;
            let size = shared
                .outbox
                .size_between(visibility, after, through, limit + 1)
                .await
                .map_err(unavailable)?;
            // Too many changes or too many bytes: reloading over REST is the cheaper way.
            if size.changes > limit || size.bytes > shared.config.replay_max_bytes {
                Err("beyond retention")
            } else {
                Ok((after, size.changes))
            }
        }
    };
    match plan {
        Err(reason) => {
            let ack = frames::ack(connection_id, through, &raw, 0);
            let resync = frames::resync_required(&raw, reason);
            write_within(shared, tx, [ack, resync], evicted).await?;
        }
        Ok((mut after, count)) => {
            let ack = frames::ack(connection_id, through, &raw, count);
            write_within(shared, tx, [ack], evicted).await?;
            let visibility = viewer.visibility();
            while after < through {
                let changes = shared
                    .outbox
                    .between(visibility, after, through, REPLAY_PAGE)
                    .await
                    .map_err(unavailable)?;
                let Some(last) = changes.last() else { break };
                after = last.event_id;
                let mut page = Vec::with_capacity(changes.len() * 2);
                for change in &changes {
                    match ChangeFrames::render(change) {
                        Ok(rendered) => page.extend(rendered.frames),
                        Err(error) => tracing::error!(%error, "change skipped in replay"),
                    }
                }
                write_within(shared, tx, page, evicted).await?;
            }
        }
    }
    Ok(through)
}

/// The live phase: queued changes, client frames, heartbeat ticks and eviction.
async fn live<Tx, Rx, E>(
    shared: &Shared,
    tx: &mut Tx,
    rx: &mut Rx,
    viewer: &mut SeatedViewer,
    subscription: &mut Subscription,
    ticks: &mut watch::Receiver<Arc<Tick>>,
    skip_through: i64,
) -> Option<Close>
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
    Rx: Stream<Item = Result<Message, E>> + Unpin,
{
    let Subscription {
        changes, evicted, ..
    } = subscription;
    let evicted: &Notify = evicted;
    let mut last_heard = Instant::now();
    let mut notices = viewer.admin.then(|| shared.notices.subscribe());
    loop {
        tokio::select! {
            biased;
            _ = evicted.notified() => return Close::new(SLOW_CONSUMER, "slow consumer"),
            notice = next_notice(&mut notices) => {
                // A notice missed because this client lagged is gone: notices are not replayed.
                if let Some(notice) = notice
                    && let Err(close) = write_within(shared, tx, [notice], evicted).await
                {
                    return close;
                }
            }
            change = changes.recv() => {
                let Some(change) = change else {
                    return Close::new(GOING_AWAY, "gateway shutting down");
                };
                // The changes queued behind this one go out with it: one write and one flush.
                let mut queued = vec![change];
                while queued.len() < CHANGES_PER_WRITE {
                    match changes.try_recv() {
                        Ok(change) => queued.push(change),
                        Err(_) => break,
                    }
                }
                let mut frames = Vec::with_capacity(queued.len() * 2);
                for change in queued.iter().filter(|change| change.event_id > skip_through) {
                    frames.extend(change.frames.iter().cloned());
                }
                if let Err(close) = write_within(shared, tx, frames, evicted).await {
                    return close;
                }
            }
            incoming = rx.next() => {
                last_heard = Instant::now();
                if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &incoming {
                    shared.hub.count_received();
                }
                let reply = match incoming {
                    Some(Ok(Message::Text(text))) => match ClientFrame::parse(&text) {
                        Some(ClientFrame::Ping) => Some(frames::pong()),
                        Some(ClientFrame::Pong) => None,
                        Some(ClientFrame::Authenticate { payload }) => {
                            match shared.authenticator.authenticate(&payload.token).await {
                                // The subscription's visibility stays: a token that would
                                // see more or less needs a new connection.
                                Ok(renewed)
                                    if renewed.user_id == viewer.user_id
                                        && renewed.sees_everything == viewer.sees_everything
                                        && renewed.admin == viewer.admin =>
                                {
                                    let expires_at = renewed.expires_at;
                                    viewer.renew(renewed);
                                    Some(frames::authenticated(expires_at))
                                }
                                _ => return Close::new(POLICY, "Authentication failed"),
                            }
                        }
                        None => Some(frames::invalid_message()),
                    },
                    Some(Ok(Message::Binary(_))) => Some(frames::invalid_message()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return GONE,
                };
                if let Some(reply) = reply
                    && let Err(close) = write_within(shared, tx, [reply], evicted).await
                {
                    return close;
                }
            }
            changed = ticks.changed() => {
                if changed.is_err() {
                    return Close::new(GOING_AWAY, "gateway shutting down");
                }
                let tick = ticks.borrow_and_update().clone();
                if tick.at.saturating_duration_since(last_heard) >= shared.config.silence_timeout {
                    return Close::new(HEARTBEAT_TIMEOUT, "heartbeat timeout");
                }
                if Utc::now() >= viewer.expires_at {
                    return Close::new(POLICY, "Token expired");
                }
                if tick.ended.contains(&(viewer.user_id, viewer.session_id)) {
                    return Close::new(POLICY, "Session ended");
                }
                if let Some(ping) = &tick.ping
                    && let Err(close) = write_within(shared, tx, [ping.clone()], evicted).await
                {
                    return close;
                }
            }
        }
    }
}

/// The next operational notice for an admin's connection (never, for anyone else's); `None`
/// when some were missed.
async fn next_notice(notices: &mut Option<broadcast::Receiver<Message>>) -> Option<Message> {
    match notices {
        Some(receiver) => match receiver.recv().await {
            Ok(notice) => Some(notice),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Writes `messages` unless the connection is evicted or the client does not take them within
/// the write timeout (then it is a slow consumer too).
async fn write_within<Tx>(
    shared: &Shared,
    tx: &mut Tx,
    messages: impl IntoIterator<Item = Message>,
    evicted: &Notify,
) -> Result<(), Option<Close>>
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
{
    tokio::select! {
        written = tokio::time::timeout(shared.config.write_timeout, write(tx, messages)) => {
            let written = written.unwrap_or(Err(Close::new(SLOW_CONSUMER, "slow consumer")))?;
            shared.hub.count_sent(written);
            Ok(())
        }
        _ = evicted.notified() => Err(Close::new(SLOW_CONSUMER, "slow consumer")),
    }
}

/// Writes `messages` and flushes once; returns how many it wrote.
async fn write<Tx>(
    tx: &mut Tx,
    messages: impl IntoIterator<Item = Message>,
) -> Result<u64, Option<Close>>
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
{
    let broken = |error: Tx::Error| {
        tracing::debug!(%error, "socket closed while writing");
        GONE
    };
    let mut written = 0;
    for message in messages {
        tx.feed(message).await.map_err(broken)?;
        written += 1;
    }
    tx.flush().await.map_err(broken)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::channel::mpsc;
    use serde_json::{Value, json};
    use sparc_bus::{Change, ChangeBus, ChangeKind, InProcessBus, Outbox};
    use sparc_domain::task::Task;
    use sparc_store::Database;
    use sparc_store::testing::{SqliteTestFile, sqlite_database};

    use super::*;
    use crate::auth::{AuthFailure, Authenticator};
    use crate::hub::Hub;
    use crate::{GatewayConfig, Tick};

    /// Tokens are `"<user id>"`, or `"admin:<user id>"` for one who sees everything; every
    /// token is of session [`SESSION`]. The sessions in `ended` have ended; `asked` records
    /// what the gateway asked about.
    #[derive(Default)]
    struct Tokens {
        ended: Mutex<HashSet<(Uuid, Uuid)>>,
        asked: Mutex<Vec<Vec<(Uuid, Uuid)>>>,
    }

    const SESSION: Uuid = Uuid::from_u128(7);

    #[async_trait]
    impl Authenticator for Tokens {
        async fn authenticate(&self, token: &str) -> Result<Viewer, AuthFailure> {
            let (sees_everything, id) = match token.strip_prefix("admin:") {
                Some(id) => (true, id),
                None => (false, token),
            };
            Ok(Viewer {
                user_id: id.parse().map_err(|_| AuthFailure::Rejected)?,
                session_id: SESSION,
                sees_everything,
                admin: sees_everything,
                expires_at: Utc::now() + chrono::Duration::hours(1),
            })
        }

        async fn ended(
            &self,
            mut sessions: Vec<(Uuid, Uuid)>,
        ) -> Result<HashSet<(Uuid, Uuid)>, AuthFailure> {
            let ended = self.ended.lock().expect("never poisoned");
            let found = sessions
                .iter()
                .filter(|s| ended.contains(s))
                .copied()
                .collect();
            sessions.sort();
            self.asked.lock().expect("never poisoned").push(sessions);
            Ok(found)
        }
    }

    struct Fixture {
        shared: Arc<Shared>,
        tokens: Arc<Tokens>,
        ticks: watch::Sender<Arc<Tick>>,
        db: Database,
        _file: SqliteTestFile,
    }

    async fn fixture(config: GatewayConfig) -> Fixture {
        let (db, file) = sqlite_database().await;
        let outbox = Outbox::new(&db);
        let head = outbox.retained().await.expect("reads").head;
        let (ticks, receiver) =
            watch::channel(Arc::new(Tick::new(Instant::now(), None, HashSet::new())));
        let tokens = Arc::new(Tokens::default());
        let bus: Arc<dyn ChangeBus> = Arc::new(InProcessBus::new());
        let shared = Arc::new(Shared {
            hub: Arc::new(Hub::new(outbox.clone(), head, config.send_queue)),
            outbox,
            authenticator: tokens.clone(),
            bus,
            admission: Arc::new(crate::admission::Admission::new(0, 0)),
            config,
            ticks: receiver,
            sessions: Mutex::default(),
            instance: "test".into(),
            peers: Mutex::new(HashMap::new()),
            notices: broadcast::channel(4).0,
        });
        Fixture {
            shared,
            tokens,
            ticks,
            db,
            _file: file,
        }
    }

    /// A client on the other end of channels.
    struct Client {
        from_server: mpsc::UnboundedReceiver<Message>,
        to_server: mpsc::UnboundedSender<Result<Message, std::convert::Infallible>>,
        served: tokio::task::JoinHandle<()>,
    }

    impl Fixture {
        fn connect(&self, viewer: Viewer, resume_from: Option<&str>) -> Client {
            let (tx, from_server) = mpsc::unbounded();
            let (to_server, rx) = mpsc::unbounded();
            let served = tokio::spawn(serve(
                self.shared.clone(),
                tx,
                rx,
                viewer,
                resume_from.map(str::to_owned),
            ));
            Client {
                from_server,
                to_server,
                served,
            }
        }

        /// A committed, numbered task change of `owner` (as the relay leaves it).
        async fn committed(&self, event_id: i64, owner: Uuid) -> Change {
            let task = Task {
                id: Uuid::new_v4(),
                exists: true,
                user_id: owner,
                ..Task::default()
            };
            let state = serde_json::to_string(&task).expect("serializes");
            let Database::Sqlite(pool) = &self.db else {
                unreachable!("the fixture uses SQLite")
            };
            sqlx::query(
                "INSERT INTO outbox (position, transaction_id, kind, aggregate_id, audience, \
                 version, event_type, state, recorded_at, published_seq) \
                 VALUES ($1, 0, 'tasks', $2, $3, 1, 'TaskScheduled', $4, \
                 '2026-03-02T09:00:00.000000Z', $1)",
            )
            .bind(event_id)
            .bind(task.id.to_string())
            .bind(owner.to_string())
            .bind(&state)
            .execute(pool)
            .await
            .expect("the row inserts");
            Change {
                event_id,
                kind: ChangeKind::Task,
                aggregate_id: task.id.to_string(),
                audience: Some(owner),
                version: 1,
                event_type: "TaskScheduled".into(),
                recorded_at: "2026-03-02T09:00:00.000000Z".into(),
                state: serde_json::value::RawValue::from_string(state).expect("JSON"),
            }
        }

        fn tick(&self, after: Duration, ping: bool) {
            self.ticks.send_replace(Arc::new(Tick::new(
                Instant::now() + after,
                ping.then(frames::ping),
                HashSet::new(),
            )));
        }
    }

    fn user(id: Uuid) -> Viewer {
        Viewer {
            user_id: id,
            session_id: SESSION,
            sees_everything: false,
            admin: false,
            expires_at: Utc::now() + chrono::Duration::hours(1),
        }
    }

    impl Client {
        async fn frame(&mut self) -> Value {
            match self.message().await {
                Message::Text(text) => serde_json::from_str(&text).expect("frames are JSON"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }

        async fn message(&mut self) -> Message {
            tokio::time::timeout(Duration::from_secs(5), self.from_server.next())
                .await
                .expect("the server should send within 5 s")
                .expect("the connection should be open")
        }

        async fn closed_with(&mut self) -> u16 {
            loop {
                match self.message().await {
                    Message::Close(Some(frame)) => return frame.code,
                    Message::Close(None) => panic!("a close code was expected"),
                    _ => continue,
                }
            }
        }

        fn send(&self, text: &str) {
            self.to_server
                .unbounded_send(Ok(Message::Text(text.into())))
                .expect("the server should listen");
        }

        async fn event_ids(&mut self, frames: usize) -> Vec<String> {
            let mut ids = Vec::new();
            for _ in 0..frames {
                let frame = self.frame().await;
                if frame["type"] == "task_updated" {
                    ids.push(frame["event_id"].as_str().expect("a string id").to_owned());
                }
            }
            ids
        }
    }

    #[tokio::test]
    async fn an_admin_hears_operational_notices_and_a_user_does_not() {
        let fixture = fixture(GatewayConfig::default()).await;
        let owner = Uuid::new_v4();
        let mut user = fixture.connect(user(owner), None);
        let mut admin = fixture.connect(
            Viewer {
                sees_everything: true,
                admin: true,
                ..self::user(Uuid::new_v4())
            },
            None,
        );
        user.frame().await;
        admin.frame().await;
        crate::AdminNotices(fixture.shared.notices.clone()).send(
            "memory_circuit_breaker",
            json!({"from": "CLOSED", "to": "OPEN"}),
        );
        let notice = admin.frame().await;
        assert_eq!(notice["type"], "memory_circuit_breaker");
        assert_eq!(notice["event_id"], Value::Null);
        assert_eq!(notice["payload"]["to"], "OPEN");
        // The user's next frame is the next change, not the notice.
        let change = fixture.committed(1, owner).await;
        fixture.shared.hub.accept(&change).await;
        assert_eq!(user.frame().await["type"], "task_status_update");
    }

    #[tokio::test]
    async fn the_first_frame_is_an_ack_and_live_changes_follow() {
        let fixture = fixture(GatewayConfig::default()).await;
        let owner = Uuid::new_v4();
        let mut client = fixture.connect(user(owner), None);
        let ack = client.frame().await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["event_id"], "0");
        assert_eq!(ack["payload"]["ackEventId"], "initial_connect");
        assert_eq!(ack["payload"]["replayed"], 0);
        let change = fixture.committed(1, owner).await;
        fixture.shared.hub.accept(&change).await;
        assert_eq!(client.frame().await["type"], "task_status_update");
        let full = client.frame().await;
        assert_eq!(
            (full["type"].as_str(), full["event_id"].as_str()),
            (Some("task_updated"), Some("1"))
        );
    }

    #[tokio::test]
    async fn a_client_ping_gets_a_pong_and_a_malformed_frame_an_error_without_closing() {
        let fixture = fixture(GatewayConfig::default()).await;
        let mut client = fixture.connect(user(Uuid::new_v4()), None);
        client.frame().await;
        client.send(r#"{"type":"ping"}"#);
        assert_eq!(client.frame().await["type"], "pong");
        for malformed in ["nope", r#"{"type":"subscribe"}"#, "{}"] {
            client.send(malformed);
            let error = client.frame().await;
            assert_eq!(error["type"], "error");
            assert_eq!(error["payload"], json!({"error": "Invalid message format"}));
        }
        client
            .to_server
            .unbounded_send(Ok(Message::Binary(vec![1, 2].into())))
            .expect("listens");
        assert_eq!(client.frame().await["type"], "error");
        client.send(r#"{"type":"ping"}"#);
        assert_eq!(client.frame().await["type"], "pong", "still open");
    }

    #[tokio::test]
    async fn the_server_pings_on_the_shared_tick_and_closes_a_silent_client() {
        let fixture = fixture(GatewayConfig::default()).await;
        let mut client = fixture.connect(user(Uuid::new_v4()), None);
        client.frame().await;
        fixture.tick(Duration::from_secs(30), true);
        assert_eq!(client.frame().await["type"], "ping");
        client.send(r#"{"type":"pong"}"#);
        // The pong is heard; a tick 59 s later is still in time.
        tokio::time::sleep(Duration::from_millis(50)).await;
        fixture.tick(Duration::from_secs(59), false);
        client.send(r#"{"type":"ping"}"#);
        assert_eq!(client.frame().await["type"], "pong");
        fixture.tick(Duration::from_secs(61), false);
        assert_eq!(client.closed_with().await, HEARTBEAT_TIMEOUT);
        client.served.await.expect("the connection task ends");
    }

    #[tokio::test]
    async fn a_resuming_client_gets_exactly_what_it_missed_then_live_changes() {
        let fixture = fixture(GatewayConfig::default()).await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        for event_id in 1..=5 {
            let owner = if event_id == 3 { bob } else { alice };
            fixture.committed(event_id, owner).await;
        }
        // The hub has delivered up to 4 when the client connects; 5 is committed and not yet
        // published, so it is replayed and must not come again live.
        let mut through_four = fixture
            .shared
            .hub
            .subscribe(sparc_bus::Visibility::Everything);
        for event_id in 1..=4 {
            let change = Outbox::new(&fixture.db)
                .between(sparc_bus::Visibility::Everything, event_id - 1, event_id, 1)
                .await
                .expect("reads")
                .remove(0);
            fixture.shared.hub.accept(&change).await;
        }
        let mut client = fixture.connect(user(alice), Some("1"));
        let ack = client.frame().await;
        assert_eq!(ack["payload"]["ackEventId"], "1");
        assert_eq!(ack["payload"]["replayed"], 3, "2, 4 and 5: not bob's 3");
        assert_eq!(ack["event_id"], "5");
        assert_eq!(client.event_ids(6).await, ["2", "4", "5"]);
        let five = Outbox::new(&fixture.db)
            .between(sparc_bus::Visibility::Everything, 4, 5, 1)
            .await
            .expect("reads")
            .remove(0);
        fixture.shared.hub.accept(&five).await;
        let six = fixture.committed(6, alice).await;
        fixture.shared.hub.accept(&six).await;
        assert_eq!(client.event_ids(2).await, ["6"], "5 is not repeated");
        through_four.changes.close();
    }

    #[tokio::test]
    async fn a_resume_point_too_old_or_unknown_asks_for_a_resync() {
        let fixture = fixture(GatewayConfig {
            replay_limit: 2,
            ..GatewayConfig::default()
        })
        .await;
        let alice = Uuid::new_v4();
        for event_id in 1..=4 {
            fixture.committed(event_id, alice).await;
        }
        for (resume_from, reason) in [
            ("0", "beyond retention"),
            ("99", "unknown event id"),
            ("abc", "unknown event id"),
        ] {
            let mut client = fixture.connect(user(alice), Some(resume_from));
            let ack = client.frame().await;
            assert_eq!(ack["payload"]["replayed"], 0);
            assert_eq!(ack["event_id"], "4");
            let resync = client.frame().await;
            assert_eq!(resync["type"], "resync_required");
            assert_eq!(resync["payload"]["reason"], reason);
        }
        let mut within = fixture.connect(user(alice), Some("2"));
        assert_eq!(within.frame().await["payload"]["replayed"], 2);
    }

    #[tokio::test]
    async fn a_replay_over_its_bytes_asks_for_a_resync() {
        let alice = Uuid::new_v4();
        // Every change below has a resource of the same size: one measured here.
        let probe = fixture(GatewayConfig::default()).await;
        probe.committed(1, alice).await;
        let one = Outbox::new(&probe.db)
            .size_between(sparc_bus::Visibility::Everything, 0, 1, 1)
            .await
            .expect("measures")
            .bytes;
        // Room for two changes' resources, not three.
        let fixture = fixture(GatewayConfig {
            replay_max_bytes: 2 * one + 1,
            ..GatewayConfig::default()
        })
        .await;
        for event_id in 1..=4 {
            fixture.committed(event_id, alice).await;
        }
        let mut over = fixture.connect(user(alice), Some("1"));
        assert_eq!(over.frame().await["payload"]["replayed"], 0);
        let resync = over.frame().await;
        assert_eq!(resync["type"], "resync_required");
        assert_eq!(resync["payload"]["reason"], "beyond retention");
        let mut within = fixture.connect(user(alice), Some("2"));
        assert_eq!(within.frame().await["payload"]["replayed"], 2);
        assert_eq!(within.event_ids(4).await, ["3", "4"]);
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_without_holding_up_the_others() {
        let fixture = fixture(GatewayConfig {
            send_queue: 4,
            write_timeout: Duration::from_secs(30),
            ..GatewayConfig::default()
        })
        .await;
        let owner = Uuid::new_v4();
        // A client that stops reading after the ack: its socket takes nothing more.
        let (slow_tx, mut slow_from_server) = mpsc::channel::<Message>(0);
        let (_slow_to_server, slow_rx) =
            mpsc::unbounded::<Result<Message, std::convert::Infallible>>();
        let slow = tokio::spawn(serve(
            fixture.shared.clone(),
            slow_tx,
            slow_rx,
            user(owner),
            None,
        ));
        assert!(matches!(
            slow_from_server.next().await,
            Some(Message::Text(_))
        ));
        let mut fast = fixture.connect(user(owner), None);
        fast.frame().await;
        for event_id in 1..=20 {
            let change = fixture.committed(event_id, owner).await;
            fixture.shared.hub.accept(&change).await;
            assert_eq!(
                fast.event_ids(2).await,
                [event_id.to_string()],
                "the fast client keeps up"
            );
        }
        tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .expect("the slow connection ends")
            .expect("cleanly");
        assert_eq!(fixture.shared.hub.connections(), 1);
    }

    #[tokio::test]
    async fn a_fresh_token_of_the_same_user_renews_and_another_users_closes() {
        let fixture = fixture(GatewayConfig::default()).await;
        let alice = Uuid::new_v4();
        let mut client = fixture.connect(user(alice), None);
        client.frame().await;
        client.send(&json!({"type": "authenticate", "payload": {"token": alice}}).to_string());
        assert_eq!(client.frame().await["type"], "authenticated");
        let bob = Uuid::new_v4();
        client.send(&json!({"type": "authenticate", "payload": {"token": bob}}).to_string());
        assert_eq!(client.closed_with().await, POLICY);
    }

    #[tokio::test]
    async fn a_token_of_the_same_user_with_another_reach_closes() {
        let fixture = fixture(GatewayConfig::default()).await;
        let alice = Uuid::new_v4();
        let mut client = fixture.connect(user(alice), None);
        client.frame().await;
        let promoted = format!("admin:{alice}");
        client.send(&json!({"type": "authenticate", "payload": {"token": promoted}}).to_string());
        assert_eq!(client.closed_with().await, POLICY);
    }

    #[tokio::test]
    async fn an_expired_token_closes_the_connection_at_the_next_tick() {
        let fixture = fixture(GatewayConfig::default()).await;
        let mut client = fixture.connect(
            Viewer {
                expires_at: Utc::now() - chrono::Duration::seconds(1),
                ..user(Uuid::new_v4())
            },
            None,
        );
        client.frame().await;
        fixture.tick(Duration::ZERO, false);
        assert_eq!(client.closed_with().await, POLICY);
    }

    #[tokio::test]
    async fn a_connection_whose_session_ended_is_closed_at_the_next_ping() {
        let fixture = fixture(GatewayConfig::default()).await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut alices = fixture.connect(user(alice), None);
        let mut bobs = fixture.connect(user(bob), None);
        alices.frame().await;
        bobs.frame().await;
        fixture.ticks.send_replace(Arc::new(Tick::new(
            Instant::now(),
            Some(frames::ping()),
            HashSet::from([(alice, SESSION)]),
        )));
        assert_eq!(alices.closed_with().await, POLICY);
        assert_eq!(bobs.frame().await["type"], "ping", "bob's session goes on");
    }

    #[tokio::test]
    async fn the_heartbeat_asks_about_the_sessions_of_open_connections() {
        let fixture = fixture(GatewayConfig::default()).await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut alices = fixture.connect(user(alice), None);
        let mut alices_second = fixture.connect(user(alice), None);
        let mut bobs = fixture.connect(user(bob), None);
        for client in [&mut alices, &mut alices_second, &mut bobs] {
            client.frame().await;
        }
        fixture
            .tokens
            .ended
            .lock()
            .expect("never poisoned")
            .insert((bob, SESSION));
        assert_eq!(
            fixture.shared.ended_sessions().await,
            HashSet::from([(bob, SESSION)])
        );
        let mut open = vec![(alice, SESSION), (bob, SESSION)];
        open.sort();
        assert_eq!(
            fixture.tokens.asked.lock().expect("never poisoned").last(),
            Some(&open),
            "each session once, however many connections it has"
        );

        drop(bobs);
        tokio::time::timeout(Duration::from_secs(5), async {
            while fixture.shared.hub.connections() > 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("bob's connection ends");
        fixture.shared.ended_sessions().await;
        assert_eq!(
            fixture.tokens.asked.lock().expect("never poisoned").last(),
            Some(&vec![(alice, SESSION)])
        );
    }
}
