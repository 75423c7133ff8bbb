//! Whether a session still counts: the [`SessionDirectory`] port that authentication asks, and
//! [`ReadModelSessions`], its implementation over the `users` read model.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use moka::sync::Cache;
use sparc_projections::ReadModels;
use sparc_store::{Database, Generations};
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
}

/// Session liveness from the `users` read model, remembering sessions found live.
///
/// A remembered answer holds while the `users` read model's generation has not moved (any
/// change to any user, applied here or announced by the instance that applied it, forgets them
/// all) and for at most `LIVE_SESSION_TTL`, the bound for a change notice lost on the way: a
/// session revoked through any instance stops working as soon as the change notice arrives.
/// Sessions found dead are not remembered, and while no notices are heard (a standalone
/// gateway, a lost listening connection) nothing is.
pub struct ReadModelSessions {
    reads: ReadModels,
    generations: Option<Generations>,
    /// The `users` generation at which each (user, session) was found live. Keyed per session
    /// so each expires on its own.
    live: Cache<(Uuid, Uuid), u64>,
}

/// The read model whose generation remembered sessions hold to.
const USERS: &str = "users";

/// How long a session found live is believed without asking the read model again.
const LIVE_SESSION_TTL: Duration = Duration::from_secs(1);
/// Sessions remembered at most.
const LIVE_SESSIONS_KEPT: u64 = 100_000;

impl ReadModelSessions {
    /// Sessions read from `db`'s `users` read model, remembered while `generations` (this
    /// process's, which follow the change notices) says the read model has not changed
    /// (`None`: every check reads the row).
    pub fn new(db: Database, generations: Option<Generations>) -> Self {
        Self {
            reads: ReadModels::new(db),
            generations,
            live: Cache::builder()
                .max_capacity(LIVE_SESSIONS_KEPT)
                .time_to_live(LIVE_SESSION_TTL)
                .build(),
        }
    }

    fn users_generation(&self) -> Option<u64> {
        self.generations.as_ref()?.current(USERS)
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
            let generation = self.users_generation();
            if generation.is_some_and(|generation| self.live.get(&key) == Some(generation)) {
                return Ok(true);
            }
            let row = self.reads.user(user_id).await?;
            let live = row.is_some_and(|row| row.state.session_is_live(session_id, Utc::now()));
            if let (true, Some(generation)) = (live, generation) {
                self.live.insert(key, generation);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories over an empty read model, where every session is dead unless remembered.
    async fn sessions_over_no_users() -> (
        ReadModelSessions,
        Generations,
        sparc_store::testing::SqliteTestFile,
    ) {
        let (db, file) = sparc_store::testing::sqlite_database().await;
        let generations = Generations::listening();
        (
            ReadModelSessions::new(db, Some(generations.clone())),
            generations,
            file,
        )
    }

    fn users_generation(generations: &Generations) -> u64 {
        generations.current(USERS).expect("listening")
    }

    #[tokio::test]
    async fn a_remembered_session_is_live_while_the_users_read_model_is_unchanged() {
        let (sessions, generations, _file) = sessions_over_no_users().await;
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        sessions
            .live
            .insert((user, session), users_generation(&generations));
        assert!(sessions.is_active(user, session).await.expect("asked"));
        assert!(
            !sessions
                .is_active(user, Uuid::new_v4())
                .await
                .expect("asked"),
            "a session not remembered is read, and there is no such user"
        );
    }

    #[tokio::test]
    async fn a_remembered_session_is_asked_again_once_the_users_change_or_a_second_passes() {
        let (sessions, generations, _file) = sessions_over_no_users().await;
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        sessions
            .live
            .insert((user, session), users_generation(&generations));
        // A change to another user, heard from whichever instance applied it.
        generations.bump(&sparc_store::changes::scope(
            USERS,
            &Uuid::new_v4().to_string(),
        ));
        assert!(!sessions.is_active(user, session).await.expect("asked"));
        sessions
            .live
            .insert((user, session), users_generation(&generations));
        tokio::time::sleep(LIVE_SESSION_TTL).await;
        assert!(!sessions.is_active(user, session).await.expect("asked"));
    }
}
