//! The `executions` read model: runs of tasks, for a task's execution list, an agent's
//! history and the activity feed across agents.

use chrono::{DateTime, Utc};
use sparc_domain::execution::{Execution, ExecutionStatus};
use sparc_store::Database;
use uuid::Uuid;

use crate::sql::SqlValue;
use crate::state_table::{self, Indexed, Row, Selection};

impl Indexed for Execution {
    const TABLE: &'static str = "executions";
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "user_id",
        "agent_id",
        "status",
        "started_at",
        "skill_name",
        "deadline",
    ];

    fn columns(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(Some(self.task_id.to_string())),
            SqlValue::Text(Some(self.user_id.to_string())),
            SqlValue::Text(self.agent_id.map(|a| a.to_string())),
            SqlValue::Text(Some(self.status.as_str().to_owned())),
            self.started_at.into(),
            SqlValue::Text(self.skill_name.as_ref().map(|s| s.to_string())),
            self.deadline().into(),
        ]
    }

    const PUBLISHED: bool = true;

    fn audience(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

/// One execution by id.
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Row<Execution>>, sqlx::Error> {
    state_table::get(db, &id.to_string()).await
}

/// The newest `limit` executions of a task that had started by `moment`, newest first.
pub async fn of_task_started_by(
    db: &Database,
    task_id: Uuid,
    moment: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Row<Execution>>, sqlx::Error> {
    state_table::select_page(
        db,
        &Selection {
            filter: "task_id = $1 AND started_at <= $2".to_owned(),
            params: vec![task_id.to_string().into(), Some(moment).into()],
            order_by: "started_at DESC, id DESC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}

/// A page of a task's executions, newest first, optionally of one status.
pub async fn of_task(
    db: &Database,
    task_id: Uuid,
    status: Option<ExecutionStatus>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Row<Execution>>, i64), sqlx::Error> {
    let mut filter = "task_id = $1".to_owned();
    let mut params: Vec<SqlValue> = vec![task_id.to_string().into()];
    if let Some(status) = status {
        params.push(status.as_str().to_owned().into());
        filter.push_str(" AND status = $2");
    }
    state_table::select(
        db,
        &Selection {
            filter,
            params,
            order_by: "started_at DESC, id DESC".to_owned(),
            limit,
            offset,
        },
    )
    .await
}

/// An agent's most recent executions, newest first; with `owner`, only the runs of that user's
/// tasks (an agent runs everyone's tasks, but a user may see only their own executions).
pub async fn of_agent(
    db: &Database,
    agent_id: Uuid,
    owner: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Row<Execution>>, sqlx::Error> {
    let mut filter = "agent_id = $1".to_owned();
    let mut params: Vec<SqlValue> = vec![agent_id.to_string().into()];
    if let Some(owner) = owner {
        params.push(owner.to_string().into());
        filter.push_str(" AND user_id = $2");
    }
    state_table::select_page(
        db,
        &Selection {
            filter,
            params,
            order_by: "started_at DESC, id DESC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}

/// Where a page of the activity feed starts: after the run started at `started_at` with `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityCursor {
    /// When the last run of the previous page started.
    pub started_at: DateTime<Utc>,
    /// Its id, which breaks ties.
    pub id: Uuid,
}

/// What the activity feed shows: whose runs, of which agent, from where.
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery {
    /// Only the runs of this user's tasks (`None`: everyone's).
    pub owner: Option<Uuid>,
    /// Only the runs of this agent.
    pub agent_id: Option<Uuid>,
    /// Only runs before this one in the feed's order.
    pub before: Option<ActivityCursor>,
    /// Runs at most.
    pub limit: i64,
}

/// The activity feed: runs that an agent has taken up, newest started first (a run keeps its
/// place as it progresses, so a reader's cursor never skips or repeats one), read through the
/// indexes of migration 0012.
pub async fn activity(
    db: &Database,
    query: &ActivityQuery,
) -> Result<Vec<Row<Execution>>, sqlx::Error> {
    let mut filter = "agent_id IS NOT NULL AND started_at IS NOT NULL".to_owned();
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(owner) = query.owner {
        params.push(owner.to_string().into());
        filter.push_str(&format!(" AND user_id = ${}", params.len()));
    }
    if let Some(agent_id) = query.agent_id {
        params.push(agent_id.to_string().into());
        filter.push_str(&format!(" AND agent_id = ${}", params.len()));
    }
    if let Some(cursor) = query.before {
        params.push(crate::sql::format_timestamp(cursor.started_at).into());
        params.push(cursor.id.to_string().into());
        let n = params.len();
        filter.push_str(&format!(" AND (started_at, id) < (${}, ${n})", n - 1));
    }
    state_table::select_page(
        db,
        &Selection {
            filter,
            params,
            order_by: "started_at DESC, id DESC".to_owned(),
            limit: query.limit,
            offset: 0,
        },
    )
    .await
}

/// The oldest runs no agent has taken yet, of any of `skills` (`None`: of any skill), oldest
/// first: the jobs an agent with those capabilities may claim.
pub async fn unclaimed(
    db: &Database,
    skills: Option<&[String]>,
    limit: i64,
) -> Result<Vec<Row<Execution>>, sqlx::Error> {
    let mut filter = "agent_id IS NULL AND status = 'running'".to_owned();
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(skills) = skills {
        if skills.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = skills
            .iter()
            .map(|skill| {
                params.push(skill.clone().into());
                format!("${}", params.len())
            })
            .collect();
        filter.push_str(&format!(" AND skill_name IN ({})", placeholders.join(", ")));
    } else {
        filter.push_str(" AND skill_name IS NOT NULL");
    }
    state_table::select_page(
        db,
        &Selection {
            filter,
            params,
            order_by: "started_at ASC, id ASC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}

/// Runs still `running` whose deadline is at or before `now`, oldest deadline first.
pub async fn overdue(
    db: &Database,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Row<Execution>>, sqlx::Error> {
    state_table::select_page(
        db,
        &Selection {
            filter: "status = 'running' AND deadline <= $1".to_owned(),
            params: vec![Some(now).into()],
            order_by: "deadline ASC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}
