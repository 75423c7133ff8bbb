//! Read-model change notices, so that a cache of read-model answers in any instance learns when
//! one of them may be stale.
//!
//! A transaction that changes read models says which ([`StoreTx::notify_changed`]: Postgres
//! `NOTIFY` on [`CHANNEL`], delivered to every listening instance when it commits, never when it
//! rolls back). Each instance follows the channel ([`follow`]) and keeps a generation per read
//! model ([`Generations`]): a cached answer is good while the generation it was computed at is
//! still current. The process that commits a change also bumps the generation itself, at once,
//! so its own next read never waits for the notice to come back.
//!
//! A change is named as narrowly as it is known: `tasks/<owner>` ([`scope`]) when only one
//! owner's rows moved, which leaves every other owner's cached lists standing and moves only
//! that owner's and the all-seeing view (`tasks`); `tasks` alone when the whole read model may
//! have changed (a rebuild, a retried event), which moves every view of it.
//!
//! A generation exists only while the instance is listening: before the first `LISTEN` and after
//! a lost connection until it is listening again (everything is then bumped, since notices may
//! have been missed), [`Generations::current`] is `None` and callers do not cache. On SQLite the
//! one process that serves also runs the projections and bumps its generations itself; another
//! process (the command line's rebuild or retry) changes read models only with
//! [`StoreTx::notify_changed`], which counts the change in the `read_model_changes` row that
//! [`follow`] polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

use crate::checkpoint::{Checkpoint, PG_SAVE_CHECKPOINTS};
use crate::db::{Database, StoreTx};
use crate::error::StoreError;

/// The Postgres notification channel; the payload is the read model's name.
pub const CHANNEL: &str = "sparc_read_models";

/// How long [`follow`] waits before listening again after a failure.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// How often [`follow`] looks at the change counter of a SQLite database.
const SQLITE_POLL: Duration = Duration::from_millis(100);

/// The name of the part of `read_model` that belongs to `owner`: a change named so moves that
/// owner's views and the all-seeing view, not other owners' (see the module documentation).
pub fn scope(read_model: &str, owner: &str) -> String {
    format!("{read_model}/{owner}")
}

/// The generation name of a list of `read_model` as `owner` sees it (`None`: everyone's rows).
pub fn view(read_model: &str, owner: Option<uuid::Uuid>) -> String {
    match owner {
        Some(owner) => scope(read_model, &owner.to_string()),
        None => read_model.to_owned(),
    }
}

/// Where the counters of `name`'s generation are kept: the whole read model's counter, and the
/// scope's own (an owner's), or the counter every scope of the read model moves (the
/// all-seeing view).
fn counters_of(name: &str) -> (&str, String) {
    match name.split_once('/') {
        Some((read_model, _)) => (read_model, name.to_owned()),
        None => (name, scope(name, "*")),
    }
}

impl StoreTx {
    /// [`save_checkpoints`](Self::save_checkpoints) and
    /// [`notify_changed`](Self::notify_changed), in one statement on Postgres.
    pub async fn save_checkpoints_and_notify(
        &mut self,
        names: &[&str],
        checkpoint: Checkpoint,
        read_models: &[&str],
    ) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) if !names.is_empty() && !read_models.is_empty() => {
                sqlx::query(&format!(
                    "WITH saved AS ({PG_SAVE_CHECKPOINTS}) \
                     SELECT pg_notify($4, name) FROM unnest($5::text[]) AS name"
                ))
                .bind(names)
                .bind(checkpoint.transaction_id)
                .bind(checkpoint.position)
                .bind(CHANNEL)
                .bind(read_models)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Self::Postgres(_) => {
                if !names.is_empty() {
                    self.save_checkpoints(names, checkpoint).await?;
                }
                self.notify_changed(read_models).await
            }
            // The loop that calls this bumps its own process's generations: on SQLite that is
            // the one that caches.
            Self::Sqlite(_) => {
                if !names.is_empty() {
                    self.save_checkpoints(names, checkpoint).await?;
                }
                Ok(())
            }
        }
    }

    /// Announces, at commit, that this transaction changed `read_models` (names or
    /// [`scope`]s). On SQLite, where only another process needs telling (see the module
    /// documentation), it counts a change of everything.
    pub async fn notify_changed<S: AsRef<str>>(
        &mut self,
        read_models: &[S],
    ) -> Result<(), StoreError> {
        if read_models.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(tx) => {
                let names: Vec<&str> = read_models.iter().map(AsRef::as_ref).collect();
                sqlx::query("SELECT pg_notify($1, name) FROM unnest($2::text[]) AS name")
                    .bind(CHANNEL)
                    .bind(names)
                    .execute(&mut **tx)
                    .await?;
            }
            Self::Sqlite(tx) => {
                sqlx::query("UPDATE read_model_changes SET counter = counter + 1")
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Per-read-model generations: a number that changes whenever the read model may have changed.
/// Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Generations(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    listening: AtomicBool,
    /// Bumped for every read model at once (after notices may have been missed).
    epoch: AtomicU64,
    counters: Mutex<HashMap<String, u64>>,
    /// Woken at every bump, for readers that wait for a change rather than cache.
    bumped: Notify,
}

impl Generations {
    /// The current generation of the view `name` (a read model: everyone's rows; a
    /// [`scope`]: one owner's), or `None` while changes made elsewhere could go unnoticed (not
    /// listening): then nothing may be cached.
    pub fn current(&self, name: &str) -> Option<u64> {
        if !self.0.listening.load(Ordering::Acquire) {
            return None;
        }
        let (whole, part) = counters_of(name);
        let counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        let count = |name: &str| counters.get(name).copied().unwrap_or(0);
        // Every part only grows, so the sum changes with every bump of any.
        Some(self.0.epoch.load(Ordering::Acquire) + count(whole) + count(&part))
    }

    /// Marks `name` as changed: a read model (every view of it) or a [`scope`] (that owner's
    /// view and the all-seeing one).
    pub fn bump(&self, name: &str) {
        let mut counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut add = |name: &str| match counters.get_mut(name) {
            Some(counter) => *counter += 1,
            None => {
                counters.insert(name.to_owned(), 1);
            }
        };
        match name.split_once('/') {
            Some((read_model, _)) => {
                add(name);
                add(&scope(read_model, "*"));
            }
            None => add(name),
        }
        drop(counters);
        self.0.bumped.notify_waiters();
    }

    /// Wakes its waiters at the next bump of any read model (a bump before it is enabled or
    /// first polled is missed: enable it before reading what it waits to change).
    pub fn next_bump(&self) -> Notified<'_> {
        self.0.bumped.notified()
    }

    /// Marks every read model as changed.
    pub fn bump_all(&self) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        self.0.bumped.notify_waiters();
    }

    /// Generations that count as listening from the start, for tests that bump them by hand.
    #[cfg(feature = "testing")]
    pub fn listening() -> Self {
        let generations = Self::default();
        generations.set_listening(true);
        generations
    }

    fn set_listening(&self, listening: bool) {
        // Whatever was cached before this moment may have missed a notice.
        self.bump_all();
        self.0.listening.store(listening, Ordering::Release);
    }
}

/// Follows the change notices of `db` into `generations` until `shutdown` turns true, on a
/// connection of its own; on SQLite, the change counter of other processes.
pub async fn follow(db: Database, generations: Generations, mut shutdown: watch::Receiver<bool>) {
    let pool = match db {
        Database::Postgres(pool) => pool,
        Database::Sqlite(pool) => return poll_sqlite(pool, generations, shutdown).await,
    };
    let options = (*pool.connect_options()).clone();
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    while !*shutdown.borrow() {
        let mut listener = match listen(&own).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "could not listen for read-model changes; caches are off");
                tokio::select! {
                    _ = tokio::time::sleep(RELISTEN_AFTER) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        generations.set_listening(true);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notice)) => generations.bump(notice.payload()),
                    // The connection was lost and is back (listening again): notices may
                    // have been missed meanwhile.
                    Ok(None) => generations.bump_all(),
                    Err(error) => {
                        tracing::warn!(%error, "lost the read-model change notices; caches are off");
                        break;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        generations.set_listening(false);
    }
    own.close().await;
}

/// [`follow`] on SQLite: every [`SQLITE_POLL`], reads the counter another process moves when
/// it changes read models, and bumps everything when it moved. Caching is on while it reads.
async fn poll_sqlite(
    pool: sqlx::SqlitePool,
    generations: Generations,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen: Option<i64> = None;
    let mut ticks = tokio::time::interval(SQLITE_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        let read: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT counter FROM read_model_changes")
                .fetch_one(&pool)
                .await;
        match (read, seen) {
            (Ok(counter), Some(before)) if counter == before => {}
            (Ok(counter), Some(_)) => {
                seen = Some(counter);
                generations.bump_all();
            }
            (Ok(counter), None) => {
                seen = Some(counter);
                generations.set_listening(true);
            }
            (Err(error), Some(_)) => {
                tracing::warn!(%error, "could not read the read-model change counter; caches are off");
                seen = None;
                generations.set_listening(false);
            }
            (Err(_), None) => {}
        }
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => {}
        }
    }
    generations.set_listening(false);
}

async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
