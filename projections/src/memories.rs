//! The `memories` read model: every entry of the agents' memory, for the memory endpoints. It is
//! the fallback of the Memory MCP server and always complete, since every store is an event.
//!
//! Full-text search ranks on each backend's own engine: PostgreSQL `tsvector`/`tsquery` with
//! `ts_rank_cd` (an expression GIN index), SQLite FTS5 with `bm25` (the `memories_fts` table,
//! kept by triggers). Both match any of the query's words and scale the rank into 0..1.

use sparc_domain::memory::{Intent, Memory};
use sparc_store::{Database, on_backend};
use uuid::Uuid;

use crate::sql::{SqlValue, bind_all};
use crate::state_table::{self, Indexed, Row, Selection};

impl Indexed for Memory {
    const TABLE: &'static str = "memories";
    const COLUMNS: &'static [&'static str] = &[
        "user_id",
        "agent_id",
        "task_id",
        "project_id",
        "intent",
        "created_at",
        "synced",
        "search_text",
    ];

    fn columns(&self) -> Vec<SqlValue> {
        let entry = self.entry.as_ref();
        let id = |id: Option<Uuid>| SqlValue::Text(id.map(|id| id.to_string()));
        vec![
            id(entry.map(|e| e.user_id)),
            id(entry.and_then(|e| e.agent_id)),
            id(entry.and_then(|e| e.task_id)),
            id(entry.and_then(|e| e.project_id)),
            SqlValue::Text(entry.map(|e| e.intent.as_str().to_owned())),
            self.created_at.into(),
            self.synced.into(),
            SqlValue::Text(Some(
                entry.map_or_else(String::new, |e| format!("{} {}", e.content, e.intent)),
            )),
        ]
    }
}

/// Whose entries a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every entry (admins and auditors).
    Everyone,
    /// The entries of this user.
    Owner(Uuid),
}

/// What a search or listing is narrowed to.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// Whose entries.
    pub reach: Reach,
    /// Only this project's.
    pub project_id: Option<Uuid>,
    /// Only this intent.
    pub intent: Option<Intent>,
}

impl Scope {
    /// The conditions on columns of the table aliased `alias` and their parameters, numbered
    /// from `$first`.
    fn conditions(&self, alias: &str, first: usize) -> (Vec<String>, Vec<SqlValue>) {
        let mut conditions = Vec::new();
        let mut params: Vec<SqlValue> = Vec::new();
        let mut add = |column: &str, value: String| {
            params.push(value.into());
            conditions.push(format!("{alias}{column} = ${}", first + params.len() - 1));
        };
        if let Reach::Owner(user) = self.reach {
            add("user_id", user.to_string());
        }
        if let Some(project) = self.project_id {
            add("project_id", project.to_string());
        }
        if let Some(intent) = self.intent {
            add("intent", intent.as_str().to_owned());
        }
        (conditions, params)
    }
}

/// The entries with these ids that `reach` sees, in no particular order.
pub async fn by_ids(
    db: &Database,
    ids: &[Uuid],
    reach: Reach,
) -> Result<Vec<Row<Memory>>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut params: Vec<SqlValue> = ids.iter().map(|id| id.to_string().into()).collect();
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let mut filter = format!("id IN ({})", placeholders.join(", "));
    if let Reach::Owner(user) = reach {
        params.push(user.to_string().into());
        filter.push_str(&format!(" AND user_id = ${}", params.len()));
    }
    let (rows, _) = state_table::select(
        db,
        &Selection {
            filter,
            params,
            order_by: "created_at DESC, id DESC".to_owned(),
            limit: ids.len() as i64,
            offset: 0,
        },
    )
    .await?;
    Ok(rows)
}

/// A search hit: the entry and its rank scaled into 0..1.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// The entry.
    pub row: Row<Memory>,
    /// Its rank, 0..1, higher is better.
    pub score: f64,
}

/// The words of a query that full-text search looks for: letters and digits, lowercased,
/// at most 32 of them. Anything else is a separator, so no query can be an engine operator.
fn words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.dedup();
    words.truncate(32);
    words
}

/// Full-text search: the `limit` best entries in `scope` matching any word of `query`, best
/// first (ties: newest first).
pub async fn search(
    db: &Database,
    query: &str,
    scope: Scope,
    limit: i64,
) -> Result<Vec<Ranked>, sqlx::Error> {
    let words = words(query);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String, f64)> = match db {
        Database::Postgres(pool) => {
            // Any word: one `plainto_tsquery` per word (stemmed, stop words dropped, never a
            // syntax error whatever the text), joined with `||`. `ts_rank_cd` normalization 32
            // scales the rank into 0..1.
            let query = (1..=words.len())
                .map(|i| format!("plainto_tsquery('english', ${i})"))
                .collect::<Vec<_>>()
                .join(" || ");
            let (conditions, mut params) = scope.conditions("m.", words.len() + 1);
            let filter: String = conditions.iter().map(|c| format!(" AND {c}")).collect();
            let sql = format!(
                "SELECT m.version, m.body, \
                 ts_rank_cd(to_tsvector('english', m.search_text), q.query, 32)::float8 AS rank \
                 FROM memories m, (SELECT {query} AS query) q \
                 WHERE to_tsvector('english', m.search_text) @@ q.query{filter} \
                 ORDER BY rank DESC, m.created_at DESC, m.id DESC LIMIT ${}",
                words.len() + params.len() + 1
            );
            let mut all: Vec<SqlValue> = words.iter().cloned().map(SqlValue::from).collect();
            all.append(&mut params);
            all.push(SqlValue::Int(Some(limit)));
            bind_all!(sqlx::query_as(&sql), &all)
                .fetch_all(pool)
                .await?
        }
        Database::Sqlite(pool) => {
            // Each word quoted (a phrase of one word), joined with OR; bm25 is lower for better
            // matches and at most 0, so -bm25 / (1 - bm25) is in 0..1, higher for better.
            let matched: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
            let (conditions, mut params) = scope.conditions("m.", 2);
            let filter: String = conditions.iter().map(|c| format!(" AND {c}")).collect();
            let sql = format!(
                "SELECT m.version, m.body, -bm25(memories_fts) / (1.0 - bm25(memories_fts)) AS rank \
                 FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid \
                 WHERE memories_fts MATCH $1{filter} \
                 ORDER BY bm25(memories_fts), m.created_at DESC, m.id DESC LIMIT ${}",
                params.len() + 2
            );
            let mut all: Vec<SqlValue> = vec![matched.join(" OR ").into()];
            all.append(&mut params);
            all.push(SqlValue::Int(Some(limit)));
            bind_all!(sqlx::query_as(&sql), &all)
                .fetch_all(pool)
                .await?
        }
    };
    rows.into_iter()
        .map(|(version, body, rank)| {
            Ok(Ranked {
                row: Row {
                    state: sparc_store::json::parse_as(&body)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    version,
                },
                score: rank.clamp(0.0, 1.0),
            })
        })
        .collect()
}

/// The newest `limit` entries of a task that `reach` sees.
pub async fn of_task(
    db: &Database,
    task_id: Uuid,
    reach: Reach,
    limit: i64,
) -> Result<(Vec<Row<Memory>>, i64), sqlx::Error> {
    let mut params: Vec<SqlValue> = vec![task_id.to_string().into()];
    let mut filter = "task_id = $1".to_owned();
    if let Reach::Owner(user) = reach {
        params.push(user.to_string().into());
        filter.push_str(" AND user_id = $2");
    }
    state_table::select(
        db,
        &Selection {
            filter,
            params,
            order_by: "created_at DESC, id DESC".to_owned(),
            limit,
            offset: 0,
        },
    )
    .await
}

/// The other tasks of a project that have entries `reach` sees, with how many each has, most
/// first, at most `limit`.
pub async fn tasks_of_project(
    db: &Database,
    project_id: Uuid,
    except_task: Uuid,
    reach: Reach,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let scope = Scope {
        reach,
        project_id: Some(project_id),
        intent: None,
    };
    let (conditions, mut params) = scope.conditions("m.", 2);
    params.push(SqlValue::Int(Some(limit)));
    let sql = format!(
        "SELECT m.task_id, COUNT(*) FROM memories m \
         WHERE m.task_id IS NOT NULL AND m.task_id <> $1 AND {} \
         GROUP BY m.task_id ORDER BY COUNT(*) DESC, m.task_id LIMIT ${}",
        conditions.join(" AND "),
        params.len() + 1
    );
    let rows: Vec<(String, i64)> = on_backend!(Database db, pool => bind_all!(
        sqlx::query_as(&sql).bind(except_task.to_string()),
        &params
    )
    .fetch_all(pool)
    .await?);
    Ok(rows
        .into_iter()
        .filter_map(|(id, count)| Some((id.parse().ok()?, count)))
        .collect())
}

/// A project's entries at a glance.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// How many entries.
    pub total: i64,
    /// How many per intent.
    pub by_intent: Vec<(String, i64)>,
    /// How many per agent (entries no agent wrote are under `None`).
    pub by_agent: Vec<(Option<String>, i64)>,
    /// The newest ten.
    pub recent: Vec<Row<Memory>>,
}

/// The summary of a project's entries that `reach` sees.
pub async fn summary(
    db: &Database,
    project_id: Uuid,
    reach: Reach,
) -> Result<Summary, sqlx::Error> {
    let scope = Scope {
        reach,
        project_id: Some(project_id),
        intent: None,
    };
    let (conditions, params) = scope.conditions("", 1);
    let filter = conditions.join(" AND ");
    let by_intent_sql = format!(
        "SELECT intent, COUNT(*) FROM memories WHERE {filter} GROUP BY intent ORDER BY intent"
    );
    let by_intent: Vec<(Option<String>, i64)> = on_backend!(Database db, pool => bind_all!(sqlx::query_as(&by_intent_sql), &params).fetch_all(pool).await?);
    let by_agent_sql = format!(
        "SELECT agent_id, COUNT(*) FROM memories WHERE {filter} GROUP BY agent_id ORDER BY agent_id"
    );
    let by_agent: Vec<(Option<String>, i64)> = on_backend!(Database db, pool => bind_all!(sqlx::query_as(&by_agent_sql), &params).fetch_all(pool).await?);
    let (recent, total) = state_table::select(
        db,
        &Selection {
            filter,
            params,
            order_by: "created_at DESC, id DESC".to_owned(),
            limit: 10,
            offset: 0,
        },
    )
    .await?;
    Ok(Summary {
        total,
        by_intent: by_intent
            .into_iter()
            .filter_map(|(intent, n)| Some((intent?, n)))
            .collect(),
        by_agent,
        recent,
    })
}

/// How many entries the Memory MCP server does not hold yet.
pub async fn pending_sync(db: &Database) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM memories WHERE synced = 0";
    Ok(on_backend!(Database db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_letters_and_digits_only() {
        assert_eq!(
            words("Axum \"extractors\" OR NEAR(x) -- 42!"),
            vec!["axum", "extractors", "or", "near", "x", "42"]
        );
        assert!(words("\"*:()").is_empty());
    }
}
