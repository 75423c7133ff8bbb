//! The resources of the v1 contract as they appear on the wire, built from aggregate states.
//! Field names follow `API.md`; times are RFC 3339 UTC with `Z`; a password hash never appears.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use sparc_domain::agent::Agent;
use sparc_domain::execution::Execution;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use sparc_domain::user::User;
use utoipa::ToSchema;
use uuid::Uuid;

/// Serializes a time as RFC 3339 in UTC with `Z` and microseconds.
fn rfc3339<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn rfc3339_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

/// A user account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserResource {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    /// `admin`, `auditor`, `agent` or `user`.
    pub role: String,
    pub is_active: bool,
    pub is_verified: bool,
    #[serde(serialize_with = "rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_login: Option<DateTime<Utc>>,
    pub full_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
}

impl From<&User> for UserResource {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            username: user
                .username
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            email: user
                .email
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            role: user.role.as_str().to_owned(),
            is_active: user.is_active,
            is_verified: false,
            created_at: user.created_at,
            last_login: user.last_login,
            full_name: user.full_name.clone(),
            bio: user.bio.clone(),
            avatar_url: user.avatar_url.clone(),
        }
    }
}

/// One entry of the activity feed across agents: a run an agent took up, as the dashboard's
/// feed shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityEntry {
    pub agent_id: Uuid,
    /// The agent's name (`null` if the agent is gone from the registry).
    pub agent_name: Option<String>,
    pub task_id: Uuid,
    pub execution_id: Uuid,
    /// `running`, `success`, `failed`, `timeout` or `cancelled`.
    pub status: String,
    /// The first 200 characters of the run's output.
    pub output_preview: Option<String>,
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    /// When the run last changed: its end, or its start while it runs.
    #[serde(serialize_with = "rfc3339_opt")]
    pub timestamp: Option<DateTime<Utc>>,
}

/// Characters of a run's output an activity entry shows.
pub const OUTPUT_PREVIEW_CHARS: usize = 200;

impl ActivityEntry {
    /// The entry of `execution`, a run of the agent named `agent_name`; `None` for a run no
    /// agent took up.
    pub fn of(execution: &Execution, agent_name: Option<String>) -> Option<Self> {
        Some(Self {
            agent_id: execution.agent_id?,
            agent_name,
            task_id: execution.task_id,
            execution_id: execution.id,
            status: execution.status.as_str().to_owned(),
            output_preview: execution
                .output_text
                .as_ref()
                .map(|output| output.chars().take(OUTPUT_PREVIEW_CHARS).collect()),
            error: execution.error_text.clone(),
            started_at: execution.started_at,
            ended_at: execution.ended_at,
            timestamp: execution.ended_at.or(execution.started_at),
        })
    }
}

/// A run of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionResource {
    pub id: Uuid,
    pub task_id: Uuid,
    pub agent_id: Option<Uuid>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub scheduled_for: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `running`, `success`, `failed`, `timeout` or `cancelled`.
    pub status: String,
    pub duration_ms: Option<u64>,
    pub output_text: Option<String>,
    pub error_text: Option<String>,
}

impl From<&Execution> for ExecutionResource {
    fn from(e: &Execution) -> Self {
        Self {
            id: e.id,
            task_id: e.task_id,
            agent_id: e.agent_id,
            scheduled_for: e.scheduled_for,
            started_at: e.started_at,
            ended_at: e.ended_at,
            status: e.status.as_str().to_owned(),
            duration_ms: e.duration_ms,
            output_text: e.output_text.clone(),
            error_text: e.error_text.clone(),
        }
    }
}

/// A run handed to an agent: claimed by it when it was answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobResource {
    pub execution_id: Uuid,
    pub task_id: Uuid,
    pub skill_name: String,
    /// The task's parameters when the job was claimed.
    #[schema(value_type = Object)]
    pub params: Value,
    #[serde(serialize_with = "rfc3339_opt")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The run becomes `timeout` this long after it started.
    pub timeout_seconds: u32,
    /// Which hand-out of the run this is; runs are never handed out again, so always 1.
    pub attempt: u32,
}

impl JobResource {
    /// The job of `execution`, a run of a task whose parameters are `params`.
    pub fn new(execution: &Execution, params: Value) -> Self {
        Self {
            execution_id: execution.id,
            task_id: execution.task_id,
            skill_name: execution
                .skill_name
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            params,
            scheduled_for: execution.scheduled_for,
            timeout_seconds: execution.timeout_seconds.get(),
            attempt: 1,
        }
    }
}

/// A scheduled task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskResource {
    pub id: Uuid,
    pub skill_name: String,
    pub schedule_cron: String,
    pub timezone: String,
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_run_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub params: Value,
    /// `pending`, `running`, `completed`, `failed`, `disabled` or `deleted`.
    pub status: String,
    pub project_id: Option<Uuid>,
    pub user_id: Uuid,
    #[serde(serialize_with = "rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_run_at: Option<DateTime<Utc>>,
    pub run_count: u64,
    pub error_count: u64,
    /// Seconds a run may take before it becomes `timeout`.
    pub timeout_seconds: u32,
    /// `skip` or `allow`: what a slot does while a run is still going.
    pub overlap: String,
    /// `once` or `none`: whether slots missed while no scheduler ran fire on recovery.
    pub catch_up: String,
    /// The agent on the running or the last run, once one took it.
    pub assignee: Option<Uuid>,
    /// The aggregate's version (also the `ETag`).
    pub version: i64,
    /// The last 10 executions, newest first (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_results: Option<Vec<ExecutionResource>>,
}

impl TaskResource {
    /// The resource of a task state at `version`.
    pub fn new(task: &Task, version: i64) -> Self {
        Self {
            id: task.id,
            skill_name: task
                .skill_name
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            schedule_cron: task
                .schedule_cron
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            timezone: task.timezone.name().to_owned(),
            next_run_at: task.next_run_at,
            params: task.params.clone(),
            status: task.status.as_str().to_owned(),
            project_id: task.project_id,
            user_id: task.user_id,
            created_at: task.created_at,
            updated_at: task.updated_at,
            last_run_at: task.last_run_at,
            run_count: task.run_count,
            error_count: task.error_count,
            timeout_seconds: task.run.timeout_seconds.get(),
            overlap: task.run.overlap.as_str().to_owned(),
            catch_up: task.run.catch_up.as_str().to_owned(),
            assignee: task.assignee,
            version,
            execution_results: None,
        }
    }
}

/// A project.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectResource {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub user_id: Uuid,
    /// `active`, `archived` or `deleted`.
    pub status: String,
    /// Live (not deleted) tasks in the project.
    pub tasks_count: i64,
    #[serde(serialize_with = "rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// The project's live tasks (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskResource>>,
}

impl ProjectResource {
    /// The resource of a project state at `version` with `tasks_count` live tasks.
    pub fn new(project: &Project, version: i64, tasks_count: i64) -> Self {
        Self {
            id: project.id,
            name: project
                .name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            description: project.description.clone(),
            user_id: project.user_id,
            status: project.status.as_str().to_owned(),
            tasks_count,
            created_at: project.created_at,
            updated_at: project.updated_at,
            version,
            tasks: None,
        }
    }
}

/// An agent of the shared registry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentResource {
    pub id: Uuid,
    pub name: String,
    /// One of the contract's agent types.
    #[serde(rename = "type")]
    pub agent_type: String,
    pub capabilities: Vec<String>,
    /// `active`, `idle`, `busy`, `offline` or `error`.
    pub status: String,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_active_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl AgentResource {
    /// The resource of an agent state at `version`.
    pub fn new(agent: &Agent, version: i64) -> Self {
        Self {
            id: agent.id,
            name: agent
                .name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            agent_type: agent.agent_type.as_str().to_owned(),
            capabilities: agent.capabilities.clone(),
            status: agent.status.as_str().to_owned(),
            last_active_at: agent.last_active_at,
            created_at: agent.created_at,
            version,
        }
    }
}

/// `{"message": …}` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

impl Message {
    /// A message answer.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}
