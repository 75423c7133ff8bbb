//! What travels on the bus: a [`Change`] (one outbox row with its `event_id`), the
//! [`ChangeKind`]s there are, and the NATS names ([`Subjects`]), defined here once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Which published read model a change belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A task (`tasks`).
    Task,
    /// A project (`projects`).
    Project,
    /// An execution (`executions`).
    Execution,
    /// An agent of the shared registry (`agents`).
    Agent,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 4] = [Self::Task, Self::Project, Self::Execution, Self::Agent];

    /// The read model that writes these changes: its table, its projection's checkpoint name,
    /// and the `kind` column of its outbox rows.
    pub fn read_model(self) -> &'static str {
        match self {
            Self::Task => "tasks",
            Self::Project => "projects",
            Self::Execution => "executions",
            Self::Agent => "agents",
        }
    }

    /// The kind whose [`read_model`](Self::read_model) is `name`.
    pub fn from_read_model(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.read_model() == name)
    }

    /// The singular name, as in subjects (`task`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Project => "project",
            Self::Execution => "execution",
            Self::Agent => "agent",
        }
    }
}

/// One committed read-model change, as published: the aggregate's state after one event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    /// The change's place in the gap-free order of published changes (`outbox.published_seq`):
    /// the `event_id` clients see and resume from.
    pub event_id: i64,
    /// Which read model.
    pub kind: ChangeKind,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The one user allowed to see it besides admins and auditors; `None` for everyone
    /// signed in (agents).
    pub audience: Option<Uuid>,
    /// The aggregate's version after the event.
    pub version: i64,
    /// The event's type.
    pub event_type: String,
    /// When the event was stored (RFC 3339, UTC, microseconds).
    pub recorded_at: String,
    /// The aggregate's state after the event, as the read model stores it (a `sparc_domain`
    /// aggregate in JSON).
    pub state: Box<RawValue>,
}

impl Change {
    /// The JSON encoding carried on NATS.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a change always serializes"))
    }

    /// Decodes [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    /// The bytes are not a change.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The NATS names of one deployment, all derived from a namespace (`sparc` in production; tests
/// use their own so they never share a stream or de-duplication window).
///
/// - stream `SPARC_CHANGES` captures `sparc.changes.>`;
/// - a change to a user's resource goes to `sparc.changes.<user_id>.<kind>`, a change every
///   signed-in user may see to `sparc.changes.all.<kind>` (agents: `sparc.changes.all.agent`);
///   a gateway subscribing to `sparc.changes.<user_id>.>` and `sparc.changes.all.>` gets exactly
///   what that user may see, and `sparc.changes.>` is what admins and auditors see;
/// - gateways announce their connection counts on `sparc.gateways` (core NATS, not stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    namespace: String,
}

impl Subjects {
    /// The production namespace.
    pub const DEFAULT_NAMESPACE: &'static str = "sparc";

    /// The names under `namespace`: a NATS token (letters, digits, `_`, `-`).
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The JetStream stream that stores changes (`SPARC_CHANGES`).
    pub fn stream(&self) -> String {
        format!(
            "{}_CHANGES",
            self.namespace.to_uppercase().replace('-', "_")
        )
    }

    /// The subject of `change`.
    pub fn of(&self, change: &Change) -> String {
        match change.audience {
            Some(user) => format!("{}.changes.{user}.{}", self.namespace, change.kind.as_str()),
            None => format!("{}.changes.all.{}", self.namespace, change.kind.as_str()),
        }
    }

    /// Every change (what the stream captures, and what admins and auditors see).
    pub fn all_changes(&self) -> String {
        format!("{}.changes.>", self.namespace)
    }

    /// Changes to `user`'s own resources.
    pub fn changes_of_user(&self, user: Uuid) -> String {
        format!("{}.changes.{user}.>", self.namespace)
    }

    /// Changes every signed-in user may see.
    pub fn shared_changes(&self) -> String {
        format!("{}.changes.all.>", self.namespace)
    }

    /// Where gateways announce how many connections they hold.
    pub fn gateway_presence(&self) -> String {
        format!("{}.gateways", self.namespace)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(Self::DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(audience: Option<Uuid>, kind: ChangeKind) -> Change {
        Change {
            event_id: 7,
            kind,
            aggregate_id: "a".into(),
            audience,
            version: 1,
            event_type: "Happened".into(),
            recorded_at: "2026-03-02T09:00:00.000000Z".into(),
            state: RawValue::from_string(r#"{"id":"a"}"#.into()).expect("valid JSON"),
        }
    }

    #[test]
    fn a_users_change_goes_to_their_subject_and_an_agent_change_to_all() {
        let subjects = Subjects::default();
        let user = Uuid::nil();
        assert_eq!(
            subjects.of(&change(Some(user), ChangeKind::Task)),
            format!("sparc.changes.{user}.task")
        );
        assert_eq!(
            subjects.of(&change(None, ChangeKind::Agent)),
            "sparc.changes.all.agent"
        );
        assert_eq!(subjects.stream(), "SPARC_CHANGES");
        assert_eq!(subjects.all_changes(), "sparc.changes.>");
        assert!(
            !subjects.gateway_presence().starts_with("sparc.changes."),
            "presence must stay out of the stream"
        );
    }

    #[test]
    fn a_change_round_trips_through_its_bytes_with_the_state_verbatim() {
        let original = change(Some(Uuid::new_v4()), ChangeKind::Project);
        let decoded = Change::from_bytes(&original.to_bytes()).expect("decodes");
        assert_eq!(decoded.event_id, 7);
        assert_eq!(decoded.kind, ChangeKind::Project);
        assert_eq!(decoded.audience, original.audience);
        assert_eq!(decoded.state.get(), r#"{"id":"a"}"#);
    }

    #[test]
    fn kinds_map_to_their_read_models_and_back() {
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_read_model(kind.read_model()), Some(kind));
        }
        assert_eq!(ChangeKind::from_read_model("users"), None);
    }
}
