//! Transactions of this process that write but never insert an event: bystanders of the log,
//! which this process's log readers need not wait for.
//!
//! On Postgres a log reader takes only events whose transaction is older than every
//! transaction still running ([`crate::log`]), because one still running might yet commit an
//! event numbered before the ones already visible. A transaction that never inserts an event
//! cannot, so a reader may look past it. The hash chainer's updates are such transactions,
//! and without this every one of them would hold back the read models, and the writers waiting
//! to read their own writes, for as long as it runs. Each registers its transaction id here
//! while it runs ([`StoreTx::join_bystanders`]) and this process's readers leave those ids out
//! of their horizon. Readers in other processes do not know them and wait as before.
//!
//! Leaving out an id is safe whenever its transaction inserts no event, whether it is still
//! running, committed or rolled back (transaction ids are 64-bit and never reused), so a guard
//! may outlive its transaction or end before it.

use std::sync::Mutex;

use crate::db::StoreTx;
use crate::error::StoreError;

/// The ids of the running bystander transactions of this process (a handful at most).
static RUNNING: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// The ids of this process's bystander transactions, for a log reader to look past.
pub(crate) fn running() -> Vec<i64> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Keeps its transaction among the bystanders until dropped.
#[derive(Debug)]
#[must_use = "the transaction is a bystander only while the guard lives"]
pub struct Bystander {
    transaction_id: Option<i64>,
}

impl Drop for Bystander {
    fn drop(&mut self) {
        if let Some(id) = self.transaction_id {
            let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = running.iter().position(|&running| running == id) {
                running.swap_remove(at);
            }
        }
    }
}

/// Declares the Postgres transaction `tx` a bystander (see [`StoreTx::join_bystanders`]).
pub(crate) async fn join(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<Bystander, StoreError> {
    let id: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut **tx)
        .await?;
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    Ok(Bystander {
        transaction_id: Some(id),
    })
}

impl StoreTx {
    /// Declares that this transaction will insert no event, so that this process's log
    /// readers do not wait for it while the returned guard lives. Gives the transaction its id
    /// (one round trip on Postgres; nothing on SQLite, whose readers never wait for writers).
    ///
    /// Only for transactions that never insert into `events`: a reader that looked past one
    /// that did could skip its events for good.
    pub async fn join_bystanders(&mut self) -> Result<Bystander, StoreError> {
        match self {
            Self::Postgres(tx) => join(tx).await,
            Self::Sqlite(_) => Ok(Bystander {
                transaction_id: None,
            }),
        }
    }
}
