//! The scheduler: finds due tasks in the `tasks` read model and fires each due slot with a
//! `Fire` command that is valid only for that slot. Any number of schedulers may run: two that
//! race on one slot write to the same stream, optimistic concurrency lets one commit, and the
//! loser is refused (`slot has already fired`). A fired slot becomes a `running` execution;
//! a slot that would overlap a running one is recorded as skipped by the task itself.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sparc_domain::execution::{Execution, ExecutionCommand};
use sparc_domain::task::{Task, TaskCommand, TaskError, TaskEvent};
use sparc_projections::ProjectionHandle;
use sparc_store::{CommandBus, CommandError, Database, EventMetadata};
use tokio::sync::watch;
use uuid::Uuid;

/// How many due tasks one pass fires at most.
const BATCH: i64 = 200;

/// Fires every slot due at `now`; returns how many runs it started.
pub async fn fire_due(
    db: &Database,
    commands: &CommandBus,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let due = sparc_projections::tasks::due(db, now, BATCH).await?;
    let mut started = 0;
    for row in due {
        let Some(slot) = row.state.next_run_at else {
            continue;
        };
        let task_id = row.state.id;
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
                        ExecutionCommand::Start {
                            execution_id,
                            task_id,
                            user_id: outcome.state.user_id,
                            agent_id: None,
                            scheduled_for: slot,
                            at: now,
                        },
                        &metadata,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("starting execution {execution_id}: {e}"))?;
                started += 1;
            }
            Ok(_) => tracing::info!(%task_id, %slot, "slot skipped: a run is still going"),
            // Another scheduler fired it, or the task changed since the read model saw it.
            Err(CommandError::Rejected(
                TaskError::SlotAlreadyFired(_)
                | TaskError::SlotNotDue(_)
                | TaskError::NotPending
                | TaskError::Deleted,
            )) => {}
            Err(error) => tracing::warn!(%task_id, %error, "could not fire a due task"),
        }
    }
    Ok(started)
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
        match fire_due(&db, &commands, Utc::now()).await {
            Ok(0) => {}
            Ok(started) => {
                tracing::info!(started, "fired due tasks");
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
