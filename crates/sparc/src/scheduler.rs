//! The scheduler: finds due tasks in the `tasks` read model and fires each due slot with a
//! `Fire` command that is valid only for that slot. Any number of schedulers may run: two that
//! race on one slot write to the same stream, optimistic concurrency lets one commit, and the
//! loser is refused (`slot has already fired`). A fired slot becomes a `running` execution;
//! a slot that would overlap a running one is recorded as skipped by the task itself. Each pass
//! also ends the runs past their deadline as `timeout`, whether an agent took them or not.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use sparc_domain::agent::{Agent, AgentCommand};
use sparc_domain::execution::{Execution, ExecutionCommand, ExecutionStatus};
use sparc_domain::task::{Task, TaskCommand, TaskError, TaskEvent};
use sparc_projections::ProjectionHandle;
use sparc_store::{CommandBus, CommandError, Database, EventMetadata};
use tokio::sync::watch;
use uuid::Uuid;

/// How often a scheduler looks for due slots and overdue runs: a slot fires within about this
/// long of its time.
pub const PASS_INTERVAL: Duration = Duration::from_millis(250);

/// How many due tasks one pass fires at most.
const BATCH: i64 = 500;

/// How many fires (or time-outs) one pass has in flight at once: enough to keep the store's
/// group commit busy, few enough that racing schedulers rarely collide on one task.
const IN_FLIGHT: usize = 32;

/// Fires every slot due at `now`; returns how many runs it started.
pub async fn fire_due(
    db: &Database,
    commands: &CommandBus,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let mut due = sparc_projections::tasks::due(db, now, BATCH).await?;
    // Schedulers racing on the same due list start at different places in it.
    due.shuffle(&mut rand::thread_rng());
    let started: Vec<anyhow::Result<bool>> = stream::iter(due)
        .map(|row| fire(commands, row.state, now))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut count = 0;
    for outcome in started {
        count += usize::from(outcome?);
    }
    Ok(count)
}

/// Fires the due slot of `task`; whether a run started.
async fn fire(commands: &CommandBus, task: Task, now: DateTime<Utc>) -> anyhow::Result<bool> {
    let Some(slot) = task.next_run_at else {
        return Ok(false);
    };
    let task_id = task.id;
    let execution_id = Uuid::now_v7();
    let metadata = EventMetadata::system("scheduler");
    let fired = commands
        .execute::<Task>(
            &task_id.to_string(),
            TaskCommand::Fire {
                execution_id,
                scheduled_for: slot,
                at: now,
            },
            &metadata,
            None,
        )
        .await;
    match fired {
        Ok(outcome)
            if outcome
                .events
                .iter()
                .any(|e| matches!(e, TaskEvent::TaskFired { .. })) =>
        {
            commands
                .create::<Execution>(
                    &execution_id.to_string(),
                    ExecutionCommand::start_of(&outcome.state, execution_id, None, slot, now),
                    &metadata,
                )
                .await
                .map_err(|e| anyhow::anyhow!("starting execution {execution_id}: {e}"))?;
            Ok(true)
        }
        Ok(_) => {
            tracing::info!(%task_id, %slot, "slot not run: skipped or missed");
            Ok(false)
        }
        // Another scheduler fired it, or the task changed since the read model saw it.
        Err(CommandError::Rejected(
            TaskError::SlotAlreadyFired(_)
            | TaskError::SlotNotDue(_)
            | TaskError::NotPending
            | TaskError::Deleted,
        )) => Ok(false),
        Err(error) => {
            tracing::warn!(%task_id, %error, "could not fire a due task");
            Ok(false)
        }
    }
}

/// Ends every run still going past its deadline at `now` as `timeout` (its task learns it
/// through the `RunCompletion` policy); returns how many it ended. The execution refuses a
/// second time-out, so racing schedulers end each run once.
pub async fn time_out_overdue(
    db: &Database,
    commands: &CommandBus,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let overdue = sparc_projections::executions::overdue(db, now, BATCH).await?;
    let ended: Vec<bool> = stream::iter(overdue)
        .map(|row| time_out(commands, row.state, now))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    Ok(ended.into_iter().filter(|ended| *ended).count())
}

/// Times out `execution`; whether this call ended it.
async fn time_out(commands: &CommandBus, execution: Execution, now: DateTime<Utc>) -> bool {
    let metadata = EventMetadata::system("scheduler");
    let id = execution.id;
    match commands
        .execute::<Execution>(
            &id.to_string(),
            ExecutionCommand::TimeOut { at: now },
            &metadata,
            None,
        )
        .await
    {
        Ok(_) => {}
        Err(CommandError::Rejected(_)) => return false,
        Err(error) => {
            tracing::warn!(execution_id = %id, %error, "could not time out a run");
            return false;
        }
    }
    tracing::info!(execution_id = %id, task_id = %execution.task_id, "run timed out");
    if let Some(agent_id) = execution.agent_id {
        let recorded = commands
            .execute::<Agent>(
                &agent_id.to_string(),
                AgentCommand::RecordActivity {
                    task_id: execution.task_id,
                    execution_id: id,
                    run_status: ExecutionStatus::Timeout,
                    at: now,
                },
                &metadata,
                None,
            )
            .await;
        if let Err(error) = recorded {
            tracing::warn!(%agent_id, %error, "could not record a time-out on its agent");
        }
    }
    true
}

/// One scheduler pass at `now`: fire what is due, end what is overdue.
pub async fn pass(
    db: &Database,
    commands: &CommandBus,
    now: DateTime<Utc>,
) -> anyhow::Result<(usize, usize)> {
    let fired = fire_due(db, commands, now).await?;
    let timed_out = time_out_overdue(db, commands, now).await?;
    Ok((fired, timed_out))
}

/// Fires due tasks every `interval` until shutdown, poking the projections after each run so the
/// read model shows the fired tasks before the next pass.
pub async fn run(
    db: Database,
    commands: Arc<CommandBus>,
    projections: ProjectionHandle,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match pass(&db, &commands, Utc::now()).await {
            Ok((0, 0)) => {}
            Ok((started, timed_out)) => {
                tracing::info!(started, timed_out, "scheduler pass");
                projections.poke();
            }
            Err(error) => tracing::warn!(%error, "scheduler pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
