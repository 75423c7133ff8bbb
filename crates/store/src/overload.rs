//! Overload: deadlines, and the queue of each stream's commands.
//!
//! **Deadlines.** Every request runs with a deadline ([`with_deadline`], set by the HTTP
//! layer). Work that is still queued when its deadline passes (waiting for its stream's turn,
//! or for a group-commit statement) is dropped before it commits and fails with [`Overloaded`];
//! work that has started to commit is finished and answered, however late.
//!
//! **One stream, one command at a time.** Commands for the same stream in one process are
//! decided one after another ([`StreamQueues::turn`]): concurrent commands on one task or
//! agent would otherwise load the same version, all but one lose the race at commit, and each
//! loser loads and decides again, so that goodput collapses as the offered rate grows. Each
//! stream's queue is bounded; a command that finds it full is refused at once. Optimistic
//! concurrency still settles races between processes and `If-Match`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as the deadline of everything it queues for.
pub async fn with_deadline<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the work running now, if it has one.
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Why work was refused without being done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    /// Its deadline passed while it waited.
    #[error("the request's deadline passed before it could be done")]
    DeadlinePassed,
    /// The queue it would wait in is full.
    #[error("too many requests are waiting for the same resource")]
    QueueFull,
}

impl Overloaded {
    /// How long a client should wait before trying again.
    pub fn retry_after(self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Waits until `deadline` (if any) for `work`; [`Overloaded::DeadlinePassed`] after it, or
/// at once if it has passed already.
pub async fn before_deadline<F: Future>(
    deadline: Option<Instant>,
    work: F,
) -> Result<F::Output, Overloaded> {
    match deadline {
        // A timeout polls its work once before its deadline: work that is ready at once would
        // start however late it is.
        Some(deadline) if deadline <= Instant::now() => Err(Overloaded::DeadlinePassed),
        Some(deadline) => tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| Overloaded::DeadlinePassed),
        None => Ok(work.await),
    }
}

/// Commands a stream's queue holds at most by default, the running one included.
pub const STREAM_QUEUE_LIMIT: usize = 256;

/// One stream's turn: its holder runs alone on the stream in this process.
struct Slot {
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Commands holding or waiting for the turn.
    queued: usize,
}

/// The queues of the streams that have commands in flight in this process.
#[derive(Debug)]
pub struct StreamQueues {
    streams: Arc<Mutex<HashMap<(&'static str, String), Slot>>>,
    limit: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("queued", &self.queued)
            .finish()
    }
}

impl Default for StreamQueues {
    fn default() -> Self {
        Self::with_limit(STREAM_QUEUE_LIMIT)
    }
}

/// The turn of one stream, held until dropped.
#[derive(Debug)]
pub struct Turn {
    _held: OwnedMutexGuard<()>,
    _queued: Queued,
}

/// A place in a stream's queue: leaving it (dropped) counts the command out, and forgets the
/// stream once nothing is queued for it.
#[derive(Debug)]
struct Queued {
    streams: Arc<Mutex<HashMap<(&'static str, String), Slot>>>,
    key: (&'static str, String),
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = streams.get_mut(&self.key) {
            slot.queued -= 1;
            if slot.queued == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl StreamQueues {
    /// Queues of at most `limit` commands per stream (at least 1).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            streams: Arc::default(),
            limit: limit.max(1),
        }
    }

    /// Waits for the turn of the stream `aggregate_id` of `aggregate_type`, until the current
    /// work's [`deadline`]. Refused at once if the stream's queue is full.
    pub async fn turn(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<Turn, Overloaded> {
        let key = (aggregate_type, aggregate_id.to_owned());
        let turn = {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let slot = streams.entry(key.clone()).or_insert_with(|| Slot {
                turn: Arc::default(),
                queued: 0,
            });
            if slot.queued >= self.limit {
                return Err(Overloaded::QueueFull);
            }
            slot.queued += 1;
            slot.turn.clone()
        };
        let queued = Queued {
            streams: self.streams.clone(),
            key,
        };
        let held = before_deadline(deadline(), turn.lock_owned()).await?;
        Ok(Turn {
            _held: held,
            _queued: queued,
        })
    }

    /// Streams with commands in flight (for tests and metrics).
    pub fn streams_in_flight(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_on_one_stream_take_turns_and_other_streams_do_not_wait() {
        let queues = StreamQueues::default();
        let first = queues.turn("Task", "a").await.expect("a free stream");
        let other = tokio::time::timeout(Duration::from_millis(100), queues.turn("Task", "b"))
            .await
            .expect("another stream is not held back")
            .expect("a turn");
        let waiting = tokio::time::timeout(Duration::from_millis(50), queues.turn("Task", "a"));
        assert!(waiting.await.is_err(), "the same stream waits its turn");
        drop((first, other));
        assert_eq!(queues.streams_in_flight(), 0, "idle streams are forgotten");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_passed_deadline_gives_up() {
        let queues = StreamQueues::with_limit(2);
        let first = queues.turn("Task", "a").await.expect("a free stream");
        let deadline = Instant::now() + Duration::from_millis(50);
        let second = tokio::spawn({
            let streams = queues.streams.clone();
            async move {
                let queues = StreamQueues { streams, limit: 2 };
                with_deadline(deadline, queues.turn("Task", "a"))
                    .await
                    .map(|_| ())
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            queues.turn("Task", "a").await.map(|_| ()),
            Err(Overloaded::QueueFull)
        );
        assert_eq!(
            second.await.expect("the waiter ends"),
            Err(Overloaded::DeadlinePassed)
        );
        drop(first);
        let again = queues.turn("Task", "a").await;
        assert!(again.is_ok(), "a freed stream takes commands again");
    }
}
