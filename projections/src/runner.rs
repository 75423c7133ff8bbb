//! The projection runner: one loop per projection that reads the log in global order after the
//! projection's checkpoint, hands each batch to the projection inside a transaction, and commits
//! the read-model change with the new checkpoint. A crash before the commit leaves both as they
//! were, so the batch is simply applied again after restart: nothing is lost or doubled.
//!
//! Loops wake when a local command pokes them ([`ProjectionHandle::poke`]) or after a short poll
//! interval (other processes may write too). Every committed batch bumps a progress counter,
//! and each projection announces which stream versions its last batch covered ([`Applied`]), so
//! a writer waiting to read its own write learns it without asking the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sparc_store::{Checkpoint, Database, LogReader, RecordedEvent, StoreError, StoreTx};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How long a loop waits after a poke, or after a batch that did not fill up, before reading
/// the log: under load the writes of that moment share one transaction per projection instead
/// of one each, at the price of this much latency.
const LINGER: Duration = Duration::from_millis(2);

/// Why a batch could not be applied. The runner retries it with back-off; the checkpoint does
/// not move, so a projection stalls rather than skipping an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A read-model statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An event payload did not match its type.
    #[error("event {position} ({event_type}) could not be read: {source}")]
    Payload {
        /// Where in the log.
        position: i64,
        /// Its type.
        event_type: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The projection depends on another one that has not reached this batch yet.
    #[error("waiting for {0} to catch up")]
    NotReady(&'static str),
    /// A policy's command failed.
    #[error("command failed: {0}")]
    Command(String),
}

/// A consumer of the log: a read model, or a policy that reacts to events.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Its name: the checkpoint's name and, for read models, the table's.
    fn name(&self) -> &str;

    /// Read models: applies a batch of events (in global order) inside `tx`, which also saves
    /// the checkpoint. It must be deterministic: the same batch on the same state gives the same
    /// result.
    async fn apply(
        &self,
        _tx: &mut StoreTx,
        _events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Policies: reacts to a batch by issuing commands, before the checkpoint transaction opens
    /// (a command needs the write lock that transaction would hold on SQLite). A crash after
    /// the reaction repeats it, so reactions must be idempotent.
    async fn react(&self, _events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// What one projection's latest committed batch covered.
#[derive(Debug, Default)]
pub struct Applied {
    /// How many batches this loop has committed (a receiver that sees it jump by more than one
    /// missed a batch).
    pub batch: u64,
    /// The last sequence of each stream (by aggregate id) the batch applied.
    pub streams: HashMap<String, i64>,
}

impl Applied {
    fn of(batch: u64, events: &[RecordedEvent]) -> Self {
        let mut streams = HashMap::with_capacity(events.len());
        for event in events {
            let sequence = streams.entry(event.aggregate_id.clone()).or_insert(0);
            *sequence = event.sequence.max(*sequence);
        }
        Self { batch, streams }
    }
}

/// Lets writers wake the projections and wait for them to advance.
#[derive(Clone)]
pub struct ProjectionHandle {
    wakers: Arc<[Arc<Notify>]>,
    progress: watch::Sender<u64>,
    applied: Arc<HashMap<String, watch::Sender<Arc<Applied>>>>,
}

impl ProjectionHandle {
    /// Wakes every projection loop now instead of at its next poll.
    pub fn poke(&self) {
        for waker in self.wakers.iter() {
            waker.notify_one();
        }
    }

    /// A receiver that changes whenever any projection commits a batch.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// A receiver of the latest batch the projection `name` committed in this process (`None`
    /// for a projection this runner does not drive).
    pub fn applied(&self, name: &str) -> Option<watch::Receiver<Arc<Applied>>> {
        self.applied.get(name).map(watch::Sender::subscribe)
    }
}

/// Drives a set of projections.
pub struct ProjectionRunner {
    db: Database,
    projections: Vec<Arc<dyn Projection>>,
    wakers: Arc<[Arc<Notify>]>,
    progress: watch::Sender<u64>,
    applied: Arc<HashMap<String, watch::Sender<Arc<Applied>>>>,
    batch_size: i64,
    poll_interval: Duration,
}

impl ProjectionRunner {
    /// A runner for `projections` over `db`.
    pub fn new(db: Database, projections: Vec<Arc<dyn Projection>>) -> Self {
        let wakers: Arc<[Arc<Notify>]> = projections
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect();
        let applied = projections
            .iter()
            .map(|p| (p.name().to_owned(), watch::channel(Arc::default()).0))
            .collect();
        Self {
            db,
            projections,
            wakers,
            progress: watch::channel(0).0,
            applied: Arc::new(applied),
            batch_size: 1000,
            poll_interval: Duration::from_millis(200),
        }
    }

    /// How many events one transaction applies at most.
    pub fn with_batch_size(mut self, batch_size: i64) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long an idle loop sleeps before looking at the log again without a poke.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The handle writers use to poke and wait.
    pub fn handle(&self) -> ProjectionHandle {
        ProjectionHandle {
            wakers: self.wakers.clone(),
            progress: self.progress.clone(),
            applied: self.applied.clone(),
        }
    }

    /// Spawns one loop per projection; they stop when `shutdown` turns true.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.projections
            .iter()
            .zip(self.wakers.iter())
            .map(|(projection, waker)| {
                let worker = Worker {
                    db: self.db.clone(),
                    reader: LogReader::new(&self.db),
                    projection: projection.clone(),
                    batch_size: self.batch_size,
                };
                let signals = Signals {
                    waker: waker.clone(),
                    progress: self.progress.clone(),
                    applied: self.applied[projection.name()].clone(),
                };
                let poll = self.poll_interval;
                let shutdown = shutdown.clone();
                tokio::spawn(worker.run(signals, poll, shutdown))
            })
            .collect()
    }
}

/// Applies every event not yet applied to `projection`, in batches, and returns how many were
/// applied. Used by tests and the command line to bring a projection up to date in one go.
pub async fn catch_up(
    db: &Database,
    projection: Arc<dyn Projection>,
    batch_size: i64,
) -> Result<u64, ProjectionError> {
    let worker = Worker {
        db: db.clone(),
        reader: LogReader::new(db),
        projection,
        batch_size,
    };
    let mut checkpoint = None;
    let mut total = 0;
    loop {
        match worker.step(&mut checkpoint).await? {
            None => return Ok(total),
            Some(events) => total += events.len() as u64,
        }
    }
}

/// How a loop is woken and announces its batches.
struct Signals {
    waker: Arc<Notify>,
    progress: watch::Sender<u64>,
    applied: watch::Sender<Arc<Applied>>,
}

struct Worker {
    db: Database,
    reader: LogReader,
    projection: Arc<dyn Projection>,
    batch_size: i64,
}

impl Worker {
    async fn run(self, signals: Signals, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name().to_owned();
        let name = name.as_str();
        let mut checkpoint = None;
        let mut failures = 0u32;
        let mut batches = 0u64;
        while !*shutdown.borrow() {
            match self.step(&mut checkpoint).await {
                Ok(None) => {
                    failures = 0;
                    tokio::select! {
                        _ = signals.waker.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.changed() => {}
                    }
                    // Let the writes of the next moment join this one's batch.
                    tokio::time::sleep(LINGER).await;
                }
                Ok(Some(events)) => {
                    failures = 0;
                    batches += 1;
                    tracing::debug!(projection = name, applied = events.len(), "batch applied");
                    signals
                        .applied
                        .send_replace(Arc::new(Applied::of(batches, &events)));
                    signals.progress.send_modify(|n| *n = n.wrapping_add(1));
                    if (events.len() as i64) < self.batch_size {
                        tokio::time::sleep(LINGER).await;
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    checkpoint = None;
                    let delay = Duration::from_millis(50u64 << failures.min(7));
                    if matches!(error, ProjectionError::NotReady(_)) {
                        tracing::debug!(projection = name, %error, "batch postponed");
                    } else {
                        tracing::warn!(projection = name, %error, retry_in_ms = delay.as_millis() as u64, "batch failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Applies the next batch, if any. The log is read outside the transaction (so SQLite's write
    /// lock is only taken when there is work); inside it the checkpoint is locked and must still
    /// be the one the batch was read after, else another instance moved it and the batch is
    /// dropped and read again.
    async fn step(
        &self,
        known: &mut Option<Checkpoint>,
    ) -> Result<Option<Vec<RecordedEvent>>, ProjectionError> {
        let name = self.projection.name();
        let mut after = match *known {
            Some(checkpoint) => checkpoint,
            None => sparc_store::checkpoint::load(&self.db, name).await?,
        };
        loop {
            *known = Some(after);
            let events = self.reader.read_after(after, self.batch_size).await?;
            let Some(last) = events.last() else {
                return Ok(None);
            };
            self.projection.react(&events).await?;
            let mut tx = self.db.begin().await?;
            let locked = tx.lock_checkpoint(name).await?;
            if locked != after {
                tx.rollback().await?;
                after = locked;
                continue;
            }
            self.projection.apply(&mut tx, &events).await?;
            tx.save_checkpoint(name, last.checkpoint()).await?;
            tx.commit().await?;
            *known = Some(last.checkpoint());
            return Ok(Some(events));
        }
    }
}
