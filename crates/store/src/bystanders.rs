//! Transactions of this process that write but never insert an event: bystanders of the log,
//! which this process's log readers need not wait for.
//!
//! On Postgres a log reader takes only events whose transaction is older than every
//! transaction still running ([`crate::log`]), because one still running might yet commit an
//! event numbered before the ones already visible. A transaction that never inserts an event
//! cannot, so a reader may look past it. The hash chainer's updates are such transactions,
//! and without this every one of them would hold back the read models, and the writers waiting
//! to read their own writes, for as long as it runs. Each registers its transaction id here
//! while it runs ([`Database::begin_bystander`]) and this process's readers of the same server
//! leave those ids out of their horizon. Readers in other processes do not know them and wait
//! as before.
//!
//! Leaving out an id is safe whenever its transaction inserts no event, whether it is still
//! running, committed or rolled back (transaction ids are 64-bit and never reused), so a guard
//! may outlive its transaction or end before it. Ids are kept with the server they belong to
//! (its address as the pool knows it): a reader of another server, where the same number may
//! be another transaction, never sees them. Two pools that name one server differently only
//! miss each other's bystanders and wait, as without this.

use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::db::{Database, StoreTx};
use crate::error::StoreError;

/// The running bystander transactions of this process: (server, transaction id). A handful
/// at most.
static RUNNING: Mutex<Vec<(Arc<str>, i64)>> = Mutex::new(Vec::new());

/// The server `pool` connects to, as its options name it (a log reader works it out once).
pub(crate) fn server_of(pool: &PgPool) -> Arc<str> {
    let options = pool.connect_options();
    format!(
        "{}:{}:{:?}",
        options.get_host(),
        options.get_port(),
        options.get_socket()
    )
    .into()
}

/// The ids of this process's bystander transactions on `server`, for a log reader of that
/// server to look past.
pub(crate) fn running(server: &str) -> Vec<i64> {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(of, _)| **of == *server)
        .map(|(_, id)| *id)
        .collect()
}

/// Keeps its transaction among the bystanders until dropped.
#[derive(Debug)]
#[must_use = "the transaction is a bystander only while the guard lives"]
pub struct Bystander {
    registered: Option<(Arc<str>, i64)>,
}

impl Drop for Bystander {
    fn drop(&mut self) {
        if let Some(registered) = self.registered.take() {
            let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = running.iter().position(|entry| *entry == registered) {
                running.swap_remove(at);
            }
        }
    }
}

/// Begins a Postgres transaction on `pool` as a bystander (see [`Database::begin_bystander`]).
pub(crate) async fn begin(
    pool: &PgPool,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Bystander), StoreError> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let registered = (server_of(pool), id);
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(registered.clone());
    Ok((
        tx,
        Bystander {
            registered: Some(registered),
        },
    ))
}

impl Database {
    /// Begins a transaction that will insert no event, so that this process's log readers do
    /// not wait for it while the returned guard lives. Gives the transaction its id at once
    /// (one round trip on Postgres; nothing more on SQLite, whose readers never wait for
    /// writers).
    ///
    /// Only for transactions that never insert into `events`: a reader that looked past one
    /// that did could skip its events for good.
    pub async fn begin_bystander(&self) -> Result<(StoreTx, Bystander), StoreError> {
        match self {
            Self::Postgres(pool) => {
                let (tx, bystander) = begin(pool).await?;
                Ok((StoreTx::Postgres(tx), bystander))
            }
            Self::Sqlite(_) => Ok((self.begin().await?, Bystander { registered: None })),
        }
    }
}
