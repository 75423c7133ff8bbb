//! The `tasks` read model: task states with the columns the task list filters and sorts on,
//! and the due-task index the scheduler scans.

use sparc_domain::task::{Task, TaskStatus};
use sparc_store::Database;
use uuid::Uuid;

use crate::sql::SqlValue;
use crate::state_table::{self, Indexed, Row, Selection, StatusFilter, Tally, Total};

impl Indexed for Task {
    const TABLE: &'static str = "tasks";
    const COLUMNS: &'static [&'static str] = &[
        "user_id",
        "project_id",
        "status",
        "skill_name",
        "created_at",
        "updated_at",
        "next_run_at",
    ];

    fn columns(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(Some(self.user_id.to_string())),
            SqlValue::Text(self.project_id.map(|p| p.to_string())),
            SqlValue::Text(Some(self.status.as_str().to_owned())),
            SqlValue::Text(self.skill_name.as_ref().map(|s| s.as_str().to_owned())),
            self.created_at.into(),
            self.updated_at.into(),
            self.next_run_at.into(),
        ]
    }

    const PUBLISHED: bool = true;

    fn audience(&self) -> Option<Uuid> {
        Some(self.user_id)
    }

    fn tally(&self) -> Option<Tally> {
        Some(Tally {
            owner: Some(self.user_id),
            group: self.project_id.map(|project| project.to_string()),
            status: self.status.as_str(),
        })
    }
}

/// The orders the task list offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TaskSort {
    /// By creation time (the default).
    #[default]
    CreatedAt,
    /// By next due time.
    NextRunAt,
    /// By last change.
    UpdatedAt,
    /// By status name.
    Status,
}

/// What the task list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TaskQuery {
    /// Only this owner's tasks (`None`: everyone's, for admins and auditors).
    pub owner: Option<Uuid>,
    /// Only this status; without it deleted tasks are left out.
    pub status: Option<TaskStatus>,
    /// Only this skill.
    pub skill_name: Option<String>,
    /// Only this project's.
    pub project_id: Option<Uuid>,
    /// Order.
    pub sort: TaskSort,
    /// Ascending instead of descending.
    pub ascending: bool,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// One task by id.
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Row<Task>>, sqlx::Error> {
    state_table::get(db, &id.to_string()).await
}

/// A page of tasks and the total matching (from the counts, unless narrowed to a skill).
pub async fn list(db: &Database, query: &TaskQuery) -> Result<(Vec<Row<Task>>, i64), sqlx::Error> {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let param = |value: SqlValue, params: &mut Vec<SqlValue>| {
        params.push(value);
        format!("${}", params.len())
    };
    if let Some(owner) = query.owner {
        let p = param(owner.to_string().into(), &mut params);
        conditions.push(format!("user_id = {p}"));
    }
    match query.status {
        Some(status) => {
            let p = param(status.as_str().to_owned().into(), &mut params);
            conditions.push(format!("status = {p}"));
        }
        None => conditions.push("status <> 'deleted'".to_owned()),
    }
    if let Some(skill) = &query.skill_name {
        let p = param(skill.clone().into(), &mut params);
        conditions.push(format!("skill_name = {p}"));
    }
    if let Some(project) = query.project_id {
        let p = param(project.to_string().into(), &mut params);
        conditions.push(format!("project_id = {p}"));
    }
    let column = match query.sort {
        TaskSort::CreatedAt => "created_at",
        TaskSort::NextRunAt => "next_run_at",
        TaskSort::UpdatedAt => "updated_at",
        TaskSort::Status => "status",
    };
    let direction = if query.ascending { "ASC" } else { "DESC" };
    // The id breaks ties so pages are stable. Every task has a creation time; for the columns
    // that may be NULL (no next run) the NULLs go last either way. The default order is the
    // `tasks_owner_created` index's.
    let order_by = match query.sort {
        TaskSort::CreatedAt => format!("created_at {direction}, id {direction}"),
        _ => format!("{column} IS NULL, {column} {direction}, id {direction}"),
    };
    let total = match &query.skill_name {
        Some(_) => Total::Rows,
        None => Total::Counted {
            owner: query.owner,
            group: query.project_id.map(|project| project.to_string()),
            status: query.status.map_or(StatusFilter::Except("deleted"), |s| {
                StatusFilter::Only(s.as_str())
            }),
        },
    };
    state_table::select_with_total(
        db,
        &Selection {
            filter: conditions.join(" AND "),
            params,
            order_by,
            limit: query.limit,
            offset: query.offset,
        },
        &total,
    )
    .await
}

/// The live (not deleted) tasks `owner` has, counted no further than `up_to`, for the per-user
/// quota. It reads the `tasks_owner_live` partial index, which holds exactly those rows.
pub async fn live_count_of(db: &Database, owner: Uuid, up_to: i64) -> Result<i64, sqlx::Error> {
    state_table::count_up_to::<Task>(
        db,
        "user_id = $1 AND status <> 'deleted'",
        &[owner.to_string().into()],
        up_to,
    )
    .await
}

/// The live (not deleted) tasks of a project, oldest first.
pub async fn of_project(db: &Database, project_id: Uuid) -> Result<Vec<Row<Task>>, sqlx::Error> {
    state_table::select_page(
        db,
        &Selection {
            filter: "project_id = $1 AND status <> 'deleted'".to_owned(),
            params: vec![project_id.to_string().into()],
            order_by: "created_at ASC, id ASC".to_owned(),
            limit: i64::MAX,
            offset: 0,
        },
    )
    .await
}

/// Tasks whose next run is due at `now`, earliest first: pending ones to fire and running ones
/// whose overlapping slot must be recorded as skipped.
pub async fn due(
    db: &Database,
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Vec<Row<Task>>, sqlx::Error> {
    state_table::select_page(
        db,
        &Selection {
            filter:
                "status IN ('pending', 'running') AND next_run_at IS NOT NULL AND next_run_at <= $1"
                    .to_owned(),
            params: vec![Some(now).into()],
            order_by: "next_run_at ASC, id ASC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}
