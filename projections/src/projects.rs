//! The `projects` read model: project states with lower-cased name and description for
//! case-insensitive search. `tasks_count` is the sum of the tasks read model's counts for the
//! project (`list_counts`, written with the task rows), so it is always consistent with the
//! task list.

use sparc_domain::project::{Project, ProjectStatus};
use sparc_store::{Database, on_backend};
use uuid::Uuid;

use crate::sql::SqlValue;
use crate::state_table::{self, Indexed, Row, Selection, StatusFilter, Tally, Total};

impl Indexed for Project {
    const TABLE: &'static str = "projects";
    const COLUMNS: &'static [&'static str] = &[
        "user_id",
        "status",
        "name_key",
        "description_key",
        "created_at",
        "updated_at",
    ];

    fn columns(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(Some(self.user_id.to_string())),
            SqlValue::Text(Some(self.status.as_str().to_owned())),
            SqlValue::Text(self.name.as_ref().map(|n| n.as_str().to_lowercase())),
            SqlValue::Text(self.description.as_ref().map(|d| d.to_lowercase())),
            self.created_at.into(),
            self.updated_at.into(),
        ]
    }

    const PUBLISHED: bool = true;

    fn audience(&self) -> Option<Uuid> {
        Some(self.user_id)
    }

    fn tally(&self) -> Option<Tally> {
        Some(Tally {
            owner: Some(self.user_id),
            group: None,
            status: self.status.as_str(),
        })
    }
}

/// The orders the project list offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProjectSort {
    /// By creation time.
    #[default]
    CreatedAt,
    /// By name, case-insensitively.
    Name,
    /// By number of live tasks.
    TasksCount,
}

/// What the project list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProjectQuery {
    /// Only this owner's (`None`: everyone's).
    pub owner: Option<Uuid>,
    /// Case-insensitive text in the name or description.
    pub search: Option<String>,
    /// Only this status (deleted projects are always left out).
    pub status: Option<ProjectStatus>,
    /// Order.
    pub sort: ProjectSort,
    /// Descending instead of ascending.
    pub descending: bool,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// A project's live tasks, from the tasks' counts (a few cells per project, not its rows).
const TASKS_COUNT: &str = "(SELECT COALESCE(SUM(n), 0) FROM list_counts \
    WHERE read_model = 'tasks' AND owner = '*' AND grp = projects.id AND status <> 'deleted')";

/// One project by id.
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Row<Project>>, sqlx::Error> {
    state_table::get(db, &id.to_string()).await
}

/// Escapes `%`, `_` and `\` so user text matches literally in `LIKE … ESCAPE '\'`.
fn like_pattern(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    escaped.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// A page of projects and the total matching (from the counts, unless searched).
pub async fn list(
    db: &Database,
    query: &ProjectQuery,
) -> Result<(Vec<Row<Project>>, i64), sqlx::Error> {
    let mut conditions = vec!["status <> 'deleted'".to_owned()];
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(owner) = query.owner {
        params.push(owner.to_string().into());
        conditions.push(format!("user_id = ${}", params.len()));
    }
    if let Some(status) = query.status {
        params.push(status.as_str().to_owned().into());
        conditions.push(format!("status = ${}", params.len()));
    }
    if let Some(search) = query.search.as_deref().filter(|s| !s.is_empty()) {
        // Each backend's substring index: trigram GIN indexes serve LIKE on Postgres, the
        // `projects_search` trigram table serves GLOB on SQLite.
        let condition = match db {
            Database::Postgres(_) => {
                params.push(like_pattern(search).into());
                let p = params.len();
                format!("(name_key LIKE ${p} ESCAPE '\\' OR description_key LIKE ${p} ESCAPE '\\')")
            }
            Database::Sqlite(_) => {
                params.push(crate::sql::glob_pattern(&search.to_lowercase()).into());
                let p = params.len();
                format!(
                    "rowid IN (SELECT rowid FROM projects_search WHERE name_key GLOB ${p} \
                     UNION SELECT rowid FROM projects_search WHERE description_key GLOB ${p})"
                )
            }
        };
        conditions.push(condition);
    }
    let column = match query.sort {
        ProjectSort::CreatedAt => "created_at",
        ProjectSort::Name => "name_key",
        ProjectSort::TasksCount => TASKS_COUNT,
    };
    let direction = if query.descending { "DESC" } else { "ASC" };
    let total = match query.search.as_deref().filter(|s| !s.is_empty()) {
        Some(_) => Total::Rows,
        None => Total::Counted {
            owner: query.owner,
            group: None,
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
            order_by: format!("{column} {direction}, id {direction}"),
            limit: query.limit,
            offset: query.offset,
        },
        &total,
    )
    .await
}

/// The live (not deleted) projects `owner` has, counted no further than `up_to`, for the
/// per-user quota. It reads the `projects_owner_live` partial index, which holds exactly those
/// rows.
pub async fn live_count_of(db: &Database, owner: Uuid, up_to: i64) -> Result<i64, sqlx::Error> {
    state_table::count_up_to::<Project>(
        db,
        "user_id = $1 AND status <> 'deleted'",
        &[owner.to_string().into()],
        up_to,
    )
    .await
}

/// The number of live tasks of each of `ids`.
pub async fn tasks_counts(
    db: &Database,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, i64>, sqlx::Error> {
    let mut counts = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(counts);
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT grp, CAST(SUM(n) AS BIGINT) FROM list_counts \
         WHERE read_model = 'tasks' AND owner = '*' AND status <> 'deleted' AND grp IN ({}) \
         GROUP BY grp",
        placeholders.join(", ")
    );
    let rows: Vec<(String, i64)> = on_backend!(Database db, pool => {
        let mut q = sqlx::query_as(&sql);
        for id in ids {
            q = q.bind(id.to_string());
        }
        q.fetch_all(pool).await?
    });
    for (id, count) in rows {
        if let Ok(id) = id.parse() {
            counts.insert(id, count);
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_text_is_matched_literally_and_case_insensitively() {
        assert_eq!(like_pattern("Ab%_c"), "%ab\\%\\_c%");
    }
}
