//! The log in global order: every event of every aggregate, read from a [`Checkpoint`].
//!
//! On Postgres an identity value is taken at INSERT but becomes visible at COMMIT, so positions
//! commit out of order and a plain `global_position > checkpoint` reader skips events for good
//! (one that commits after a larger position was read is behind the checkpoint already).
//! [`LogReader::read_after`] returns only events whose
//! transaction is older than every transaction still running
//! (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`), ordered and checkpointed by
//! `(transaction_id, global_position)`: any event that becomes visible later has a larger
//! transaction id than everything already read, so nothing is ever skipped. On SQLite there is
//! one writer and `global_position` is assigned in commit order, so it is read by position alone.

use std::sync::Arc;

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sparc_domain::execution::Execution;
use sparc_domain::memory::Memory;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use sparc_domain::user::User;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgExecutor, Row, SqliteExecutor};

use crate::audit::AuditFilter;
use crate::checkpoint::Checkpoint;
use crate::db::{Backend, Database, StoreTx};
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
    /// The event's metadata (a string-to-string object, see [`crate::EventMetadata`]); JSON
    /// null from a reader that leaves it out ([`LogReader::without_metadata`]).
    pub metadata: serde_json::Value,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
    /// The hash chain link, `None` until the chainer has reached this event. The consumers'
    /// reads ([`LogReader::read_after`], [`StoreTx::read_after`]) leave it out (`None`).
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

/// One event as its row holds it: payload and metadata as the stored JSON text, undecoded.
/// What the hash chain covers (the stored bytes, so no stored event can stop the chainer), and
/// what a [`RecordedEvent`] is decoded from.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// See [`RecordedEvent::position`].
    pub position: i64,
    /// See [`RecordedEvent::transaction_id`].
    pub transaction_id: i64,
    /// See [`RecordedEvent::aggregate_type`].
    pub aggregate_type: String,
    /// See [`RecordedEvent::aggregate_id`].
    pub aggregate_id: String,
    /// See [`RecordedEvent::sequence`].
    pub sequence: i64,
    /// See [`RecordedEvent::event_type`].
    pub event_type: String,
    /// See [`RecordedEvent::event_version`].
    pub event_version: String,
    /// The payload's JSON text as stored.
    pub payload: String,
    /// The metadata's JSON text as stored (`null` from a reader that leaves it out).
    pub metadata: String,
    /// See [`RecordedEvent::recorded_at`].
    pub recorded_at: DateTime<Utc>,
    /// See [`RecordedEvent::hash`].
    pub hash: Option<String>,
}

impl StoredEvent {
    /// The checkpoint a consumer saves after processing this event.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

impl From<StoredEvent> for RecordedEvent {
    /// Decodes the payload and metadata at any depth. Text that is not JSON serde reads (only
    /// a row written around the service can hold it: a number beyond `f64`, a lone surrogate)
    /// becomes JSON null, which the consumers that need the value then park as unreadable.
    fn from(stored: StoredEvent) -> Self {
        let decode = |text: &str, what: &str| {
            crate::json::parse(text).unwrap_or_else(|error| {
                tracing::warn!(position = stored.position, %error, "stored event {what} is not readable JSON");
                serde_json::Value::Null
            })
        };
        let payload = decode(&stored.payload, "payload");
        let metadata = decode(&stored.metadata, "metadata");
        RecordedEvent {
            position: stored.position,
            transaction_id: stored.transaction_id,
            aggregate_type: stored.aggregate_type,
            aggregate_id: stored.aggregate_id,
            sequence: stored.sequence,
            event_type: stored.event_type,
            event_version: stored.event_version,
            payload,
            metadata,
            recorded_at: stored.recorded_at,
            hash: stored.hash,
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

/// An event row's columns: the backend's expressions for its transaction id, its payload and
/// metadata as text (they are parsed here, at any depth: see [`crate::json`]), and its chain link.
macro_rules! event_columns {
    ($transaction_id:literal, $payload:literal, $metadata:literal, $hash:expr) => {
        concat!(
            "global_position, ",
            $transaction_id,
            " AS transaction_id, aggregate_type, aggregate_id, sequence, event_type, \
             event_version, ",
            $payload,
            " AS payload, ",
            $metadata,
            " AS metadata, recorded_at, ",
            $hash,
            " AS hash"
        )
    };
}

/// The chain link of the row's event (`event_hashes`, NULL until chained): one index probe per
/// row returned.
macro_rules! chain_link {
    () => {
        "(SELECT h.hash FROM event_hashes h WHERE h.global_position = events.global_position)"
    };
}

/// With the chain link: for the reads that show or check it (history, audit, verification).
const PG_COLUMNS: &str = event_columns!(
    "transaction_id::text::bigint",
    "payload::text",
    "metadata::text",
    chain_link!()
);
const SQLITE_COLUMNS: &str = event_columns!("0", "payload", "metadata", chain_link!());

/// Which of an event row's columns a read selects; the others come back NULL (JSON null for
/// the metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Columns {
    /// Everything, the chain link too: for the reads that show or check it.
    Chained,
    /// Everything but the chain link: for consumers, which have no use for it.
    Consumed,
    /// Neither the link nor the metadata: for consumers of payloads only.
    Payloads,
}

impl Columns {
    fn postgres(self) -> &'static str {
        match self {
            Self::Chained => PG_COLUMNS,
            Self::Consumed => event_columns!(
                "transaction_id::text::bigint",
                "payload::text",
                "metadata::text",
                "NULL::text"
            ),
            Self::Payloads => event_columns!(
                "transaction_id::text::bigint",
                "payload::text",
                "'null'::text",
                "NULL::text"
            ),
        }
    }

    fn sqlite(self) -> &'static str {
        match self {
            Self::Chained => SQLITE_COLUMNS,
            Self::Consumed => event_columns!("0", "payload", "metadata", "NULL"),
            Self::Payloads => event_columns!("0", "payload", "'null'", "NULL"),
        }
    }
}

/// Reads the log of a [`Database`].
#[derive(Clone, Debug)]
pub struct LogReader {
    db: Database,
    /// On Postgres, the server its pool names, whose bystanders it looks past.
    server: Option<Arc<str>>,
    /// What [`read_after`](Self::read_after) selects.
    columns: Columns,
}

impl LogReader {
    /// A reader over `db` (shares its pool).
    pub fn new(db: &Database) -> Self {
        let server = match db {
            Database::Postgres(pool) => Some(crate::bystanders::server_of(pool)),
            Database::Sqlite(_) => None,
        };
        Self {
            db: db.clone(),
            server,
            columns: Columns::Consumed,
        }
    }

    /// This reader with [`read_after`](Self::read_after) leaving the events' metadata out
    /// (JSON null), for consumers that use only payloads (the read models): decoding the
    /// metadata is over a third of the work of reading an event.
    pub fn without_metadata(self) -> Self {
        Self {
            columns: Columns::Payloads,
            ..self
        }
    }

    /// Up to `limit` events after `after`, in global order, never including an event whose
    /// transaction might still be followed by an earlier-numbered commit. Save the last event's
    /// [`checkpoint`](RecordedEvent::checkpoint) and call again with it.
    pub async fn read_after(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stored = self.read_stored_after(after, limit).await?;
        Ok(stored.into_iter().map(RecordedEvent::from).collect())
    }

    /// [`read_after`](Self::read_after) without decoding the payloads and metadata: the stored
    /// text, as the hash chain covers it.
    pub async fn read_stored_after(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                let bystanders = self
                    .server
                    .as_deref()
                    .map(crate::bystanders::running)
                    .unwrap_or_default();
                pg_read_after(pool, self.columns, after, limit, Some(&bystanders)).await
            }
            Database::Sqlite(pool) => sqlite_read_after(pool, self.columns, after, limit).await,
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
    /// The events at `positions`, in log order (those that exist).
    pub async fn events_at(&self, positions: &[i64]) -> Result<Vec<RecordedEvent>, StoreError> {
        let stored = match &self.db {
            Database::Postgres(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM events WHERE global_position = ANY($1) \
                     ORDER BY events.transaction_id, events.global_position",
                    Columns::Consumed.postgres()
                ))
                .bind(positions)
                .fetch_all(pool)
                .await?;
                rows.iter().map(pg_stored).collect::<Result<Vec<_>, _>>()?
            }
            Database::Sqlite(pool) => {
                let mut stored = Vec::with_capacity(positions.len());
                for position in positions {
                    let row = sqlx::query(&format!(
                        "SELECT {} FROM events WHERE global_position = ?",
                        Columns::Consumed.sqlite()
                    ))
                    .bind(position)
                    .fetch_optional(pool)
                    .await?;
                    if let Some(row) = row {
                        stored.push(sqlite_stored(&row)?);
                    }
                }
                stored.sort_by_key(|event| event.position);
                stored
            }
        };
        Ok(stored.into_iter().map(RecordedEvent::from).collect())
    }

    /// Up to `filter.limit` events that `filter` selects, after `filter.after`, in log order:
    /// `(transaction_id, global_position)` on Postgres, position on SQLite. As with
    /// [`read_after`](Self::read_after), Postgres returns only events whose transaction is
    /// older than every running one, so paging on the last event's checkpoint never skips an
    /// event that commits late.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (conditions, args) = audit_conditions(filter, self.db.backend(), true);
        let limit = format!("${}", args.len() + 1);
        match &self.db {
            Database::Postgres(pool) => {
                let sql = format!(
                    "SELECT {PG_COLUMNS} FROM events WHERE {conditions} \
                     ORDER BY events.transaction_id, events.global_position LIMIT {limit}"
                );
                let rows = bind_pg(sqlx::query(&sql), args)
                    .bind(filter.limit)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(pg_event).collect()
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {SQLITE_COLUMNS} FROM events WHERE {conditions} \
                     ORDER BY global_position LIMIT {limit}"
                );
                let rows = bind_sqlite(sqlx::query(&sql), args)
                    .bind(filter.limit)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(sqlite_event).collect()
            }
        }
    }

    /// How many committed events `filter` selects after `filter.after`, ignoring its limit and
    /// including events that [`audit_events`](Self::audit_events) still holds back behind a
    /// running transaction: the total of a progress report.
    pub async fn audit_count(&self, filter: &AuditFilter) -> Result<i64, StoreError> {
        let (conditions, args) = audit_conditions(filter, self.db.backend(), false);
        let sql = format!("SELECT count(*) FROM events WHERE {conditions}");
        Ok(match &self.db {
            Database::Postgres(pool) => bind_pg(sqlx::query(&sql), args)
                .fetch_one(pool)
                .await?
                .try_get(0)?,
            Database::Sqlite(pool) => bind_sqlite(sqlx::query(&sql), args)
                .fetch_one(pool)
                .await?
                .try_get(0)?,
        })
    }

    /// The checkpoint of the event at `position` (its transaction id and position), to resume
    /// reading in log order after it; `None` if no event has that position.
    pub async fn checkpoint_of(&self, position: i64) -> Result<Option<Checkpoint>, StoreError> {
        let transaction_id: Option<i64> =
            match &self.db {
                Database::Postgres(pool) => sqlx::query_scalar(
                    "SELECT transaction_id::text::bigint FROM events WHERE global_position = $1",
                )
                .bind(position)
                .fetch_optional(pool)
                .await?,
                Database::Sqlite(pool) => {
                    sqlx::query_scalar("SELECT 0 FROM events WHERE global_position = $1")
                        .bind(position)
                        .fetch_optional(pool)
                        .await?
                }
            };
        Ok(transaction_id.map(|transaction_id| Checkpoint {
            transaction_id,
            position,
        }))
    }
}

/// A value bound into an audit query.
enum AuditArg {
    Text(String),
    Integer(i64),
    Time(DateTime<Utc>),
}

/// The `WHERE` conditions of `filter` with `$n` placeholders (SQLite reads `$n` as the n-th
/// argument too) and the values to bind, in order. `settled_only` adds the Postgres rule that
/// keeps out events whose transaction might still be followed by an earlier-numbered commit.
fn audit_conditions(
    filter: &AuditFilter,
    backend: Backend,
    settled_only: bool,
) -> (String, Vec<AuditArg>) {
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    let mut arg = |value: AuditArg| {
        args.push(value);
        format!("${}", args.len())
    };
    match backend {
        Backend::Postgres => {
            let transaction_id = arg(AuditArg::Integer(filter.after.transaction_id));
            let position = arg(AuditArg::Integer(filter.after.position));
            conditions.push(format!(
                "(transaction_id, global_position) > ({transaction_id}::text::xid8, {position})"
            ));
            if settled_only {
                conditions
                    .push("transaction_id < pg_snapshot_xmin(pg_current_snapshot())".to_owned());
            }
        }
        Backend::Sqlite => {
            let position = arg(AuditArg::Integer(filter.after.position));
            conditions.push(format!("global_position > {position}"));
        }
    }
    let equal = [
        ("aggregate_type", &filter.aggregate_type),
        ("aggregate_id", &filter.aggregate_id),
        ("event_type", &filter.event_type),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            let placeholder = arg(AuditArg::Text(value.clone()));
            conditions.push(format!("{column} = {placeholder}"));
        }
    }
    if let Some(actor) = &filter.actor {
        let actor_of = match backend {
            Backend::Postgres => "metadata->>'actor'",
            Backend::Sqlite => "json_extract(metadata, '$.actor')",
        };
        let placeholder = arg(AuditArg::Text(actor.clone()));
        conditions.push(format!("{actor_of} = {placeholder}"));
    }
    if let Some(from) = filter.from {
        let placeholder = arg(AuditArg::Time(from));
        conditions.push(format!("recorded_at >= {placeholder}"));
    }
    if let Some(to) = filter.to {
        let placeholder = arg(AuditArg::Time(to));
        conditions.push(format!("recorded_at < {placeholder}"));
    }
    if let Some(owner) = filter.owner {
        let owner = arg(AuditArg::Text(owner.to_string()));
        let owned = |aggregate: &str, table: &str| {
            format!(
                "(aggregate_type = '{aggregate}' AND aggregate_id IN \
                 (SELECT id FROM {table} WHERE user_id = {owner}))"
            )
        };
        conditions.push(format!(
            "((aggregate_type = '{user}' AND aggregate_id = {owner}) OR {tasks} OR {projects} \
             OR {executions} OR {memories})",
            user = User::TYPE,
            tasks = owned(Task::TYPE, "tasks"),
            projects = owned(Project::TYPE, "projects"),
            executions = owned(Execution::TYPE, "executions"),
            memories = owned(Memory::TYPE, "memories"),
        ));
    }
    (conditions.join(" AND "), args)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn bind_pg(mut query: PgQuery<'_>, args: Vec<AuditArg>) -> PgQuery<'_> {
    for value in args {
        query = match value {
            AuditArg::Text(text) => query.bind(text),
            AuditArg::Integer(number) => query.bind(number),
            // timestamptz holds microseconds: rounding up keeps `>=` and `<` exact.
            AuditArg::Time(at) => query.bind(round_up(at, TimeDelta::microseconds(1))),
        };
    }
    query
}

fn bind_sqlite(mut query: SqliteQuery<'_>, args: Vec<AuditArg>) -> SqliteQuery<'_> {
    for value in args {
        query = match value {
            AuditArg::Text(text) => query.bind(text),
            AuditArg::Integer(number) => query.bind(number),
            // Stored as fixed-width RFC 3339 text with milliseconds, so text order is time
            // order; rounding up keeps `>=` and `<` exact.
            AuditArg::Time(at) => query.bind(
                round_up(at, TimeDelta::milliseconds(1))
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
        };
    }
    query
}

/// `at` rounded up to a whole `unit` (unchanged if it already is one).
fn round_up(at: DateTime<Utc>, unit: TimeDelta) -> DateTime<Utc> {
    at.duration_round_up(unit).unwrap_or(at)
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
        let stored = match self {
            // A transaction does not know its pool's server: it looks past no bystander.
            Self::Postgres(tx) => {
                pg_read_after(&mut **tx, Columns::Consumed, after, limit, Some(&[])).await
            }
            Self::Sqlite(tx) => sqlite_read_after(&mut **tx, Columns::Consumed, after, limit).await,
        }?;
        Ok(stored.into_iter().map(RecordedEvent::from).collect())
    }

    /// Every visible event after `after` in global order, including those of transactions
    /// newer than the oldest running one: for walking the whole log (verification), not for
    /// checkpointed consumers.
    pub(crate) async fn read_visible_after(
        &mut self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self {
            Self::Postgres(tx) => {
                pg_read_after(&mut **tx, Columns::Chained, after, limit, None).await
            }
            Self::Sqlite(tx) => sqlite_read_after(&mut **tx, Columns::Chained, after, limit).await,
        }
    }
}

/// Reads events after `after` in global order, selecting `columns`. With `settled` only those no running transaction can still precede: older than every
/// running transaction (`pg_snapshot_xmin`), except the given ones, which insert no event (see
/// `crate::bystanders`); with `None` every visible event (walking the whole log, as
/// verification does).
async fn pg_read_after<'e>(
    executor: impl PgExecutor<'e>,
    columns: Columns,
    after: Checkpoint,
    limit: i64,
    settled: Option<&[i64]>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let horizon = match settled {
        None => "",
        Some([]) => "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
        Some(_) => {
            "AND transaction_id < (SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot())) \
             FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
             WHERE x::text::bigint <> ALL($4::bigint[]))"
        }
    };
    // `events.` in ORDER BY: unqualified, `transaction_id` would name the bigint output column
    // and the sort could not use the (transaction_id, global_position) index.
    let sql = format!(
        "SELECT {} FROM events \
         WHERE (transaction_id, global_position) > ($1::text::xid8, $2) {horizon} \
         ORDER BY events.transaction_id, events.global_position LIMIT $3",
        columns.postgres()
    );
    let query = sqlx::query(&sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(limit);
    let query = match settled {
        Some(bystanders) if !bystanders.is_empty() => query.bind(bystanders),
        _ => query,
    };
    let rows = query.fetch_all(executor).await?;
    rows.iter().map(pg_stored).collect()
}

/// Reads events after `after` by position, selecting `columns`.
async fn sqlite_read_after<'e>(
    executor: impl SqliteExecutor<'e>,
    columns: Columns,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {} FROM events WHERE global_position > ? \
         ORDER BY global_position LIMIT ?",
        columns.sqlite()
    ))
    .bind(after.position)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(sqlite_stored).collect()
}

fn pg_stored(row: &PgRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
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

fn sqlite_stored(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    let recorded_at: String = row.try_get("recorded_at")?;
    Ok(StoredEvent {
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

fn pg_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    pg_stored(row).map(RecordedEvent::from)
}

fn sqlite_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    sqlite_stored(row).map(RecordedEvent::from)
}

/// Parses an RFC 3339 timestamp as stored by SQLite.
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Timestamp(text.to_string()))
}
