//! The Agent aggregate: an entry of the registry shared by all users. It decides registration,
//! updates, the status that follows reported activity, and deregistration (the agent goes
//! offline and leaves the list). Name uniqueness is a [`crate::reservation`] claimed beside it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::execution::ExecutionStatus;
use crate::values::{AgentName, Timestamp, text_enum};
use crate::{DomainError, ErrorKind};

/// What an agent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
pub enum AgentType {
    Coder,
    Reviewer,
    Tester,
    Planner,
    Researcher,
    ApiDesigner,
    BackendDev,
    MobileDev,
    MlDeveloper,
    SystemArchitect,
    CodeAnalyzer,
    HierarchicalCoordinator,
    MeshCoordinator,
    AdaptiveCoordinator,
    #[default]
    Custom,
}

text_enum!(AgentType {
    Coder => "coder",
    Reviewer => "reviewer",
    Tester => "tester",
    Planner => "planner",
    Researcher => "researcher",
    ApiDesigner => "api-designer",
    BackendDev => "backend-dev",
    MobileDev => "mobile-dev",
    MlDeveloper => "ml-developer",
    SystemArchitect => "system-architect",
    CodeAnalyzer => "code-analyzer",
    HierarchicalCoordinator => "hierarchical-coordinator",
    MeshCoordinator => "mesh-coordinator",
    AdaptiveCoordinator => "adaptive-coordinator",
    Custom => "custom",
});

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
pub enum AgentStatus {
    Active,
    #[default]
    Idle,
    Busy,
    Offline,
    Error,
}

text_enum!(AgentStatus {
    Active => "active",
    Idle => "idle",
    Busy => "busy",
    Offline => "offline",
    Error => "error",
});

impl AgentStatus {
    /// The status an agent takes when it reports a run in this state: running → busy,
    /// success → idle, failed/timeout → error, cancelled → idle.
    pub fn after_activity(run: ExecutionStatus) -> Self {
        match run {
            ExecutionStatus::Running => AgentStatus::Busy,
            ExecutionStatus::Success | ExecutionStatus::Cancelled => AgentStatus::Idle,
            ExecutionStatus::Failed | ExecutionStatus::Timeout => AgentStatus::Error,
        }
    }
}

/// The fields a `PUT /agents/{id}` may change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentChanges {
    /// A new (already reserved) name.
    pub name: Option<AgentName>,
    /// A new type.
    #[serde(rename = "type")]
    pub agent_type: Option<AgentType>,
    /// New capabilities.
    pub capabilities: Option<Vec<String>>,
    /// A new status.
    pub status: Option<AgentStatus>,
}

impl AgentChanges {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.agent_type.is_none()
            && self.capabilities.is_none()
            && self.status.is_none()
    }
}

/// What can be asked of an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    /// Add it to the registry.
    Register {
        /// Its id.
        agent_id: Uuid,
        /// Its unique name (reserved by the caller).
        name: AgentName,
        /// Its type.
        agent_type: AgentType,
        /// What it can do.
        capabilities: Vec<String>,
        /// Initial status.
        status: AgentStatus,
        /// The user who registers it, whose quota of agents it counts against.
        registered_by: Uuid,
        /// Decision time.
        at: Timestamp,
    },
    /// Change some fields.
    Update {
        /// The changes.
        changes: AgentChanges,
        /// Decision time.
        at: Timestamp,
    },
    /// The agent reports work on a task.
    RecordActivity {
        /// The task.
        task_id: Uuid,
        /// The execution.
        execution_id: Uuid,
        /// The run's status.
        run_status: ExecutionStatus,
        /// Decision time.
        at: Timestamp,
    },
    /// Remove it from the registry.
    Deregister {
        /// Decision time.
        at: Timestamp,
    },
}

impl AgentCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "Register",
            Self::Update { .. } => "Update",
            Self::RecordActivity { .. } => "RecordActivity",
            Self::Deregister { .. } => "Deregister",
        }
    }
}

/// What happened to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// Registered.
    AgentRegistered {
        /// Its id.
        agent_id: Uuid,
        /// Its name.
        name: AgentName,
        /// Its type.
        agent_type: AgentType,
        /// Its capabilities.
        capabilities: Vec<String>,
        /// Its status.
        status: AgentStatus,
        /// Who registered it (absent from events recorded before it was kept).
        #[serde(default)]
        registered_by: Option<Uuid>,
        /// When.
        at: Timestamp,
    },
    /// Some fields changed.
    AgentUpdated {
        /// The changes.
        changes: AgentChanges,
        /// When.
        at: Timestamp,
    },
    /// Reported activity; the status follows the run.
    AgentActivityRecorded {
        /// The task.
        task_id: Uuid,
        /// The execution.
        execution_id: Uuid,
        /// The run's status.
        run_status: ExecutionStatus,
        /// The agent's new status.
        status: AgentStatus,
        /// When.
        at: Timestamp,
    },
    /// Removed from the registry.
    AgentDeregistered {
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            AgentEvent::AgentRegistered { .. } => "AgentRegistered",
            AgentEvent::AgentUpdated { .. } => "AgentUpdated",
            AgentEvent::AgentActivityRecorded { .. } => "AgentActivityRecorded",
            AgentEvent::AgentDeregistered { .. } => "AgentDeregistered",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why an agent command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// Register on an existing id.
    #[error("agent already exists")]
    AlreadyExists,
    /// Unknown or deregistered.
    #[error("Agent not found")]
    NotFound,
    /// An update naming no field.
    #[error("No fields to update")]
    NoChanges,
}

impl DomainError for AgentError {
    fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NotFound => ErrorKind::NotFound,
            AgentError::AlreadyExists => ErrorKind::Conflict,
            AgentError::NoChanges => ErrorKind::Invalid,
        }
    }
}

/// The agent's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Agent {
    /// Its id.
    pub id: Uuid,
    /// Whether it is registered (false again after deregistration).
    pub registered: bool,
    /// Whether it ever existed.
    pub exists: bool,
    /// Its name.
    pub name: Option<AgentName>,
    /// Its type.
    pub agent_type: AgentType,
    /// Its capabilities.
    pub capabilities: Vec<String>,
    /// Its status.
    pub status: AgentStatus,
    /// The task it works on.
    pub current_task: Option<Uuid>,
    /// Its last activity.
    pub last_active_at: Option<Timestamp>,
    /// Registration time.
    pub created_at: Option<Timestamp>,
    /// The user who registered it, if recorded: the per-user quota of agents counts by it.
    #[serde(default)]
    pub registered_by: Option<Uuid>,
}

impl Agent {
    fn live(&self) -> Result<(), AgentError> {
        if self.registered {
            Ok(())
        } else {
            Err(AgentError::NotFound)
        }
    }
}

impl Aggregate for Agent {
    const TYPE: &'static str = "Agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AgentCommand::Register {
                agent_id,
                name,
                agent_type,
                capabilities,
                status,
                registered_by,
                at,
            } => {
                if self.exists {
                    return Err(AgentError::AlreadyExists);
                }
                AgentEvent::AgentRegistered {
                    agent_id,
                    name,
                    agent_type,
                    capabilities,
                    status,
                    registered_by: Some(registered_by),
                    at,
                }
            }
            AgentCommand::Update { mut changes, at } => {
                if changes.is_empty() {
                    return Err(AgentError::NoChanges);
                }
                self.live()?;
                if changes.name.as_ref() == self.name.as_ref() {
                    changes.name = None;
                }
                if changes.agent_type == Some(self.agent_type) {
                    changes.agent_type = None;
                }
                if changes.capabilities.as_ref() == Some(&self.capabilities) {
                    changes.capabilities = None;
                }
                if changes.status == Some(self.status) {
                    changes.status = None;
                }
                if changes.is_empty() {
                    return Ok(());
                }
                AgentEvent::AgentUpdated { changes, at }
            }
            AgentCommand::RecordActivity {
                task_id,
                execution_id,
                run_status,
                at,
            } => {
                self.live()?;
                AgentEvent::AgentActivityRecorded {
                    task_id,
                    execution_id,
                    run_status,
                    status: AgentStatus::after_activity(run_status),
                    at,
                }
            }
            AgentCommand::Deregister { at } => {
                self.live()?;
                AgentEvent::AgentDeregistered { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentEvent::AgentRegistered {
                agent_id,
                name,
                agent_type,
                capabilities,
                status,
                registered_by,
                at,
            } => {
                *self = Agent {
                    id: agent_id,
                    registered: true,
                    exists: true,
                    name: Some(name),
                    agent_type,
                    capabilities,
                    status,
                    current_task: None,
                    last_active_at: None,
                    created_at: Some(at),
                    registered_by,
                };
            }
            AgentEvent::AgentUpdated { changes, .. } => {
                if let Some(name) = changes.name {
                    self.name = Some(name);
                }
                if let Some(agent_type) = changes.agent_type {
                    self.agent_type = agent_type;
                }
                if let Some(capabilities) = changes.capabilities {
                    self.capabilities = capabilities;
                }
                if let Some(status) = changes.status {
                    self.status = status;
                }
            }
            AgentEvent::AgentActivityRecorded {
                task_id,
                run_status,
                status,
                at,
                ..
            } => {
                self.status = status;
                self.current_task = (run_status == ExecutionStatus::Running).then_some(task_id);
                self.last_active_at = Some(at);
            }
            AgentEvent::AgentDeregistered { .. } => {
                self.registered = false;
                self.status = AgentStatus::Offline;
                self.current_task = None;
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

    fn registered() -> AgentEvent {
        AgentEvent::AgentRegistered {
            agent_id: Uuid::from_u128(1),
            name: AgentName::parse("coder-1").unwrap(),
            agent_type: AgentType::Coder,
            capabilities: vec!["rust".into()],
            status: AgentStatus::Idle,
            registered_by: Some(Uuid::from_u128(7)),
            at: t(),
        }
    }

    #[test]
    fn agent_status_follows_the_reported_run() {
        for (run, status) in [
            (ExecutionStatus::Running, AgentStatus::Busy),
            (ExecutionStatus::Success, AgentStatus::Idle),
            (ExecutionStatus::Failed, AgentStatus::Error),
            (ExecutionStatus::Timeout, AgentStatus::Error),
            (ExecutionStatus::Cancelled, AgentStatus::Idle),
        ] {
            TestFramework::<Agent>::with(())
                .given(vec![registered()])
                .when(AgentCommand::RecordActivity {
                    task_id: Uuid::from_u128(5),
                    execution_id: Uuid::from_u128(6),
                    run_status: run,
                    at: t(),
                })
                .then_expect_events(vec![AgentEvent::AgentActivityRecorded {
                    task_id: Uuid::from_u128(5),
                    execution_id: Uuid::from_u128(6),
                    run_status: run,
                    status,
                    at: t(),
                }]);
        }
    }

    #[test]
    fn a_deregistered_agent_goes_offline_and_refuses_updates() {
        let mut agent = Agent::default();
        agent.apply(registered());
        agent.apply(AgentEvent::AgentDeregistered { at: t() });
        assert_eq!(agent.status, AgentStatus::Offline);
        TestFramework::<Agent>::with(())
            .given(vec![
                registered(),
                AgentEvent::AgentDeregistered { at: t() },
            ])
            .when(AgentCommand::Update {
                changes: AgentChanges {
                    status: Some(AgentStatus::Active),
                    ..Default::default()
                },
                at: t(),
            })
            .then_expect_error(AgentError::NotFound);
    }

    #[test]
    fn registering_an_existing_agent_is_refused() {
        TestFramework::<Agent>::with(())
            .given(vec![registered()])
            .when(AgentCommand::Register {
                agent_id: Uuid::from_u128(1),
                name: AgentName::parse("coder-1").unwrap(),
                agent_type: AgentType::Coder,
                capabilities: vec![],
                status: AgentStatus::Idle,
                registered_by: Uuid::from_u128(7),
                at: t(),
            })
            .then_expect_error(AgentError::AlreadyExists);
    }

    #[test]
    fn registration_records_who_registered_the_agent() {
        TestFramework::<Agent>::with(())
            .given_no_previous_events()
            .when(AgentCommand::Register {
                agent_id: Uuid::from_u128(1),
                name: AgentName::parse("coder-1").unwrap(),
                agent_type: AgentType::Coder,
                capabilities: vec!["rust".into()],
                status: AgentStatus::Idle,
                registered_by: Uuid::from_u128(7),
                at: t(),
            })
            .then_expect_events(vec![registered()]);
        let mut agent = Agent::default();
        agent.apply(registered());
        assert_eq!(agent.registered_by, Some(Uuid::from_u128(7)));
    }

    #[test]
    fn a_registration_recorded_before_registrars_were_kept_still_reads() {
        let event: AgentEvent = serde_json::from_value(serde_json::json!({
            "AgentRegistered": {
                "agent_id": Uuid::from_u128(1),
                "name": "coder-1",
                "agent_type": "coder",
                "capabilities": [],
                "status": "idle",
                "at": t(),
            }
        }))
        .unwrap();
        let mut agent = Agent::default();
        agent.apply(event);
        assert_eq!(agent.registered_by, None);
        assert!(agent.registered);
    }

    #[test]
    fn agent_types_use_the_contracts_names() {
        assert_eq!(
            AgentType::parse("api-designer").unwrap(),
            AgentType::ApiDesigner
        );
        assert!(AgentType::parse("wizard").is_err());
        assert_eq!(AgentType::ALL.len(), 15);
    }
}
