//! Policies: checkpointed consumers of the log that react to an event by issuing commands to
//! other aggregates. They run on the projection runner, so each reaction happens at least once;
//! the commands they issue are idempotent (deleting a deleted task records nothing), so at least
//! once is exactly once in effect.

use std::sync::Arc;

use async_trait::async_trait;
use sparc_store::{Database, LogReader, RecordedEvent};
use uuid::Uuid;

use crate::runner::{CommandFailure, Projection, ProjectionError};

/// The command side the policies need, implemented by the application's command bus.
#[async_trait]
pub trait TaskCommands: Send + Sync {
    /// Soft-deletes a task because of `cause` (its metadata becomes the causation).
    async fn delete_task(&self, task_id: Uuid, cause: &RecordedEvent)
    -> Result<(), CommandFailure>;

    /// Records on its task that the finished execution `execution_id` is over (a no-op once
    /// recorded).
    async fn finish_task_run(
        &self,
        execution_id: Uuid,
        cause: &RecordedEvent,
    ) -> Result<(), CommandFailure>;

    /// Cancels the runs of a deleted task that no agent has taken (a no-op once cancelled).
    async fn cancel_waiting_runs(
        &self,
        task_id: Uuid,
        cause: &RecordedEvent,
    ) -> Result<(), CommandFailure>;
}

/// Every run ends on its task, and no deleted task's job waits: an `ExecutionFinished`
/// (reported by an agent, timed out by a scheduler, cancelled) finishes the run on its task,
/// so a crash between the two commands never leaves a task `running` behind a finished run;
/// a `TaskDeleted` cancels the task's runs still waiting for an agent.
pub struct RunCompletion {
    commands: Arc<dyn TaskCommands>,
}

impl RunCompletion {
    /// The policy, issuing its commands through `commands`.
    pub fn new(commands: Arc<dyn TaskCommands>) -> Self {
        Self { commands }
    }
}

#[async_trait]
impl Projection for RunCompletion {
    fn name(&self) -> &str {
        "policy_run_completion"
    }

    fn reacts(&self) -> bool {
        true
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        matches!(
            (event.aggregate_type.as_str(), event.event_type.as_str()),
            ("Execution", "ExecutionFinished") | ("Task", "TaskDeleted")
        )
    }

    async fn react(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| self.concerns(e)) {
            let id: Uuid = event.aggregate_id.parse().map_err(|_| {
                ProjectionError::Command(format!("{} is not a uuid", event.aggregate_id).into())
            })?;
            let done = if event.aggregate_type == "Execution" {
                self.commands.finish_task_run(id, event).await
            } else {
                self.commands.cancel_waiting_runs(id, event).await
            };
            done.map_err(ProjectionError::Command)?;
        }
        Ok(())
    }
}

/// Deleting a project deletes every one of its tasks, each through its own `TaskDeleted`; and a
/// task scheduled into, or moved into, a project that the log shows deleted by then is deleted
/// too (the task's command raced the deletion: it was decided on a project read before the
/// deletion, so the cascade, which lists the project's tasks, may not have seen it).
pub struct ProjectCascade {
    db: Database,
    log: LogReader,
    commands: Arc<dyn TaskCommands>,
}

impl ProjectCascade {
    /// The policy, reading the `tasks` read model of `db`.
    pub fn new(db: Database, commands: Arc<dyn TaskCommands>) -> Self {
        Self {
            log: LogReader::new(&db),
            db,
            commands,
        }
    }
}

#[async_trait]
impl Projection for ProjectCascade {
    fn name(&self) -> &str {
        "policy_project_cascade"
    }

    fn reacts(&self) -> bool {
        true
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        project_deleted(event) || project_joined(event).is_some()
    }

    async fn react(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if project_deleted(event) {
                self.delete_tasks_of(event).await?;
            } else if let Some(project_id) = project_joined(event) {
                self.delete_if_project_deleted(project_id, event).await?;
            }
        }
        Ok(())
    }
}

fn project_deleted(event: &RecordedEvent) -> bool {
    event.aggregate_type == "Project" && event.event_type == "ProjectDeleted"
}

/// The project a task event puts its task into, if any: `TaskScheduled` with a project, or
/// `TaskUpdated` that moves it to one.
fn project_joined(event: &RecordedEvent) -> Option<Uuid> {
    if event.aggregate_type != "Task" {
        return None;
    }
    let project = match event.event_type.as_str() {
        "TaskScheduled" => &event.payload["TaskScheduled"]["project_id"],
        "TaskUpdated" => &event.payload["TaskUpdated"]["changes"]["project_id"],
        _ => return None,
    };
    project.as_str()?.parse().ok()
}

impl ProjectCascade {
    async fn delete_tasks_of(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        // The task list must include every task created before the deletion.
        let tasks_at = sparc_store::checkpoint::load(&self.db, "tasks").await?;
        if tasks_at < event.checkpoint() {
            return Err(ProjectionError::NotReady("tasks"));
        }
        let project_id: Uuid = event.aggregate_id.parse().map_err(|_| {
            ProjectionError::Command(
                format!("project id {} is not a uuid", event.aggregate_id).into(),
            )
        })?;
        for task in crate::tasks::of_project(&self.db, project_id).await? {
            self.commands
                .delete_task(task.state.id, event)
                .await
                .map_err(ProjectionError::Command)?;
        }
        Ok(())
    }

    async fn delete_if_project_deleted(
        &self,
        project_id: Uuid,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        // Deleted *before this event in the log*, read from the log itself: a read model may
        // not have caught up yet, or may already show a deletion that came later (whose own
        // cascade then deletes the task).
        if !self.deleted_before(project_id, event).await? {
            return Ok(());
        }
        let task_id: Uuid = event.aggregate_id.parse().map_err(|_| {
            ProjectionError::Command(format!("task id {} is not a uuid", event.aggregate_id).into())
        })?;
        self.commands
            .delete_task(task_id, event)
            .await
            .map_err(ProjectionError::Command)
    }

    /// Whether the log holds a `ProjectDeleted` of `project_id` ahead of `event`.
    async fn deleted_before(
        &self,
        project_id: Uuid,
        event: &RecordedEvent,
    ) -> Result<bool, ProjectionError> {
        const PAGE: i64 = 500;
        let mut after = 0;
        loop {
            let page = self
                .log
                .aggregate_events("Project", &project_id.to_string(), after, PAGE)
                .await?;
            if page
                .iter()
                .any(|e| e.event_type == "ProjectDeleted" && e.checkpoint() < event.checkpoint())
            {
                return Ok(true);
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = last.sequence,
                _ => return Ok(false),
            }
        }
    }
}
