//! Whether a session still counts: the [`SessionDirectory`] port that authentication asks, and
//! [`ReadModelSessions`], its implementation over the `users` read model.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use moka::sync::Cache;
use sparc_projections::ReadModels;
use sparc_store::Database;
use tokio::sync::watch;
use uuid::Uuid;

/// A failure of the read side, passed on with its cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The port through which authentication asks the read side whether a session still counts.
///
/// Implemented over the `users` read model by [`ReadModelSessions`]; a fake in tests.
pub trait SessionDirectory: Send + Sync {
    /// `Ok(true)` if `session_id` belongs to `user_id`, is neither revoked nor expired, and the
    /// user is active.
    ///
    /// # Errors
    /// The read model could not be asked; the request then fails with a logged 500 rather than
    /// a 401 that would log the user out.
    fn is_active(&self, user_id: Uuid, session_id: Uuid) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Of `sessions` (user and session ids), those no longer live: asked for the sessions of
    /// many open connections at once. By default [`is_active`](Self::is_active) for each.
    ///
    /// # Errors
    /// The read model could not be asked.
    fn ended(
        &self,
        sessions: Vec<(Uuid, Uuid)>,
    ) -> BoxFuture<'_, Result<HashSet<(Uuid, Uuid)>, BoxError>> {
        Box::pin(async move {
            let mut ended = HashSet::new();
            for (user_id, session_id) in sessions {
                if !self.is_active(user_id, session_id).await? {
                    ended.insert((user_id, session_id));
                }
            }
            Ok(ended)
        })
    }

    /// Drops whatever this directory remembers about `user_id`'s sessions: called once a change
    /// to them (a logout, a revocation, a new password) has reached the read model.
    fn forget(&self, _user_id: Uuid) {}
}

/// Session liveness from the `users` read model, remembering sessions found live.
///
/// A remembered answer holds while the `users` projection of this process has committed no
/// batch since (any change to any user forgets them all) and for at most `LIVE_SESSION_TTL`:
/// a session revoked through this instance stops working at once, one revoked through another
/// instance (whose runner applied the change) within that bound. Sessions found dead are not
/// remembered, and without a projection in this process (a standalone gateway) nothing is.
pub struct ReadModelSessions {
    reads: ReadModels,
    users: Option<watch::Receiver<u64>>,
    /// The `users` batch at which each (user, session) was found live. Keyed per session so
    /// each expires on its own; [`SessionDirectory::forget`] drops a user's with an
    /// invalidation closure.
    live: Cache<(Uuid, Uuid), u64>,
}

/// How long a session found live is believed without asking the read model again.
const LIVE_SESSION_TTL: Duration = Duration::from_secs(1);
/// Sessions remembered at most.
const LIVE_SESSIONS_KEPT: u64 = 100_000;

impl ReadModelSessions {
    /// Sessions read from `db`'s `users` read model; `users_batches` counts the batches this
    /// process's `users` projection commits (`None` without one: every check reads the row).
    pub fn new(db: Database, users_batches: Option<watch::Receiver<u64>>) -> Self {
        Self {
            reads: ReadModels::new(db),
            users: users_batches,
            live: Cache::builder()
                .max_capacity(LIVE_SESSIONS_KEPT)
                .time_to_live(LIVE_SESSION_TTL)
                .support_invalidation_closures()
                .build(),
        }
    }

    fn users_batch(&self) -> Option<u64> {
        self.users.as_ref().map(|rx| *rx.borrow())
    }
}

impl std::fmt::Debug for ReadModelSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelSessions")
            .field("remembered", &self.live.entry_count())
            .finish_non_exhaustive()
    }
}

impl SessionDirectory for ReadModelSessions {
    fn is_active(&self, user_id: Uuid, session_id: Uuid) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async move {
            let key = (user_id, session_id);
            // Read before the row, so a change committed meanwhile makes the answer stale.
            let batch = self.users_batch();
            if batch.is_some_and(|batch| self.live.get(&key) == Some(batch)) {
                return Ok(true);
            }
            let row = self.reads.user(user_id).await?;
            let live = row.is_some_and(|row| row.state.session_is_live(session_id, Utc::now()));
            if let (true, Some(batch)) = (live, batch) {
                self.live.insert(key, batch);
            }
            Ok(live)
        })
    }

    /// One read of the `users` read model per user, however many sessions each has.
    fn ended(
        &self,
        sessions: Vec<(Uuid, Uuid)>,
    ) -> BoxFuture<'_, Result<HashSet<(Uuid, Uuid)>, BoxError>> {
        Box::pin(async move {
            let mut by_user: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
            for (user_id, session_id) in sessions {
                by_user.entry(user_id).or_default().push(session_id);
            }
            let now = Utc::now();
            let mut ended = HashSet::new();
            for (user_id, session_ids) in by_user {
                let row = self.reads.user(user_id).await?;
                for session_id in session_ids {
                    if !row
                        .as_ref()
                        .is_some_and(|row| row.state.session_is_live(session_id, now))
                    {
                        ended.insert((user_id, session_id));
                    }
                }
            }
            Ok(ended)
        })
    }

    fn forget(&self, user_id: Uuid) {
        self.live
            .invalidate_entries_if(move |&(user, _), _| user == user_id)
            .expect("the cache is built with support_invalidation_closures");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories over an empty read model, where every session is dead unless remembered.
    async fn sessions_over_no_users() -> (
        ReadModelSessions,
        watch::Sender<u64>,
        sparc_store::testing::SqliteTestFile,
    ) {
        let (db, file) = sparc_store::testing::sqlite_database().await;
        let (batches, users) = watch::channel(7);
        (ReadModelSessions::new(db, Some(users)), batches, file)
    }

    #[tokio::test]
    async fn a_remembered_session_is_live_until_its_user_is_forgotten() {
        let (sessions, _batches, _file) = sessions_over_no_users().await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (alice_session, bob_session) = (Uuid::new_v4(), Uuid::new_v4());
        sessions.live.insert((alice, alice_session), 7);
        sessions.live.insert((bob, bob_session), 7);
        assert!(
            sessions
                .is_active(alice, alice_session)
                .await
                .expect("asked")
        );
        sessions.forget(alice);
        assert!(
            !sessions
                .is_active(alice, alice_session)
                .await
                .expect("asked")
        );
        assert!(
            sessions.is_active(bob, bob_session).await.expect("asked"),
            "other users' sessions are still remembered"
        );
    }

    #[tokio::test]
    async fn a_remembered_session_is_asked_again_once_the_users_change_or_a_second_passes() {
        let (sessions, batches, _file) = sessions_over_no_users().await;
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        sessions.live.insert((user, session), 7);
        batches.send_replace(8);
        assert!(!sessions.is_active(user, session).await.expect("asked"));
        sessions.live.insert((user, session), 8);
        tokio::time::sleep(LIVE_SESSION_TTL).await;
        assert!(!sessions.is_active(user, session).await.expect("asked"));
    }
}
