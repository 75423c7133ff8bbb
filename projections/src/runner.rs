//! The projection runner: loops that read the log in global order after their projections'
//! checkpoints, hand each batch to the projections inside a transaction, and commit the
//! read-model changes with the new checkpoints. A crash before the commit leaves both as they
//! were, so the batch is simply applied again after restart: nothing is lost or doubled.
//!
//! The read models share one loop: one read of the log and one transaction per batch for all
//! of them (each keeps its own checkpoint, so one can be rebuilt or added on its own). Each
//! policy has a loop of its own, since it may wait for a read model.
//!
//! Loops wake when a local command pokes them ([`ProjectionHandle::poke`]) or after a short poll
//! interval (other processes may write too). Every committed batch bumps a progress counter,
//! and each projection announces which stream versions its last batch covered ([`Applied`]), so
//! a writer waiting to read its own write learns it without asking the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sparc_store::{
    Checkpoint, Database, Generations, LogReader, RecordedEvent, StoreError, StoreTx,
};
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
    /// Each loop's members, and whether they are the read models (whose changes are announced
    /// to [`Generations`]).
    loops: Vec<(Vec<Arc<dyn Projection>>, bool)>,
    wakers: Arc<[Arc<Notify>]>,
    generations: Generations,
    progress: watch::Sender<u64>,
    applied: Arc<HashMap<String, watch::Sender<Arc<Applied>>>>,
    batch_size: i64,
    poll_interval: Duration,
}

impl ProjectionRunner {
    /// A runner for `read_models`, which share one loop (one read of the log and one
    /// transaction per batch for all of them), and `policies`, one loop each: a policy may wait
    /// for a read model to catch up, so it must not hold the read models back.
    pub fn new(
        db: Database,
        read_models: Vec<Arc<dyn Projection>>,
        policies: Vec<Arc<dyn Projection>>,
    ) -> Self {
        let applied = read_models
            .iter()
            .chain(&policies)
            .map(|p| (p.name().to_owned(), watch::channel(Arc::default()).0))
            .collect();
        let mut loops = Vec::new();
        if !read_models.is_empty() {
            loops.push((read_models, true));
        }
        loops.extend(policies.into_iter().map(|policy| (vec![policy], false)));
        let wakers: Arc<[Arc<Notify>]> = loops.iter().map(|_| Arc::new(Notify::new())).collect();
        Self {
            db,
            loops,
            wakers,
            generations: Generations::default(),
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

    /// Marks each read model in `generations` as changed when a batch changes it, before the
    /// batch is announced, and has the batch's transaction notify other instances.
    pub fn with_generations(mut self, generations: Generations) -> Self {
        self.generations = generations;
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

    /// Spawns the loops; they stop when `shutdown` turns true.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.loops
            .iter()
            .zip(self.wakers.iter())
            .map(|((members, read_models), waker)| {
                let worker = Worker {
                    db: self.db.clone(),
                    reader: LogReader::new(&self.db),
                    members: members.clone(),
                    batch_size: self.batch_size,
                    generations: read_models.then(|| self.generations.clone()),
                };
                let signals = Signals {
                    waker: waker.clone(),
                    progress: self.progress.clone(),
                    applied: members
                        .iter()
                        .map(|member| self.applied[member.name()].clone())
                        .collect(),
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
        members: vec![projection],
        batch_size,
        generations: None,
    };
    let mut checkpoints = None;
    let mut total = 0;
    loop {
        match worker.step(&mut checkpoints).await? {
            None => return Ok(total),
            Some(batch) => total += batch.events.len() as u64,
        }
    }
}

/// How a loop is woken and announces its batches.
struct Signals {
    waker: Arc<Notify>,
    progress: watch::Sender<u64>,
    /// One per member of the loop, in the same order.
    applied: Vec<watch::Sender<Arc<Applied>>>,
}

/// One loop: the projections it drives (its members) read the log together and commit each
/// batch in one transaction, each under its own checkpoint.
struct Worker {
    db: Database,
    reader: LogReader,
    members: Vec<Arc<dyn Projection>>,
    batch_size: i64,
    /// Where to mark the read models a batch changed (`None`: nobody caches them).
    generations: Option<Generations>,
}

/// A committed batch: the events read, and for each member the index of the first event it
/// applied (`events.len()` when it had applied them all before).
struct Batch {
    events: Vec<RecordedEvent>,
    starts: Vec<usize>,
}

impl Batch {
    /// The events member `index` applied.
    fn of_member(&self, index: usize) -> &[RecordedEvent] {
        &self.events[self.starts[index]..]
    }
}

impl Worker {
    async fn run(self, signals: Signals, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        let mut checkpoints = None;
        let mut failures = 0u32;
        let mut batches = vec![0u64; self.members.len()];
        while !*shutdown.borrow() {
            match self.step(&mut checkpoints).await {
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
                Ok(Some(batch)) => {
                    failures = 0;
                    tracing::debug!(projections = ?names, applied = batch.events.len(), "batch applied");
                    for (index, announce) in signals.applied.iter().enumerate() {
                        let events = batch.of_member(index);
                        if !events.is_empty() {
                            batches[index] += 1;
                            announce.send_replace(Arc::new(Applied::of(batches[index], events)));
                        }
                    }
                    signals.progress.send_modify(|n| *n = n.wrapping_add(1));
                    if (batch.events.len() as i64) < self.batch_size {
                        tokio::time::sleep(LINGER).await;
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    checkpoints = None;
                    let delay = Duration::from_millis(50u64 << failures.min(7));
                    if matches!(error, ProjectionError::NotReady(_)) {
                        tracing::debug!(projections = ?names, %error, "batch postponed");
                    } else {
                        tracing::warn!(projections = ?names, %error, retry_in_ms = delay.as_millis() as u64, "batch failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Applies the next batch, if any. The log is read once, after the earliest of the members'
    /// checkpoints, and outside the transaction (so SQLite's write lock is only taken when there
    /// is work); each member gets the events past its own checkpoint. Inside the transaction
    /// the checkpoints are locked and must still be the ones the batch was read after, else
    /// another instance moved them and the batch is dropped and read again.
    async fn step(
        &self,
        known: &mut Option<Vec<Checkpoint>>,
    ) -> Result<Option<Batch>, ProjectionError> {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        let mut after = match known.take() {
            Some(checkpoints) => checkpoints,
            None => {
                let mut checkpoints = Vec::with_capacity(names.len());
                for name in &names {
                    checkpoints.push(sparc_store::checkpoint::load(&self.db, name).await?);
                }
                checkpoints
            }
        };
        loop {
            *known = Some(after.clone());
            let from = after.iter().copied().min().unwrap_or(Checkpoint::ORIGIN);
            let events = self.reader.read_after(from, self.batch_size).await?;
            let Some(last) = events.last().map(RecordedEvent::checkpoint) else {
                return Ok(None);
            };
            let batch = Batch {
                starts: after
                    .iter()
                    .map(|at| events.partition_point(|e| e.checkpoint() <= *at))
                    .collect(),
                events,
            };
            let mine = |index: usize| Some(batch.of_member(index)).filter(|e| !e.is_empty());
            for (index, member) in self.members.iter().enumerate() {
                if let Some(events) = mine(index) {
                    member.react(events).await?;
                }
            }
            let mut tx = self.db.begin().await?;
            let locked = tx.lock_checkpoints(&names).await?;
            if locked != after {
                tx.rollback().await?;
                after = locked;
                continue;
            }
            let mut moved = Vec::with_capacity(names.len());
            for (index, member) in self.members.iter().enumerate() {
                if let Some(events) = mine(index) {
                    member.apply(&mut tx, events).await?;
                    moved.push(names[index]);
                }
            }
            tx.save_checkpoints(&moved, last).await?;
            if self.generations.is_some() {
                tx.notify_changed(&moved).await?;
            }
            tx.commit().await?;
            if let Some(generations) = &self.generations {
                for name in &moved {
                    generations.bump(name);
                }
            }
            *known = Some(after.iter().map(|at| (*at).max(last)).collect());
            return Ok(Some(batch));
        }
    }
}
