//! The metadata stored with every event: who did it, in which request, why, and when.
//!
//! cqrs-es carries metadata as a string-to-string map (`execute_with_metadata`) and copies it
//! onto every event of the commit; [`EventMetadata`] is its typed form.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// The actor recorded for events the service emits on its own (scheduler, policies, …).
pub const SYSTEM_ACTOR: &str = "system";

/// Who caused an event and in which context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The user id (or `"system"`) that issued the command.
    pub actor: String,
    /// The id of the request (or job) that issued the command.
    pub request_id: String,
    /// Shared by everything that follows from one original request.
    pub correlation_id: String,
    /// What directly caused this command: the request id, or the event id a policy reacted to.
    pub causation_id: String,
    /// The client's IP address, when the command came over HTTP.
    pub ip: Option<String>,
    /// The client's user agent, when the command came over HTTP.
    pub user_agent: Option<String>,
    /// When the command was issued.
    pub recorded_at: DateTime<Utc>,
}

impl EventMetadata {
    /// Metadata for a command issued by `actor` in request `request_id`, which starts a new
    /// correlation (correlation and causation ids are the request id), recorded now.
    pub fn new(actor: impl Into<String>, request_id: impl Into<String>) -> Self {
        let request_id = request_id.into();
        Self {
            actor: actor.into(),
            correlation_id: request_id.clone(),
            causation_id: request_id.clone(),
            request_id,
            ip: None,
            user_agent: None,
            recorded_at: Utc::now(),
        }
    }

    /// Metadata for a command the service issues itself (actor `"system"`), with a fresh
    /// request id; `reason` (e.g. `"scheduler"`, or the id of the event a policy reacts to) is
    /// the causation id.
    pub fn system(reason: impl Into<String>) -> Self {
        let request_id = Uuid::now_v7().to_string();
        Self {
            actor: SYSTEM_ACTOR.to_string(),
            correlation_id: request_id.clone(),
            causation_id: reason.into(),
            request_id,
            ip: None,
            user_agent: None,
            recorded_at: Utc::now(),
        }
    }

    /// Metadata for a follow-up command (a policy's reaction): same actor and correlation, a
    /// fresh request id, caused by `causation_id`, recorded now.
    pub fn caused_by(&self, causation_id: impl Into<String>) -> Self {
        Self {
            actor: self.actor.clone(),
            request_id: Uuid::now_v7().to_string(),
            correlation_id: self.correlation_id.clone(),
            causation_id: causation_id.into(),
            ip: None,
            user_agent: None,
            recorded_at: Utc::now(),
        }
    }

    /// Sets the client's IP address.
    pub fn with_ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// Sets the client's user agent.
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// The map handed to `CqrsFramework::execute_with_metadata`. Keys: `actor`, `request_id`,
    /// `correlation_id`, `causation_id`, `ip` and `user_agent` (only when known) and
    /// `recorded_at` (RFC 3339, UTC, `Z`).
    pub fn into_map(self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_string(), self.actor),
            ("request_id".to_string(), self.request_id),
            ("correlation_id".to_string(), self.correlation_id),
            ("causation_id".to_string(), self.causation_id),
            (
                "recorded_at".to_string(),
                self.recorded_at
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
        ]);
        if let Some(ip) = self.ip {
            map.insert("ip".to_string(), ip);
        }
        if let Some(user_agent) = self.user_agent {
            map.insert("user_agent".to_string(), user_agent);
        }
        map
    }

    /// Reads metadata back from an event's map; `ip` and `user_agent` are optional, the other
    /// keys are required.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, StoreError> {
        let required = |key: &str| {
            map.get(key)
                .cloned()
                .ok_or_else(|| StoreError::Metadata(format!("missing {key:?}")))
        };
        let recorded_at = required("recorded_at")?;
        let recorded_at = DateTime::parse_from_rfc3339(&recorded_at)
            .map_err(|e| StoreError::Metadata(format!("recorded_at {recorded_at:?}: {e}")))?
            .with_timezone(&Utc);
        Ok(Self {
            actor: required("actor")?,
            request_id: required("request_id")?,
            correlation_id: required("correlation_id")?,
            causation_id: required("causation_id")?,
            ip: map.get("ip").cloned(),
            user_agent: map.get("user_agent").cloned(),
            recorded_at,
        })
    }

    /// Reads metadata from a stored event's metadata column
    /// ([`RecordedEvent::metadata`](crate::RecordedEvent::metadata)).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, StoreError> {
        let map: HashMap<String, String> = serde_json::from_value(value.clone())
            .map_err(|e| StoreError::Metadata(format!("not a string map: {e}")))?;
        Self::from_map(&map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_string_map() {
        let metadata = EventMetadata::new("user-1", "req-1")
            .with_ip("10.0.0.1")
            .with_user_agent("curl/8");
        let map = metadata.clone().into_map();
        assert_eq!(map["actor"], "user-1");
        assert_eq!(map["correlation_id"], "req-1");
        assert!(map["recorded_at"].ends_with('Z'), "{}", map["recorded_at"]);
        assert_eq!(EventMetadata::from_map(&map).unwrap(), metadata);
    }

    #[test]
    fn system_metadata_omits_the_client_and_names_its_reason() {
        let metadata = EventMetadata::system("scheduler");
        let map = metadata.clone().into_map();
        assert_eq!(map["actor"], "system");
        assert_eq!(map["causation_id"], "scheduler");
        assert!(!map.contains_key("ip") && !map.contains_key("user_agent"));
        assert_eq!(EventMetadata::from_map(&map).unwrap(), metadata);
    }

    #[test]
    fn metadata_without_an_actor_is_rejected() {
        let mut map = EventMetadata::system("x").into_map();
        map.remove("actor");
        assert!(EventMetadata::from_map(&map).is_err());
    }
}
