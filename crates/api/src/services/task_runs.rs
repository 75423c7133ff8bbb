//! Runs of a task outside its schedule: started now (by its owner, or by an agent reporting a
//! run of its own), and waiting runs claimed by an agent that polls for work.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sparc_domain::agent::{Agent, AgentCommand};
use sparc_domain::execution::{Execution, ExecutionCommand, ExecutionStatus};
use sparc_domain::task::{Task, TaskCommand};
use sparc_store::{CommandBus, CommandError, EventMetadata, Outcome};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::command_error;
use crate::unsettled::{Unsettled, Writes, create, execute};

/// Fires task `task_id` for a new run `execution_id` and starts that execution; `agent_id`: the
/// agent running it, when one reports it (otherwise the run waits for an agent to claim it).
///
/// # Errors
/// 404 for an unknown task, 409 if it is deleted or runs another execution it may not overlap.
pub async fn run_now(
    commands: &CommandBus,
    task_id: Uuid,
    execution_id: Uuid,
    agent_id: Option<Uuid>,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Unsettled<Outcome<Execution>>, ApiError> {
    let mut writes = Writes::default();
    let fire = TaskCommand::RunNow {
        execution_id,
        agent_id,
        at,
    };
    let fired = writes.take(execute::<Task>(commands, task_id, fire, metadata, None).await?);
    let started =
        writes.take(start(commands, &fired.state, execution_id, agent_id, metadata, at).await?);
    Ok(writes.owed_for(started))
}

/// Starts execution `execution_id` of `task`, which has fired for it.
///
/// # Errors
/// 409 if the execution exists already.
pub async fn start(
    commands: &CommandBus,
    task: &Task,
    execution_id: Uuid,
    agent_id: Option<Uuid>,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Unsettled<Outcome<Execution>>, ApiError> {
    let command = ExecutionCommand::start_of(task, execution_id, agent_id, at, at);
    create::<Execution>(commands, execution_id, command, metadata).await
}

/// A run an agent claimed, and the parameters of its task.
#[derive(Debug)]
pub struct Claimed {
    /// The execution, now the agent's.
    pub execution: Execution,
    /// Its task's `params`.
    pub params: Value,
}

/// Agent `agent_id` claims waiting run `execution_id`: the execution becomes the agent's, the
/// task is assigned to it, the agent is busy with it. `None` when another agent (or another
/// poll of this one) took it first, it ended meanwhile, or it does not exist.
///
/// # Errors
/// A command that fails for another reason than the run being gone.
pub async fn claim(
    commands: &CommandBus,
    agent_id: Uuid,
    execution_id: Uuid,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Option<Unsettled<Claimed>>, ApiError> {
    let claim = ExecutionCommand::Claim { agent_id, at };
    let claimed = match commands
        .execute::<Execution>(&execution_id.to_string(), claim, metadata, None)
        .await
    {
        Ok(outcome) if !outcome.events.is_empty() => outcome,
        Ok(_) | Err(CommandError::Rejected(_)) => return Ok(None),
        Err(error) => return Err(command_error(error)),
    };
    let mut writes = Writes::default();
    let run = writes
        .take(Unsettled::of_outcome(execution_id, claimed))
        .state;
    let assign = TaskCommand::Assign {
        execution_id,
        agent_id,
        at,
    };
    let assigned =
        writes.take(execute::<Task>(commands, run.task_id, assign, metadata, None).await?);
    let busy = AgentCommand::RecordActivity {
        task_id: run.task_id,
        execution_id,
        run_status: ExecutionStatus::Running,
        at,
    };
    writes.take(execute::<Agent>(commands, agent_id, busy, metadata, None).await?);
    Ok(Some(writes.owed_for(Claimed {
        execution: run,
        params: assigned.state.params,
    })))
}

#[cfg(test)]
mod tests {
    use sparc_domain::agent::AgentStatus;
    use sparc_domain::task::TaskStatus;

    use super::*;
    use crate::services::given::Given;

    #[tokio::test]
    async fn a_task_run_now_is_running_a_waiting_execution() {
        let given = Given::new().await;
        let task = given.task().await;

        let (started, writes) = run_now(
            &given.commands,
            task,
            Uuid::now_v7(),
            None,
            &given.metadata,
            Utc::now(),
        )
        .await
        .expect("run now")
        .into_parts();

        let run = started.state;
        assert!(
            run.exists && run.agent_id.is_none(),
            "a run waiting for an agent"
        );
        let task = given.state::<Task>(task).await;
        assert_eq!(task.running_execution_id, Some(run.id));
        assert_eq!(given.tables(&writes), ["tasks", "executions"]);
    }

    #[tokio::test]
    async fn a_deleted_task_does_not_run_and_starts_no_execution() {
        let given = Given::new().await;
        let task = given.task().await;
        given.delete(task).await;
        let execution_id = Uuid::now_v7();

        let refused = run_now(
            &given.commands,
            task,
            execution_id,
            None,
            &given.metadata,
            Utc::now(),
        )
        .await;

        assert!(matches!(refused, Err(ApiError::Conflict(_))), "{refused:?}");
        assert!(!given.state::<Execution>(execution_id).await.exists);
        assert_eq!(given.state::<Task>(task).await.status, TaskStatus::Deleted);
    }

    #[tokio::test]
    async fn an_agent_claims_a_waiting_run_once() {
        let given = Given::new().await;
        let task = given.task().await;
        let (first, second) = (given.agent("first").await, given.agent("second").await);
        let run_id = Uuid::now_v7();
        let waiting = run_now(
            &given.commands,
            task,
            run_id,
            None,
            &given.metadata,
            Utc::now(),
        )
        .await
        .expect("run now");
        drop(waiting.into_parts());

        let claimed = claim(&given.commands, first, run_id, &given.metadata, Utc::now())
            .await
            .expect("claim")
            .expect("the run was waiting");
        let again = claim(&given.commands, second, run_id, &given.metadata, Utc::now())
            .await
            .expect("claim");

        let (claimed, writes) = claimed.into_parts();
        assert_eq!(claimed.execution.agent_id, Some(first));
        assert_eq!(claimed.params, serde_json::json!({"n": 1}));
        assert_eq!(given.tables(&writes), ["executions", "tasks", "agents"]);
        assert!(again.is_none(), "the second agent finds it taken");
        assert_eq!(given.state::<Task>(task).await.assignee, Some(first));
        let agent = given.state::<Agent>(first).await;
        assert_eq!(
            (agent.status, agent.current_task),
            (AgentStatus::Busy, Some(task))
        );
    }
}
