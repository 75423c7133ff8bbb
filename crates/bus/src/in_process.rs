//! The embedded bus: a tokio broadcast channel inside the one `sparc serve` process. A
//! subscriber that falls more than the channel's capacity behind skips ahead; it sees the jump
//! in `event_id` and reads what it missed from the outbox.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::{BusError, BusStatus, Change, ChangeBus, ChangeStream, Presence, PresenceStream};

/// How many changes a subscriber may fall behind before it skips ahead.
const CAPACITY: usize = 4096;

/// A [`ChangeBus`] within one process.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<Arc<Change>>,
}

impl InProcessBus {
    /// A bus with no subscribers yet.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ChangeBus for InProcessBus {
    async fn publish(&self, changes: &[Arc<Change>]) -> Result<(), BusError> {
        for change in changes {
            // No subscriber is not an error: a gateway that starts later replays from the outbox.
            let _ = self.sender.send(change.clone());
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<ChangeStream, BusError> {
        let receiver = self.sender.subscribe();
        Ok(
            futures::stream::unfold(receiver, |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(change) => return Some((change, receiver)),
                        Err(RecvError::Lagged(skipped)) => {
                            tracing::warn!(skipped, "change subscriber fell behind");
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            })
            .boxed(),
        )
    }

    async fn announce(&self, _presence: &Presence) -> Result<(), BusError> {
        Ok(())
    }

    async fn presences(&self) -> Result<PresenceStream, BusError> {
        Ok(futures::stream::pending().boxed())
    }

    fn status(&self) -> BusStatus {
        BusStatus::Embedded
    }
}
