//! The outbox relay: numbers committed changes in log order and publishes them, at least once.
//!
//! **When a row is safe.** Each publishing projection (`tasks`, `projects`, `executions`,
//! `agents`) writes its outbox rows in the transaction that moves its checkpoint, and reads the
//! log in `(transaction_id, position)` order. So once every one of them has a checkpoint at or
//! past `c`, every row at or before `c` is committed and no new one can appear there: the rows
//! up to the smallest of the four checkpoints are a fixed prefix of the log, safe to number.
//!
//! **Numbering.** The read-model loop numbers its own rows when it is next in line
//! ([`sparc_store::outbox`]); the relay numbers the rest: one transaction gives the safe rows
//! `published_seq = max + 1, max + 2, …` in log order. That number is the change's `event_id`:
//! gap-free, and final once committed. When the read-model loop runs in this process it hands
//! the relay the rows it numbered as soon as they are committed ([`Relay::with_feed`]); rows
//! that follow the last one published go out at once, without reading the outbox, and anything
//! else (a gap, a wake-up without rows) makes the relay read the outbox as usual. While the
//! read-model loop runs in another instance, that instance's change notices wake the relay
//! instead ([`Relay::with_change_notices`]).
//!
//! **At least once.** Numbers are assigned *before* publishing, so a crash can fall between the
//! numbering commit and the publish. The relay therefore records in `outbox_relay` the last
//! event id the bus acknowledged, and each pass publishes every numbered row after it, in
//! order. The active relay keeps the mark in memory and records it when it is idle, at least
//! every second under load, and when it stops. After a crash the rows numbered but not
//! recorded as acknowledged are published again with the same `event_id` (JetStream drops
//! repeats by `Nats-Msg-Id`, gateways by `event_id`): nothing is lost, nothing is numbered twice.
//!
//! **One active relay.** On Postgres a relay publishes only while it holds a session advisory
//! lock on a connection of its own; the others poll the lock and take over when its holder's
//! connection closes. Numbering also takes a transaction lock, so even two relays that both
//! believed themselves active could not number a row twice. SQLite is one process: its relay
//! is always active.
//!
//! **Retention.** Rows older than the retention period (24 h) that are acknowledged are deleted
//! in event order, and the last deleted event id is recorded so a gateway knows when a client's
//! `last_event_id` is too old to replay.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sparc_store::outbox::{CommittedBatch, LAST_NUMBERED, NumberedChange, ROW_WAITING};
use sparc_store::session_lock::{Asking, SessionLock};
use sparc_store::{Database, Generations, StoreError, on_backend};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::outbox::{CHANGE_COLUMNS, ChangeRow, OutboxError, from_numbered, to_change};
use crate::{BusError, ChangeBus, ChangeKind};

/// Why a relay pass failed; the relay retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The bus did not accept the changes.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The relay's row in `outbox_relay`.
const RELAY: &str = "relay";
/// The session lock the active relay holds (Postgres).
const LEADER_LOCK: &str = "sparc.outbox_relay.leader";

/// Publishes the outbox to a [`ChangeBus`]; see the module documentation.
pub struct Relay {
    db: Database,
    bus: Arc<dyn ChangeBus>,
    batch_size: i64,
    poll_interval: Duration,
    standby_interval: Duration,
    retention: Duration,
    feed: Option<broadcast::Receiver<CommittedBatch>>,
    notices: Option<ChangeNotices>,
}

/// The read-model change notices this process hears, and whether its own read-model loop runs
/// (whose batches come through the feed instead).
struct ChangeNotices {
    generations: Generations,
    loop_runs_here: watch::Receiver<bool>,
}

impl Relay {
    /// A relay from the outbox of `db` to `bus`: batches of 500, polling every 50 ms, standing
    /// by (polling the lock) every second, keeping 24 h of changes.
    pub fn new(db: Database, bus: Arc<dyn ChangeBus>) -> Self {
        Self {
            db,
            bus,
            batch_size: 500,
            poll_interval: Duration::from_millis(50),
            standby_interval: Duration::from_secs(1),
            retention: Duration::from_secs(24 * 3600),
            feed: None,
            notices: None,
        }
    }

    /// Also wakes whenever the read-model loop of this process commits a batch, and publishes
    /// the rows that batch numbered straight from `feed` when they follow the last change
    /// published (else it reads the outbox): pass the projections' committed batches when they
    /// run in this process, so a change is published as soon as it is committed.
    pub fn with_feed(mut self, feed: broadcast::Receiver<CommittedBatch>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Also wakes at every read-model change notice `generations` hears while
    /// `loop_runs_here` is false: the read-model loop then runs in another instance, whose
    /// batches reach this one only as notices.
    pub fn with_change_notices(
        mut self,
        generations: Generations,
        loop_runs_here: watch::Receiver<bool>,
    ) -> Self {
        self.notices = Some(ChangeNotices {
            generations,
            loop_runs_here,
        });
        self
    }

    /// How long an idle relay sleeps before looking at the outbox again.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a standby relay waits between attempts to become the active one.
    pub fn with_standby_interval(mut self, interval: Duration) -> Self {
        self.standby_interval = interval;
        self
    }

    /// How long changes stay available for replay.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Runs until `shutdown` turns true: stands by until this relay holds the lock, then
    /// publishes every change as it becomes safe.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // A standby keeps the connection it asks on, rather than opening one per attempt.
        let mut standby_connection = None;
        while !*shutdown.borrow() {
            match Leadership::acquire(&self.db, &mut standby_connection).await {
                Ok(Some(leadership)) => {
                    tracing::info!("outbox relay active");
                    self.lead(leadership, &mut shutdown).await;
                }
                Ok(None) => {
                    tracing::debug!("outbox relay standing by");
                    sleep_or_shutdown(self.standby_interval, &mut shutdown).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay could not ask for the lock");
                    sleep_or_shutdown(self.standby_interval, &mut shutdown).await;
                }
            }
        }
    }

    /// Publishes while the lock holds; returns on shutdown or when the lock is lost.
    async fn lead(&mut self, mut leadership: Leadership, shutdown: &mut watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut lock_checked = Instant::now();
        let mut pruned: Option<Instant> = None;
        let mut mark = None;
        let mut fed = None;
        while !*shutdown.borrow() {
            // On shutdown a pass gets a moment to finish (so a clean handover repeats nothing);
            // one stuck on an unreachable bus is dropped, which loses nothing: the mark moves
            // only after the bus acknowledged.
            let pass = {
                let pass = self.pass(&mut mark, fed.take());
                tokio::pin!(pass);
                tokio::select! {
                    pass = &mut pass => pass,
                    _ = shutdown.changed() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut pass).await {
                        Ok(pass) => pass,
                        Err(_) => break,
                    },
                }
            };
            match pass {
                Ok(0) => {
                    failures = 0;
                    self.record_or_warn(&mut mark).await;
                    fed = self.idle(self.poll_interval, shutdown).await;
                }
                Ok(done) => {
                    failures = 0;
                    if mark
                        .as_ref()
                        .is_some_and(|m| m.recorded_at.elapsed() >= RECORD_MARK_EVERY)
                    {
                        self.record_or_warn(&mut mark).await;
                    }
                    // A pass short of a full batch took everything there was: wait a moment
                    // for the next wake-up rather than look again at once (changes another
                    // instance's loop applied wake nobody here, hence the short wait; the mark
                    // is recorded when a pass finds nothing).
                    if (done as i64) < self.batch_size {
                        fed = self
                            .idle(AFTER_PARTIAL_PASS.min(self.poll_interval), shutdown)
                            .await;
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(50u64 << failures.min(5));
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox relay pass failed");
                    sleep_or_shutdown(delay, shutdown).await;
                }
            }
            if lock_checked.elapsed() >= LOCK_CHECK_EVERY {
                if !leadership.holds().await {
                    tracing::warn!("outbox relay lost its lock; standing by");
                    self.record_or_warn(&mut mark).await;
                    return;
                }
                lock_checked = Instant::now();
            }
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                match self.prune().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "outbox pruned"),
                    Err(error) => tracing::warn!(%error, "outbox pruning failed"),
                }
                pruned = Some(Instant::now());
            }
        }
        self.record_or_warn(&mut mark).await;
        leadership.release().await;
    }

    /// Records the acknowledged mark if it moved; a failure is only logged (the rows after the
    /// recorded mark are published again after a crash, which loses nothing).
    async fn record_or_warn(&self, mark: &mut Option<Mark>) {
        if let Some(mark) = mark
            && let Err(error) = self.record(mark).await
        {
            tracing::warn!(%error, "outbox relay could not record its mark");
        }
    }

    /// Waits for a wake-up, `at_most` or shutdown; returns what the read-model loop handed
    /// over, if that was the wake-up.
    async fn idle(
        &mut self,
        at_most: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<CommittedBatch> {
        let poll = tokio::time::sleep(at_most);
        let notice = async {
            match &self.notices {
                Some(notices) if !*notices.loop_runs_here.borrow() => {
                    notices.generations.next_bump().await;
                }
                _ => std::future::pending().await,
            }
        };
        let fed = async {
            match &mut self.feed {
                Some(feed) => match feed.recv().await {
                    Ok(fed) => Some(Some(fed)),
                    // Missed batches: the outbox has them.
                    Err(broadcast::error::RecvError::Lagged(_)) => Some(None),
                    // The projections stopped; keep polling.
                    Err(broadcast::error::RecvError::Closed) => None,
                },
                None => std::future::pending().await,
            }
        };
        let closed = tokio::select! {
            received = fed => match received {
                Some(fed) => return fed,
                None => true,
            },
            () = notice => false,
            _ = poll => false,
            _ = shutdown.changed() => false,
        };
        if closed {
            self.feed = None;
        }
        None
    }

    /// One pass: numbers the rows that became safe, publishes what is numbered and not yet
    /// acknowledged, and records the new mark. Returns how much it did (0: nothing to do).
    ///
    /// # Errors
    /// The database or the bus failed; nothing acknowledged is lost and the pass can be
    /// repeated.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let mut mark = None;
        let done = self.pass(&mut mark, None).await?;
        if let Some(mark) = &mut mark {
            self.record(mark).await?;
        }
        Ok(done)
    }

    /// A pass that keeps the acknowledged mark in `mark` (read from the database when `None`)
    /// without recording it. Rows `fed` by the read-model loop that follow the mark are
    /// published as they are; otherwise the pass reads the outbox.
    async fn pass(
        &self,
        mark: &mut Option<Mark>,
        fed: Option<CommittedBatch>,
    ) -> Result<usize, RelayError> {
        if let (Some(mark), Some(fed)) = (mark.as_mut(), fed)
            && let Some(first) = fed.first()
            && first.event_id == mark.acknowledged + 1
        {
            return self.publish_fed(mark, &fed).await;
        }
        let numbered = self.number().await?;
        let acknowledged = match mark {
            Some(mark) => mark.acknowledged,
            None => {
                let recorded = self.acknowledged_through().await?;
                *mark = Some(Mark {
                    acknowledged: recorded,
                    recorded,
                    recorded_at: Instant::now(),
                });
                recorded
            }
        };
        let (published, last) = self.publish_after(acknowledged).await?;
        if let (Some(mark), Some(last)) = (mark.as_mut(), last) {
            mark.acknowledged = last;
        }
        Ok(numbered.max(published))
    }

    /// Numbers up to a batch of rows that are safe to publish, in log order, and commits.
    /// Returns how many it numbered.
    ///
    /// # Errors
    /// The database failed; nothing was numbered.
    pub async fn number(&self) -> Result<usize, RelayError> {
        // Usually the read-model loop has numbered everything: one look at the partial index.
        let unnumbered: bool = on_backend!(Database &self.db, pool => {
            sqlx::query_scalar(&format!("SELECT {ROW_WAITING}"))
                .fetch_one(pool)
                .await?
        });
        if !unnumbered {
            return Ok(0);
        }
        let Some((transaction_id, position)) = self.safe_through().await? else {
            return Ok(0);
        };
        let waiting: bool = on_backend!(Database &self.db, pool => {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_seq IS NULL \
                 AND (transaction_id, position) <= ($1, $2))",
            )
            .bind(transaction_id)
            .bind(position)
            .fetch_one(pool)
            .await?
        });
        if !waiting {
            return Ok(0);
        }
        // The outer `published_seq IS NULL` is re-checked on rows another transaction changed
        // meanwhile, so a row is never numbered twice.
        let numbering = format!(
            "UPDATE outbox SET published_seq = numbered.seq FROM ( \
                 SELECT position, \
                        {LAST_NUMBERED} + row_number() OVER (ORDER BY transaction_id, position) AS seq \
                 FROM outbox \
                 WHERE published_seq IS NULL AND (transaction_id, position) <= ($1, $2) \
                 ORDER BY transaction_id, position LIMIT $3) AS numbered \
             WHERE outbox.position = numbered.position AND outbox.published_seq IS NULL"
        );
        let mut tx = self.db.begin().await?;
        tx.lock_outbox_numbering().await?;
        let numbered = on_backend!(StoreTx &mut tx, conn => sqlx::query(&numbering)
            .bind(transaction_id)
            .bind(position)
            .bind(self.batch_size)
            .execute(&mut *conn)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(numbered as usize)
    }

    /// Publishes up to a batch of numbered rows after `acknowledged`, in event order. Returns
    /// how many it published and the last event id the bus acknowledged (`None`: nothing to
    /// publish).
    ///
    /// # Errors
    /// The database or the bus failed; the mark does not move, so the rows are published again
    /// by the next pass.
    async fn publish_after(&self, acknowledged: i64) -> Result<(usize, Option<i64>), RelayError> {
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM outbox WHERE published_seq > $1 \
             ORDER BY published_seq LIMIT $2"
        );
        let rows: Vec<ChangeRow> = on_backend!(Database &self.db, pool => {
            sqlx::query_as(&sql)
                .bind(acknowledged)
                .bind(self.batch_size)
                .fetch_all(pool)
                .await?
        });
        let Some(last) = rows.last().map(|row| row.0) else {
            return Ok((0, None));
        };
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            match to_change(row) {
                Ok(change) => changes.push(Arc::new(change)),
                // Publishing cannot mend a broken row; gateways skip it the same way.
                Err(error @ OutboxError::Corrupt { .. }) => {
                    tracing::error!(%error, "outbox row skipped");
                }
                Err(OutboxError::Database(error)) => return Err(error.into()),
            }
        }
        self.bus.publish(&changes).await?;
        Ok((changes.len(), Some(last)))
    }

    /// Publishes rows the read-model loop numbered and committed, which follow `mark`, and
    /// moves the mark past them. Returns how many it published.
    async fn publish_fed(
        &self,
        mark: &mut Mark,
        fed: &[NumberedChange],
    ) -> Result<usize, RelayError> {
        let mut changes = Vec::with_capacity(fed.len());
        for row in fed {
            match from_numbered(row.clone()) {
                Ok(change) => changes.push(Arc::new(change)),
                Err(error) => tracing::error!(%error, "outbox row skipped"),
            }
        }
        self.bus.publish(&changes).await?;
        if let Some(last) = fed.last() {
            mark.acknowledged = last.event_id;
        }
        Ok(fed.len())
    }

    /// Records `mark`'s acknowledged event id in `outbox_relay` if it moved (never backwards).
    async fn record(&self, mark: &mut Mark) -> Result<(), RelayError> {
        if mark.acknowledged <= mark.recorded {
            return Ok(());
        }
        on_backend!(Database &self.db, pool => {
            sqlx::query(
                "INSERT INTO outbox_relay (name, published_seq, pruned_seq) VALUES ($1, $2, 0) \
                 ON CONFLICT (name) DO UPDATE SET published_seq = CASE \
                 WHEN excluded.published_seq > outbox_relay.published_seq \
                 THEN excluded.published_seq ELSE outbox_relay.published_seq END",
            )
            .bind(RELAY)
            .bind(mark.acknowledged)
            .execute(pool)
            .await
            .map(drop)?
        });
        mark.recorded = mark.acknowledged;
        mark.recorded_at = Instant::now();
        Ok(())
    }

    /// Deletes acknowledged rows older than the retention period, oldest first, and records
    /// the last deleted event id. Returns how many rows it deleted.
    ///
    /// # Errors
    /// The database failed; what was deleted stays deleted and recorded.
    pub async fn prune(&self) -> Result<u64, RelayError> {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = (Utc::now() - retention).to_rfc3339_opts(SecondsFormat::Micros, true);
        let acknowledged = self.acknowledged_through().await?;
        let mut deleted = 0;
        loop {
            let through: Option<i64> = on_backend!(Database &self.db, pool => {
                sqlx::query_scalar(
                    "SELECT max(published_seq) FROM (SELECT published_seq FROM outbox \
                     WHERE published_seq <= $1 AND recorded_at < $2 \
                     ORDER BY published_seq LIMIT $3) AS old",
                )
                .bind(acknowledged)
                .bind(&cutoff)
                .bind(PRUNE_BATCH)
                .fetch_one(pool)
                .await?
            });
            let Some(through) = through else {
                return Ok(deleted);
            };
            let mut tx = self.db.begin().await?;
            let delete = "DELETE FROM outbox WHERE published_seq <= $1";
            let record = "UPDATE outbox_relay SET pruned_seq = $1 WHERE name = $2";
            deleted += on_backend!(StoreTx &mut tx, conn => {
                let rows = sqlx::query(delete).bind(through).execute(&mut *conn).await?;
                sqlx::query(record)
                    .bind(through)
                    .bind(RELAY)
                    .execute(&mut *conn)
                    .await?;
                rows.rows_affected()
            });
            tx.commit().await?;
        }
    }

    /// The last event id the bus acknowledged (0 before the first).
    async fn acknowledged_through(&self) -> Result<i64, RelayError> {
        Ok(on_backend!(Database &self.db, pool => {
            sqlx::query_scalar::<_, i64>("SELECT published_seq FROM outbox_relay WHERE name = $1")
                .bind(RELAY)
                .fetch_optional(pool)
                .await?
                .unwrap_or(0)
        }))
    }

    /// The smallest checkpoint of the publishing projections, or `None` while one of them has
    /// none yet.
    async fn safe_through(&self) -> Result<Option<(i64, i64)>, RelayError> {
        let names: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.read_model()).collect();
        let checkpoints: Vec<(i64, i64)> = on_backend!(Database &self.db, pool => {
            sqlx::query_as(
                "SELECT transaction_id, position FROM checkpoints WHERE name IN ($1, $2, $3, $4)",
            )
            .bind(names[0])
            .bind(names[1])
            .bind(names[2])
            .bind(names[3])
            .fetch_all(pool)
            .await?
        });
        Ok(if checkpoints.len() == names.len() {
            checkpoints.into_iter().min()
        } else {
            None
        })
    }
}

/// The last event id the bus acknowledged, as the active relay knows it, and the last one it
/// recorded in `outbox_relay`.
struct Mark {
    acknowledged: i64,
    recorded: i64,
    recorded_at: Instant,
}

/// How long a relay waits for a wake-up after a pass that published less than a batch.
const AFTER_PARTIAL_PASS: Duration = Duration::from_millis(5);
/// How often a busy relay records its acknowledged mark (an idle one records at once).
const RECORD_MARK_EVERY: Duration = Duration::from_secs(1);
/// How long a pass may still run once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the active relay checks that its lock connection is alive.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the active relay deletes changes beyond retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per pruning transaction.
const PRUNE_BATCH: i64 = 10_000;

/// The right to publish.
enum Leadership {
    /// SQLite: the only process.
    Sole,
    /// Postgres: the relay's session lock.
    Locked(SessionLock),
}

impl Leadership {
    /// Takes the lock if it is free; `None` if another relay holds it (see
    /// [`SessionLock::try_acquire`] for `asking`).
    async fn acquire(db: &Database, asking: &mut Asking) -> Result<Option<Self>, sqlx::Error> {
        match db {
            Database::Sqlite(_) => Ok(Some(Self::Sole)),
            Database::Postgres(pool) => Ok(SessionLock::try_acquire(pool, LEADER_LOCK, asking)
                .await?
                .map(Self::Locked)),
        }
    }

    /// Whether the lock is still held (its connection still answers).
    async fn holds(&mut self) -> bool {
        match self {
            Self::Sole => true,
            Self::Locked(lock) => lock.holds().await,
        }
    }

    /// Gives the lock up (closing its connection releases it).
    async fn release(self) {
        if let Self::Locked(lock) = self {
            lock.release().await;
        }
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}
