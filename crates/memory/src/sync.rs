//! The sync policy: pushes to the Memory MCP server the entries stored while it was
//! unavailable, in log order, once each.
//!
//! It is a checkpointed consumer of the log (`policy_memory_sync`) that reads `MemoryStored`
//! events. An entry the server took when it was stored is passed over; any other is pushed and
//! then marked synced (`MemorySynced`), which is what `pending_sync` counts down. While the
//! breaker refuses calls, or a push fails, the policy waits on that entry (its checkpoint stays
//! before it) and tries again shortly: the probes it sends once the breaker's delay is over are
//! what close the breaker when nothing else calls. After a restart the batch is read again; an
//! entry already marked synced is passed over, and one pushed but not yet marked is pushed
//! again, which the knowledge-graph server takes as a no-op (an entity's name is its key), so
//! the server ends up holding each entry once.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::Deserialize as _;
use sparc_domain::memory::{Memory, MemoryCommand, MemoryEvent};
use sparc_projections::{Projection, ProjectionError};
use sparc_store::{CommandBus, EventMetadata, RecordedEvent};

use crate::mapping::{CallError, Record};
use crate::service::{MemoryService, Unavailable};

/// The policy's name: its checkpoint.
pub const SYNC_POLICY: &str = "policy_memory_sync";

/// See the module's documentation.
pub struct MemorySync {
    service: Arc<MemoryService>,
    commands: Arc<CommandBus>,
}

impl MemorySync {
    /// The policy, pushing through `service` and recording through `commands`.
    pub fn new(service: Arc<MemoryService>, commands: Arc<CommandBus>) -> Self {
        Self { service, commands }
    }

    async fn sync(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let payload = sparc_domain::upcasting::upcast_ref(
            &event.event_type,
            &event.event_version,
            &event.payload,
        );
        let stored = MemoryEvent::deserialize(payload.as_ref()).map_err(|source| {
            ProjectionError::Payload {
                position: event.position,
                event_type: event.event_type.clone(),
                source,
            }
        })?;
        let MemoryEvent::MemoryStored {
            memory_id,
            entry,
            in_memory_mcp: false,
            at,
        } = stored
        else {
            return Ok(());
        };
        if self.service.refuses_now() {
            return Err(ProjectionError::NotReady("memory_mcp"));
        }
        let id = memory_id.to_string();
        let (state, _) = self
            .commands
            .load::<Memory>(&id)
            .await
            .map_err(|e| ProjectionError::Command(e.into()))?;
        if state.synced {
            return Ok(());
        }
        match self.service.push(&Record::of(memory_id, &entry, at)).await {
            Ok(()) => {}
            // The server is up and refuses this entry: retried with back-off, not hammered.
            Err(Unavailable::Failed(CallError::Tool(message))) => {
                return Err(ProjectionError::Command(message.into()));
            }
            Err(_) => return Err(ProjectionError::NotReady("memory_mcp")),
        }
        let metadata = EventMetadata::system(event.position.to_string());
        self.commands
            .execute::<Memory>(
                &id,
                MemoryCommand::MarkSynced {
                    at: chrono::Utc::now(),
                },
                &metadata,
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| ProjectionError::Command(e.into()))
    }
}

#[async_trait]
impl Projection for MemorySync {
    fn name(&self) -> &str {
        SYNC_POLICY
    }

    fn reacts(&self) -> bool {
        true
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == Memory::TYPE && event.event_type == "MemoryStored"
    }

    async fn react(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| self.concerns(e)) {
            self.sync(event).await?;
        }
        Ok(())
    }
}
