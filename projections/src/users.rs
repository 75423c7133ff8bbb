//! The `users` read model: accounts with their live sessions, looked up by id (every
//! authenticated request checks its session here) and by username (login).

use sparc_domain::user::{Role, User};
use sparc_store::Database;
use uuid::Uuid;

use crate::sql::SqlValue;
use crate::state_table::{self, Indexed, Row, Selection};

impl Indexed for User {
    const TABLE: &'static str = "users";
    const COLUMNS: &'static [&'static str] = &["username_key", "email_key", "role", "is_active"];

    fn columns(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(self.username.as_ref().map(|u| u.as_str().to_lowercase())),
            SqlValue::Text(self.email.as_ref().map(|e| e.as_str().to_lowercase())),
            SqlValue::Text(Some(self.role.as_str().to_owned())),
            self.is_active.into(),
        ]
    }
}

/// One user by id.
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Row<User>>, sqlx::Error> {
    state_table::get(db, &id.to_string()).await
}

/// One user by username, case-insensitively.
pub async fn by_username(db: &Database, username: &str) -> Result<Option<Row<User>>, sqlx::Error> {
    let (mut rows, _) = state_table::select(
        db,
        &Selection {
            filter: "username_key = $1".to_owned(),
            params: vec![username.to_lowercase().into()],
            order_by: "id".to_owned(),
            limit: 1,
            offset: 0,
        },
    )
    .await?;
    Ok(rows.pop())
}

/// What the account list asks for.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Only this role.
    pub role: Option<Role>,
    /// Only active or only deactivated accounts.
    pub is_active: Option<bool>,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// A page of accounts ordered by username, and the total matching.
pub async fn list(db: &Database, query: &UserQuery) -> Result<(Vec<Row<User>>, i64), sqlx::Error> {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Some(role) = query.role {
        params.push(SqlValue::from(role.as_str().to_owned()));
        conditions.push(format!("role = ${}", params.len()));
    }
    if let Some(active) = query.is_active {
        params.push(SqlValue::from(active));
        conditions.push(format!("is_active = ${}", params.len()));
    }
    state_table::select(
        db,
        &Selection {
            filter: conditions.join(" AND "),
            params,
            order_by: "username_key ASC, id ASC".to_owned(),
            limit: query.limit,
            offset: query.offset,
        },
    )
    .await
}
