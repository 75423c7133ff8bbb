//! The log in global order: every event of every aggregate, read from a [`Checkpoint`].
//!
//! On Postgres an identity value is taken at INSERT but becomes visible at COMMIT, so positions
//! commit out of order and a plain `global_position > checkpoint` reader skips events for good
//! (see `notes/event-log-ordering.md`). [`LogReader::read_after`] returns only events whose
//! transaction is older than every transaction still running
//! (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`), ordered and checkpointed by
//! `(transaction_id, global_position)`: any event that becomes visible later has a larger
//! transaction id than everything already read, so nothing is ever skipped. On SQLite there is
//! one writer and `global_position` is assigned in commit order, so it is read by position alone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgExecutor, Row, SqliteExecutor};

use crate::checkpoint::Checkpoint;
use crate::db::{Database, StoreTx};
use crate::error::StoreError;

/// One stored event with its place in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// `global_position`: unique, increasing in insertion order (gaps on Postgres).
    pub position: i64,
    /// The writing transaction's id on Postgres; 0 on SQLite.
    pub transaction_id: i64,
    /// The aggregate's type (`Aggregate::TYPE`).
    pub aggregate_type: String,
    /// The aggregate instance's id.
    pub aggregate_id: String,
    /// The event's number within its aggregate instance, from 1.
    pub sequence: i64,
    /// The event's type (`DomainEvent::event_type`).
    pub event_type: String,
    /// The event's schema version (`DomainEvent::event_version`).
    pub event_version: String,
    /// The serialized event as stored (not upcast).
    pub payload: serde_json::Value,
    /// The event's metadata (a string-to-string object, see [`crate::EventMetadata`]).
    pub metadata: serde_json::Value,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
    /// The hash chain link, `None` until the chainer has reached this event.
    pub hash: Option<String>,
}

impl RecordedEvent {
    /// The checkpoint a consumer saves after processing this event.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// Size and head of the log, for lag and health reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Number of events in the log.
    pub events: i64,
    /// The largest `global_position` (0 when empty).
    pub last_position: i64,
    /// When the most recent event was stored.
    pub last_recorded_at: Option<DateTime<Utc>>,
}

const PG_COLUMNS: &str = "global_position, transaction_id::text::bigint AS transaction_id, \
    aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
    recorded_at, hash";
const SQLITE_COLUMNS: &str = "global_position, 0 AS transaction_id, \
    aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
    recorded_at, hash";

/// Reads the log of a [`Database`].
#[derive(Clone, Debug)]
pub struct LogReader {
    db: Database,
}

impl LogReader {
    /// A reader over `db` (shares its pool).
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Up to `limit` events after `after`, in global order, never including an event whose
    /// transaction might still be followed by an earlier-numbered commit. Save the last event's
    /// [`checkpoint`](RecordedEvent::checkpoint) and call again with it.
    pub async fn read_after(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &self.db {
            Database::Postgres(pool) => pg_read_after(pool, after, limit, true).await,
            Database::Sqlite(pool) => sqlite_read_after(pool, after, limit).await,
        }
    }

    /// Number of events, last position and time of the last event.
    pub async fn stats(&self) -> Result<LogStats, StoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                let (events, last_position, last_recorded_at): (i64, i64, Option<DateTime<Utc>>) =
                    sqlx::query_as(
                        "SELECT count(*), coalesce(max(global_position), 0), max(recorded_at) \
                         FROM events",
                    )
                    .fetch_one(pool)
                    .await?;
                Ok(LogStats {
                    events,
                    last_position,
                    last_recorded_at,
                })
            }
            Database::Sqlite(pool) => {
                let (events, last_position, last): (i64, i64, Option<String>) = sqlx::query_as(
                    "SELECT count(*), coalesce(max(global_position), 0), max(recorded_at) \
                     FROM events",
                )
                .fetch_one(pool)
                .await?;
                Ok(LogStats {
                    events,
                    last_position,
                    last_recorded_at: last.as_deref().map(parse_timestamp).transpose()?,
                })
            }
        }
    }

    /// Number of committed events a consumer at `after` has not read yet (its lag), including
    /// those [`read_after`](Self::read_after) still holds back behind a running transaction.
    pub async fn count_after(&self, after: Checkpoint) -> Result<i64, StoreError> {
        Ok(match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM events \
                     WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                )
                .bind(after.transaction_id)
                .bind(after.position)
                .fetch_one(pool)
                .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position > ?")
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// Up to `limit` events of one aggregate instance with a sequence above `after_sequence`,
    /// by sequence: for history endpoints and rebuilding an entity as of a time.
    pub async fn aggregate_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {PG_COLUMNS} FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
                     ORDER BY sequence LIMIT $4"
                ))
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(after_sequence)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(pg_event).collect()
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {SQLITE_COLUMNS} FROM events \
                     WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ? \
                     ORDER BY sequence LIMIT ?"
                ))
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(after_sequence)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(sqlite_event).collect()
            }
        }
    }
}

impl StoreTx {
    /// [`LogReader::read_after`] inside this transaction: a consumer that holds its checkpoint
    /// with [`lock_checkpoint`](StoreTx::lock_checkpoint) reads, applies and saves in one
    /// transaction.
    pub async fn read_after(
        &mut self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            Self::Postgres(tx) => pg_read_after(&mut **tx, after, limit, true).await,
            Self::Sqlite(tx) => sqlite_read_after(&mut **tx, after, limit).await,
        }
    }

    /// Every visible event after `after` in global order, including those of transactions
    /// newer than the oldest running one: for walking the whole log (verification), not for
    /// checkpointed consumers.
    pub(crate) async fn read_visible_after(
        &mut self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            Self::Postgres(tx) => pg_read_after(&mut **tx, after, limit, false).await,
            Self::Sqlite(tx) => sqlite_read_after(&mut **tx, after, limit).await,
        }
    }
}

async fn pg_read_after<'e>(
    executor: impl PgExecutor<'e>,
    after: Checkpoint,
    limit: i64,
    settled_only: bool,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let settled = if settled_only {
        "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
    } else {
        ""
    };
    // `events.` in ORDER BY: unqualified, `transaction_id` would name the bigint output column
    // and the sort could not use the (transaction_id, global_position) index.
    let rows = sqlx::query(&format!(
        "SELECT {PG_COLUMNS} FROM events \
         WHERE (transaction_id, global_position) > ($1::text::xid8, $2) {settled} \
         ORDER BY events.transaction_id, events.global_position LIMIT $3"
    ))
    .bind(after.transaction_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(pg_event).collect()
}

async fn sqlite_read_after<'e>(
    executor: impl SqliteExecutor<'e>,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SQLITE_COLUMNS} FROM events WHERE global_position > ? \
         ORDER BY global_position LIMIT ?"
    ))
    .bind(after.position)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(sqlite_event).collect()
}

fn pg_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
    })
}

fn sqlite_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let recorded_at: String = row.try_get("recorded_at")?;
    Ok(RecordedEvent {
        position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: parse_timestamp(&recorded_at)?,
        hash: row.try_get("hash")?,
    })
}

/// Parses an RFC 3339 timestamp as stored by SQLite.
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Timestamp(text.to_string()))
}
