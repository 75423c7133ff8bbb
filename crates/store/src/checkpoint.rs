//! Checkpoints: how far each consumer of the log (projector, policy, publisher, the hash
//! chainer) has read, stored in the `checkpoints` table.
//!
//! A consumer commits its own change and its checkpoint in one [`StoreTx`], so a crash never
//! loses or doubles a change:
//!
//! ```no_run
//! # async fn run(db: sparc_store::Database) -> Result<(), sparc_store::StoreError> {
//! use sparc_store::StoreTx;
//! let mut tx = db.begin().await?;
//! let after = tx.lock_checkpoint("tasks").await?; // one consumer at a time
//! let events = tx.read_after(after, 500).await?;
//! for event in &events {
//!     match &mut tx {
//!         StoreTx::Postgres(tx) => { /* sqlx::query(…).execute(&mut **tx).await?; */ }
//!         StoreTx::Sqlite(tx) => { /* sqlx::query(…).execute(&mut **tx).await?; */ }
//!     }
//! }
//! if let Some(last) = events.last() {
//!     tx.save_checkpoint("tasks", last.checkpoint()).await?;
//! }
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};

use crate::db::{Database, StoreTx};
use crate::error::StoreError;

/// A position in the global order of the log: the event at `(transaction_id, position)` and
/// everything before it have been read. Ordered by transaction id, then position (on SQLite the
/// transaction id is always 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Checkpoint {
    /// The writing transaction's id (`xid8` as a number) on Postgres; 0 on SQLite.
    pub transaction_id: i64,
    /// The event's `global_position`.
    pub position: i64,
}

impl Checkpoint {
    /// Before the first event: a consumer at the origin reads the whole log.
    pub const ORIGIN: Checkpoint = Checkpoint {
        transaction_id: 0,
        position: 0,
    };
}

/// Loads the checkpoint called `name`, or [`Checkpoint::ORIGIN`] if it was never saved.
pub async fn load(db: &Database, name: &str) -> Result<Checkpoint, StoreError> {
    let row: Option<(i64, i64)> = match db {
        Database::Postgres(pool) => {
            sqlx::query_as("SELECT transaction_id, position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
        Database::Sqlite(pool) => {
            sqlx::query_as("SELECT transaction_id, position FROM checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(to_checkpoint(row))
}

/// Every saved checkpoint, by name: for lag reports (compare with
/// [`LogReader::count_after`](crate::LogReader::count_after)).
pub async fn list(db: &Database) -> Result<Vec<(String, Checkpoint)>, StoreError> {
    let rows: Vec<(String, i64, i64)> = match db {
        Database::Postgres(pool) => {
            sqlx::query_as("SELECT name, transaction_id, position FROM checkpoints ORDER BY name")
                .fetch_all(pool)
                .await?
        }
        Database::Sqlite(pool) => {
            sqlx::query_as("SELECT name, transaction_id, position FROM checkpoints ORDER BY name")
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(name, transaction_id, position)| {
            (
                name,
                Checkpoint {
                    transaction_id,
                    position,
                },
            )
        })
        .collect())
}

fn to_checkpoint(row: Option<(i64, i64)>) -> Checkpoint {
    row.map_or(Checkpoint::ORIGIN, |(transaction_id, position)| {
        Checkpoint {
            transaction_id,
            position,
        }
    })
}

/// The advisory lock keys of the checkpoints `names`, in the order every caller takes them.
fn checkpoint_lock_keys(names: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = names
        .iter()
        .map(|name| format!("sparc.checkpoint.{name}"))
        .collect();
    keys.sort_unstable();
    keys
}

/// Takes the transaction-scoped advisory locks `keys` in the order given (`unnest` yields in
/// array order).
async fn take_advisory_locks(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    keys: &[String],
) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) FROM unnest($1::text[]) AS key",
    )
    .bind(keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `key` may stand in a statement as a literal as it is: the lock keys are the code's
/// own names (letters, digits, `_`, `.`, `-`); any other goes through a bound parameter.
fn plain_lock_key(key: &str) -> bool {
    key.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Database {
    /// Begins a transaction that already holds the checkpoint locks of `names` (see
    /// [`StoreTx::lock_checkpoints`]) and, with `numbering`, the outbox numbering lock after
    /// them; read the checkpoints with [`StoreTx::read_locked_checkpoints`] or
    /// [`StoreTx::read_locked_checkpoints_and_numbering`]. On Postgres the `BEGIN` and the
    /// locks go in one round trip (one simple query) instead of two.
    pub async fn begin_locking_checkpoints(
        &self,
        names: &[&str],
        numbering: bool,
    ) -> Result<StoreTx, StoreError> {
        let Self::Postgres(pool) = self else {
            // The transaction holds SQLite's write lock from its start.
            return self.begin().await;
        };
        let mut keys = checkpoint_lock_keys(names);
        if numbering {
            // Always last: the relay takes the numbering lock alone.
            keys.push(crate::outbox::NUMBERING_LOCK.to_owned());
        }
        if keys.iter().all(|key| plain_lock_key(key)) {
            let literals: Vec<String> = keys.iter().map(|key| format!("'{key}'")).collect();
            let begin = format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) \
                 FROM unnest(ARRAY[{}]::text[]) AS key",
                literals.join(", ")
            );
            Ok(StoreTx::Postgres(pool.begin_with(begin).await?))
        } else {
            let mut tx = pool.begin().await?;
            take_advisory_locks(&mut tx, &keys).await?;
            Ok(StoreTx::Postgres(tx))
        }
    }
}

/// The end of a select giving one row per name of the array `$1`, in its order: the
/// checkpoint's `transaction_id` and `position` (NULL when there is none yet).
pub(crate) const PG_CHECKPOINTS_OF_NAMES: &str = "c.transaction_id, c.position \
     FROM unnest($1::text[]) WITH ORDINALITY AS n(name, place) \
     LEFT JOIN checkpoints c ON c.name = n.name ORDER BY n.place";

/// A row of [`PG_CHECKPOINTS_OF_NAMES`] as a checkpoint.
pub(crate) fn checkpoint_of_row(
    (transaction_id, position): (Option<i64>, Option<i64>),
) -> Checkpoint {
    to_checkpoint(transaction_id.zip(position))
}

/// Saves the checkpoint `($2, $3)` under every name of the array `$1` (Postgres).
pub(crate) const PG_SAVE_CHECKPOINTS: &str = "INSERT INTO checkpoints (name, transaction_id, position, updated_at) \
     SELECT name, $2, $3, now() FROM unnest($1::text[]) AS name \
     ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, \
     position = excluded.position, updated_at = excluded.updated_at";

/// Saves the checkpoint `($2, $3)` under the name `$1` (SQLite).
pub(crate) const SQLITE_SAVE_CHECKPOINT: &str = "INSERT INTO checkpoints (name, transaction_id, position, updated_at) \
     VALUES ($1, $2, $3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
     ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, \
     position = excluded.position, updated_at = excluded.updated_at";

impl StoreTx {
    /// Loads the checkpoint `name` (or [`Checkpoint::ORIGIN`]) and holds it until commit or
    /// rollback: a second transaction locking the same name waits, so two instances of a
    /// consumer never process the same batch. On Postgres this is a transaction-scoped advisory
    /// lock; a SQLite transaction already holds the database's write lock.
    pub async fn lock_checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        let locked = self.lock_checkpoints(&[name]).await?;
        Ok(locked.first().copied().unwrap_or(Checkpoint::ORIGIN))
    }

    /// [`lock_checkpoint`](Self::lock_checkpoint) for several consumers that commit together:
    /// the locks are taken in name order (as every caller takes them, so two never deadlock),
    /// and the checkpoints come back in the order of `names`.
    pub async fn lock_checkpoints(
        &mut self,
        names: &[&str],
    ) -> Result<Vec<Checkpoint>, StoreError> {
        if let Self::Postgres(tx) = self {
            take_advisory_locks(tx, &checkpoint_lock_keys(names)).await?;
        }
        self.read_locked_checkpoints(names).await
    }

    /// The checkpoints of `names`, in that order, in a transaction that holds their locks
    /// ([`Database::begin_locking_checkpoints`]).
    pub async fn read_locked_checkpoints(
        &mut self,
        names: &[&str],
    ) -> Result<Vec<Checkpoint>, StoreError> {
        match self {
            Self::Postgres(tx) => {
                let rows: Vec<(Option<i64>, Option<i64>)> =
                    sqlx::query_as(&format!("SELECT {PG_CHECKPOINTS_OF_NAMES}"))
                        .bind(names)
                        .fetch_all(&mut **tx)
                        .await?;
                Ok(rows.into_iter().map(checkpoint_of_row).collect())
            }
            Self::Sqlite(_) => {
                let mut checkpoints = Vec::with_capacity(names.len());
                for name in names {
                    checkpoints.push(self.load_checkpoint(name).await?);
                }
                Ok(checkpoints)
            }
        }
    }

    /// Loads the checkpoint `name` inside the transaction, or [`Checkpoint::ORIGIN`].
    pub async fn load_checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        let row: Option<(i64, i64)> = match self {
            Self::Postgres(tx) => {
                sqlx::query_as("SELECT transaction_id, position FROM checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            Self::Sqlite(tx) => {
                sqlx::query_as("SELECT transaction_id, position FROM checkpoints WHERE name = ?")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        Ok(to_checkpoint(row))
    }

    /// Saves the checkpoint `name` (insert or overwrite); it takes effect at commit.
    pub async fn save_checkpoint(
        &mut self,
        name: &str,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        self.save_checkpoints(&[name], checkpoint).await
    }

    /// Saves the same checkpoint under every one of `names`; it takes effect at commit.
    pub async fn save_checkpoints(
        &mut self,
        names: &[&str],
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => {
                sqlx::query(PG_SAVE_CHECKPOINTS)
                    .bind(names)
                    .bind(checkpoint.transaction_id)
                    .bind(checkpoint.position)
                    .execute(&mut **tx)
                    .await?;
            }
            Self::Sqlite(tx) => {
                for name in names {
                    sqlx::query(SQLITE_SAVE_CHECKPOINT)
                        .bind(name)
                        .bind(checkpoint.transaction_id)
                        .bind(checkpoint.position)
                        .execute(&mut **tx)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the checkpoint `name` (its consumer starts again from the origin), e.g. before a
    /// projection rebuild.
    pub async fn delete_checkpoint(&mut self, name: &str) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => {
                sqlx::query("DELETE FROM checkpoints WHERE name = $1")
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
            }
            Self::Sqlite(tx) => {
                sqlx::query("DELETE FROM checkpoints WHERE name = ?")
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}
