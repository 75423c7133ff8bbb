//! `sparc-bus`: how committed read-model changes reach the WebSocket gateways.
//!
//! The live read models write one `outbox` row per applied event, in the transaction that moves
//! their checkpoint. The [`relay`] numbers those rows in log order once every publishing
//! projection has passed them (so no earlier row can still appear), and publishes them on a
//! [`ChangeBus`]; the number is the `event_id` clients resume from.
//!
//! - [`change`]: the published [`Change`], its [`ChangeKind`]s and the NATS [`Subjects`].
//! - [`relay`]: the single active [`Relay`] (Postgres advisory lock; others stand by).
//! - [`outbox`]: reading published changes back by event id, for replay and gap filling.
//! - [`nats`]: the production bus, NATS JetStream with `Nats-Msg-Id` de-duplication.
//! - [`in_process`]: the embedded bus, a tokio broadcast channel.
//!
//! Beside the changes, [`jobs`] holds the production job queue: runs waiting for an agent, in a
//! JetStream work-queue stream.

#![warn(missing_docs)]

pub mod change;
pub mod in_process;
pub mod jobs;
pub mod nats;
pub mod outbox;
pub mod relay;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use change::{Change, ChangeKind, Subjects};
pub use in_process::InProcessBus;
pub use jobs::{FetchedJob, JobStream};
pub use nats::NatsBus;
pub use outbox::{Outbox, OutboxError, ReplaySize, Retained, Visibility};
pub use relay::{Relay, RelayError};

/// A stream of published changes, in publish order.
pub type ChangeStream = BoxStream<'static, Arc<Change>>;

/// A gateway's announcement of how many connections it holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The gateway process (unique per process start).
    pub gateway: String,
    /// Its open WebSocket connections.
    pub connections: usize,
}

/// A stream of gateway announcements.
pub type PresenceStream = BoxStream<'static, Presence>;

/// Whether the bus can carry changes right now, as `/api/v1/health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusStatus {
    /// In process: always up.
    Embedded,
    /// Connected to NATS.
    Connected,
    /// NATS is unreachable (the relay retries; nothing is lost).
    Disconnected,
}

impl BusStatus {
    /// `embedded`, `connected` or `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Why the bus refused.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// NATS could not be reached or set up.
    #[error("could not connect to the bus: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A change was not acknowledged.
    #[error("could not publish to the bus: {0}")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A subscription could not be made.
    #[error("could not subscribe to the bus: {0}")]
    Subscribe(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Carries changes from the relay to every gateway.
///
/// Delivery to subscribers is best effort and in publish order; subscribers detect a loss by a
/// jump in `event_id` and read the missing changes from the [`Outbox`].
#[async_trait]
pub trait ChangeBus: Send + Sync {
    /// Publishes `changes` in order and returns once the bus has accepted every one. Publishing a
    /// change again (same `event_id`) is harmless: the bus or its subscribers drop the repeat.
    async fn publish(&self, changes: &[Arc<Change>]) -> Result<(), BusError>;

    /// Every change published from now on.
    async fn subscribe(&self) -> Result<ChangeStream, BusError>;

    /// Announces a gateway's connection count to the other gateways.
    async fn announce(&self, presence: &Presence) -> Result<(), BusError>;

    /// The other gateways' announcements (nothing in process: there is one gateway).
    async fn presences(&self) -> Result<PresenceStream, BusError>;

    /// Whether the bus is up.
    fn status(&self) -> BusStatus;
}
