//! The production bus: NATS JetStream.
//!
//! Changes are published to the stream `SPARC_CHANGES` with `Nats-Msg-Id = "<event_id>"`, so a
//! change the relay publishes again after a crash (within the stream's two-minute
//! de-duplication window) is stored once; the relay waits for every acknowledgement before it
//! records progress. Gateways read the same subjects with a core subscription: cheap, and a
//! message lost in a reconnect shows as a jump in `event_id` that the gateway fills from the
//! outbox. The stream keeps a day of changes for other consumers and for operators.
//!
//! The client reconnects forever; while NATS is down publishing fails (the relay retries) and
//! [`ChangeBus::status`] says `disconnected`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_trait::async_trait;
use futures::StreamExt as _;

use crate::{
    BusError, BusStatus, Change, ChangeBus, ChangeStream, Presence, PresenceStream, Subjects,
};

/// How long the stream keeps changes (the retention of replay on reconnect).
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long the stream remembers a `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`ChangeBus`] over NATS JetStream.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    /// Whether the stream is known to exist; cleared when a publish fails, since a NATS server
    /// that lost its store comes back without it.
    stream_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url`. It does not wait for the server: the client keeps
    /// trying in the background, publishing fails until it is reachable, and the stream is
    /// created on first publish.
    ///
    /// # Errors
    /// [`BusError::Connect`] if `url` is not a NATS address.
    pub async fn connect(url: &str, subjects: Subjects) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("sparc")
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                tracing::info!(%event, "nats");
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Connect(Box::new(e)))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client.clone());
        Ok(Self {
            client,
            jetstream,
            subjects,
            stream_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The names this bus uses.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The JetStream context (for operators' tools and tests).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    async fn ensure_stream(&self) -> Result<(), BusError> {
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.subjects.stream(),
                subjects: vec![self.subjects.all_changes()],
                max_age: STREAM_MAX_AGE,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Connect(Box::new(e)))?;
        self.stream_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn publish_acknowledged(&self, changes: &[Arc<Change>]) -> Result<(), BusError> {
        self.ensure_stream().await?;
        let mut acks = Vec::with_capacity(changes.len());
        for change in changes {
            let message = PublishMessage::build()
                .payload(change.to_bytes())
                .message_id(change.event_id.to_string());
            let ack = self
                .jetstream
                .send_publish(self.subjects.of(change), message)
                .await
                .map_err(|e| BusError::Publish(Box::new(e)))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| BusError::Publish(Box::new(e)))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ChangeBus for NatsBus {
    async fn publish(&self, changes: &[Arc<Change>]) -> Result<(), BusError> {
        let published = self.publish_acknowledged(changes).await;
        if published.is_err() {
            self.stream_ready.store(false, Ordering::Release);
        }
        published
    }

    async fn subscribe(&self) -> Result<ChangeStream, BusError> {
        let subscriber = self
            .client
            .subscribe(self.subjects.all_changes())
            .await
            .map_err(|e| BusError::Subscribe(Box::new(e)))?;
        Ok(subscriber
            .filter_map(|message| async move {
                match Change::from_bytes(&message.payload) {
                    Ok(change) => Some(Arc::new(change)),
                    Err(error) => {
                        tracing::warn!(subject = %message.subject, %error, "undecodable change skipped");
                        None
                    }
                }
            })
            .boxed())
    }

    async fn announce(&self, presence: &Presence) -> Result<(), BusError> {
        let payload = serde_json::to_vec(presence).expect("a presence always serializes");
        self.client
            .publish(self.subjects.gateway_presence(), payload.into())
            .await
            .map_err(|e| BusError::Publish(Box::new(e)))
    }

    async fn presences(&self) -> Result<PresenceStream, BusError> {
        let subscriber = self
            .client
            .subscribe(self.subjects.gateway_presence())
            .await
            .map_err(|e| BusError::Subscribe(Box::new(e)))?;
        Ok(subscriber
            .filter_map(|message| async move { serde_json::from_slice(&message.payload).ok() })
            .boxed())
    }

    fn status(&self) -> BusStatus {
        match self.client.connection_state() {
            State::Connected => BusStatus::Connected,
            State::Pending | State::Disconnected => BusStatus::Disconnected,
        }
    }
}
