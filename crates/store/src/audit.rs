//! The audit view of the log: which events an audit query selects ([`AuditFilter`], read in log
//! order by [`LogReader::audit_events`](crate::LogReader::audit_events)) and the shape in which
//! an event leaves the service ([`AuditEvent`]). The REST API and `sparc audit export` share
//! both, so an exported line and an API event carry the same fields with the same secrets
//! removed.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::log::RecordedEvent;

/// What replaces a secret in an [`AuditEvent`] payload.
pub const REDACTED: &str = "[redacted]";

/// Payload keys whose values never leave the service.
const SECRET_KEYS: &[&str] = &["password_hash"];

/// Which events an audit query selects. Every field narrows the selection; the default selects
/// the whole log from the start, at most [`AuditFilter::DEFAULT_LIMIT`] events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events of this aggregate type (`Task`, `User`, …).
    pub aggregate_type: Option<String>,
    /// Only events of aggregate instances with this id.
    pub aggregate_id: Option<String>,
    /// Only events whose metadata names this actor (a user id, `system`, `cli`, …).
    pub actor: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events recorded at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only events of aggregates this user owns: their own `User` stream, and the tasks,
    /// projects, executions and memory entries whose read-model row names them as owner.
    /// `None`: every aggregate.
    pub owner: Option<Uuid>,
    /// Only events after this point of the log: [`Checkpoint::ORIGIN`], the
    /// [`checkpoint`](RecordedEvent::checkpoint) of the last event of the previous page, or
    /// [`LogReader::checkpoint_of`](crate::LogReader::checkpoint_of) a position a client sent.
    pub after: Checkpoint,
    /// At most this many events.
    pub limit: i64,
}

impl AuditFilter {
    /// The page size of an [`AuditFilter::default`].
    pub const DEFAULT_LIMIT: i64 = 100;
}

impl Default for AuditFilter {
    fn default() -> Self {
        Self {
            aggregate_type: None,
            aggregate_id: None,
            actor: None,
            event_type: None,
            from: None,
            to: None,
            owner: None,
            after: Checkpoint::ORIGIN,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// One event as auditors see it: the stored event without its transaction id, with secrets in
/// the payload replaced by [`REDACTED`] and `recorded_at` as RFC 3339 UTC with microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `global_position`.
    pub position: i64,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate instance's id.
    pub aggregate_id: String,
    /// The event's number within its aggregate instance, from 1.
    pub sequence: i64,
    /// The event's type.
    pub event_type: String,
    /// The event's schema version.
    pub event_version: String,
    /// The serialized event, redacted.
    pub payload: Value,
    /// Who caused the event and in which request.
    pub metadata: Value,
    /// When the event was stored.
    pub recorded_at: String,
    /// The hash chain link, `None` until the chainer has reached this event.
    pub hash: Option<String>,
}

impl From<RecordedEvent> for AuditEvent {
    fn from(event: RecordedEvent) -> Self {
        let mut payload = event.payload;
        redact(&mut payload);
        Self {
            position: event.position,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload,
            metadata: event.metadata,
            recorded_at: event
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            hash: event.hash,
        }
    }
}

/// Replaces the value of every secret key (password hashes), at any depth, with [`REDACTED`].
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    *inner = Value::String(REDACTED.to_owned());
                } else {
                    redact(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn password_hashes_are_redacted_at_any_depth() {
        let event = RecordedEvent {
            position: 3,
            transaction_id: 9,
            aggregate_type: "User".into(),
            aggregate_id: "u-1".into(),
            sequence: 1,
            event_type: "UserRegistered".into(),
            event_version: "1.0".into(),
            payload: json!({"UserRegistered": {"password_hash": "$argon2id$…", "items": [{"password_hash": "x"}], "name": "a"}}),
            metadata: json!({"actor": "cli"}),
            recorded_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            hash: None,
        };
        let audit = AuditEvent::from(event);
        assert_eq!(
            audit.payload,
            json!({"UserRegistered": {"password_hash": REDACTED, "items": [{"password_hash": REDACTED}], "name": "a"}})
        );
        assert_eq!(audit.recorded_at, "2025-01-02T03:04:05.000000Z");
    }
}
