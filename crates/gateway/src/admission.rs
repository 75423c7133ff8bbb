//! Admission: the caps on the connections a gateway process holds, in all and per user.
//!
//! Both are checked before the upgrade, so a refusal is an ordinary HTTP answer (429
//! `{"detail"}` with `Retry-After`) and costs no WebSocket: the process cap before the token is
//! even checked, the user's cap once it is known. A [`Pass`] holds its place from the check
//! until the connection ends (however it ends), so upgrades racing each other cannot overshoot
//! the cap between the check and the connection's start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

/// What a refused client is told to wait before trying again: connections end on their own
/// time, so this is a polite pace for reconnecting, not a promise.
const RETRY_AFTER_SECS: u64 = 10;

/// The caps (`0`: none) and the connections counted against them.
pub(crate) struct Admission {
    max_connections: usize,
    per_user: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    open: usize,
    by_user: HashMap<Uuid, usize>,
}

/// Why an upgrade is refused: a cap, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This process holds its most connections.
    Process(usize),
    /// The user holds their most connections on this process.
    User(usize),
}

impl IntoResponse for Refusal {
    /// 429 in the contract's error shape, naming the limit.
    fn into_response(self) -> Response {
        let detail = match self {
            Self::Process(cap) => {
                format!("Too many WebSocket connections: this server holds at most {cap}")
            }
            Self::User(cap) => format!("Too many WebSocket connections: at most {cap} per user"),
        };
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "detail": detail })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        response
    }
}

impl Admission {
    /// Caps of `max_connections` in all and `per_user` per user; `0` lifts either.
    pub(crate) fn new(max_connections: usize, per_user: usize) -> Self {
        Self {
            max_connections,
            per_user,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .expect("the admission lock is never poisoned")
    }

    /// A place among this process's connections, or the refusal when it holds its most.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Pass, Refusal> {
        let mut counts = self.counts();
        if self.max_connections > 0 && counts.open >= self.max_connections {
            return Err(Refusal::Process(self.max_connections));
        }
        counts.open += 1;
        Ok(Pass {
            admission: self.clone(),
            user: None,
        })
    }
}

/// A connection's place, from the check until it ends; dropping it frees the place.
pub(crate) struct Pass {
    admission: Arc<Admission>,
    user: Option<Uuid>,
}

impl Pass {
    /// Counts this connection as `user`'s, or refuses when they hold their most.
    pub(crate) fn claim(&mut self, user: Uuid) -> Result<(), Refusal> {
        let admission = &self.admission;
        let mut counts = admission.counts();
        let held = counts.by_user.get(&user).copied().unwrap_or(0);
        if admission.per_user > 0 && held >= admission.per_user {
            return Err(Refusal::User(admission.per_user));
        }
        counts.by_user.insert(user, held + 1);
        self.user = Some(user);
        Ok(())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.open -= 1;
        if let Some(user) = self.user
            && let Some(held) = counts.by_user.get_mut(&user)
        {
            *held -= 1;
            if *held == 0 {
                counts.by_user.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_cap_counts_every_place_until_it_is_freed() {
        let admission = Arc::new(Admission::new(2, 0));
        let first = admission.enter().expect("room");
        let _second = admission.enter().expect("room");
        assert_eq!(admission.enter().err(), Some(Refusal::Process(2)));
        drop(first);
        assert!(admission.enter().is_ok(), "a freed place is taken again");
    }

    #[test]
    fn the_user_cap_counts_each_users_connections_apart() {
        let admission = Arc::new(Admission::new(0, 1));
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut alices = admission.enter().expect("room");
        alices.claim(alice).expect("her first");
        let mut again = admission.enter().expect("room");
        assert_eq!(again.claim(alice), Err(Refusal::User(1)));
        drop(again);
        let mut bobs = admission.enter().expect("room");
        bobs.claim(bob).expect("his own count");
        drop(alices);
        let mut later = admission.enter().expect("room");
        later.claim(alice).expect("her place was freed");
        assert_eq!(admission.counts().open, 2);
    }

    #[test]
    fn zero_lifts_a_cap() {
        let admission = Arc::new(Admission::new(0, 0));
        let user = Uuid::new_v4();
        let passes: Vec<Pass> = (0..100)
            .map(|_| {
                let mut pass = admission.enter().expect("no process cap");
                pass.claim(user).expect("no user cap");
                pass
            })
            .collect();
        assert_eq!(admission.counts().by_user[&user], passes.len());
    }
}
