//! The Memory aggregate: one entry of the agents' shared memory, tagged with who wrote it, when,
//! for which project and task, and why. Every store is an event, so the log (and the read model
//! folded from it) holds every entry even while the Memory MCP server is unreachable; the entry
//! also records whether that server holds it, so entries stored meanwhile are pushed to it later,
//! once each ([`MemoryCommand::MarkSynced`] changes nothing on an entry already synced).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Timestamp, text_enum};
use crate::{DomainError, ErrorKind};

/// Why an entry was written (the contract's WHY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
pub enum Intent {
    #[default]
    Implementation,
    Bugfix,
    Refactor,
    Testing,
    Documentation,
    Analysis,
    Planning,
    Research,
}

text_enum!(Intent {
    Implementation => "implementation",
    Bugfix => "bugfix",
    Refactor => "refactor",
    Testing => "testing",
    Documentation => "documentation",
    Analysis => "analysis",
    Planning => "planning",
    Research => "research",
});

/// What an entry says and how it is tagged, as given to [`MemoryCommand::Store`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// The text remembered.
    pub content: String,
    /// Why it was written.
    pub intent: Intent,
    /// The user it belongs to: only they (and admins and auditors) see it.
    pub user_id: Uuid,
    /// The agent that wrote it, if an agent did.
    pub agent_id: Option<Uuid>,
    /// The task it is about.
    pub task_id: Option<Uuid>,
    /// The project it is about.
    pub project_id: Option<Uuid>,
    /// Free-form metadata the writer added (a JSON object).
    pub additional_metadata: serde_json::Value,
}

/// What can be asked of a memory entry.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryCommand {
    /// Record a new entry; `in_memory_mcp` says whether the MCP server already took it.
    Store {
        /// Its id.
        memory_id: Uuid,
        /// The entry.
        entry: MemoryEntry,
        /// Whether the Memory MCP server holds it already.
        in_memory_mcp: bool,
        /// Decision time.
        at: Timestamp,
    },
    /// The Memory MCP server now holds the entry (pushed after the fact).
    MarkSynced {
        /// Decision time.
        at: Timestamp,
    },
}

impl MemoryCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Store { .. } => "Store",
            Self::MarkSynced { .. } => "MarkSynced",
        }
    }
}

/// What happened to a memory entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MemoryEvent {
    /// Stored.
    MemoryStored {
        /// Its id.
        memory_id: Uuid,
        /// The entry.
        entry: MemoryEntry,
        /// Whether the Memory MCP server took it when it was stored.
        in_memory_mcp: bool,
        /// When.
        at: Timestamp,
    },
    /// Pushed to the Memory MCP server after having been stored without it.
    MemorySynced {
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for MemoryEvent {
    fn event_type(&self) -> String {
        match self {
            MemoryEvent::MemoryStored { .. } => "MemoryStored",
            MemoryEvent::MemorySynced { .. } => "MemorySynced",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a memory command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemoryError {
    /// Store on an existing id.
    #[error("memory entry already exists")]
    AlreadyExists,
    /// Unknown entry.
    #[error("Memory entry not found")]
    NotFound,
}

impl DomainError for MemoryError {
    fn kind(&self) -> ErrorKind {
        match self {
            MemoryError::AlreadyExists => ErrorKind::Conflict,
            MemoryError::NotFound => ErrorKind::NotFound,
        }
    }
}

/// A memory entry's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Its id.
    pub id: Uuid,
    /// The entry (`None` before it is stored).
    pub entry: Option<MemoryEntry>,
    /// Whether the Memory MCP server holds it.
    pub synced: bool,
    /// When it was stored.
    pub created_at: Option<Timestamp>,
    /// When it reached the Memory MCP server, if it did.
    pub synced_at: Option<Timestamp>,
}

impl Aggregate for Memory {
    const TYPE: &'static str = "Memory";
    type Command = MemoryCommand;
    type Event = MemoryEvent;
    type Error = MemoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            MemoryCommand::Store {
                memory_id,
                entry,
                in_memory_mcp,
                at,
            } => {
                if self.entry.is_some() {
                    return Err(MemoryError::AlreadyExists);
                }
                MemoryEvent::MemoryStored {
                    memory_id,
                    entry,
                    in_memory_mcp,
                    at,
                }
            }
            MemoryCommand::MarkSynced { at } => {
                if self.entry.is_none() {
                    return Err(MemoryError::NotFound);
                }
                if self.synced {
                    return Ok(());
                }
                MemoryEvent::MemorySynced { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MemoryEvent::MemoryStored {
                memory_id,
                entry,
                in_memory_mcp,
                at,
            } => {
                *self = Memory {
                    id: memory_id,
                    entry: Some(entry),
                    synced: in_memory_mcp,
                    created_at: Some(at),
                    synced_at: in_memory_mcp.then_some(at),
                };
            }
            MemoryEvent::MemorySynced { at } => {
                self.synced = true;
                self.synced_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    fn stored(in_memory_mcp: bool) -> MemoryEvent {
        MemoryEvent::MemoryStored {
            memory_id: Uuid::from_u128(1),
            entry: MemoryEntry {
                content: "axum extractors run in order".into(),
                intent: Intent::Research,
                user_id: Uuid::from_u128(2),
                agent_id: None,
                task_id: Some(Uuid::from_u128(3)),
                project_id: None,
                additional_metadata: serde_json::json!({}),
            },
            in_memory_mcp,
            at: t(),
        }
    }

    #[test]
    fn an_entry_stored_without_the_server_is_synced_once() {
        TestFramework::<Memory>::with(())
            .given(vec![stored(false)])
            .when(MemoryCommand::MarkSynced { at: t() })
            .then_expect_events(vec![MemoryEvent::MemorySynced { at: t() }]);
        TestFramework::<Memory>::with(())
            .given(vec![stored(false), MemoryEvent::MemorySynced { at: t() }])
            .when(MemoryCommand::MarkSynced { at: t() })
            .then_expect_events(vec![]);
        TestFramework::<Memory>::with(())
            .given(vec![stored(true)])
            .when(MemoryCommand::MarkSynced { at: t() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_id_is_stored_once_and_an_unknown_one_cannot_sync() {
        TestFramework::<Memory>::with(())
            .given(vec![stored(true)])
            .when(MemoryCommand::Store {
                memory_id: Uuid::from_u128(1),
                entry: MemoryEntry {
                    content: "again".into(),
                    intent: Intent::Testing,
                    user_id: Uuid::from_u128(2),
                    agent_id: None,
                    task_id: None,
                    project_id: None,
                    additional_metadata: serde_json::json!({}),
                },
                in_memory_mcp: false,
                at: t(),
            })
            .then_expect_error(MemoryError::AlreadyExists);
        TestFramework::<Memory>::with(())
            .given_no_previous_events()
            .when(MemoryCommand::MarkSynced { at: t() })
            .then_expect_error(MemoryError::NotFound);
    }

    #[test]
    fn intents_are_the_contracts_eight() {
        assert_eq!(Intent::ALL.len(), 8);
        assert_eq!(Intent::parse("bugfix").unwrap(), Intent::Bugfix);
        assert!(Intent::parse("whim").is_err());
    }
}
