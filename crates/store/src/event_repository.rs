//! One cqrs-es event repository over both backends: [`EventRepository`] delegates to
//! postgres-es or sqlite-es (same tables, same optimistic concurrency: a second writer of the
//! same sequence gets `AggregateConflict`). Callers learn what a command committed from
//! [`crate::CommandBus::execute`].
//!
//! One write differs from postgres-es: a single event without a snapshot is appended by one
//! autocommit `INSERT` instead of `BEGIN; INSERT; COMMIT`; a statement is atomic on its own, so
//! the two extra round trips bought nothing.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use sqlx::PgPool;

use crate::db::Database;

/// The event repository of a [`Database`]: postgres-es or sqlite-es behind one type.
pub enum EventRepository {
    /// postgres-es on a Postgres pool (and the pool, for the one-statement append).
    Postgres(PostgresEventRepository, PgPool),
    /// sqlite-es on a SQLite pool.
    Sqlite(SqliteEventRepository),
}

impl EventRepository {
    /// The repository for `db`, on the `events` and `snapshots` tables.
    pub fn new(db: &Database) -> Self {
        match db {
            Database::Postgres(pool) => {
                Self::Postgres(PostgresEventRepository::new(pool.clone()), pool.clone())
            }
            Database::Sqlite(pool) => Self::Sqlite(SqliteEventRepository::new(pool.clone())),
        }
    }
}

impl std::fmt::Debug for EventRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres(..) => "EventRepository::Postgres",
            Self::Sqlite(_) => "EventRepository::Sqlite",
        })
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(repo, _) => repo.get_events::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.get_events::<A>(aggregate_id).await,
        }
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(repo, _) => repo.get_last_events::<A>(aggregate_id, last_sequence).await,
            Self::Sqlite(repo) => repo.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match self {
            Self::Postgres(repo, _) => repo.get_snapshot::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(_, pool) if snapshot_update.is_none() && events.len() == 1 => {
                append_one::<A>(pool, &events[0]).await?;
            }
            Self::Postgres(repo, _) => repo.persist::<A>(events, snapshot_update).await?,
            Self::Sqlite(repo) => repo.persist::<A>(events, snapshot_update).await?,
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo, _) => repo.stream_events::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo, _) => repo.stream_all_events::<A>().await,
            Self::Sqlite(repo) => repo.stream_all_events::<A>().await,
        }
    }
}

/// Appends one event in one autocommit statement (the same `INSERT` postgres-es runs inside its
/// transaction). A taken sequence is a lost race: `OptimisticLockError`.
async fn append_one<A: Aggregate>(
    pool: &PgPool,
    event: &SerializedEvent,
) -> Result<(), PersistenceError> {
    let sequence =
        i64::try_from(event.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO events \
         (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(A::TYPE)
    .bind(&event.aggregate_id)
    .bind(sequence)
    .bind(&event.event_type)
    .bind(&event.event_version)
    .bind(&event.payload)
    .bind(&event.metadata)
    .execute(pool)
    .await
    .map(drop)
    .map_err(|error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            PersistenceError::ConnectionError(Box::new(error))
        }
        _ => PersistenceError::UnknownError(Box::new(error)),
    })
}
