//! `sparc-gateway`: the WebSocket gateway (`GET /ws`, `GET /ws/health`).
//!
//! A gateway holds browser connections and pushes them every change they may see, as the
//! contract's frames. It shares nothing with other gateways but the bus, so any number run side
//! by side; a client may reconnect to any of them with `last_event_id` and resume exactly where
//! it left off, because event ids are the outbox's gap-free numbering and the outbox is the
//! replay source.
//!
//! - [`auth`]: the [`Authenticator`] port (the composition root plugs in the token and session
//!   checks of `sparc-accounts`).
//! - [`frames`]: the frames of the contract, rendered once per change.
//! - `hub`: the one bus subscription per process, in order and without gaps, fanned out to
//!   bounded per-connection queues.
//! - `connection`: one task per connection: ack, replay, live changes, heartbeat.
//! - `http`: the routes and the upgrade (small explicit buffers; the token from `?token=` or
//!   `Sec-WebSocket-Protocol: bearer, <token>`).
//! - `admission`: the caps on connections, per process and per user, checked before the upgrade.

#![warn(missing_docs)]

mod admission;
pub mod auth;
mod connection;
pub mod frames;
mod http;
mod hub;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::Message;
use futures::StreamExt as _;
use sparc_bus::{BusError, ChangeBus, ChangeStream, Outbox, OutboxError, Presence};
use sparc_store::Database;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

pub use auth::{AuthFailure, Authenticator, Viewer};

use crate::admission::Admission;
use crate::hub::Hub;

/// Ticks per ping interval: the silence check runs on every tick, the ping on every third.
const TICKS_PER_PING: u32 = 3;
/// How often a gateway announces its connection count.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// An announcement older than this no longer counts (that gateway stopped).
const PRESENCE_STALE_AFTER: Duration = Duration::from_secs(15);
/// Operational notices an admin's connection may fall behind by before it misses some.
const NOTICES_QUEUED: usize = 64;

/// The gateway's tunables.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How often the server sends `{type: "ping"}` (30 s).
    pub ping_interval: Duration,
    /// How long a silent client is kept (60 s).
    pub silence_timeout: Duration,
    /// Changes queued per connection before it counts as a slow consumer (256).
    pub send_queue: usize,
    /// How long one write may take before the client counts as a slow consumer (10 s).
    pub write_timeout: Duration,
    /// The most changes a reconnecting client is replayed; beyond it must reload (10,000).
    pub replay_limit: i64,
    /// The most bytes of changed resources a reconnecting client is replayed; beyond it must
    /// reload (16 MiB: 10,000 changes of resources of 1.6 KB, so the contract's retention of
    /// 10,000 changes holds for ordinary resources, while large ones cannot make a reconnect
    /// cost gigabytes).
    pub replay_max_bytes: i64,
    /// Connections this process holds at most; an upgrade beyond is refused with 429 (10,000,
    /// well below the 20,000 open files a process may have; `0`: no cap).
    pub max_connections: usize,
    /// Connections one user holds on this process at most; beyond, 429 (50; `0`: no cap).
    pub connections_per_user: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(60),
            send_queue: 256,
            write_timeout: Duration::from_secs(10),
            replay_limit: 10_000,
            replay_max_bytes: 16 * 1024 * 1024,
            max_connections: 10_000,
            connections_per_user: 50,
        }
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The bus subscription failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The outbox could not be read.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The shared heartbeat: one timer for every connection.
pub(crate) struct Tick {
    /// When it fired.
    pub(crate) at: Instant,
    /// The ping frame to send, on every [`TICKS_PER_PING`]th tick (serialized once).
    pub(crate) ping: Option<Message>,
    /// The sessions (user, session) found ended on this tick: their connections close. Asked
    /// with every ping, for the sessions of all open connections at once.
    pub(crate) ended: Arc<HashSet<(Uuid, Uuid)>>,
}

impl Tick {
    fn new(at: Instant, ping: Option<Message>, ended: HashSet<(Uuid, Uuid)>) -> Self {
        Self {
            at,
            ping,
            ended: Arc::new(ended),
        }
    }
}

/// What every connection and handler of one gateway shares.
pub(crate) struct Shared {
    pub(crate) hub: Arc<Hub>,
    pub(crate) outbox: Outbox,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) bus: Arc<dyn ChangeBus>,
    pub(crate) config: GatewayConfig,
    pub(crate) ticks: watch::Receiver<Arc<Tick>>,
    /// The connection caps and what counts against them.
    pub(crate) admission: Arc<Admission>,
    /// The sessions of the open connections, with how many connections each has.
    pub(crate) sessions: Mutex<HashMap<(Uuid, Uuid), usize>>,
    /// This process's name in presence announcements.
    instance: String,
    /// Other gateways' last announced connection counts.
    peers: Mutex<HashMap<String, (usize, Instant)>>,
    /// Operational notices for the admins connected here ([`Gateway::notify_admins`]).
    pub(crate) notices: broadcast::Sender<Message>,
}

impl Shared {
    /// `viewer`, counted among the open sessions for as long as the result lives.
    pub(crate) fn seat(self: &Arc<Self>, viewer: Viewer) -> SeatedViewer {
        self.count_session((viewer.user_id, viewer.session_id), true);
        SeatedViewer {
            shared: self.clone(),
            viewer,
        }
    }

    fn count_session(&self, key: (Uuid, Uuid), joins: bool) {
        let mut sessions = self
            .sessions
            .lock()
            .expect("the sessions lock is never poisoned");
        if joins {
            *sessions.entry(key).or_default() += 1;
        } else if let Some(count) = sessions.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(&key);
            }
        }
    }

    /// The sessions of the open connections that have ended (none when that cannot be asked:
    /// the next ping asks again).
    async fn ended_sessions(&self) -> HashSet<(Uuid, Uuid)> {
        let open: Vec<(Uuid, Uuid)> = self
            .sessions
            .lock()
            .expect("the sessions lock is never poisoned")
            .keys()
            .copied()
            .collect();
        if open.is_empty() {
            return HashSet::new();
        }
        self.authenticator
            .ended(open)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "could not check the sessions of open connections");
                HashSet::new()
            })
    }

    /// This gateway's connections plus those other gateways announced recently.
    pub(crate) fn total_connections(&self) -> usize {
        let peers = self.peers.lock().expect("the peers lock is never poisoned");
        let others: usize = peers
            .values()
            .filter(|(_, seen)| seen.elapsed() < PRESENCE_STALE_AFTER)
            .map(|(connections, _)| connections)
            .sum();
        self.hub.connections() + others
    }
}

/// A connection's viewer, counted among the open sessions whose end the heartbeat asks about
/// ([`Shared::seat`]); it leaves the count when dropped, however the connection ends.
pub(crate) struct SeatedViewer {
    shared: Arc<Shared>,
    viewer: Viewer,
}

impl SeatedViewer {
    /// Takes the expiry and session of `renewed`, a fresh token of the same user.
    pub(crate) fn renew(&mut self, renewed: Viewer) {
        let (old, new) = (self.key(), (renewed.user_id, renewed.session_id));
        if new != old {
            self.shared.count_session(new, true);
            self.shared.count_session(old, false);
        }
        self.viewer = renewed;
    }

    fn key(&self) -> (Uuid, Uuid) {
        (self.viewer.user_id, self.viewer.session_id)
    }
}

impl std::ops::Deref for SeatedViewer {
    type Target = Viewer;

    fn deref(&self) -> &Viewer {
        &self.viewer
    }
}

impl Drop for SeatedViewer {
    fn drop(&mut self) {
        self.shared.count_session(self.key(), false);
    }
}

/// A running gateway; [`Gateway::router`] serves it.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("instance", &self.shared.instance)
            .field("connections", &self.shared.hub.connections())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Subscribes to `bus`, then starts the hub, the heartbeat and the presence announcements;
    /// they stop when `shutdown` turns true, and every connection then closes with 1001.
    /// Returns the gateway and its background tasks.
    ///
    /// # Errors
    /// The bus subscription or the outbox read failed.
    pub async fn start(
        db: &Database,
        bus: Arc<dyn ChangeBus>,
        authenticator: Arc<dyn Authenticator>,
        config: GatewayConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, Vec<JoinHandle<()>>), GatewayError> {
        let outbox = Outbox::new(db);
        // Subscribe first: every change after the head read next arrives on the subscription.
        let changes = bus.subscribe().await?;
        let head = outbox.retained().await?.head;
        let hub = Arc::new(Hub::new(outbox.clone(), head, config.send_queue));
        let (tick_sender, ticks) =
            watch::channel(Arc::new(Tick::new(Instant::now(), None, HashSet::new())));
        let shared = Arc::new(Shared {
            hub: hub.clone(),
            outbox,
            authenticator,
            bus: bus.clone(),
            admission: Arc::new(Admission::new(
                config.max_connections,
                config.connections_per_user,
            )),
            config,
            ticks,
            sessions: Mutex::default(),
            instance: Uuid::new_v4().to_string(),
            peers: Mutex::default(),
            notices: broadcast::channel(NOTICES_QUEUED).0,
        });
        let tasks = vec![
            tokio::spawn(relay_changes(hub, bus, changes, shutdown.clone())),
            tokio::spawn(heartbeat(shared.clone(), tick_sender, shutdown.clone())),
            tokio::spawn(presence(shared.clone(), shutdown)),
        ];
        Ok((Self { shared }, tasks))
    }

    /// `GET /ws` and `GET /ws/health`.
    pub fn router(&self) -> Router {
        http::router(self.shared.clone())
    }

    /// The connections this process holds.
    pub fn connections(&self) -> usize {
        self.shared.hub.connections()
    }

    /// A handle that sends operational notices to the admins connected to this gateway.
    pub fn admin_notices(&self) -> AdminNotices {
        AdminNotices(self.shared.notices.clone())
    }

    /// Live counts of this process's connections and messages, without the gateway's tasks and
    /// channels (the API's state keeps them for its health endpoints).
    pub fn counters(&self) -> GatewayCounters {
        GatewayCounters(self.shared.hub.clone())
    }
}

/// See [`Gateway::admin_notices`].
#[derive(Clone)]
pub struct AdminNotices(broadcast::Sender<Message>);

impl AdminNotices {
    /// Sends the frame `{type, event_id: null, timestamp, payload}` to every admin connected
    /// now (notices are not stored: a client connecting later does not get it).
    pub fn send(&self, frame_type: &str, payload: serde_json::Value) {
        let _ = self.0.send(frames::notice(frame_type, payload));
    }
}

/// See [`Gateway::counters`].
#[derive(Clone)]
pub struct GatewayCounters(Arc<Hub>);

impl GatewayCounters {
    /// The connections this process holds now.
    pub fn connections(&self) -> usize {
        self.0.connections()
    }

    /// The WebSocket messages this process has written to and read from its connections.
    pub fn messages(&self) -> (u64, u64) {
        self.0.messages()
    }
}

/// Feeds the hub from the bus; subscribes again if the subscription ends.
async fn relay_changes(
    hub: Arc<Hub>,
    bus: Arc<dyn ChangeBus>,
    mut changes: ChangeStream,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        tokio::select! {
            change = changes.next() => match change {
                Some(change) => hub.accept(&change).await,
                None => {
                    tracing::warn!("bus subscription ended; subscribing again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match bus.subscribe().await {
                        Ok(again) => changes = again,
                        Err(error) => tracing::warn!(%error, "could not subscribe to the bus"),
                    }
                }
            },
            _ = shutdown.changed() => {}
        }
    }
}

/// Ticks every `ping_interval / TICKS_PER_PING`, with a ping frame, and the sessions of open
/// connections found ended, every `TICKS_PER_PING`th tick. Dropping the sender on shutdown
/// closes every connection.
async fn heartbeat(
    shared: Arc<Shared>,
    ticks: watch::Sender<Arc<Tick>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut timer = tokio::time::interval(shared.config.ping_interval / TICKS_PER_PING);
    timer.tick().await;
    let mut count = 0u32;
    while !*shutdown.borrow() {
        tokio::select! {
            at = timer.tick() => {
                count = count.wrapping_add(1);
                let tick = if count.is_multiple_of(TICKS_PER_PING) {
                    Tick::new(at, Some(frames::ping()), shared.ended_sessions().await)
                } else {
                    Tick::new(at, None, HashSet::new())
                };
                ticks.send_replace(Arc::new(tick));
            }
            _ = shutdown.changed() => {}
        }
    }
}

/// Announces this gateway's connection count and collects the others'.
async fn presence(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut announcements = match shared.bus.presences().await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "gateway presence unavailable: totals count this gateway only");
            futures::stream::pending().boxed()
        }
    };
    let mut timer = tokio::time::interval(PRESENCE_EVERY);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = timer.tick() => {
                let me = Presence { gateway: shared.instance.clone(), connections: shared.hub.connections() };
                if let Err(error) = shared.bus.announce(&me).await {
                    tracing::debug!(%error, "presence not announced");
                }
            }
            Some(peer) = announcements.next() => {
                if peer.gateway != shared.instance {
                    shared.peers.lock().expect("the peers lock is never poisoned")
                        .insert(peer.gateway, (peer.connections, Instant::now()));
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}
