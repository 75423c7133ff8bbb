//! One cqrs-es event repository over both backends, and how a caller learns what a command
//! committed.
//!
//! [`EventRepository`] delegates to postgres-es or sqlite-es (same tables, same optimistic
//! concurrency: a second writer of the same sequence gets `AggregateConflict`). After a
//! successful commit it records the aggregate and its last sequence in the current
//! [`capture_commits`] scope, so an HTTP handler can answer with the version it just wrote:
//!
//! ```no_run
//! # async fn run<A: cqrs_es::Aggregate>(cqrs: sparc_store::Cqrs<A>, cmd: A::Command) {
//! let (result, commits) = sparc_store::capture_commits(cqrs.execute("id-1", cmd)).await;
//! let version = commits.last().map(|c| c.last_sequence);
//! # let _ = (result, version); }
//! ```
//!
//! The event stores built on it are in [`crate::event_store`](mod@crate::event_store).

use std::cell::RefCell;
use std::future::Future;

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;

use crate::db::Database;

/// The event repository of a [`Database`]: postgres-es or sqlite-es behind one type.
pub enum EventRepository {
    /// postgres-es on a Postgres pool.
    Postgres(PostgresEventRepository),
    /// sqlite-es on a SQLite pool.
    Sqlite(SqliteEventRepository),
}

impl EventRepository {
    /// The repository for `db`, on the `events` and `snapshots` tables.
    pub fn new(db: &Database) -> Self {
        match db {
            Database::Postgres(pool) => Self::Postgres(PostgresEventRepository::new(pool.clone())),
            Database::Sqlite(pool) => Self::Sqlite(SqliteEventRepository::new(pool.clone())),
        }
    }
}

impl std::fmt::Debug for EventRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres(_) => "EventRepository::Postgres",
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
            Self::Postgres(repo) => repo.get_events::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.get_events::<A>(aggregate_id).await,
        }
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(repo) => repo.get_last_events::<A>(aggregate_id, last_sequence).await,
            Self::Sqlite(repo) => repo.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match self {
            Self::Postgres(repo) => repo.get_snapshot::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(repo) => repo.persist::<A>(events, snapshot_update).await?,
            Self::Sqlite(repo) => repo.persist::<A>(events, snapshot_update).await?,
        }
        if let Some(last) = events.last() {
            record(Committed {
                aggregate_type: A::TYPE.to_string(),
                aggregate_id: last.aggregate_id.clone(),
                last_sequence: last.sequence,
            });
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo) => repo.stream_events::<A>(aggregate_id).await,
            Self::Sqlite(repo) => repo.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(repo) => repo.stream_all_events::<A>().await,
            Self::Sqlite(repo) => repo.stream_all_events::<A>().await,
        }
    }
}

/// What one successful `persist` wrote: an aggregate instance and its new last sequence (its
/// version).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Committed {
    /// The aggregate's type (`Aggregate::TYPE`).
    pub aggregate_type: String,
    /// The aggregate instance's id.
    pub aggregate_id: String,
    /// The sequence of the last event committed.
    pub last_sequence: usize,
}

tokio::task_local! {
    static COMMITS: RefCell<Vec<Committed>>;
}

fn record(committed: Committed) {
    // Outside a `capture_commits` scope there is nobody to tell: a no-op.
    let _ = COMMITS.try_with(|commits| commits.borrow_mut().push(committed));
}

/// Runs `f` and returns its output with every commit an [`EventRepository`] made while `f` ran
/// (in this task), in commit order.
pub async fn capture_commits<F: Future>(f: F) -> (F::Output, Vec<Committed>) {
    COMMITS
        .scope(RefCell::new(Vec::new()), async move {
            let output = f.await;
            (output, COMMITS.with(|commits| commits.take()))
        })
        .await
}
