//! The frames of the WebSocket contract: what the server sends (`{type, event_id, timestamp,
//! payload}`, payload keys in camelCase) and what a client may send.
//!
//! A [`Change`] becomes one or two change frames, rendered once per broadcast and shared by
//! every connection it goes to:
//!
//! | change | frames |
//! |---|---|
//! | task | `task_status_update` `{taskId, status, updatedAt, output, error, assignee, projectId}`, `task_updated` `{task}` |
//! | project | `project_updated` `{project}` |
//! | execution | `execution_update` `{execution}` |
//! | agent | `agent_activity_update` `{agentId, status, currentTask, timestamp}`, `agent_updated` `{agent}` |
//!
//! `task`, `project`, `execution` and `agent` are the REST resources (`sparc-contract`), except
//! that a project in a frame has no `tasks_count`: the count is derived from the tasks read
//! model, which changes without a project change; task frames carry those changes. In
//! `task_status_update`, `assignee` is the agent on the running or last run (once an agent has
//! reported it), and `output` and `error` are the start (4 KiB) of what the last finished run
//! reported; a new run clears them. The execution's own frames carry them whole.
//!
//! A change frame's `event_id` is the change's position as a decimal string (opaque to
//! clients, ordered) and its `timestamp` is when the event was stored, so a replayed frame is
//! byte for byte the live one. Control frames (`ping`, `pong`, `error`, `resync_required`,
//! `authenticated`) carry `event_id: null` and the time they are sent; `ack` carries the
//! connection's starting position as its `event_id`.

use axum::extract::ws::{Message, Utf8Bytes};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sparc_bus::{Change, ChangeKind};
use sparc_contract::resources::{AgentResource, ExecutionResource, ProjectResource, TaskResource};
use sparc_domain::agent::Agent;
use sparc_domain::execution::Execution;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use uuid::Uuid;

/// A change rendered for the wire: its frames, serialized once, and who may see them.
#[derive(Debug, Clone)]
pub struct ChangeFrames {
    /// The change's event id.
    pub event_id: i64,
    /// The one user it is for besides admins and auditors; `None` for everyone.
    pub audience: Option<Uuid>,
    /// The text frames, in sending order (cheap to clone: shared bytes).
    pub frames: Vec<Message>,
}

/// Why a change could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("change {event_id} ({kind:?}) has an unreadable state: {source}")]
pub struct FrameError {
    event_id: i64,
    kind: ChangeKind,
    source: serde_json::Error,
}

/// The common envelope of server frames.
#[derive(Serialize)]
struct Frame<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    event_id: Option<String>,
    timestamp: &'a str,
    payload: P,
}

fn text<P: Serialize>(
    kind: &str,
    event_id: Option<String>,
    timestamp: &str,
    payload: P,
) -> Message {
    let frame = Frame {
        kind,
        event_id,
        timestamp,
        payload,
    };
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(&frame).expect("frames always serialize"),
    ))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn now() -> String {
    rfc3339(Utc::now())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskStatusUpdate<'a> {
    task_id: Uuid,
    status: &'a str,
    updated_at: Option<String>,
    output: Option<String>,
    error: Option<String>,
    assignee: Option<Uuid>,
    project_id: Option<Uuid>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentActivityUpdate<'a> {
    agent_id: Uuid,
    status: &'a str,
    current_task: Option<Uuid>,
    timestamp: String,
}

impl ChangeFrames {
    /// Renders `change` into its frames.
    ///
    /// # Errors
    /// [`FrameError`] if the state is not an aggregate of the change's kind.
    pub fn render(change: &Change) -> Result<Self, FrameError> {
        let fail = |source| FrameError {
            event_id: change.event_id,
            kind: change.kind,
            source,
        };
        let state = change.state.get();
        let event_id = change.event_id.to_string();
        let at = change.recorded_at.as_str();
        let frame = |kind: &str, payload: Value| text(kind, Some(event_id.clone()), at, payload);
        let frames = match change.kind {
            ChangeKind::Task => {
                let task: Task = serde_json::from_str(state).map_err(fail)?;
                let status = TaskStatusUpdate {
                    task_id: task.id,
                    status: task.status.as_str(),
                    updated_at: task.updated_at.map(rfc3339),
                    output: task.last_output.clone(),
                    error: task.last_error.clone(),
                    assignee: task.assignee,
                    project_id: task.project_id,
                };
                vec![
                    frame("task_status_update", json!(status)),
                    frame(
                        "task_updated",
                        json!({ "task": TaskResource::new(&task, change.version) }),
                    ),
                ]
            }
            ChangeKind::Project => {
                let project: Project = serde_json::from_str(state).map_err(fail)?;
                let mut resource = json!(ProjectResource::new(&project, change.version, 0));
                if let Some(fields) = resource.as_object_mut() {
                    fields.remove("tasks_count");
                }
                vec![frame("project_updated", json!({ "project": resource }))]
            }
            ChangeKind::Execution => {
                let execution: Execution = serde_json::from_str(state).map_err(fail)?;
                vec![frame(
                    "execution_update",
                    json!({ "execution": ExecutionResource::from(&execution) }),
                )]
            }
            ChangeKind::Agent => {
                let agent: Agent = serde_json::from_str(state).map_err(fail)?;
                let activity = AgentActivityUpdate {
                    agent_id: agent.id,
                    status: agent.status.as_str(),
                    current_task: agent.current_task,
                    timestamp: agent
                        .last_active_at
                        .map_or_else(|| change.recorded_at.clone(), rfc3339),
                };
                vec![
                    frame("agent_activity_update", json!(activity)),
                    frame(
                        "agent_updated",
                        json!({ "agent": AgentResource::new(&agent, change.version) }),
                    ),
                ]
            }
        };
        Ok(Self {
            event_id: change.event_id,
            audience: change.audience,
            frames,
        })
    }
}

/// The first frame of every connection.
pub fn ack(connection_id: Uuid, position: i64, ack_event_id: &str, replayed: i64) -> Message {
    text(
        "ack",
        Some(position.to_string()),
        &now(),
        json!({
            "connectionId": connection_id,
            "ackEventId": ack_event_id,
            "replayed": replayed,
        }),
    )
}

/// An operational notice for admins (`memory_circuit_breaker`, …): no event id, since it is
/// not a change of the log.
pub fn notice(frame_type: &str, payload: Value) -> Message {
    text(frame_type, None, &now(), payload)
}

/// The server's heartbeat.
pub fn ping() -> Message {
    text("ping", None, &now(), json!({}))
}

/// The answer to a client's `ping`.
pub fn pong() -> Message {
    text("pong", None, &now(), json!({}))
}

/// The answer to a client frame that is not one of [`ClientFrame`].
pub fn invalid_message() -> Message {
    text(
        "error",
        None,
        &now(),
        json!({ "error": "Invalid message format" }),
    )
}

/// Tells a client that resumed from `last_event_id` to reload over REST instead: the changes
/// since then are no longer all available.
pub fn resync_required(last_event_id: &str, reason: &str) -> Message {
    text(
        "resync_required",
        None,
        &now(),
        json!({ "lastEventId": last_event_id, "reason": reason }),
    )
}

/// Confirms an `authenticate` frame: the connection now lives until the new token expires.
pub fn authenticated(expires_at: DateTime<Utc>) -> Message {
    text(
        "authenticated",
        None,
        &now(),
        json!({ "expiresAt": rfc3339(expires_at) }),
    )
}

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Asks for a `pong`.
    Ping,
    /// Answers the server's `ping`.
    Pong,
    /// Replaces the connection's access token before it expires.
    Authenticate {
        /// `{token}`.
        payload: TokenPayload,
    },
}

/// The payload of an `authenticate` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenPayload {
    /// A fresh access token of the same user.
    pub token: String,
}

impl ClientFrame {
    /// Parses a text frame; `None` for anything malformed or unknown.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::value::RawValue;
    use sparc_domain::agent::AgentStatus;

    use super::*;

    fn change(kind: ChangeKind, state: &impl Serialize, audience: Option<Uuid>) -> Change {
        Change {
            event_id: 42,
            kind,
            aggregate_id: "x".into(),
            audience,
            version: 3,
            event_type: "Happened".into(),
            recorded_at: "2026-03-02T09:00:00.000000Z".into(),
            state: RawValue::from_string(serde_json::to_string(state).expect("serializes"))
                .expect("valid JSON"),
        }
    }

    fn json_of(message: &Message) -> Value {
        match message {
            Message::Text(text) => serde_json::from_str(text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    fn keys(value: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_task_change_is_a_status_update_and_a_full_task_frame() {
        let owner = Uuid::new_v4();
        let project = Uuid::new_v4();
        let agent = Uuid::new_v4();
        let task = Task {
            id: Uuid::new_v4(),
            exists: true,
            user_id: owner,
            project_id: Some(project),
            updated_at: Some(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()),
            assignee: Some(agent),
            last_output: Some("3 findings".to_owned()),
            last_error: Some("exit status 1".to_owned()),
            ..Task::default()
        };
        let rendered =
            ChangeFrames::render(&change(ChangeKind::Task, &task, Some(owner))).expect("renders");
        assert_eq!((rendered.event_id, rendered.audience), (42, Some(owner)));
        let [status, full] = &rendered.frames[..] else {
            panic!("two frames expected");
        };
        let status = json_of(status);
        assert_eq!(keys(&status), ["event_id", "payload", "timestamp", "type"]);
        assert_eq!(status["type"], "task_status_update");
        assert_eq!(status["event_id"], "42");
        assert_eq!(status["timestamp"], "2026-03-02T09:00:00.000000Z");
        assert_eq!(
            keys(&status["payload"]),
            [
                "assignee",
                "error",
                "output",
                "projectId",
                "status",
                "taskId",
                "updatedAt"
            ]
        );
        assert_eq!(status["payload"]["taskId"], task.id.to_string());
        assert_eq!(status["payload"]["projectId"], project.to_string());
        assert_eq!(status["payload"]["assignee"], agent.to_string());
        assert_eq!(status["payload"]["output"], "3 findings");
        assert_eq!(status["payload"]["error"], "exit status 1");
        assert_eq!(
            status["payload"]["updatedAt"],
            "2026-03-02T09:00:00.000000Z"
        );
        let full = json_of(full);
        assert_eq!(full["type"], "task_updated");
        assert_eq!(full["payload"]["task"]["id"], task.id.to_string());
        assert_eq!(full["payload"]["task"]["version"], 3);
    }

    #[test]
    fn a_project_frame_carries_the_project_without_a_stale_task_count() {
        let project = Project {
            id: Uuid::new_v4(),
            exists: true,
            user_id: Uuid::new_v4(),
            ..Project::default()
        };
        let rendered = ChangeFrames::render(&change(
            ChangeKind::Project,
            &project,
            Some(project.user_id),
        ))
        .expect("renders");
        let frame = json_of(&rendered.frames[0]);
        assert_eq!(frame["type"], "project_updated");
        assert_eq!(frame["payload"]["project"]["id"], project.id.to_string());
        assert!(frame["payload"]["project"].get("tasks_count").is_none());
    }

    #[test]
    fn an_agent_change_is_an_activity_update_and_a_full_agent_frame_for_everyone() {
        let agent = Agent {
            id: Uuid::new_v4(),
            exists: true,
            registered: true,
            status: AgentStatus::Busy,
            current_task: Some(Uuid::new_v4()),
            ..Agent::default()
        };
        let rendered =
            ChangeFrames::render(&change(ChangeKind::Agent, &agent, None)).expect("renders");
        assert_eq!(rendered.audience, None);
        let activity = json_of(&rendered.frames[0]);
        assert_eq!(activity["type"], "agent_activity_update");
        assert_eq!(
            keys(&activity["payload"]),
            ["agentId", "currentTask", "status", "timestamp"]
        );
        assert_eq!(activity["payload"]["status"], "busy");
        assert_eq!(
            activity["payload"]["timestamp"], "2026-03-02T09:00:00.000000Z",
            "no activity yet: the change's time"
        );
        assert_eq!(json_of(&rendered.frames[1])["type"], "agent_updated");
    }

    #[test]
    fn an_execution_change_is_an_execution_update() {
        let execution = Execution {
            id: Uuid::new_v4(),
            exists: true,
            ..Execution::default()
        };
        let rendered = ChangeFrames::render(&change(
            ChangeKind::Execution,
            &execution,
            Some(Uuid::nil()),
        ))
        .expect("renders");
        let frame = json_of(&rendered.frames[0]);
        assert_eq!(frame["type"], "execution_update");
        assert_eq!(
            frame["payload"]["execution"]["id"],
            execution.id.to_string()
        );
    }

    #[test]
    fn a_state_of_the_wrong_shape_is_an_error_not_a_frame() {
        assert!(ChangeFrames::render(&change(ChangeKind::Task, &json!([1, 2]), None)).is_err());
    }

    #[test]
    fn control_frames_have_the_common_envelope() {
        let id = Uuid::new_v4();
        let ack = json_of(&ack(id, 17, "initial_connect", 0));
        assert_eq!(keys(&ack), ["event_id", "payload", "timestamp", "type"]);
        assert_eq!(ack["event_id"], "17");
        assert_eq!(
            ack["payload"],
            json!({"connectionId": id, "ackEventId": "initial_connect", "replayed": 0})
        );
        assert_eq!(json_of(&pong())["event_id"], Value::Null);
        assert_eq!(
            json_of(&invalid_message())["payload"],
            json!({"error": "Invalid message format"})
        );
        assert_eq!(
            json_of(&resync_required("5", "beyond retention"))["type"],
            "resync_required"
        );
    }

    #[test]
    fn client_frames_parse_and_anything_else_is_rejected() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Some(ClientFrame::Ping)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"pong","payload":{}}"#),
            Some(ClientFrame::Pong)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"authenticate","payload":{"token":"t"}}"#),
            Some(ClientFrame::Authenticate {
                payload: TokenPayload { token: "t".into() }
            })
        );
        for bad in [
            "",
            "ping",
            "{}",
            r#"{"type":"subscribe"}"#,
            r#"{"type":"authenticate"}"#,
            "[1]",
        ] {
            assert_eq!(ClientFrame::parse(bad), None, "{bad:?}");
        }
    }
}
