//! An agent's report of a run. `running` starts a run (under the agent's execution id if it
//! chose one) or claims the task's waiting one; a final status finishes it and the task's run.
//! The agent's status follows (running → busy, success → idle, failed/timeout → error,
//! cancelled → idle), and a finished run leaves a memory entry of what it printed.

use chrono::{DateTime, Utc};
use sparc_domain::agent::{Agent, AgentCommand};
use sparc_domain::execution::{Execution, ExecutionCommand, ExecutionStatus};
use sparc_domain::memory::{Intent, MemoryEntry};
use sparc_domain::task::{RunReport, Task, TaskCommand, TaskStatus};
use sparc_store::{CommandBus, EventMetadata};
use uuid::Uuid;

use super::load;
use super::task_runs;
use crate::error::ApiError;
use crate::unsettled::{Unsettled, Writes, execute};

/// What an agent reports, checked.
#[derive(Debug, Clone)]
pub struct Report {
    /// The reporting agent.
    pub agent_id: Uuid,
    /// The task run.
    pub task_id: Uuid,
    /// The run; without it, `running` starts one (or claims the task's running one) and a
    /// final status finishes the task's running one.
    pub execution_id: Option<Uuid>,
    /// Where the run stands.
    pub status: ExecutionStatus,
    /// What it printed.
    pub output: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
}

/// What a report recorded.
#[derive(Debug)]
pub struct Recorded {
    /// The run reported on.
    pub execution_id: Uuid,
    /// For a finished run: the memory entry it leaves.
    pub memory: Option<MemoryEntry>,
}

/// Records `report`: every check comes before the first command, so a refused report changes
/// nothing.
///
/// # Errors
/// 404 for an unknown or deregistered agent, an unknown task, or no run to finish; 400 for an
/// execution of another task; 409 for a run that already finished, a task running another or
/// deleted.
pub async fn report(
    commands: &CommandBus,
    report: Report,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Unsettled<Recorded>, ApiError> {
    let agent = load::<Agent>(commands, report.agent_id).await?;
    if !agent.registered {
        return Err(ApiError::NotFound("Agent not found".to_owned()));
    }
    let task = load::<Task>(commands, report.task_id).await?;
    if !task.exists {
        return Err(ApiError::NotFound("Task not found".to_owned()));
    }
    let execution_id = report.execution_id.or(task.running_execution_id);
    let existing = match execution_id {
        Some(execution_id) => {
            let execution = load::<Execution>(commands, execution_id).await?;
            if execution.exists && execution.task_id != report.task_id {
                return Err(ApiError::BadRequest(
                    "The execution belongs to another task".to_owned(),
                ));
            }
            execution.exists.then_some(execution_id)
        }
        None => None,
    };
    let mut writes = Writes::default();
    let execution_id = match (report.status, existing) {
        (ExecutionStatus::Running, Some(execution_id)) => {
            claim(commands, &report, execution_id, metadata, at, &mut writes).await?
        }
        (ExecutionStatus::Running, None) => {
            let execution_id = execution_id.unwrap_or_else(Uuid::now_v7);
            start(
                commands,
                &report,
                &task,
                execution_id,
                metadata,
                at,
                &mut writes,
            )
            .await?
        }
        (_, None) => {
            return Err(ApiError::NotFound(match report.execution_id {
                Some(_) => "Execution not found".to_owned(),
                None => "No running execution for this task".to_owned(),
            }));
        }
        (_, Some(execution_id)) => {
            finish(
                commands,
                &report,
                &task,
                execution_id,
                metadata,
                at,
                &mut writes,
            )
            .await?
        }
    };
    let activity = AgentCommand::RecordActivity {
        task_id: report.task_id,
        execution_id,
        run_status: report.status,
        at,
    };
    writes.take(execute::<Agent>(commands, report.agent_id, activity, metadata, None).await?);
    let memory = (report.status != ExecutionStatus::Running)
        .then(|| run_memory(&task, &report, execution_id));
    Ok(writes.owed_for(Recorded {
        execution_id,
        memory,
    }))
}

/// `running` for an existing run: the agent claims it and the task is assigned to the agent.
async fn claim(
    commands: &CommandBus,
    report: &Report,
    execution_id: Uuid,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
    writes: &mut Writes,
) -> Result<Uuid, ApiError> {
    let agent_id = report.agent_id;
    let claim = ExecutionCommand::Claim { agent_id, at };
    writes.take(execute::<Execution>(commands, execution_id, claim, metadata, None).await?);
    let assign = TaskCommand::Assign {
        execution_id,
        agent_id,
        at,
    };
    writes.take(execute::<Task>(commands, report.task_id, assign, metadata, None).await?);
    Ok(execution_id)
}

/// `running` for a run that does not exist yet: if the task fired for it, it starts; otherwise
/// the task fires first (409 if it already runs another), then the run starts.
async fn start(
    commands: &CommandBus,
    report: &Report,
    task: &Task,
    execution_id: Uuid,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
    writes: &mut Writes,
) -> Result<Uuid, ApiError> {
    let agent = Some(report.agent_id);
    let started = if task.running_execution_id == Some(execution_id) {
        task_runs::start(commands, task, execution_id, agent, metadata, at).await?
    } else {
        task_runs::run_now(commands, task.id, execution_id, agent, metadata, at).await?
    };
    writes.take(started);
    Ok(execution_id)
}

/// A final status: the run finishes, and so does the task's run unless the task was deleted
/// meanwhile (finishing must not bring it back).
async fn finish(
    commands: &CommandBus,
    report: &Report,
    task: &Task,
    execution_id: Uuid,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
    writes: &mut Writes,
) -> Result<Uuid, ApiError> {
    let finish = ExecutionCommand::Finish {
        agent_id: Some(report.agent_id),
        status: report.status,
        output: report.output.clone(),
        error: report.error.clone(),
        duration_ms: report.duration_ms,
        at,
    };
    writes.take(execute::<Execution>(commands, execution_id, finish, metadata, None).await?);
    if task.status != TaskStatus::Deleted {
        let finish_run = TaskCommand::FinishRun {
            execution_id,
            status: report.status,
            report: RunReport {
                agent_id: Some(report.agent_id),
                output: report.output.clone(),
                error: report.error.clone(),
            },
            at,
        };
        writes.take(execute::<Task>(commands, task.id, finish_run, metadata, None).await?);
    }
    Ok(execution_id)
}

/// The longest part of a run's output or error kept in its memory entry, in characters.
const MAX_RUN_MEMORY: usize = 4000;

/// The memory entry of a finished run: what it printed (or why it failed), bounded, under the
/// task's owner and project.
fn run_memory(task: &Task, report: &Report, execution_id: Uuid) -> MemoryEntry {
    let bounded = |text: &str| text.chars().take(MAX_RUN_MEMORY).collect::<String>();
    let skill = task.skill_name.as_ref().map_or("task", |s| s.as_str());
    let status = report.status;
    let mut content = format!("{skill} run {status}");
    if let Some(output) = report.output.as_deref().filter(|o| !o.is_empty()) {
        content.push_str(": ");
        content.push_str(&bounded(output));
    }
    if let Some(error) = report.error.as_deref().filter(|e| !e.is_empty()) {
        content.push_str("; error: ");
        content.push_str(&bounded(error));
    }
    MemoryEntry {
        content,
        intent: match status {
            ExecutionStatus::Failed | ExecutionStatus::Timeout => Intent::Bugfix,
            _ => Intent::Implementation,
        },
        user_id: task.user_id,
        agent_id: Some(report.agent_id),
        task_id: Some(task.id),
        project_id: task.project_id,
        additional_metadata: serde_json::json!({
            "agent_id": report.agent_id,
            "execution_id": execution_id,
            "run_status": status.as_str(),
            "description": "agent activity",
        }),
    }
}

#[cfg(test)]
mod tests {
    use sparc_domain::agent::AgentStatus;

    use super::*;
    use crate::services::given::Given;

    fn reported(agent_id: Uuid, task_id: Uuid, status: ExecutionStatus) -> Report {
        Report {
            agent_id,
            task_id,
            execution_id: None,
            status,
            output: None,
            error: None,
            duration_ms: None,
        }
    }

    async fn when(
        given: &Given,
        report: Report,
    ) -> Result<(Recorded, Vec<&'static str>), ApiError> {
        let (recorded, writes) =
            super::report(&given.commands, report, &given.metadata, Utc::now())
                .await?
                .into_parts();
        Ok((recorded, given.tables(&writes)))
    }

    #[tokio::test]
    async fn running_starts_a_run_of_the_agent() {
        let given = Given::new().await;
        let (task, agent) = (given.task().await, given.agent("coder").await);

        let (recorded, tables) = when(&given, reported(agent, task, ExecutionStatus::Running))
            .await
            .expect("recorded");

        let run = given.state::<Execution>(recorded.execution_id).await;
        assert_eq!((run.exists, run.agent_id), (true, Some(agent)));
        assert_eq!(
            given.state::<Task>(task).await.running_execution_id,
            Some(run.id)
        );
        assert_eq!(given.state::<Agent>(agent).await.status, AgentStatus::Busy);
        assert_eq!(tables, ["tasks", "executions", "agents"]);
        assert!(
            recorded.memory.is_none(),
            "a run still going leaves no memory yet"
        );
    }

    #[tokio::test]
    async fn success_finishes_the_run_and_leaves_its_output_in_memory() {
        let given = Given::new().await;
        let (task, agent) = (given.task().await, given.agent("coder").await);
        when(&given, reported(agent, task, ExecutionStatus::Running))
            .await
            .expect("running");

        let finished = Report {
            output: Some("all green".to_owned()),
            ..reported(agent, task, ExecutionStatus::Success)
        };
        let (recorded, tables) = when(&given, finished).await.expect("recorded");

        let run = given.state::<Execution>(recorded.execution_id).await;
        assert_eq!(run.status, ExecutionStatus::Success);
        let task_state = given.state::<Task>(task).await;
        assert_eq!(
            (task_state.running_execution_id, task_state.run_count),
            (None, 1)
        );
        assert_eq!(given.state::<Agent>(agent).await.status, AgentStatus::Idle);
        assert_eq!(tables, ["executions", "tasks", "agents"]);
        let memory = recorded
            .memory
            .expect("a finished run leaves a memory entry");
        assert_eq!(memory.content, "build run success: all green");
        assert_eq!(memory.task_id, Some(task));
    }

    #[tokio::test]
    async fn a_run_of_another_task_is_refused_and_nothing_changes() {
        let given = Given::new().await;
        let (task, other, agent) = (
            given.task().await,
            given.task().await,
            given.agent("coder").await,
        );
        let (running, _) = when(&given, reported(agent, other, ExecutionStatus::Running))
            .await
            .expect("running");

        let finished = Report {
            execution_id: Some(running.execution_id),
            ..reported(agent, task, ExecutionStatus::Failed)
        };
        let refused = when(&given, finished).await;

        assert!(
            matches!(refused, Err(ApiError::BadRequest(_))),
            "{:?}",
            refused.map(|r| r.1)
        );
        let run = given.state::<Execution>(running.execution_id).await;
        assert_eq!(run.status, ExecutionStatus::Running);
        assert_eq!(given.state::<Task>(task).await.run_count, 0);
    }

    #[tokio::test]
    async fn an_unknown_agent_or_task_is_not_found() {
        let given = Given::new().await;
        let (task, agent) = (given.task().await, given.agent("coder").await);

        let no_agent = when(
            &given,
            reported(Uuid::now_v7(), task, ExecutionStatus::Running),
        )
        .await;
        let no_task = when(
            &given,
            reported(agent, Uuid::now_v7(), ExecutionStatus::Running),
        )
        .await;
        let no_run = when(&given, reported(agent, task, ExecutionStatus::Success)).await;

        for refused in [no_agent, no_task, no_run] {
            assert!(
                matches!(refused, Err(ApiError::NotFound(_))),
                "{:?}",
                refused.map(|r| r.1)
            );
        }
        assert_eq!(given.state::<Task>(task).await.running_execution_id, None);
        assert_eq!(given.state::<Agent>(agent).await.status, AgentStatus::Idle);
    }
}
