//! Group commit of single-event appends on Postgres.
//!
//! Most commands append one event. Appended one statement each, concurrent commands pay one
//! round trip, one commit (a WAL flush) and one pooled-connection check each. Here they queue
//! instead, and a few workers each take everything queued (up to [`MAX_BATCH`]) and insert it
//! with one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING` statement: one
//! transaction, so every event of it commits or none does, and each command is answered only
//! after that commit. Nothing waits for company: a lone append is inserted as soon as a worker
//! is free, and appends queue only while every worker is busy.
//!
//! Each worker keeps a connection of its own rather than taking one from the pool per
//! statement: sqlx tests every connection given back to a pool with a round trip, one more per
//! statement for the database and the service. A connection idle for a while is tested before
//! use (as the pool does), and one that failed is replaced.
//!
//! Optimistic concurrency is unchanged: a row whose `(aggregate_type, aggregate_id, sequence)`
//! is taken is skipped by `ON CONFLICT DO NOTHING` and missing from `RETURNING`, and its command
//! is told it lost the race. Two appends of the same key never share a statement (the second
//! waits for the worker's next one), so `RETURNING` always says which of them won. Rows go in
//! key order: statements that insert the same keys wait for each other in one order only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::db::{Database, POSTGRES_PING_IDLE_AFTER};
use crate::overload::Overloaded;

/// Workers, each with at most one statement in flight on a connection of its own. Two rather
/// than more: the fewer the workers, the more appends each statement carries and the fewer
/// commits the database makes, while the second keeps appends moving when a statement waits
/// on a row lock (figures in `bench/README.md`).
const WORKERS: usize = 2;

/// Events one statement inserts at most.
pub const MAX_BATCH: usize = 500;

const INSERT_BATCH: &str = "INSERT INTO events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                          $6::text[]::json[], $7::text[]::json[]) \
     ON CONFLICT DO NOTHING \
     RETURNING aggregate_type, aggregate_id, sequence";

/// One event's row, its JSON already serialized.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

impl Row {
    /// The stream position the row takes: `(aggregate_type, aggregate_id, sequence)`.
    fn key(&self) -> (&str, &str, i64) {
        (self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// Why an append failed, shared by every append of the failed statement.
#[derive(Debug, Clone)]
enum Failure {
    /// The row's key was taken: a lost race.
    Taken,
    /// The append's deadline passed before its statement, or the queue was full: not inserted.
    Overloaded(Overloaded),
    /// The database could not be reached.
    Connection(String),
    /// The statement failed otherwise.
    Statement(String),
}

/// A failure's message as an error (the repository's errors box one).
#[derive(Debug, thiserror::Error)]
#[error("appending events: {0}")]
struct AppendError(String);

impl From<Failure> for PersistenceError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Taken => PersistenceError::OptimisticLockError,
            Failure::Overloaded(overloaded) => PersistenceError::UnknownError(Box::new(overloaded)),
            Failure::Connection(message) => {
                PersistenceError::ConnectionError(Box::new(AppendError(message)))
            }
            Failure::Statement(message) => {
                PersistenceError::UnknownError(Box::new(AppendError(message)))
            }
        }
    }
}

/// An append waiting for its statement.
struct Pending {
    row: Row,
    outcome: oneshot::Sender<Result<(), Failure>>,
    /// Its request's deadline: past it, the append is dropped rather than inserted.
    deadline: Option<tokio::time::Instant>,
}

/// The queue of single-event appends and the workers that drain it (started on the first
/// append; they end when every clone is dropped). Clones share the queue: the repositories of
/// one command bus, one per aggregate type, append through one group commit (rows carry their
/// aggregate type), so concurrent commands of every type share statements and [`WORKERS`]
/// connections (opened with the pool's options).
#[derive(Clone)]
pub struct GroupCommit {
    pool: PgPool,
    /// Where the workers run: the runtime the group commit was made in, not that of its first
    /// append, which may be a runtime that stops sooner and would take every bus's appends
    /// with it. `None` when made outside a runtime: then the first append's.
    runtime: Option<Handle>,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
    /// Appends queued or in a statement.
    queued: Arc<AtomicUsize>,
}

impl GroupCommit {
    /// Group commit over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            runtime: Handle::try_current().ok(),
            queue: Arc::default(),
            queued: Arc::default(),
        }
    }

    /// Group commit for `db`: `None` on SQLite, whose single writer has nothing to group.
    pub fn of(db: &Database) -> Option<Self> {
        match db {
            Database::Postgres(pool) => Some(Self::new(pool.clone())),
            Database::Sqlite(_) => None,
        }
    }

    /// Appends `event` to the stream of an aggregate of type `aggregate_type` and returns once
    /// the statement that carried it has committed. A taken sequence is a lost race:
    /// `OptimisticLockError`.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        event: &SerializedEvent,
    ) -> Result<(), PersistenceError> {
        let unknown =
            |e: Box<dyn std::error::Error + Send + Sync>| PersistenceError::UnknownError(e);
        let row = Row {
            aggregate_type,
            aggregate_id: event.aggregate_id.clone(),
            sequence: i64::try_from(event.sequence).map_err(|e| unknown(Box::new(e)))?,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.to_string(),
            metadata: event.metadata.to_string(),
        };
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Failure::Overloaded(Overloaded::QueueFull).into());
        }
        let _counted = Counted(&self.queued);
        let (outcome, answer) = oneshot::channel();
        let stopped = || unknown(Box::new(AppendError("the append workers stopped".into())));
        self.queue()
            .send(Pending {
                row,
                outcome,
                deadline: crate::overload::deadline(),
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(Into::into)
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Pending> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let receiver = Arc::new(Mutex::new(receiver));
            let options = self.pool.connect_options();
            for _ in 0..WORKERS {
                let worker = work(options.clone(), receiver.clone());
                match &self.runtime {
                    Some(runtime) => runtime.spawn(worker),
                    None => tokio::spawn(worker),
                };
            }
            sender
        })
    }
}

/// Appends queued at most; more are refused at once ([`Overloaded::QueueFull`]).
const MAX_QUEUED: usize = 10_000;

/// Counts an append out of the queue when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker: waits for an append, takes whatever else is queued, inserts it all in one
/// statement and answers each append.
async fn work(options: Arc<PgConnectOptions>, queue: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    // Appends whose key was already in the last batch: they go first in the next one.
    let mut held_over: Vec<Pending> = Vec::new();
    let mut connection = WorkerConnection {
        options,
        open: None,
        last_used: Instant::now(),
    };
    loop {
        let mut taken = std::mem::take(&mut held_over);
        if taken.is_empty() {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(pending) => taken.push(pending),
                None => return,
            }
            take_queued(&mut queue, &mut taken);
        } else if let Ok(mut queue) = queue.try_lock() {
            // Not `lock`: the worker holding the queue may wait there for the next append.
            take_queued(&mut queue, &mut taken);
        }
        // In key order, so two statements never wait for each other's rows in opposite orders
        // (a deadlock that would fail both); the sort is stable, so of two appends of one key
        // the earlier goes now and the later waits for the next statement.
        taken.sort_by(|a, b| a.row.key().cmp(&b.row.key()));
        let mut batch: Vec<Pending> = Vec::with_capacity(taken.len());
        let now = tokio::time::Instant::now();
        for pending in taken {
            if pending.deadline.is_some_and(|deadline| deadline <= now) {
                let _ = pending
                    .outcome
                    .send(Err(Failure::Overloaded(Overloaded::DeadlinePassed)));
                continue;
            }
            if batch
                .last()
                .is_some_and(|last| last.row.key() == pending.row.key())
            {
                held_over.push(pending);
            } else {
                batch.push(pending);
            }
        }
        let outcomes = match connection.ready().await {
            Ok(ready) => {
                let outcomes = insert(ready, &batch).await;
                // A failed statement may have left its connection unusable: open another.
                if matches!(
                    outcomes.first(),
                    Some(Err(Failure::Connection(_) | Failure::Statement(_)))
                ) {
                    connection.open = None;
                }
                outcomes
            }
            Err(error) => vec![Err(Failure::Connection(error.to_string())); batch.len()],
        };
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            // The command may have been cancelled meanwhile; its event committed all the same.
            let _ = pending.outcome.send(outcome);
        }
    }
}

/// A worker's connection, opened on first use and after a failure, and when it was last used.
struct WorkerConnection {
    options: Arc<PgConnectOptions>,
    open: Option<PgConnection>,
    last_used: Instant,
}

impl WorkerConnection {
    /// The connection, tested first if it sat idle (one that broke meanwhile, say across a
    /// database restart, is replaced before a statement fails on it), or newly opened.
    async fn ready(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let mut open = self.open.take();
        if let Some(connection) = &mut open
            && self.last_used.elapsed() > POSTGRES_PING_IDLE_AFTER
            && connection.ping().await.is_err()
        {
            open = None;
        }
        let connection = match open {
            Some(connection) => connection,
            None => PgConnection::connect_with(&self.options).await?,
        };
        self.last_used = Instant::now();
        Ok(self.open.insert(connection))
    }
}

/// Moves what is queued into `taken`, up to [`MAX_BATCH`] in all.
fn take_queued(queue: &mut mpsc::UnboundedReceiver<Pending>, taken: &mut Vec<Pending>) {
    while taken.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(pending) => taken.push(pending),
            Err(_) => break,
        }
    }
}

/// Inserts the rows of `batch` (distinct keys, in key order) in one statement; the outcome of
/// each, in order.
async fn insert(connection: &mut PgConnection, batch: &[Pending]) -> Vec<Result<(), Failure>> {
    let text = |field: fn(&Row) -> &str| batch.iter().map(|p| field(&p.row)).collect::<Vec<_>>();
    let sequences: Vec<i64> = batch.iter().map(|p| p.row.sequence).collect();
    let inserted: Result<Vec<(String, String, i64)>, sqlx::Error> = sqlx::query_as(INSERT_BATCH)
        .bind(text(|r| r.aggregate_type))
        .bind(text(|r| r.aggregate_id.as_str()))
        .bind(sequences)
        .bind(text(|r| r.event_type.as_str()))
        .bind(text(|r| r.event_version.as_str()))
        .bind(text(|r| r.payload.as_str()))
        .bind(text(|r| r.metadata.as_str()))
        .fetch_all(connection)
        .await;
    match inserted {
        Ok(mut inserted) => {
            inserted.sort_unstable();
            let was_inserted = |key: (&str, &str, i64)| {
                inserted
                    .binary_search_by(|(kind, id, sequence)| {
                        (kind.as_str(), id.as_str(), *sequence).cmp(&key)
                    })
                    .is_ok()
            };
            batch
                .iter()
                .map(|p| {
                    if was_inserted(p.row.key()) {
                        Ok(())
                    } else {
                        Err(Failure::Taken)
                    }
                })
                .collect()
        }
        Err(error) => {
            let failure = match &error {
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Failure::Connection(error.to_string()),
                _ => Failure::Statement(error.to_string()),
            };
            vec![Err(failure); batch.len()]
        }
    }
}
