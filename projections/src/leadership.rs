//! Which instance runs each projection loop. Several instances may serve one PostgreSQL
//! database; each loop runs in one of them at a time and stands by in the others, so a batch is
//! read, decoded and applied once, not once per instance. An instance leads a loop while it
//! holds the loop's session advisory lock on a connection of its own; a standby tries for the
//! lock every second and takes the loop over when the holder's connection ends (the process
//! stopped or died).
//!
//! Leading decides only who does the work: the checkpoint locks keep every batch applied once
//! whoever runs it, so two instances that both believe they lead a loop (a lost connection not
//! noticed yet) only repeat each other's reads.
//!
//! A standby's writers still want their writes applied: a poke of a loop led elsewhere becomes
//! a notice on [`WAKE_CHANNEL`], which the leading instance turns into a poke of its loops, and
//! a nudge a notice that it turns into a nudge. Nudges, one per create, are sent at most every
//! [`NUDGE_EVERY`]: each notice wakes every listening connection of the database, in every
//! instance. On SQLite the one serving process leads every loop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::runner::Wake;

/// The channel on which a standby asks the leading instances to look at the log.
pub const WAKE_CHANNEL: &str = "sparc_projection_wake";

/// The payload of a notice on [`WAKE_CHANNEL`] that pokes (someone waits); any other nudges.
const POKE: &str = "poke";

/// How often a standby sends a nudge at most: what it nudges about is nobody's wait (a poke
/// goes at once), and the leader reads it with what came meanwhile.
const NUDGE_EVERY: Duration = Duration::from_millis(20);

/// How often a standby tries for the locks of the loops it does not lead, and how soon it
/// connects again after losing its connection.
const TRY_EVERY: Duration = Duration::from_secs(1);

/// The advisory lock key of the loop of `members` (their names in any order).
fn loop_key(members: &[impl AsRef<str>]) -> String {
    let mut names: Vec<&str> = members.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    format!("sparc.projection-loop.{}", names.join(","))
}

/// Whether this instance leads each loop, and the way to wake the instances that lead the
/// others.
#[derive(Clone)]
pub(crate) struct Leadership {
    led: Arc<[watch::Sender<bool>]>,
    others: Arc<Wake>,
}

impl Leadership {
    /// For `loops` loops, leading none until [`spawn`](Self::spawn) takes their locks (leading
    /// all of them at once if `sole`: the one process of a SQLite database).
    pub(crate) fn new(loops: usize, sole: bool) -> Self {
        Self {
            led: (0..loops).map(|_| watch::Sender::new(sole)).collect(),
            others: Arc::default(),
        }
    }

    /// Whether this instance runs loop `index` now.
    pub(crate) fn leads(&self, index: usize) -> bool {
        *self.led[index].borrow()
    }

    /// Follows whether this instance runs loop `index`.
    pub(crate) fn follow(&self, index: usize) -> watch::Receiver<bool> {
        self.led[index].subscribe()
    }

    /// How to wake the instances leading the loops this one does not.
    pub(crate) fn others(&self) -> &Wake {
        &self.others
    }

    /// Takes and holds the locks of the loops of `members` on `pool`'s server until `shutdown`,
    /// waking a loop's `waker` when another instance asks. Nothing to do on SQLite.
    pub(crate) async fn hold(
        self,
        pool: PgPool,
        members: Vec<Vec<String>>,
        wakers: Arc<[Arc<Wake>]>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let keys: Vec<String> = members.iter().map(|names| loop_key(names)).collect();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        while !*shutdown.borrow() {
            let held = self.hold_on_one_connection(&own, &keys, &wakers, &mut shutdown);
            if let Err(error) = held.await {
                tracing::warn!(%error, "projection loops: lost the lock connection; standing by");
            }
            for led in self.led.iter() {
                led.send_if_modified(|led| std::mem::replace(led, false));
            }
            tokio::select! {
                _ = tokio::time::sleep(TRY_EVERY) => {}
                _ = shutdown.changed() => {}
            }
        }
        own.close().await;
    }

    /// Holds what locks it can on one connection: until shutdown (`Ok`) or until the connection
    /// fails, which releases them all.
    async fn hold_on_one_connection(
        &self,
        own: &PgPool,
        keys: &[String],
        wakers: &[Arc<Wake>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), sqlx::Error> {
        let mut connection = PgListener::connect_with(own).await?;
        connection.listen(WAKE_CHANNEL).await?;
        let mut attempts = tokio::time::interval(TRY_EVERY);
        attempts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the next nudge may be sent, and whether one waits for then.
        let mut next_nudge = Instant::now();
        let mut nudge_waits = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                _ = self.others.waiting() => {
                    notify_leaders(&mut connection, POKE).await?;
                    next_nudge = Instant::now() + NUDGE_EVERY;
                    nudge_waits = false;
                }
                received = connection.try_recv() => match received? {
                    Some(notice) => {
                        let how = if notice.payload() == POKE { Wake::poke } else { Wake::nudge };
                        for (index, waker) in wakers.iter().enumerate() {
                            if self.leads(index) {
                                how(waker);
                            }
                        }
                    }
                    // The connection was lost (and opened again): its locks went with it.
                    None => {
                        return Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "the connection was lost",
                        )));
                    }
                },
                _ = self.others.news() => nudge_waits = true,
                _ = tokio::time::sleep_until(next_nudge), if nudge_waits => {
                    notify_leaders(&mut connection, "").await?;
                    next_nudge = Instant::now() + NUDGE_EVERY;
                    nudge_waits = false;
                }
                _ = attempts.tick() => self.try_to_lead(&mut connection, keys).await?,
            }
        }
    }

    /// Tries for the lock of every loop not led here.
    async fn try_to_lead(
        &self,
        connection: &mut PgListener,
        keys: &[String],
    ) -> Result<(), sqlx::Error> {
        for (index, key) in keys.iter().enumerate() {
            if self.leads(index) {
                continue;
            }
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut *connection)
                    .await?;
            if locked {
                tracing::info!(projection_loop = %key, "this instance now runs the loop");
                self.led[index].send_replace(true);
            }
        }
        Ok(())
    }
}

/// Sends `payload` to the instances leading loops, on [`WAKE_CHANNEL`].
async fn notify_leaders(connection: &mut PgListener, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(WAKE_CHANNEL)
        .bind(payload)
        .execute(connection)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_s_key_does_not_depend_on_the_order_of_its_members() {
        assert_eq!(
            loop_key(&["tasks", "agents"]),
            loop_key(&["agents", "tasks"])
        );
        assert_ne!(loop_key(&["tasks"]), loop_key(&["tasks", "agents"]));
    }
}
