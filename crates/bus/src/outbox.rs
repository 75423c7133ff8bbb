//! Reading published changes back from the `outbox` table, by `event_id` (`published_seq`):
//! what a gateway replays to a client that reconnects with `last_event_id`, and how it fills a
//! gap the bus left. Rows are numbered (and so become readable here) before they are
//! published, so anything a gateway has received is also readable here.

use serde_json::value::RawValue;
use sparc_store::outbox::{LAST_NUMBERED, NumberedChange};
use sparc_store::{Database, on_backend};
use uuid::Uuid;

use crate::change::{Change, ChangeKind};

/// Whose changes a reader may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Every change (admins and auditors).
    Everything,
    /// The user's own changes and those every signed-in user may see (agents).
    User(Uuid),
}

impl Visibility {
    /// Whether a change for `audience` is visible.
    pub fn sees(&self, audience: Option<Uuid>) -> bool {
        match (self, audience) {
            (Self::Everything, _) | (Self::User(_), None) => true,
            (Self::User(user), Some(owner)) => *user == owner,
        }
    }
}

/// How much of the change history the outbox still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retained {
    /// Changes up to this event id were deleted (beyond retention); 0 if none were.
    pub pruned_through: i64,
    /// The last numbered event id (0 when there is none).
    pub head: i64,
}

/// The size of a replay ([`Outbox::size_between`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaySize {
    /// Changes.
    pub changes: i64,
    /// Bytes of the changed resources (as stored: compact JSON), which the frames carry.
    pub bytes: i64,
}

/// Why the outbox could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A row does not make a change (unknown kind, bad audience or state).
    #[error("outbox row {event_id} is unreadable: {reason}")]
    Corrupt {
        /// The row's event id.
        event_id: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads published changes from the outbox of a [`Database`].
#[derive(Clone, Debug)]
pub struct Outbox {
    db: Database,
}

/// The columns of a numbered row, in [`ChangeRow`] order.
pub(crate) const CHANGE_COLUMNS: &str =
    "published_seq, kind, aggregate_id, audience, version, event_type, state, recorded_at";

/// A numbered outbox row as read by `sqlx` on either backend.
pub(crate) type ChangeRow = (
    i64,
    String,
    String,
    Option<String>,
    i64,
    String,
    String,
    String,
);

/// Turns a row the read-model loop numbered (and handed over in process) into its change.
pub(crate) fn from_numbered(row: NumberedChange) -> Result<Change, OutboxError> {
    to_change((
        row.event_id,
        row.kind,
        row.aggregate_id,
        row.audience,
        row.version,
        row.event_type,
        row.state,
        row.recorded_at,
    ))
}

/// Turns a numbered row into the change it records.
pub(crate) fn to_change(row: ChangeRow) -> Result<Change, OutboxError> {
    let (event_id, kind, aggregate_id, audience, version, event_type, state, recorded_at) = row;
    let corrupt = |reason: String| OutboxError::Corrupt { event_id, reason };
    let kind = ChangeKind::from_read_model(&kind)
        .ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?;
    let audience = audience
        .map(|a| Uuid::parse_str(&a))
        .transpose()
        .map_err(|e| corrupt(format!("audience: {e}")))?;
    let state = RawValue::from_string(state).map_err(|e| corrupt(format!("state: {e}")))?;
    Ok(Change {
        event_id,
        kind,
        aggregate_id,
        audience,
        version,
        event_type,
        recorded_at,
        state,
    })
}

impl Outbox {
    /// A reader over `db` (shares its pool).
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// The last numbered event id and the retention boundary.
    pub async fn retained(&self) -> Result<Retained, OutboxError> {
        let sql = format!(
            "SELECT {LAST_NUMBERED}, \
             coalesce((SELECT pruned_seq FROM outbox_relay WHERE name = 'relay'), 0)"
        );
        let (head, pruned_through): (i64, i64) = on_backend!(Database &self.db, pool => {
            sqlx::query_as(&sql).fetch_one(pool).await?
        });
        Ok(Retained {
            pruned_through,
            head,
        })
    }

    /// How many changes `visibility` sees with an event id in `(after, through]`, and the bytes
    /// of their resources, over at most `cap` changes (a replay larger than its cap is not worth
    /// measuring to the end).
    pub async fn size_between(
        &self,
        visibility: Visibility,
        after: i64,
        through: i64,
        cap: i64,
    ) -> Result<ReplaySize, OutboxError> {
        let (filter, user) = audience_filter(visibility);
        let bytes = match self.db {
            Database::Postgres(_) => "octet_length(state)",
            Database::Sqlite(_) => "length(CAST(state AS BLOB))",
        };
        let sql = format!(
            "SELECT count(*), coalesce(sum(size), 0) FROM (SELECT {bytes} AS size FROM outbox \
             WHERE published_seq > $1 AND published_seq <= $2 {filter} LIMIT $4) AS capped"
        );
        let (changes, bytes): (i64, i64) = on_backend!(Database &self.db, pool => {
            sqlx::query_as(&sql)
                .bind(after)
                .bind(through)
                .bind(user)
                .bind(cap)
                .fetch_one(pool)
                .await?
        });
        Ok(ReplaySize { changes, bytes })
    }

    /// Up to `limit` changes `visibility` sees with an event id in `(after, through]`, in
    /// event order.
    pub async fn between(
        &self,
        visibility: Visibility,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<Change>, OutboxError> {
        let (filter, user) = audience_filter(visibility);
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM outbox \
             WHERE published_seq > $1 AND published_seq <= $2 {filter} \
             ORDER BY published_seq LIMIT $4"
        );
        let rows: Vec<ChangeRow> = on_backend!(Database &self.db, pool => {
            sqlx::query_as(&sql)
                .bind(after)
                .bind(through)
                .bind(user)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(to_change).collect()
    }
}

/// The extra condition (using `$3`) that keeps the changes `visibility` sees, and its value.
fn audience_filter(visibility: Visibility) -> (&'static str, Option<String>) {
    match visibility {
        // `$3 IS NULL` keeps the parameter numbering the same for both shapes.
        Visibility::Everything => ("AND $3 IS NULL", None),
        Visibility::User(user) => (
            "AND (audience = $3 OR audience IS NULL)",
            Some(user.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_see_their_own_and_shared_changes_and_admins_everything() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        assert!(Visibility::User(me).sees(Some(me)));
        assert!(Visibility::User(me).sees(None));
        assert!(!Visibility::User(me).sees(Some(other)));
        assert!(Visibility::Everything.sees(Some(other)));
    }

    #[test]
    fn a_row_of_an_unknown_kind_is_reported_not_guessed() {
        let row: ChangeRow = (
            3,
            "users".into(),
            "x".into(),
            None,
            1,
            "E".into(),
            "{}".into(),
            "t".into(),
        );
        assert!(matches!(
            to_change(row),
            Err(OutboxError::Corrupt { event_id: 3, .. })
        ));
    }
}
