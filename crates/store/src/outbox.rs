//! How `outbox` rows get their `event_id` (`published_seq`): one gap-free sequence in log order.
//!
//! Two writers number rows, one at a time under the numbering lock: the read-model loop numbers
//! the rows of its own batch in the batch's transaction when it is next in line (every
//! published read model at the batch's start, and no row waiting for a number), and the outbox
//! relay numbers whatever was written unnumbered (a lagging or rebuilt read model), once every
//! published read model's checkpoint has passed it.

use crate::changes::CHANNEL;
use crate::checkpoint::{Checkpoint, PG_SAVE_CHECKPOINTS, checkpoint_of_row};
use crate::db::StoreTx;
use crate::error::StoreError;
use crate::parked::PARKED_STREAMS_OF_NAME;

/// An outbox row the read-model loop numbered itself, as stored: after its transaction commits
/// the loop hands these to the relay in process (see `sparc_bus::Relay::with_feed`), which can
/// then publish them without reading them back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberedChange {
    /// `published_seq`: the change's event id.
    pub event_id: i64,
    /// The read model (`kind`).
    pub kind: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The one user allowed to see it (besides admins and auditors), or `None` for everyone.
    pub audience: Option<String>,
    /// The aggregate's version after the event.
    pub version: i64,
    /// The event's type.
    pub event_type: String,
    /// The aggregate's state after the event (JSON).
    pub state: String,
    /// When the event was stored (RFC 3339, UTC, microseconds).
    pub recorded_at: String,
}

/// What a committed batch of the read models hands the outbox relay: the rows it numbered
/// itself, in event order (empty when it left its rows for the relay to number, or had none:
/// then it only wakes the relay).
pub type CommittedBatch = std::sync::Arc<[NumberedChange]>;

/// The last event id ever given (0 before the first): the largest numbered row, or the last
/// pruned one when pruning emptied the outbox, so numbering never starts over.
pub const LAST_NUMBERED: &str = "(SELECT coalesce(max(seq), 0) FROM ( \
     SELECT max(published_seq) AS seq FROM outbox \
     UNION ALL SELECT pruned_seq FROM outbox_relay WHERE name = 'relay') AS given)";

/// Whether some row waits for a number (a look at the partial index of unnumbered rows).
pub const ROW_WAITING: &str = "EXISTS (SELECT 1 FROM outbox WHERE published_seq IS NULL)";

/// The event id the next numbered row follows, or NULL while some row waits for a number.
fn numbering_start() -> String {
    format!("CASE WHEN {ROW_WAITING} THEN NULL ELSE {LAST_NUMBERED} END")
}

/// The transaction lock numbering takes (Postgres; SQLite's write lock already serializes).
pub(crate) const NUMBERING_LOCK: &str = "sparc.outbox_relay.numbering";

impl StoreTx {
    /// Takes the numbering lock until the transaction ends.
    pub async fn lock_outbox_numbering(&mut self) -> Result<(), StoreError> {
        if let Self::Postgres(tx) = self {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(NUMBERING_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// For a batch of the read models that numbers its own outbox rows, in a transaction that
    /// already holds the checkpoint locks of `names` and the numbering lock
    /// ([`Database::begin_locking_checkpoints`](crate::Database::begin_locking_checkpoints)
    /// with numbering): reads the checkpoints and saves the batch's `advance` at once (see
    /// [`save_checkpoints_and_notify`](Self::save_checkpoints_and_notify)). Returns the
    /// checkpoints as they were, the last event id given, which the batch's first row
    /// follows, or `None` if some row still waits for a number (the batch's rows must then wait
    /// behind it, for the relay), and the streams `names` have parked
    /// ([`parked_streams`](Self::parked_streams)). If the checkpoints are not the ones the batch
    /// was read from, roll back: that undoes the advance too. On Postgres one statement (its
    /// reads see the checkpoints from before its save).
    pub async fn read_locked_checkpoints_and_numbering(
        &mut self,
        names: &[&str],
        advance: &Advance<'_>,
    ) -> Result<LockedBatch, StoreError> {
        match self {
            Self::Postgres(tx) if !names.is_empty() => {
                // A CTE that is not read is not run unless it writes: the always-true condition
                // reads the notices' CTE, once, before any row.
                let rows: Vec<LockedRow> = sqlx::query_as(&format!(
                    "WITH saved AS ({PG_SAVE_CHECKPOINTS}), \
                     notified AS (SELECT pg_notify($4, name) FROM unnest($5::text[]) AS name) \
                     SELECT {}, c.transaction_id, c.position, {PARKED_STREAMS_OF_NAME} \
                     FROM unnest($6::text[]) WITH ORDINALITY AS n(name, place) \
                     LEFT JOIN checkpoints c ON c.name = n.name \
                     WHERE (SELECT count(*) FROM notified) >= 0 ORDER BY n.place",
                    numbering_start()
                ))
                .bind(advance.names)
                .bind(advance.to.transaction_id)
                .bind(advance.to.position)
                .bind(CHANNEL)
                .bind(advance.read_models)
                .bind(names)
                .fetch_all(&mut **tx)
                .await?;
                let numbering_start = rows.first().and_then(|row| row.0);
                let mut checkpoints = Vec::with_capacity(rows.len());
                let mut parked = Vec::new();
                for ((_, transaction_id, position, streams), name) in rows.into_iter().zip(names) {
                    checkpoints.push(checkpoint_of_row((transaction_id, position)));
                    parked.extend(crate::parked::streams_of_json(name, &streams)?);
                }
                Ok(LockedBatch {
                    checkpoints,
                    numbering_start,
                    parked,
                })
            }
            _ => {
                let checkpoints = self.read_locked_checkpoints(names).await?;
                let numbering_start: Option<i64> = crate::on_backend!(StoreTx self, conn => {
                    sqlx::query_scalar(&format!("SELECT {}", numbering_start()))
                        .fetch_one(&mut *conn)
                        .await?
                });
                self.save_checkpoints_and_notify(advance.names, advance.to, advance.read_models)
                    .await?;
                let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
                let parked = self.parked_streams(&names).await?;
                Ok(LockedBatch {
                    checkpoints,
                    numbering_start,
                    parked,
                })
            }
        }
    }
}

/// A row of the Postgres read of a [`LockedBatch`]: the numbering start, the checkpoint and the
/// parked streams (JSON).
type LockedRow = (Option<i64>, Option<i64>, Option<i64>, String);

/// What [`StoreTx::read_locked_checkpoints_and_numbering`] read.
#[derive(Debug)]
pub struct LockedBatch {
    /// The checkpoints, in the order of the names.
    pub checkpoints: Vec<Checkpoint>,
    /// The last event id given, or `None` if some row still waits for a number.
    pub numbering_start: Option<i64>,
    /// The streams the names have parked.
    pub parked: Vec<crate::parked::ParkedStream>,
}

/// What a batch moves when it commits: the checkpoints of `names` to `to`, and a change notice
/// for the `read_models` it changed.
#[derive(Clone, Copy, Debug)]
pub struct Advance<'a> {
    /// The checkpoints that move.
    pub names: &'a [&'a str],
    /// Where they move to.
    pub to: Checkpoint,
    /// The read models announced as changed.
    pub read_models: &'a [&'a str],
}
