//! Policies: checkpointed consumers of the log that react to an event by issuing commands to
//! other aggregates. They run on the projection runner, so each reaction happens at least once;
//! the commands they issue are idempotent (deleting a deleted task records nothing), so at least
//! once is exactly once in effect.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use sparc_domain::task::TaskEvent;
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
/// `TaskUpdated` that moves it to one. The event is upcast and decoded as the aggregate would
/// decode it (one that does not decode joins no project).
fn project_joined(event: &RecordedEvent) -> Option<Uuid> {
    if event.aggregate_type != "Task"
        || !matches!(event.event_type.as_str(), "TaskScheduled" | "TaskUpdated")
    {
        return None;
    }
    let payload = sparc_domain::upcasting::upcast_ref(
        &event.event_type,
        &event.event_version,
        &event.payload,
    );
    match TaskEvent::deserialize(payload.as_ref()).ok()? {
        TaskEvent::TaskScheduled { project_id, .. } => project_id,
        TaskEvent::TaskUpdated { changes, .. } => changes.project_id.flatten(),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::DomainEvent;
    use sparc_domain::task::TaskChanges;

    fn task_event(event: &TaskEvent) -> RecordedEvent {
        RecordedEvent {
            position: 1,
            transaction_id: 0,
            aggregate_type: "Task".to_owned(),
            aggregate_id: Uuid::now_v7().to_string(),
            sequence: 2,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event).expect("an event serializes"),
            metadata: serde_json::Value::Null,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            hash: None,
        }
    }

    #[test]
    fn a_task_joins_the_project_its_decoded_event_names() {
        let project = Uuid::now_v7();
        let moved = |project_id| TaskEvent::TaskUpdated {
            changes: TaskChanges {
                project_id,
                ..TaskChanges::default()
            },
            next_run_at: None,
            at: chrono::Utc::now(),
        };
        assert_eq!(
            project_joined(&task_event(&moved(Some(Some(project))))),
            Some(project)
        );
        assert_eq!(
            project_joined(&task_event(&moved(Some(None)))),
            None,
            "left its project"
        );
        assert_eq!(
            project_joined(&task_event(&moved(None))),
            None,
            "project unchanged"
        );
        let mut undecodable = task_event(&moved(Some(Some(project))));
        undecodable.payload = serde_json::json!({"TaskUpdated": {"changes": 7}});
        assert_eq!(project_joined(&undecodable), None);
    }
}
