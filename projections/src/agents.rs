//! The `agents` read model: the shared registry. Capabilities are kept as `,a,b,` text so an
//! any-of filter is a substring match (`LIKE` on Postgres, `GLOB` on SQLite, each served by a
//! trigram index) applied before paging.

use sparc_domain::agent::{Agent, AgentStatus, AgentType};
use sparc_store::Database;
use uuid::Uuid;

use crate::sql::SqlValue;
use crate::state_table::{self, Indexed, Row, Selection, StatusFilter, Tally, Total};

impl Indexed for Agent {
    const TABLE: &'static str = "agents";
    const COLUMNS: &'static [&'static str] = &[
        "name_key",
        "agent_type",
        "status",
        "registered",
        "capabilities_key",
        "last_active_at",
        "created_at",
        "registered_by",
    ];

    fn columns(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(self.name.as_ref().map(|n| n.as_str().to_lowercase())),
            SqlValue::Text(Some(self.agent_type.as_str().to_owned())),
            SqlValue::Text(Some(self.status.as_str().to_owned())),
            self.registered.into(),
            SqlValue::Text(Some(format!(",{},", self.capabilities.join(",")))),
            self.last_active_at.into(),
            self.created_at.into(),
            SqlValue::Text(self.registered_by.map(|user| user.to_string())),
        ]
    }

    const PUBLISHED: bool = true;

    /// The registry is shared: counted only in the all-seeing cells, by type and status.
    fn tally(&self) -> Option<Tally> {
        self.registered.then(|| Tally {
            owner: None,
            group: Some(self.agent_type.as_str().to_owned()),
            status: self.status.as_str(),
        })
    }
}

/// What the agent list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AgentQuery {
    /// Only this type.
    pub agent_type: Option<AgentType>,
    /// Only this status.
    pub status: Option<AgentStatus>,
    /// Agents with any of these capabilities.
    pub capabilities: Vec<String>,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// The names of the agents `ids` (those that have one), in one query.
pub async fn names_of(
    db: &Database,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let rows: Vec<Row<Agent>> = state_table::select_page(
        db,
        &Selection {
            filter: format!("id IN ({})", placeholders.join(", ")),
            params: ids.iter().map(|id| id.to_string().into()).collect(),
            order_by: "id".to_owned(),
            limit: ids.len() as i64,
            offset: 0,
        },
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((row.state.id, row.state.name?.as_str().to_owned())))
        .collect())
}

/// One agent by id (deregistered ones too; callers decide).
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Row<Agent>>, sqlx::Error> {
    state_table::get(db, &id.to_string()).await
}

/// The agents `user` registered that are still registered, counted no further than `up_to`,
/// for the per-user quota (agents registered before registrars were recorded count for no
/// one). It reads the `agents_registrar_live` partial index, which holds exactly those rows.
pub async fn registered_count_of(
    db: &Database,
    user: Uuid,
    up_to: i64,
) -> Result<i64, sqlx::Error> {
    state_table::count_up_to::<Agent>(
        db,
        "registered_by = $1 AND registered = 1",
        &[user.to_string().into()],
        up_to,
    )
    .await
}

/// The `LIKE` pattern matching `capability` as one whole, literal entry of `capabilities_key`:
/// `%`, `_` and `\` are escaped (a capability may contain them), not dropped.
fn capability_pattern(capability: &str) -> String {
    let mut pattern = String::with_capacity(capability.len() + 4);
    pattern.push_str("%,");
    for c in capability.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(",%");
    pattern
}

/// A page of registered agents, most recently active first, and the total matching (from the
/// counts, unless narrowed to capabilities).
pub async fn list(
    db: &Database,
    query: &AgentQuery,
) -> Result<(Vec<Row<Agent>>, i64), sqlx::Error> {
    let mut conditions = vec!["registered = 1".to_owned()];
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(agent_type) = query.agent_type {
        params.push(agent_type.as_str().to_owned().into());
        conditions.push(format!("agent_type = ${}", params.len()));
    }
    if let Some(status) = query.status {
        params.push(status.as_str().to_owned().into());
        conditions.push(format!("status = ${}", params.len()));
    }
    if !query.capabilities.is_empty() {
        // Each backend's substring index: a trigram GIN index serves LIKE on Postgres, the
        // `agents_capabilities` trigram table serves GLOB on SQLite.
        let mut any = Vec::new();
        for capability in &query.capabilities {
            match db {
                Database::Postgres(_) => {
                    params.push(capability_pattern(capability).into());
                    any.push(format!(
                        "capabilities_key LIKE ${} ESCAPE '\\'",
                        params.len()
                    ));
                }
                Database::Sqlite(_) => {
                    params.push(crate::sql::glob_pattern(&format!(",{capability},")).into());
                    any.push(format!(
                        "SELECT rowid FROM agents_capabilities WHERE capabilities_key GLOB ${}",
                        params.len()
                    ));
                }
            }
        }
        conditions.push(match db {
            Database::Postgres(_) => format!("({})", any.join(" OR ")),
            Database::Sqlite(_) => format!("rowid IN ({})", any.join(" UNION ")),
        });
    }
    let total = if query.capabilities.is_empty() {
        Total::Counted {
            owner: None,
            group: query.agent_type.map(|t| t.as_str().to_owned()),
            status: query
                .status
                .map_or(StatusFilter::Any, |s| StatusFilter::Only(s.as_str())),
        }
    } else {
        Total::Rows
    };
    state_table::select_with_total(
        db,
        &Selection {
            filter: conditions.join(" AND "),
            params,
            order_by: "last_active_at IS NULL, last_active_at DESC, created_at DESC, id DESC"
                .to_owned(),
            limit: query.limit,
            offset: query.offset,
        },
        &total,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::capability_pattern;

    #[test]
    fn a_capability_is_matched_whole_and_literally() {
        assert_eq!(capability_pattern("c_sharp"), "%,c\\_sharp,%");
        assert_eq!(capability_pattern("100%"), "%,100\\%,%");
        assert_eq!(capability_pattern("a\\b"), "%,a\\\\b,%");
    }
}
