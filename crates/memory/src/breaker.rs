//! The circuit breaker in front of the Memory MCP server: `failsafe`'s state machine (open after
//! N consecutive failures, stay open for a while, then let probes through), driven call by call
//! so that it closes only after M successful half-open calls, one probe at a time, with every
//! call under a timeout.
//!
//! failsafe keeps its state and counts private and reports changes only through its
//! [`Instrument`] callbacks, so the breaker mirrors the state in an atomic, keeps the counters
//! the health endpoints and `/metrics` show, and announces each change on a channel (the
//! service logs it and the WebSocket gateway tells admins).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use serde::Serialize;
use tokio::sync::broadcast;

/// The breaker's state, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused without trying.
    Open,
    /// Probes go through, one at a time; enough successes close it, a failure opens it again.
    HalfOpen,
}

impl BreakerState {
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A change of the breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StateChange {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// When.
    pub at: DateTime<Utc>,
}

/// The breaker's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that open it (3).
    pub failures_to_open: u32,
    /// How long it stays open before probes go through (60 s).
    pub open_for: Duration,
    /// Successful half-open calls that close it (2).
    pub successes_to_close: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            failures_to_open: 3,
            open_for: Duration::from_secs(60),
            successes_to_close: 2,
        }
    }
}

/// What the breaker has seen since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BreakerCounts {
    /// Calls asked for (rejected ones included).
    pub calls: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed (timeouts included).
    pub failures: u64,
    /// Calls cut off by their timeout.
    pub timeouts: u64,
    /// Calls refused while open (or while another probe was out).
    pub rejections: u64,
    /// Times it opened.
    pub opens: u64,
    /// Failures in a row now.
    pub consecutive_failures: u32,
}

/// Why a guarded call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal<E> {
    /// The breaker refused it without trying.
    #[error("circuit breaker open")]
    Rejected,
    /// It took longer than its timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// It failed.
    #[error("{0}")]
    Failed(E),
}

/// State shared with failsafe's instrument callbacks.
struct Mirror {
    state: AtomicU8,
    /// Successful calls since it last went half-open.
    half_open_successes: AtomicU32,
    /// When it last opened, for telling when probes will go through.
    opened_at: Mutex<Option<Instant>>,
    opens: AtomicU64,
    changes: broadcast::Sender<StateChange>,
}

impl Mirror {
    fn set(&self, to: BreakerState) {
        let from = BreakerState::from_u8(self.state.swap(to.as_u8(), Ordering::SeqCst));
        if from != to {
            tracing::warn!(
                from = from.as_str(),
                to = to.as_str(),
                "memory MCP circuit breaker changed state"
            );
            let _ = self.changes.send(StateChange {
                from,
                to,
                at: Utc::now(),
            });
        }
    }
}

/// failsafe's view of the mirror (a local newtype: the orphan rule keeps `Arc<Mirror>` out).
struct Observer(Arc<Mirror>);

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        *self.0.opened_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.0.half_open_successes.store(0, Ordering::SeqCst);
        self.0.opens.fetch_add(1, Ordering::Relaxed);
        self.0.set(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.0.half_open_successes.store(0, Ordering::SeqCst);
        self.0.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.0.set(BreakerState::Closed);
    }
}

/// The circuit breaker.
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Constant>, Observer>,
    mirror: Arc<Mirror>,
    thresholds: Thresholds,
    /// Taken by the one probe allowed out while half-open.
    probe_out: AtomicBool,
    calls: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejections: AtomicU64,
    consecutive_failures: AtomicU32,
    last_call: Mutex<Option<DateTime<Utc>>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("counts", &self.counts())
            .finish()
    }
}

/// Releases the half-open probe slot however the probe ends (a dropped call included).
struct ProbeSlot<'a>(&'a AtomicBool);

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Breaker {
    /// A closed breaker with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        let (changes, _) = broadcast::channel(64);
        let mirror = Arc::new(Mirror {
            state: AtomicU8::new(BreakerState::Closed.as_u8()),
            half_open_successes: AtomicU32::new(0),
            opened_at: Mutex::new(None),
            opens: AtomicU64::new(0),
            changes,
        });
        let policy = failure_policy::consecutive_failures(
            thresholds.failures_to_open.max(1),
            backoff::constant(thresholds.open_for),
        );
        Self {
            machine: StateMachine::new(policy, Observer(mirror.clone())),
            mirror,
            thresholds,
            probe_out: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            last_call: Mutex::new(None),
        }
    }

    /// The state as failsafe last reported it; an open breaker whose delay has passed reads
    /// `HALF_OPEN` (failsafe moves there only when the next call asks, and asking here would
    /// change the state).
    pub fn state(&self) -> BreakerState {
        let state = BreakerState::from_u8(self.mirror.state.load(Ordering::SeqCst));
        if state == BreakerState::Open && !self.still_open() {
            BreakerState::HalfOpen
        } else {
            state
        }
    }

    /// Whether a call now would be refused without trying: open, and its delay not over.
    pub fn refuses_now(&self) -> bool {
        BreakerState::from_u8(self.mirror.state.load(Ordering::SeqCst)) == BreakerState::Open
            && self.still_open()
    }

    fn still_open(&self) -> bool {
        let opened_at = *self
            .mirror
            .opened_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        opened_at.is_some_and(|at| at.elapsed() <= self.thresholds.open_for)
    }

    /// The counters.
    pub fn counts(&self) -> BreakerCounts {
        BreakerCounts {
            calls: self.calls.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            opens: self.mirror.opens.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }

    /// When a call last got an answer or failed (rejections not counted).
    pub fn last_call(&self) -> Option<DateTime<Utc>> {
        *self.last_call.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every later change of state.
    pub fn changes(&self) -> broadcast::Receiver<StateChange> {
        self.mirror.changes.subscribe()
    }

    /// Runs `call` if the breaker lets it, cut off after `timeout`. A failure for which
    /// `counts_against` is false (the server answered, refusing the request) counts as a
    /// success: the server is up.
    pub async fn call<T, E>(
        &self,
        timeout: Duration,
        counts_against: impl FnOnce(&E) -> bool,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Refusal<E>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.machine.is_call_permitted() {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Rejected);
        }
        let half_open = BreakerState::from_u8(self.mirror.state.load(Ordering::SeqCst))
            == BreakerState::HalfOpen;
        let _slot = if half_open {
            if self.probe_out.swap(true, Ordering::SeqCst) {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Rejected);
            }
            Some(ProbeSlot(&self.probe_out))
        } else {
            None
        };
        let outcome = tokio::time::timeout(timeout, call).await;
        *self.last_call.lock().unwrap_or_else(|e| e.into_inner()) = Some(Utc::now());
        match outcome {
            Ok(Ok(value)) => {
                self.succeeded(half_open);
                Ok(value)
            }
            Ok(Err(error)) if !counts_against(&error) => {
                self.succeeded(half_open);
                Err(Refusal::Failed(error))
            }
            Ok(Err(error)) => {
                self.failed();
                Err(Refusal::Failed(error))
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.failed();
                Err(Refusal::TimedOut(timeout))
            }
        }
    }

    fn succeeded(&self, half_open: bool) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if half_open {
            let successes = self
                .mirror
                .half_open_successes
                .fetch_add(1, Ordering::SeqCst)
                + 1;
            if successes >= self.thresholds.successes_to_close.max(1) {
                self.machine.on_success();
            }
        } else {
            self.machine.on_success();
        }
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.machine.on_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(Thresholds {
            failures_to_open: 3,
            open_for,
            successes_to_close: 2,
        })
    }

    async fn ok(breaker: &Breaker) -> Result<(), Refusal<&'static str>> {
        breaker
            .call(Duration::from_secs(1), |_| true, async { Ok(()) })
            .await
    }

    async fn fail(breaker: &Breaker) -> Result<(), Refusal<&'static str>> {
        breaker
            .call(Duration::from_secs(1), |_| true, async { Err("down") })
            .await
    }

    #[tokio::test]
    async fn three_failures_in_a_row_open_it_and_it_then_refuses_without_trying() {
        let breaker = breaker(Duration::from_secs(60));
        let mut changes = breaker.changes();
        for _ in 0..3 {
            assert_eq!(fail(&breaker).await, Err(Refusal::Failed("down")));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(changes.recv().await.unwrap().to, BreakerState::Open);
        let tried = AtomicBool::new(false);
        let refused = breaker
            .call(Duration::from_secs(1), |_: &()| true, async {
                tried.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert_eq!(refused, Err(Refusal::Rejected));
        assert!(!tried.load(Ordering::SeqCst));
        let counts = breaker.counts();
        assert_eq!(
            (counts.failures, counts.rejections, counts.opens),
            (3, 1, 1)
        );
    }

    #[tokio::test]
    async fn a_success_between_failures_keeps_it_closed() {
        let breaker = breaker(Duration::from_secs(60));
        fail(&breaker).await.unwrap_err();
        fail(&breaker).await.unwrap_err();
        ok(&breaker).await.unwrap();
        fail(&breaker).await.unwrap_err();
        fail(&breaker).await.unwrap_err();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn after_its_delay_two_successful_probes_close_it_and_a_failed_one_reopens_it() {
        let breaker = breaker(Duration::from_millis(50));
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        ok(&breaker).await.unwrap();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        ok(&breaker).await.unwrap();
        assert_eq!(breaker.state(), BreakerState::Closed);

        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        fail(&breaker).await.unwrap_err();
        assert!(breaker.refuses_now());
        assert_eq!(breaker.counts().opens, 3);
    }

    #[tokio::test]
    async fn a_slow_call_is_cut_off_and_counts_as_a_failure() {
        let breaker = breaker(Duration::from_secs(60));
        let slow = breaker
            .call(Duration::from_millis(20), |_: &()| true, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert_eq!(slow, Err(Refusal::TimedOut(Duration::from_millis(20))));
        assert_eq!(breaker.counts().timeouts, 1);
        assert_eq!(breaker.counts().consecutive_failures, 1);
    }

    #[tokio::test]
    async fn a_refusal_by_a_live_server_does_not_count_against_it() {
        let breaker = breaker(Duration::from_secs(60));
        for _ in 0..5 {
            let refused = breaker
                .call(Duration::from_secs(1), |_: &&str| false, async {
                    Err::<(), _>("entity not found")
                })
                .await;
            assert_eq!(refused, Err(Refusal::Failed("entity not found")));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn half_open_lets_one_probe_out_at_a_time() {
        let breaker = Arc::new(breaker(Duration::from_millis(20)));
        for _ in 0..3 {
            fail(&breaker).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let probing = {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                breaker
                    .call(Duration::from_secs(5), |_: &()| true, async {
                        let _ = wait.await;
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(ok(&breaker).await, Err(Refusal::Rejected));
        release.send(()).unwrap();
        probing.await.unwrap().unwrap();
        ok(&breaker).await.unwrap();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
