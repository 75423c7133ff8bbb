//! The projection runner: loops that read the log in global order after their projections'
//! checkpoints, hand each batch to the projections inside a transaction, and commit the
//! read-model changes with the new checkpoints. A crash before the commit leaves both as they
//! were, so the batch is simply applied again after restart: nothing is lost or doubled.
//!
//! The read models share one loop: one read of the log and one transaction per batch for all
//! of them (each keeps its own checkpoint, so one can be rebuilt or added on its own), which
//! also writes the batch's changes for clients to the outbox ([`crate::outbox`]). Each policy
//! has a loop of its own, since it may wait for a read model; it passes over batches with
//! nothing for it without a transaction and saves how far it read at least every second.
//!
//! Loops wake when a local command pokes them ([`ProjectionHandle::poke`]) or after a short poll
//! interval (other processes may write too). With several instances on one PostgreSQL database
//! each loop runs in one of them and stands by in the others ([`crate::leadership`]); a poke of
//! a loop led elsewhere wakes the instance that leads it. Each projection counts the batches
//! that changed it ([`ProjectionHandle::applied`]) and remembers the streams it applied lately,
//! so a writer waiting to read its own write learns it without asking the database. A batch of
//! the read models also goes to the outbox relay once committed ([`ProjectionHandle::committed`]:
//! the changes it numbered, or just a wake-up), moves their [`Generations`] and sends a change
//! notice to other instances (caches key on them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sparc_store::outbox::{Advance, CommittedBatch, NumberedChange};
use sparc_store::parked::ParkedStream;
use sparc_store::{
    Checkpoint, Database, Generations, LogReader, Planning, RecordedEvent, StoreError, StoreTx,
};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use crate::fault::Fault;
use crate::isolation::{self, Parking};
use crate::leadership::Leadership;
use crate::outbox::Outgoing;

/// How long a policy loop waits after a poke, or after a batch that did not fill up, before
/// reading the log: under load it reads the writes of that moment in one go instead of a few
/// at a time (each read is a round trip and a pooled connection's test), and no writer waits
/// for a policy.
const LINGER: Duration = Duration::from_millis(20);

/// How long the read models' loop waits after a batch that did not fill up before reading the
/// log again, unless someone waits for it ([`ProjectionHandle::poke`]). Under a steady stream
/// of writes nobody waits for (creates), its batches would otherwise hold an event or two, and
/// each batch is a transaction of several statements: waiting this long makes them a few
/// times fuller and the work per write about a third less (see `bench/README.md`).
const READ_MODELS_LINGER: Duration = Duration::from_millis(5);

/// The `application_name` of the loops' PostgreSQL connections (see [`Database::dedicated`]).
pub const LOOPS_APPLICATION_NAME: &str = "sparc projections";

/// How soon a loop whose projection waits for another one ([`ProjectionError::NotReady`])
/// looks again.
const NOT_READY_RETRY: Duration = Duration::from_millis(20);

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
    /// A policy's command failed (the cause is the source).
    #[error("a policy's command failed")]
    Command(#[source] CommandFailure),
}

/// Why a policy's command failed.
pub type CommandFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A consumer of the log: a read model, or a policy that reacts to events.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Its name: the checkpoint's name and, for read models, the table's.
    fn name(&self) -> &str;

    /// Read models: applies a batch of events (in global order) inside `tx`, which also saves
    /// the checkpoint, and adds the changes clients should see to `outgoing` (published read
    /// models). It must be deterministic: the same batch on the same state gives the same
    /// result.
    async fn apply(
        &self,
        _tx: &mut StoreTx,
        _events: &[RecordedEvent],
        _outgoing: &mut Outgoing,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Whether `event` concerns this projection: a batch counts as a change of the projection
    /// (announced, marked in its generation, notified) only if one of its events does.
    fn concerns(&self, _event: &RecordedEvent) -> bool {
        true
    }

    /// Whether it uses the events' metadata: a loop none of whose members does reads the log
    /// without it (see [`LogReader::without_metadata`]) and hands them JSON null instead.
    fn reads_metadata(&self) -> bool {
        true
    }

    /// Whether it is a policy (reacts to events) rather than a read model (applies them).
    fn reacts(&self) -> bool {
        false
    }

    /// Policies: reacts to a batch by issuing commands, before the checkpoint transaction opens
    /// (a command needs the write lock that transaction would hold on SQLite). A crash after
    /// the reaction repeats it, so reactions must be idempotent.
    async fn react(&self, _events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// The streams a projection applied lately, with the last version of each: at least the last
/// `RECENT_STREAMS` streams it touched (two generations of maps, the older dropped when the
/// newer fills up).
#[derive(Debug, Default)]
struct Recent {
    current: HashMap<String, i64>,
    previous: HashMap<String, i64>,
}

/// Streams a [`Recent`] keeps in its newer generation before it drops the older one.
const RECENT_STREAMS: usize = 50_000;

impl Recent {
    fn record<'a>(&mut self, events: impl IntoIterator<Item = &'a RecordedEvent>) {
        for event in events {
            if self.current.len() >= RECENT_STREAMS
                && !self.current.contains_key(&event.aggregate_id)
            {
                self.previous = std::mem::take(&mut self.current);
            }
            let kept = self
                .current
                .entry(event.aggregate_id.clone())
                .or_insert(event.sequence);
            *kept = (*kept).max(event.sequence);
        }
    }

    fn version(&self, stream: &str) -> Option<i64> {
        let current = self.current.get(stream).copied();
        let previous = self.previous.get(stream).copied();
        current.max(previous)
    }
}

/// What a loop announces per projection: how many batches changed it, and the streams it
/// applied lately.
#[derive(Default)]
struct Announcer {
    batches: watch::Sender<u64>,
    recent: Mutex<Recent>,
}

impl Announcer {
    /// Records the batch's events among the recent streams, then counts the batch: a writer
    /// that sees the count move (or subscribed after it moved) finds its stream in
    /// [`ProjectionHandle::applied_version`].
    fn announce<'a>(&self, events: impl IntoIterator<Item = &'a RecordedEvent>) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(events);
        self.batches.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How a loop is woken: at news of events, or at once by someone waiting for them.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    /// New events: an idle loop reads them now, a lingering one when its linger ends.
    news: Notify,
    /// Someone waits for the loop: it stops lingering too.
    waiting: Notify,
}

impl Wake {
    /// New events, nobody waiting for them.
    pub(crate) fn nudge(&self) {
        self.news.notify_one();
    }

    /// Someone waits for the loop.
    pub(crate) fn poke(&self) {
        self.news.notify_one();
        self.waiting.notify_one();
    }

    /// Resolves at the next nudge or poke (or at once for one that came meanwhile).
    pub(crate) async fn news(&self) {
        self.news.notified().await;
    }

    /// Resolves at the next poke (or at once for one that came meanwhile).
    pub(crate) async fn waiting(&self) {
        self.waiting.notified().await;
    }
}

/// Lets writers wake the projections and wait for them to advance.
#[derive(Clone)]
pub struct ProjectionHandle {
    wakers: Arc<[Arc<Wake>]>,
    leadership: Leadership,
    /// Each loop's members' names, by loop.
    members: Arc<[Vec<String>]>,
    /// The index of the read models' loop, if there is one.
    read_models_loop: Option<usize>,
    committed: broadcast::Sender<CommittedBatch>,
    announcers: Arc<HashMap<String, Announcer>>,
    consumers: Arc<[Arc<dyn Projection>]>,
}

/// Committed batches a slow receiver may fall behind by before it misses some (and reads the
/// outbox instead).
const COMMITTED_BACKLOG: usize = 1024;

impl ProjectionHandle {
    /// Wakes every projection loop now instead of at its next poll, here or in the instance
    /// that runs it, for someone who waits for them: a lingering loop stops lingering.
    pub fn poke(&self) {
        self.wake(Wake::poke);
    }

    /// Tells every projection loop, here or in the instance that runs it, that new events are
    /// in the log which nobody waits for yet: an idle loop reads them at once, one that lingers
    /// after a small batch when its linger ends (under a stream of writes, several at a time).
    pub fn nudge(&self) {
        self.wake(Wake::nudge);
    }

    fn wake(&self, how: fn(&Wake)) {
        let mut led_elsewhere = false;
        for (index, waker) in self.wakers.iter().enumerate() {
            if self.leadership.leads(index) {
                how(waker);
            } else {
                led_elsewhere = true;
            }
        }
        if led_elsewhere {
            how(self.leadership.others());
        }
    }

    /// Whether the loop of the projection `name` runs in this instance now (so that
    /// [`applied`](Self::applied) hears of its batches).
    pub fn runs_here(&self, name: &str) -> bool {
        self.members
            .iter()
            .position(|names| names.iter().any(|member| member == name))
            .is_some_and(|index| self.leadership.leads(index))
    }

    /// Follows whether the read models' loop runs in this instance now (its batches then
    /// reach [`committed`](Self::committed); else only their change notices come).
    pub fn follow_read_models_here(&self) -> watch::Receiver<bool> {
        match self.read_models_loop {
            Some(index) => self.leadership.follow(index),
            None => watch::channel(false).1,
        }
    }

    /// A receiver of every batch of the read models that changed one of them, once committed
    /// (what the outbox relay waits for and publishes from).
    pub fn committed(&self) -> broadcast::Receiver<CommittedBatch> {
        self.committed.subscribe()
    }

    /// A receiver of the number of batches that changed the projection `name` in this
    /// process (`None` for a projection this runner does not drive).
    pub fn applied(&self, name: &str) -> Option<watch::Receiver<u64>> {
        self.announcers.get(name).map(|a| a.batches.subscribe())
    }

    /// The projection or policy called `name` that this runner drives (to retry its parked
    /// events).
    pub fn consumer(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.consumers
            .iter()
            .find(|consumer| consumer.name() == name)
            .cloned()
    }

    /// The version of `stream` the projection `name` applied lately in this process, if it
    /// did. Everything announced before a receiver from [`applied`](Self::applied) last saw a
    /// value is in here, as far back as the last 50,000 streams or so.
    pub fn applied_version(&self, name: &str, stream: &str) -> Option<i64> {
        let announcer = self.announcers.get(name)?;
        let recent = announcer.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.version(stream)
    }
}

/// Drives a set of projections.
pub struct ProjectionRunner {
    db: Database,
    /// Each loop's members, and whether they are the read models (whose changes are announced
    /// to [`Generations`]).
    loops: Vec<(Vec<Arc<dyn Projection>>, bool)>,
    wakers: Arc<[Arc<Wake>]>,
    leadership: Leadership,
    generations: Generations,
    committed: broadcast::Sender<CommittedBatch>,
    announcers: Arc<HashMap<String, Announcer>>,
    batch_size: i64,
    poll_interval: Duration,
    read_models_linger: Duration,
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
        let announcers = read_models
            .iter()
            .chain(&policies)
            .map(|p| (p.name().to_owned(), Announcer::default()))
            .collect();
        let mut loops = Vec::new();
        if !read_models.is_empty() {
            loops.push((read_models, true));
        }
        loops.extend(policies.into_iter().map(|policy| (vec![policy], false)));
        let wakers: Arc<[Arc<Wake>]> = loops.iter().map(|_| Arc::default()).collect();
        let leadership = Leadership::new(loops.len(), matches!(db, Database::Sqlite(_)));
        Self {
            db,
            loops,
            wakers,
            leadership,
            generations: Generations::default(),
            committed: broadcast::channel(COMMITTED_BACKLOG).0,
            announcers: Arc::new(announcers),
            batch_size: 1000,
            poll_interval: Duration::from_millis(200),
            read_models_linger: READ_MODELS_LINGER,
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

    /// How long the read models' loop lingers after a batch that did not fill up, unless
    /// poked (default 5 ms).
    pub fn with_read_models_linger(mut self, linger: Duration) -> Self {
        self.read_models_linger = linger;
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
            leadership: self.leadership.clone(),
            members: self.loop_members().into(),
            read_models_loop: self.loops.iter().position(|(_, read_models)| *read_models),
            committed: self.committed.clone(),
            announcers: self.announcers.clone(),
            consumers: self
                .loops
                .iter()
                .flat_map(|(members, _)| members.iter().cloned())
                .collect(),
        }
    }

    /// Each loop's members' names, by loop.
    fn loop_members(&self) -> Vec<Vec<String>> {
        self.loops
            .iter()
            .map(|(members, _)| {
                members
                    .iter()
                    .map(|member| member.name().to_owned())
                    .collect()
            })
            .collect()
    }

    /// Spawns the loops, and on PostgreSQL the task that decides which of them run in this
    /// instance; they stop when `shutdown` turns true. The loops share a pool of their own, a
    /// connection each (see [`Database::dedicated`]).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Database::Postgres(pool) = &self.db {
            tasks.push(tokio::spawn(self.leadership.clone().hold(
                pool.clone(),
                self.loop_members(),
                self.wakers.clone(),
                shutdown.clone(),
            )));
        }
        let db = self.db.dedicated(
            LOOPS_APPLICATION_NAME,
            self.loops.len() as u32,
            Planning::Once,
        );
        let loops = self.loops.iter().zip(self.wakers.iter()).enumerate().map(
            |(index, ((members, read_models), waker))| {
                let worker = Worker {
                    db: db.clone(),
                    reader: reader_for(&db, members),
                    members: members.clone(),
                    batch_size: self.batch_size,
                    drives_read_models: *read_models,
                    generations: self.generations.clone(),
                };
                let signals = Signals {
                    waker: waker.clone(),
                    led: self.leadership.follow(index),
                    committed: self.committed.clone(),
                    announcers: self.announcers.clone(),
                };
                let pauses = Pauses {
                    poll: self.poll_interval,
                    linger: if *read_models {
                        self.read_models_linger
                    } else {
                        LINGER
                    },
                };
                let shutdown = shutdown.clone();
                tokio::spawn(worker.run(signals, pauses, shutdown))
            },
        );
        tasks.extend(loops);
        tasks
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
        reader: reader_for(db, std::slice::from_ref(&projection)),
        members: vec![projection],
        batch_size,
        drives_read_models: false,
        generations: Generations::default(),
    };
    let mut cursor = Cursor::default();
    let mut total = 0;
    loop {
        match worker.step(&mut cursor).await {
            Ok(None) => return Ok(total),
            Ok(Some(batch)) => {
                cursor.isolate = false;
                total += batch.events.len() as u64;
            }
            Err(error) if error.fault() == Fault::Deterministic && !cursor.isolate => {
                cursor.forget();
                cursor.isolate = true;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The log reader of a loop of `members`: without the metadata if none of them reads it.
fn reader_for(db: &Database, members: &[Arc<dyn Projection>]) -> LogReader {
    let reader = LogReader::new(db);
    if members.iter().any(|member| member.reads_metadata()) {
        reader
    } else {
        reader.without_metadata()
    }
}

/// How long a loop waits between reads of the log.
#[derive(Clone, Copy)]
struct Pauses {
    /// Idle, without a nudge or poke.
    poll: Duration,
    /// After a batch that did not fill up: the policies' [`LINGER`] (after a poke, too), or the
    /// read models' linger, which a poke ends.
    linger: Duration,
}

/// How a loop is woken and announces its batches.
struct Signals {
    waker: Arc<Wake>,
    /// Whether this instance runs the loop now (see [`crate::leadership`]).
    led: watch::Receiver<bool>,
    committed: broadcast::Sender<CommittedBatch>,
    announcers: Arc<HashMap<String, Announcer>>,
}

/// One loop: the projections it drives (its members) read the log together and commit each
/// batch in one transaction, each under its own checkpoint.
struct Worker {
    db: Database,
    reader: LogReader,
    members: Vec<Arc<dyn Projection>>,
    batch_size: i64,
    /// Whether this is the loop of the read models: its batches move their generations,
    /// notify other instances and wake the outbox relay.
    drives_read_models: bool,
    generations: Generations,
}

/// A committed batch: the events read, and for each member the index of the first event it
/// applied (`events.len()` when it had applied them all before).
struct Batch {
    events: Vec<RecordedEvent>,
    starts: Vec<usize>,
    /// For each member, whether one of the events it applied concerns it.
    changed: Vec<bool>,
    /// The outbox rows the batch numbered itself.
    numbered: Vec<NumberedChange>,
}

impl Batch {
    /// The events member `index` applied.
    fn of_member(&self, index: usize) -> &[RecordedEvent] {
        &self.events[self.starts[index]..]
    }
}

impl Worker {
    async fn run(self, signals: Signals, pauses: Pauses, mut shutdown: watch::Receiver<bool>) {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        let mut cursor = Cursor {
            passes_unconcerned: !self.drives_read_models,
            ..Cursor::default()
        };
        let mut failures = 0u32;
        let policy = !self.drives_read_models;
        let mut led = signals.led;
        while !*shutdown.borrow() {
            if !*led.borrow_and_update() {
                // Another instance runs the loop and moves its checkpoints meanwhile.
                cursor.forget();
                tokio::select! {
                    changed = led.changed() => {
                        if changed.is_err() {
                            let _ = shutdown.changed().await;
                        }
                    }
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            match self.step(&mut cursor).await {
                Ok(None) => {
                    failures = 0;
                    tokio::select! {
                        _ = signals.waker.news() => {}
                        _ = tokio::time::sleep(pauses.poll) => {}
                        _ = shutdown.changed() => {}
                    }
                    if policy {
                        tokio::time::sleep(pauses.linger).await;
                    }
                }
                Ok(Some(batch)) => {
                    failures = 0;
                    cursor.isolate = false;
                    tracing::debug!(projections = ?names, applied = batch.events.len(), "batch applied");
                    for (index, member) in self.members.iter().enumerate() {
                        if batch.changed[index] {
                            let events =
                                batch.of_member(index).iter().filter(|e| member.concerns(e));
                            signals.announcers[names[index]].announce(events);
                        }
                    }
                    if self.drives_read_models && batch.changed.contains(&true) {
                        // Nobody listening (no relay in this process) is fine.
                        let _ = signals.committed.send(batch.numbered.into());
                    }
                    if (batch.events.len() as i64) < self.batch_size {
                        if policy {
                            tokio::time::sleep(pauses.linger).await;
                        } else {
                            tokio::select! {
                                _ = tokio::time::sleep(pauses.linger) => {}
                                _ = signals.waker.waiting() => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                    }
                }
                Err(error) => {
                    cursor.forget();
                    // Waiting for another projection is no failure: look again soon, without
                    // backing off (it may take a while under load, and the wait must not grow).
                    let delay = if matches!(error, ProjectionError::NotReady(_)) {
                        tracing::debug!(projections = ?names, %error, "batch postponed");
                        NOT_READY_RETRY
                    } else if error.fault() == Fault::Deterministic && !cursor.isolate {
                        // Apply it again at once, each member alone, to find the event.
                        tracing::warn!(projections = ?names, %error, "batch failed; isolating the event");
                        cursor.isolate = true;
                        continue;
                    } else {
                        failures = failures.saturating_add(1);
                        let delay = Duration::from_millis(50u64 << failures.min(7));
                        tracing::warn!(projections = ?names, %error, retry_in_ms = delay.as_millis() as u64, "batch failed");
                        delay
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Applies the next batch, if any. The log is read once, after the earliest of the members'
    /// positions, and outside the transaction (so SQLite's write lock is only taken when there
    /// is work); each member gets the events past its own position. Inside the transaction the
    /// checkpoints are locked and must still be the ones last seen, else another instance moved
    /// them and the batch is dropped and read again from there. A batch that concerns no member
    /// may be passed over without a transaction (see [`Cursor`]).
    async fn step(&self, cursor: &mut Cursor) -> Result<Option<Batch>, ProjectionError> {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        let mut saved = match cursor.saved.take() {
            Some(checkpoints) => checkpoints,
            None => {
                cursor.passed = None;
                let mut checkpoints = Vec::with_capacity(names.len());
                for name in &names {
                    checkpoints.push(sparc_store::checkpoint::load(&self.db, name).await?);
                }
                checkpoints
            }
        };
        loop {
            cursor.saved = Some(saved.clone());
            let after = match &cursor.passed {
                Some((passed, _)) => passed.clone(),
                None => saved.clone(),
            };
            let from = after.iter().copied().min().unwrap_or(Checkpoint::ORIGIN);
            let events = self.reader.read_after(from, self.batch_size).await?;
            let Some(last) = events.last().map(RecordedEvent::checkpoint) else {
                if cursor.overdue() {
                    self.save_passed(cursor, &names).await?;
                }
                return Ok(None);
            };
            let starts: Vec<usize> = after
                .iter()
                .map(|at| events.partition_point(|e| e.checkpoint() <= *at))
                .collect();
            let changed: Vec<bool> = self
                .members
                .iter()
                .zip(&starts)
                .map(|(member, &start)| events[start..].iter().any(|e| member.concerns(e)))
                .collect();
            let mut batch = Batch {
                events,
                starts,
                changed,
                numbered: Vec::new(),
            };
            if cursor.may_pass(&batch) {
                let passed_since = cursor.passed.take().map_or_else(Instant::now, |(_, at)| at);
                let reached = after.iter().map(|at| (*at).max(last)).collect();
                cursor.passed = Some((reached, passed_since));
                return Ok(Some(batch));
            }
            let mut parkings = self.react(&batch, cursor.isolate).await?;
            let moved: Vec<&str> = names
                .iter()
                .zip(&saved)
                .filter_map(|(name, at)| (*at < last).then_some(*name))
                .collect();
            let changed: Vec<&str> = names
                .iter()
                .zip(&batch.changed)
                .filter_map(|(name, changed)| changed.then_some(*name))
                .collect();
            // The views to announce are known once the batch is applied (whose rows moved).
            let advance = Advance {
                names: &moved,
                to: last,
                read_models: &[],
            };
            // The batch that numbers its own rows saves its advance with the read of the
            // locked checkpoints (one round trip fewer); a mismatch below rolls it back.
            let level = publishers_level(&names, &after);
            let mut tx = self.db.begin_locking_checkpoints(&names, level).await?;
            let (locked, numbering_start, parked) = if level {
                let read = tx
                    .read_locked_checkpoints_and_numbering(&names, &advance)
                    .await?;
                (read.checkpoints, read.numbering_start, Some(read.parked))
            } else {
                (tx.read_locked_checkpoints(&names).await?, None, None)
            };
            if locked != saved {
                tx.rollback().await?;
                cursor.passed = None;
                saved = locked;
                continue;
            }
            let (mut outgoing, parked) =
                self.apply(&mut tx, &batch, parked, cursor.isolate).await?;
            let views = if self.drives_read_models {
                changed_views(&changed, outgoing.take_touched())
            } else {
                Vec::new()
            };
            let views: Vec<&str> = views.iter().map(String::as_str).collect();
            parkings.extend(parked);
            park(&mut tx, &names, &parkings).await?;
            batch.numbered = crate::outbox::write(&mut tx, outgoing, numbering_start).await?;
            if level {
                tx.notify_changed(&views).await?;
            } else {
                tx.save_checkpoints_and_notify(advance.names, advance.to, &views)
                    .await?;
            }
            tx.commit().await?;
            for view in &views {
                self.generations.bump(view);
            }
            cursor.saved = Some(saved.iter().map(|at| (*at).max(last)).collect());
            cursor.passed = None;
            return Ok(Some(batch));
        }
    }

    /// Lets the members that are policies react to `batch` (each to the events past its own
    /// checkpoint), event by event if `isolate`; returns the events to park, by member index.
    /// A member's parked streams are read outside the checkpoint transaction, as the reaction
    /// runs outside it: a stream parked meanwhile moved the checkpoint, which the caller's check
    /// of the locked checkpoints sees.
    async fn react(
        &self,
        batch: &Batch,
        isolate: bool,
    ) -> Result<Vec<(usize, Parking)>, ProjectionError> {
        let mut parkings = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            let events = batch.of_member(index);
            if !member.reacts() || events.is_empty() {
                continue;
            }
            let parked = sparc_store::parked::streams_of(&self.db, member.name()).await?;
            let (free, behind) = isolation::split_parked(events, &parked);
            parkings.extend(behind.into_iter().map(|p| (index, p)));
            if isolate {
                let parked = isolation::react_isolated(&**member, &free).await?;
                parkings.extend(parked.into_iter().map(|p| (index, p)));
            } else {
                member.react(&free).await?;
            }
        }
        Ok(parkings)
    }

    /// Applies `batch` inside `tx` to the members that are read models (each the events past
    /// its own checkpoint, less those of the streams it parked: `parked`, or read here if
    /// `None`), member by member in savepoints if `isolate`. Returns the changes for clients
    /// and the events to park, by member index.
    async fn apply(
        &self,
        tx: &mut StoreTx,
        batch: &Batch,
        parked: Option<Vec<ParkedStream>>,
        isolate: bool,
    ) -> Result<(Outgoing, Vec<(usize, Parking)>), ProjectionError> {
        let mut appliers: Vec<String> = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if !member.reacts() && !batch.of_member(index).is_empty() {
                appliers.push(member.name().to_owned());
            }
        }
        let parked = match parked {
            Some(parked) => parked,
            None if appliers.is_empty() => Vec::new(),
            None => tx.parked_streams(&appliers).await?,
        };
        let mut outgoing = Outgoing::default();
        let mut parkings = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            let events = batch.of_member(index);
            if member.reacts() || events.is_empty() {
                continue;
            }
            let mut its_parked = Vec::new();
            for stream in &parked {
                if stream.consumer == member.name() {
                    its_parked.push(stream.clone());
                }
            }
            let (free, behind) = isolation::split_parked(events, &its_parked);
            parkings.extend(behind.into_iter().map(|p| (index, p)));
            if isolate {
                let (applied, parked) =
                    isolation::apply_isolated(&**member, tx, free.into_owned()).await?;
                outgoing.extend(applied);
                parkings.extend(parked.into_iter().map(|p| (index, p)));
            } else {
                member.apply(tx, &free, &mut outgoing).await?;
            }
        }
        Ok((outgoing, parkings))
    }

    /// Saves how far the loop has passed over batches, unless another instance moved the
    /// checkpoints meanwhile (then the next step reads from theirs).
    async fn save_passed(
        &self,
        cursor: &mut Cursor,
        names: &[&str],
    ) -> Result<(), ProjectionError> {
        let (Some(saved), Some((passed, _))) = (cursor.saved.take(), cursor.passed.take()) else {
            cursor.forget();
            return Ok(());
        };
        let mut tx = self.db.begin().await?;
        if tx.lock_checkpoints(names).await? != saved {
            tx.rollback().await?;
            return Ok(());
        }
        for ((name, was), now) in names.iter().zip(&saved).zip(&passed) {
            if now > was {
                tx.save_checkpoints(&[name], *now).await?;
            }
        }
        tx.commit().await?;
        cursor.saved = Some(passed);
        Ok(())
    }
}

/// Parks each of `parkings` (member index, event, why) for its member, named in `names`, and
/// logs it.
async fn park(
    tx: &mut StoreTx,
    names: &[&str],
    parkings: &[(usize, Parking)],
) -> Result<(), ProjectionError> {
    for (index, parking) in parkings {
        tracing::error!(
            consumer = names[*index],
            position = parking.event.position,
            aggregate_type = %parking.event.aggregate_type,
            aggregate_id = %parking.event.aggregate_id,
            event_type = %parking.event.event_type,
            error = %parking.error,
            "event parked"
        );
        tx.park(names[*index], &parking.event, &parking.error)
            .await?;
    }
    Ok(())
}

/// Where a loop stands: its members' checkpoints as last read from or saved to the database
/// (`None`: load them), and how far past them it has read batches that concern none of its
/// members, with when it began to (such a batch needs no transaction: a policy reacts to
/// nothing in it; it is saved with the next batch that does concern a member, or once the
/// loop has passed batches over for [`PASS_OVER_AT_MOST`]; a crash repeats at most that much
/// reading, and reactions are idempotent anyway).
#[derive(Default)]
struct Cursor {
    saved: Option<Vec<Checkpoint>>,
    passed: Option<(Vec<Checkpoint>, Instant)>,
    /// Whether batches may be passed over (policy loops; the read models' checkpoints tell the
    /// outbox relay what is safe to number, so they always move).
    passes_unconcerned: bool,
    /// Whether the next batch is applied member by member, each in a savepoint, finding and
    /// parking the events that fail (after a deterministic failure of the whole batch).
    isolate: bool,
}

/// How long a policy loop passes over batches that do not concern it before it saves how far
/// it has read.
const PASS_OVER_AT_MOST: Duration = Duration::from_secs(1);

impl Cursor {
    /// Forgets everything (after a failure): the next step loads the checkpoints again.
    fn forget(&mut self) {
        self.saved = None;
        self.passed = None;
    }

    /// Whether `batch` may be passed over without a transaction.
    fn may_pass(&self, batch: &Batch) -> bool {
        self.passes_unconcerned && !batch.changed.contains(&true) && !self.overdue()
    }

    /// Whether the loop has passed batches over for long enough that it must save.
    fn overdue(&self) -> bool {
        self.passed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= PASS_OVER_AT_MOST)
    }
}

/// Whether a batch of `members`, read after their checkpoints `after`, is next in line to
/// number its changes: every published read model is a member and all of them start from the
/// same checkpoint, so every existing change comes before the batch's and none can come later.
fn publishers_level(members: &[&str], after: &[Checkpoint]) -> bool {
    let mut starts = crate::catalog::READ_MODELS
        .iter()
        .filter(|model| model.published)
        .map(|model| {
            let index = members.iter().position(|name| *name == model.name)?;
            Some(after[index])
        });
    match starts.next() {
        Some(Some(first)) => starts.all(|start| start == Some(first)),
        _ => false,
    }
}

/// The views a batch changed, to announce: those its read models touched (an owner's rows, see
/// [`Outgoing::touch`]), and the whole of each changed read model that touched none.
fn changed_views(changed: &[&str], touched: Vec<String>) -> Vec<String> {
    let mut views = touched;
    for name in changed {
        let touched_any = views
            .iter()
            .any(|view| view.split('/').next() == Some(*name));
        if !touched_any {
            views.push((*name).to_owned());
        }
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, sequence: i64) -> RecordedEvent {
        RecordedEvent {
            position: sequence,
            transaction_id: 0,
            aggregate_type: "Task".to_owned(),
            aggregate_id: stream.to_owned(),
            sequence,
            event_type: "TaskUpdated".to_owned(),
            event_version: "1".to_owned(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            hash: None,
        }
    }

    #[test]
    fn recent_streams_keep_the_highest_version_applied() {
        let mut recent = Recent::default();
        recent.record(&[event("a", 3), event("b", 1)]);
        recent.record(&[event("a", 2)]);
        assert_eq!(recent.version("a"), Some(3));
        assert_eq!(recent.version("b"), Some(1));
        assert_eq!(recent.version("c"), None);
    }

    #[test]
    fn recent_streams_survive_one_turnover_and_are_dropped_at_the_second() {
        let mut recent = Recent::default();
        recent.record(&[event("first", 1)]);
        let filler = |prefix: &str| -> Vec<RecordedEvent> {
            (0..RECENT_STREAMS)
                .map(|i| event(&format!("{prefix}{i}"), 1))
                .collect()
        };
        recent.record(&filler("x"));
        assert_eq!(
            recent.version("first"),
            Some(1),
            "kept in the older generation"
        );
        recent.record(&filler("y"));
        assert_eq!(recent.version("first"), None, "dropped with it");
        assert_eq!(recent.version("y0"), Some(1));
    }
}
