//! How `outbox` rows get their `event_id` (`published_seq`): one gap-free sequence in log order.
//!
//! Two writers number rows, one at a time under the numbering lock: the read-model loop numbers
//! the rows of its own batch in the batch's transaction when it is next in line (every
//! published read model at the batch's start, and no row waiting for a number), and the outbox
//! relay numbers whatever was written unnumbered (a lagging or rebuilt read model), once every
//! published read model's checkpoint has passed it.

use crate::db::StoreTx;
use crate::error::StoreError;

/// The last event id ever given (0 before the first): the largest numbered row, or the last
/// pruned one when pruning emptied the outbox, so numbering never starts over.
pub const LAST_NUMBERED: &str = "(SELECT coalesce(max(seq), 0) FROM ( \
     SELECT max(published_seq) AS seq FROM outbox \
     UNION ALL SELECT pruned_seq FROM outbox_relay WHERE name = 'relay') AS given)";

/// Whether some row waits for a number (a look at the partial index of unnumbered rows).
pub const ROW_WAITING: &str = "EXISTS (SELECT 1 FROM outbox WHERE published_seq IS NULL)";

/// The transaction lock numbering takes (Postgres; SQLite's write lock already serializes).
const NUMBERING_LOCK: &str = "sparc.outbox_relay.numbering";

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

    /// Takes the numbering lock and returns the last event id given, which the next numbered
    /// row follows, or `None` if some row still waits for a number (rows written now must then
    /// wait behind it, for the relay).
    pub async fn outbox_numbering_start(&mut self) -> Result<Option<i64>, StoreError> {
        self.lock_outbox_numbering().await?;
        let sql = format!("SELECT CASE WHEN {ROW_WAITING} THEN NULL ELSE {LAST_NUMBERED} END");
        let last: Option<i64> =
            crate::on_tx!(self, conn => sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?);
        Ok(last)
    }
}
