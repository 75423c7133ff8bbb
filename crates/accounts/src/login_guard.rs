//! Failed logins back off per account, whatever address they come from: the per-IP rate limit
//! does not stop a guesser spread over many addresses. After the allowed failures, each further
//! failure closes the account's logins for twice as long as the one before (1 s, 2 s, 4 s, …, at
//! most 15 min); a login attempted meanwhile is answered 429 with `Retry-After` before any
//! password is hashed, even with the right password; a success forgets the failures. Unknown
//! usernames are counted the same way, so the answers do not tell which accounts exist.
//!
//! The count is this process's: instances of a scaled-out deployment count apart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first closure after the allowed failures.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest closure.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Accounts remembered at most; past it, those neither closed nor failed lately are forgotten.
const REMEMBERED_ACCOUNTS: usize = 100_000;

/// One account's recent failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    closed_until: Option<Instant>,
}

/// Failed logins per account, and the backoff they earn.
#[derive(Debug)]
pub struct LoginGuard {
    allowed_failures: u32,
    accounts: Mutex<HashMap<String, Failures>>,
}

impl LoginGuard {
    /// A guard that lets `allowed_failures` failures in a row pass before backing off (0 turns
    /// the backoff off).
    pub fn new(allowed_failures: u32) -> Self {
        Self {
            allowed_failures,
            accounts: Mutex::default(),
        }
    }

    fn key(username: &str) -> String {
        username.trim().to_lowercase()
    }

    /// `Err(wait)` while `username`'s logins are closed.
    pub fn check(&self, username: &str) -> Result<(), Duration> {
        if self.allowed_failures == 0 {
            return Ok(());
        }
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match accounts
            .get(&Self::key(username))
            .and_then(|failures| failures.closed_until)
        {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed login of `username`.
    pub fn failed(&self, username: &str) {
        if self.allowed_failures == 0 {
            return;
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if accounts.len() >= REMEMBERED_ACCOUNTS {
            accounts.retain(|_, failures| {
                failures.closed_until.is_some_and(|until| until > now)
                    || now.duration_since(failures.last) < MAX_BACKOFF
            });
        }
        let failures = accounts.entry(Self::key(username)).or_insert(Failures {
            count: 0,
            last: now,
            closed_until: None,
        });
        // A quiet spell as long as the longest closure starts the count afresh.
        if now.duration_since(failures.last) >= MAX_BACKOFF {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        if let Some(beyond) = failures.count.checked_sub(self.allowed_failures + 1) {
            let backoff = FIRST_BACKOFF
                .saturating_mul(2u32.saturating_pow(beyond.min(20)))
                .min(MAX_BACKOFF);
            failures.closed_until = Some(now + backoff);
        }
    }

    /// Forgets `username`'s failures after a successful login.
    pub fn succeeded(&self, username: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Self::key(username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_allowed_close_the_account_for_twice_as_long_each_time() {
        let guard = LoginGuard::new(2);
        guard.failed("Alice");
        guard.failed("alice ");
        assert!(guard.check("alice").is_ok(), "two failures are allowed");
        guard.failed("alice");
        let first = guard.check("ALICE").expect_err("closed after the third");
        assert!(
            first <= FIRST_BACKOFF && first > FIRST_BACKOFF / 2,
            "{first:?}"
        );
        guard.failed("alice");
        let second = guard.check("alice").expect_err("closed longer");
        assert!(
            second > FIRST_BACKOFF && second <= FIRST_BACKOFF * 2,
            "{second:?}"
        );
        assert!(
            guard.check("bob").is_ok(),
            "other accounts are not affected"
        );
        guard.succeeded("alice");
        assert!(
            guard.check("alice").is_ok(),
            "a success forgets the failures"
        );
    }

    #[test]
    fn the_backoff_is_capped_and_can_be_turned_off() {
        let guard = LoginGuard::new(1);
        for _ in 0..100 {
            guard.failed("mallory");
        }
        let wait = guard.check("mallory").expect_err("closed");
        assert!(wait <= MAX_BACKOFF, "{wait:?}");
        let off = LoginGuard::new(0);
        for _ in 0..100 {
            off.failed("mallory");
        }
        assert!(off.check("mallory").is_ok());
    }
}
