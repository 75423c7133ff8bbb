//! The read side as the API asks it: one handle, [`ReadModels`], with a method per question a
//! request may ask of the read models. The table modules (`tasks`, `projects`, …) hold the SQL;
//! this is the one place the API reaches them through, so what the API reads is listed here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sparc_domain::agent::Agent;
use sparc_domain::execution::{Execution, ExecutionStatus};
use sparc_domain::memory::Memory;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use sparc_domain::user::User;
use sparc_store::Database;
use uuid::Uuid;

use crate::agents::AgentQuery;
use crate::executions::ActivityQuery;
use crate::memories::{Ranked, Reach, Scope, Summary};
use crate::projects::ProjectQuery;
use crate::runner::ProjectionError;
use crate::state_table::Row;
use crate::status::ProjectionStatus;
use crate::tasks::TaskQuery;
use crate::users::UserQuery;
use crate::{agents, executions, memories, projects, state_table, status, tasks, users};

/// What a read-model question answers: its rows, or the database's error.
pub type QueryResult<T> = Result<T, sqlx::Error>;

/// The read models of one database, for reading. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadModels {
    db: Database,
}

impl ReadModels {
    /// The read models kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// How far every consumer of the log has come; one that waits longer than `stalled_after`
    /// for an event counts as stalled.
    pub async fn consumer_statuses(
        &self,
        stalled_after: std::time::Duration,
    ) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        status::statuses(&self.db, stalled_after).await
    }

    /// The version of row `id` of read model `table`, if it has the row.
    pub async fn row_version(&self, table: &str, id: &str) -> QueryResult<Option<i64>> {
        state_table::version_of(&self.db, table, id).await
    }

    /// One user.
    pub async fn user(&self, id: Uuid) -> QueryResult<Option<Row<User>>> {
        users::get(&self.db, id).await
    }

    /// One user by username, case-insensitively.
    pub async fn user_by_username(&self, username: &str) -> QueryResult<Option<Row<User>>> {
        users::by_username(&self.db, username).await
    }

    /// A page of users and the total matching.
    pub async fn users(&self, query: &UserQuery) -> QueryResult<(Vec<Row<User>>, i64)> {
        users::list(&self.db, query).await
    }

    /// One task (deleted ones too).
    pub async fn task(&self, id: Uuid) -> QueryResult<Option<Row<Task>>> {
        tasks::get(&self.db, id).await
    }

    /// A page of tasks and the total matching.
    pub async fn tasks(&self, query: &TaskQuery) -> QueryResult<(Vec<Row<Task>>, i64)> {
        tasks::list(&self.db, query).await
    }

    /// The live tasks of a project.
    pub async fn tasks_of_project(&self, project_id: Uuid) -> QueryResult<Vec<Row<Task>>> {
        tasks::of_project(&self.db, project_id).await
    }

    /// How many live tasks `owner` has, counted no further than `up_to`.
    pub async fn live_tasks_of(&self, owner: Uuid, up_to: i64) -> QueryResult<i64> {
        tasks::live_count_of(&self.db, owner, up_to).await
    }

    /// One project (deleted ones too).
    pub async fn project(&self, id: Uuid) -> QueryResult<Option<Row<Project>>> {
        projects::get(&self.db, id).await
    }

    /// A page of live projects and the total matching.
    pub async fn projects(&self, query: &ProjectQuery) -> QueryResult<(Vec<Row<Project>>, i64)> {
        projects::list(&self.db, query).await
    }

    /// How many live projects `owner` has, counted no further than `up_to`.
    pub async fn live_projects_of(&self, owner: Uuid, up_to: i64) -> QueryResult<i64> {
        projects::live_count_of(&self.db, owner, up_to).await
    }

    /// The live tasks of each of `ids`.
    pub async fn tasks_counts(&self, ids: &[Uuid]) -> QueryResult<HashMap<Uuid, i64>> {
        projects::tasks_counts(&self.db, ids).await
    }

    /// A page of a task's executions, newest first, and the total matching.
    pub async fn executions_of_task(
        &self,
        task_id: Uuid,
        status: Option<ExecutionStatus>,
        limit: i64,
        offset: i64,
    ) -> QueryResult<(Vec<Row<Execution>>, i64)> {
        executions::of_task(&self.db, task_id, status, limit, offset).await
    }

    /// The newest `limit` executions of a task that had started by `moment`.
    pub async fn executions_of_task_started_by(
        &self,
        task_id: Uuid,
        moment: DateTime<Utc>,
        limit: i64,
    ) -> QueryResult<Vec<Row<Execution>>> {
        executions::of_task_started_by(&self.db, task_id, moment, limit).await
    }

    /// An agent's newest runs, of `owner`'s tasks only when given.
    pub async fn executions_of_agent(
        &self,
        agent_id: Uuid,
        owner: Option<Uuid>,
        limit: i64,
    ) -> QueryResult<Vec<Row<Execution>>> {
        executions::of_agent(&self.db, agent_id, owner, limit).await
    }

    /// A page of the agents' activity feed.
    pub async fn activity(&self, query: &ActivityQuery) -> QueryResult<Vec<Row<Execution>>> {
        executions::activity(&self.db, query).await
    }

    /// Runs waiting for an agent, oldest first, of the given skills when given.
    pub async fn unclaimed_runs(
        &self,
        skills: Option<&[String]>,
        limit: i64,
    ) -> QueryResult<Vec<Row<Execution>>> {
        executions::unclaimed(&self.db, skills, limit).await
    }

    /// One agent (deregistered ones too).
    pub async fn agent(&self, id: Uuid) -> QueryResult<Option<Row<Agent>>> {
        agents::get(&self.db, id).await
    }

    /// A page of registered agents and the total matching.
    pub async fn agents(&self, query: &AgentQuery) -> QueryResult<(Vec<Row<Agent>>, i64)> {
        agents::list(&self.db, query).await
    }

    /// The names of the agents of `ids` that have one.
    pub async fn agent_names(&self, ids: &[Uuid]) -> QueryResult<HashMap<Uuid, String>> {
        agents::names_of(&self.db, ids).await
    }

    /// How many agents `user` registered that are still registered, counted no further than
    /// `up_to`.
    pub async fn registered_agents_of(&self, user: Uuid, up_to: i64) -> QueryResult<i64> {
        agents::registered_count_of(&self.db, user, up_to).await
    }

    /// The memory entries of `ids` within `reach`.
    pub async fn memories(&self, ids: &[Uuid], reach: Reach) -> QueryResult<Vec<Row<Memory>>> {
        memories::by_ids(&self.db, ids, reach).await
    }

    /// Memory entries matching `query` within `scope`, best first.
    pub async fn search_memories(
        &self,
        query: &str,
        scope: Scope,
        limit: i64,
    ) -> QueryResult<Vec<Ranked>> {
        memories::search(&self.db, query, scope, limit).await
    }

    /// A task's memory entries within `reach` and their total.
    pub async fn memories_of_task(
        &self,
        task_id: Uuid,
        reach: Reach,
        limit: i64,
    ) -> QueryResult<(Vec<Row<Memory>>, i64)> {
        memories::of_task(&self.db, task_id, reach, limit).await
    }

    /// The other tasks of a project that have memory entries within `reach`, with their
    /// counts.
    pub async fn memories_of_project_tasks(
        &self,
        project_id: Uuid,
        except_task: Uuid,
        reach: Reach,
        limit: i64,
    ) -> QueryResult<Vec<(Uuid, i64)>> {
        memories::tasks_of_project(&self.db, project_id, except_task, reach, limit).await
    }

    /// What a project's memory holds within `reach`.
    pub async fn memory_summary(&self, project_id: Uuid, reach: Reach) -> QueryResult<Summary> {
        memories::summary(&self.db, project_id, reach).await
    }

    /// Memory entries kept locally that the Memory MCP server has not taken yet.
    pub async fn memories_pending_sync(&self) -> QueryResult<i64> {
        memories::pending_sync(&self.db).await
    }
}
