//! Policies: checkpointed consumers of the log that react to an event by issuing commands to
//! other aggregates. They run on the projection runner, so each reaction happens at least once;
//! the commands they issue are idempotent (deleting a deleted task records nothing), so at least
//! once is exactly once in effect.

use std::sync::Arc;

use async_trait::async_trait;
use sparc_store::{Database, RecordedEvent};
use uuid::Uuid;

use crate::runner::{Projection, ProjectionError};

/// The command side the policies need, implemented by the application's command bus.
#[async_trait]
pub trait TaskCommands: Send + Sync {
    /// Soft-deletes a task because of `cause` (its metadata becomes the causation).
    async fn delete_task(&self, task_id: Uuid, cause: &RecordedEvent) -> Result<(), String>;
}

/// Deleting a project deletes every one of its tasks, each through its own `TaskDeleted`.
pub struct ProjectCascade {
    db: Database,
    commands: Arc<dyn TaskCommands>,
}

impl ProjectCascade {
    /// The policy, reading the `tasks` read model of `db`.
    pub fn new(db: Database, commands: Arc<dyn TaskCommands>) -> Self {
        Self { db, commands }
    }
}

#[async_trait]
impl Projection for ProjectCascade {
    fn name(&self) -> &str {
        "policy_project_cascade"
    }

    async fn react(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events
            .iter()
            .filter(|e| e.aggregate_type == "Project" && e.event_type == "ProjectDeleted")
        {
            // The task list must include every task created before the deletion.
            let tasks_at = sparc_store::checkpoint::load(&self.db, "tasks").await?;
            if tasks_at < event.checkpoint() {
                return Err(ProjectionError::NotReady("tasks"));
            }
            let project_id: Uuid = event.aggregate_id.parse().map_err(|_| {
                ProjectionError::Command(format!("project id {} is not a uuid", event.aggregate_id))
            })?;
            for task in crate::tasks::of_project(&self.db, project_id).await? {
                self.commands
                    .delete_task(task.state.id, event)
                    .await
                    .map_err(ProjectionError::Command)?;
            }
        }
        Ok(())
    }
}
