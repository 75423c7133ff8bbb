//! One cqrs-es event repository over both backends: [`EventRepository`] delegates to
//! postgres-es or sqlite-es (same tables, same optimistic concurrency: a second writer of the
//! same sequence gets `AggregateConflict`). Callers learn what a command committed from
//! [`crate::CommandBus::execute`].
//!
//! Aggregates load through reads of our own, which parse the stored payloads at any depth
//! ([`crate::json`]): the libraries' reads stop at serde_json's nesting limit (and postgres-es
//! panics then), and what the log holds must stay loadable.
//!
//! Appends without a snapshot differ from postgres-es, which sends `BEGIN`, an `INSERT` per
//! event and `COMMIT`: a single event (most commands) goes through [`GroupCommit`], which
//! inserts the single events of concurrent commands in one statement, and several events (the
//! commands of one stream decided together) go in one statement of their own, which a taken
//! sequence fails as a whole.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;

use crate::db::Database;
use crate::group_commit::GroupCommit;

/// The event repository of a [`Database`]: postgres-es or sqlite-es behind one type.
pub enum EventRepository {
    /// postgres-es on a Postgres pool, group commit for single events, and the pool for the
    /// reads done here.
    Postgres(PostgresEventRepository, GroupCommit, sqlx::PgPool),
    /// sqlite-es on a SQLite pool, and the pool for the reads done here.
    Sqlite(SqliteEventRepository, sqlx::SqlitePool),
}

impl EventRepository {
    /// The repository for `db`, on the `events` and `snapshots` tables, with a group commit of
    /// its own.
    pub fn new(db: &Database) -> Self {
        Self::sharing(db, GroupCommit::of(db))
    }

    /// The repository for `db` whose single-event appends go through `group_commit` (a clone
    /// of another repository's, so that they share it; `None`: one of its own).
    pub fn sharing(db: &Database, group_commit: Option<GroupCommit>) -> Self {
        match db {
            Database::Postgres(pool) => Self::Postgres(
                PostgresEventRepository::new(pool.clone()),
                group_commit.unwrap_or_else(|| GroupCommit::new(pool.clone())),
                pool.clone(),
            ),
            Database::Sqlite(pool) => {
                Self::Sqlite(SqliteEventRepository::new(pool.clone()), pool.clone())
            }
        }
    }
}

impl std::fmt::Debug for EventRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres(..) => "EventRepository::Postgres",
            Self::Sqlite(..) => "EventRepository::Sqlite",
        })
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.stream_after(A::TYPE, aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.stream_after(A::TYPE, aggregate_id, last_sequence as i64)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let row: Option<(i64, i64, String)> = match self {
            Self::Postgres(_, _, pool) => {
                sqlx::query_as(SELECT_SNAPSHOT_PG)
                    .bind(A::TYPE)
                    .bind(aggregate_id)
                    .fetch_optional(pool)
                    .await
            }
            Self::Sqlite(_, pool) => {
                sqlx::query_as(SELECT_SNAPSHOT_SQLITE)
                    .bind(A::TYPE)
                    .bind(aggregate_id)
                    .fetch_optional(pool)
                    .await
            }
        }
        .map_err(connection_error)?;
        row.map(|(current_sequence, current_snapshot, payload)| {
            Ok(SerializedSnapshot {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: parse(&payload)?,
                current_sequence: current_sequence as usize,
                current_snapshot: current_snapshot as usize,
            })
        })
        .transpose()
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(_, group, _) if snapshot_update.is_none() && events.len() == 1 => {
                group.append(A::TYPE, &events[0]).await?;
            }
            Self::Postgres(_, _, pool) if snapshot_update.is_none() => {
                insert_all(pool, A::TYPE, events).await?;
            }
            Self::Postgres(repo, ..) => repo.persist::<A>(events, snapshot_update).await?,
            Self::Sqlite(repo, _) => repo.persist::<A>(events, snapshot_update).await?,
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo, ..) => repo.stream_events::<A>(aggregate_id).await,
            Self::Sqlite(repo, _) => repo.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo, ..) => repo.stream_all_events::<A>().await,
            Self::Sqlite(repo, _) => repo.stream_all_events::<A>().await,
        }
    }
}

const SELECT_EVENTS_PG: &str = "SELECT sequence, event_type, event_version, payload::text, \
     metadata::text FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
     ORDER BY sequence";
const SELECT_EVENTS_SQLITE: &str = "SELECT sequence, event_type, event_version, payload, \
     metadata FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
     ORDER BY sequence";
const SELECT_SNAPSHOT_PG: &str = "SELECT last_sequence, current_snapshot, payload::text \
     FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2";
const SELECT_SNAPSHOT_SQLITE: &str = "SELECT last_sequence, current_snapshot, payload \
     FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2";

type EventRow = (i64, String, String, String, String);

impl EventRepository {
    /// The events of one stream after `after_sequence`, in order.
    async fn stream_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows: Vec<EventRow> = match self {
            Self::Postgres(_, _, pool) => {
                sqlx::query_as(SELECT_EVENTS_PG)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(after_sequence)
                    .fetch_all(pool)
                    .await
            }
            Self::Sqlite(_, pool) => {
                sqlx::query_as(SELECT_EVENTS_SQLITE)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(after_sequence)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(connection_error)?;
        rows.into_iter()
            .map(|(sequence, event_type, event_version, payload, metadata)| {
                Ok(SerializedEvent::new(
                    aggregate_id.to_owned(),
                    sequence as usize,
                    aggregate_type.to_owned(),
                    event_type,
                    event_version,
                    parse(&payload)?,
                    parse(&metadata)?,
                ))
            })
            .collect()
    }
}

const INSERT_EVENTS_PG: &str = "INSERT INTO events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT $1::text, $2::text, * FROM unnest($3::bigint[], $4::text[], $5::text[], \
                                  $6::text[]::json[], $7::text[]::json[])";

/// Inserts `events` of one stream in one autocommit statement: all of them, or none when one
/// of their sequences is taken (`OptimisticLockError`).
async fn insert_all(
    pool: &sqlx::PgPool,
    aggregate_type: &str,
    events: &[SerializedEvent],
) -> Result<(), PersistenceError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let column =
        |field: fn(&SerializedEvent) -> String| events.iter().map(field).collect::<Vec<_>>();
    let sequences = events
        .iter()
        .map(|e| i64::try_from(e.sequence))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
    let inserted = sqlx::query(INSERT_EVENTS_PG)
        .bind(aggregate_type)
        .bind(&first.aggregate_id)
        .bind(sequences)
        .bind(column(|e| e.event_type.clone()))
        .bind(column(|e| e.event_version.clone()))
        .bind(column(|e| e.payload.to_string()))
        .bind(column(|e| e.metadata.to_string()))
        .execute(pool)
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(PersistenceError::OptimisticLockError)
        }
        Err(error) => Err(connection_error(error)),
    }
}

fn parse(text: &str) -> Result<Value, PersistenceError> {
    crate::json::parse(text).map_err(|e| PersistenceError::DeserializationError(Box::new(e)))
}

fn connection_error(error: sqlx::Error) -> PersistenceError {
    PersistenceError::ConnectionError(Box::new(error))
}
