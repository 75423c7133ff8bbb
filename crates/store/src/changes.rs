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
//! A generation exists only while the instance is listening: before the first `LISTEN`, after a
//! lost connection until it is listening again (everything is then bumped, since notices may
//! have been missed), and on SQLite (where another process, the command line, may change the
//! database without a notice), [`Generations::current`] is `None` and callers do not cache.

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
            _ => {
                if !names.is_empty() {
                    self.save_checkpoints(names, checkpoint).await?;
                }
                self.notify_changed(read_models).await
            }
        }
    }

    /// Announces, at commit, that this transaction changed `read_models` (Postgres; nothing on
    /// SQLite, whose caches are off).
    pub async fn notify_changed(&mut self, read_models: &[&str]) -> Result<(), StoreError> {
        if let Self::Postgres(tx) = self
            && !read_models.is_empty()
        {
            sqlx::query("SELECT pg_notify($1, name) FROM unnest($2::text[]) AS name")
                .bind(CHANNEL)
                .bind(read_models)
                .execute(&mut **tx)
                .await?;
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
    /// The current generation of `read_model`, or `None` while changes made elsewhere could go
    /// unnoticed (not listening): then nothing may be cached.
    pub fn current(&self, read_model: &str) -> Option<u64> {
        if !self.0.listening.load(Ordering::Acquire) {
            return None;
        }
        let counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        let own = counters.get(read_model).copied().unwrap_or(0);
        // Both parts only grow, so their sum changes with every bump of either.
        Some(self.0.epoch.load(Ordering::Acquire) + own)
    }

    /// Marks `read_model` as changed.
    pub fn bump(&self, read_model: &str) {
        let mut counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        match counters.get_mut(read_model) {
            Some(counter) => *counter += 1,
            None => {
                counters.insert(read_model.to_owned(), 1);
            }
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
    fn bump_all(&self) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        self.0.bumped.notify_waiters();
    }

    fn set_listening(&self, listening: bool) {
        // Whatever was cached before this moment may have missed a notice.
        self.bump_all();
        self.0.listening.store(listening, Ordering::Release);
    }
}

/// Follows the change notices of `db` into `generations` until `shutdown` turns true, on a
/// connection of its own. On SQLite it returns at once (generations stay off).
pub async fn follow(db: Database, generations: Generations, mut shutdown: watch::Receiver<bool>) {
    let Database::Postgres(pool) = db else {
        return;
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

async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
