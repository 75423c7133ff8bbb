//! One cqrs-es event repository over both backends: [`EventRepository`] delegates to
//! postgres-es or sqlite-es (same tables, same optimistic concurrency: a second writer of the
//! same sequence gets `AggregateConflict`). Callers learn what a command committed from
//! [`crate::CommandBus::execute`].
//!
//! One write differs from postgres-es: a single event without a snapshot (most commands) is
//! appended through [`GroupCommit`], which inserts the single events of concurrent commands in
//! one statement, instead of `BEGIN; INSERT; COMMIT` each.

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
    /// postgres-es on a Postgres pool, and group commit for single events.
    Postgres(PostgresEventRepository, GroupCommit),
    /// sqlite-es on a SQLite pool.
    Sqlite(SqliteEventRepository),
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
            ),
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
            Self::Postgres(_, group) if snapshot_update.is_none() && events.len() == 1 => {
                group.append(A::TYPE, &events[0]).await?;
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
