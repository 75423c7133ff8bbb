//! Overload: deadlines, and the queue of each stream's commands.
//!
//! **Deadlines.** Every request runs with a deadline ([`with_deadline`], set by the HTTP
//! layer). Work that is still queued when its deadline passes (waiting for its stream's turn,
//! or for a group-commit statement) is dropped before it commits and fails with [`Overloaded`];
//! work that has started to commit is finished and answered, however late.
//!
//! **One queue per stream.** Work for the same stream in one process waits in that stream's
//! queue ([`StreamQueues`]), which one worker drains, a batch at a time: the command bus
//! decides a batch's commands one after another and commits their events together (concurrent
//! commands on one task or agent would otherwise load the same version, all but one lose the
//! race at commit, and each loser loads and decides again, so that goodput collapses as the
//! offered rate grows). Each stream's queue is bounded; work that finds it full is refused at
//! once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Commands a stream's queue holds at most by default, besides those being decided.
pub const STREAM_QUEUE_LIMIT: usize = 256;

/// One stream's queue, and which worker drains it.
struct Waiting<T> {
    worker: u64,
    items: VecDeque<T>,
}

type Streams<T> = Arc<Mutex<HashMap<String, Waiting<T>>>>;

/// The queues of the streams that have work in flight in this process, each drained by one
/// worker task of its own, which exists while the queue does.
pub struct StreamQueues<T> {
    streams: Streams<T>,
    limit: usize,
    workers: AtomicU64,
}

impl<T> std::fmt::Debug for StreamQueues<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamQueues")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<T> Default for StreamQueues<T> {
    fn default() -> Self {
        Self::with_limit(STREAM_QUEUE_LIMIT)
    }
}

impl<T> StreamQueues<T> {
    /// Queues of at most `limit` waiting items per stream (at least 1).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            streams: Arc::default(),
            limit: limit.max(1),
            workers: AtomicU64::new(0),
        }
    }

    /// Streams with work in flight (for tests and metrics).
    pub fn streams_in_flight(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<T: Send + 'static> StreamQueues<T> {
    /// Queues `item` for `stream`. A stream without a worker gets one: `start` is called with
    /// the stream's [`Drain`] and the future it returns is spawned. Refused at once
    /// ([`Overloaded::QueueFull`]) when the stream's queue is full.
    pub fn push<F>(
        &self,
        stream: &str,
        item: T,
        start: impl FnOnce(Drain<T>) -> F,
    ) -> Result<(), Overloaded>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = streams.get_mut(stream) {
            if waiting.items.len() >= self.limit {
                return Err(Overloaded::QueueFull);
            }
            waiting.items.push_back(item);
            return Ok(());
        }
        let worker = self.workers.fetch_add(1, Ordering::Relaxed);
        streams.insert(
            stream.to_owned(),
            Waiting {
                worker,
                items: VecDeque::from([item]),
            },
        );
        drop(streams);
        tokio::spawn(start(Drain {
            streams: self.streams.clone(),
            stream: stream.to_owned(),
            worker,
        }));
        Ok(())
    }
}

/// The worker's end of one stream's queue. Dropped (the worker ended, or panicked), it
/// forgets the queue: what still waits there is dropped with it, and the next item pushed for
/// the stream starts a new worker.
pub struct Drain<T> {
    streams: Streams<T>,
    stream: String,
    worker: u64,
}

impl<T> Drain<T> {
    /// Takes up to `max` waiting items, oldest first. None waiting: the queue is forgotten
    /// (the next push starts a new worker) and this returns nothing, for good.
    pub fn next_batch(&self, max: usize) -> Vec<T> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        match streams.get_mut(&self.stream) {
            Some(waiting) if waiting.worker == self.worker => {
                if waiting.items.is_empty() {
                    streams.remove(&self.stream);
                    Vec::new()
                } else {
                    let taken = waiting.items.len().min(max.max(1));
                    waiting.items.drain(..taken).collect()
                }
            }
            _ => Vec::new(),
        }
    }
}

impl<T> Drop for Drain<T> {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams
            .get(&self.stream)
            .is_some_and(|waiting| waiting.worker == self.worker)
        {
            streams.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that sends each batch it takes to `batches`, after `hold` per batch.
    fn recorder(
        batches: tokio::sync::mpsc::UnboundedSender<Vec<u32>>,
        hold: Duration,
    ) -> impl FnOnce(Drain<u32>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |drain| {
            Box::pin(async move {
                loop {
                    let batch = drain.next_batch(10);
                    if batch.is_empty() {
                        return;
                    }
                    tokio::time::sleep(hold).await;
                    let _ = batches.send(batch);
                }
            })
        }
    }

    #[tokio::test]
    async fn what_queues_while_a_batch_runs_is_taken_together_in_order() {
        let queues = StreamQueues::default();
        let (sent, mut batches) = tokio::sync::mpsc::unbounded_channel();
        let hold = Duration::from_millis(50);
        queues
            .push("a", 1, recorder(sent.clone(), hold))
            .expect("queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
        for item in 2..=4 {
            queues
                .push("a", item, |_| async { panic!("the stream has a worker") })
                .expect("queued");
        }
        queues
            .push("b", 9, recorder(sent, hold))
            .expect("another stream, another worker");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(batches.recv().await.expect("a batch"));
        }
        seen.sort();
        assert_eq!(seen, vec![vec![1], vec![2, 3, 4], vec![9]]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(queues.streams_in_flight(), 0, "idle streams are forgotten");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_dead_worker_frees_its_stream() {
        let queues = StreamQueues::with_limit(2);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (first, first_dropped) = tokio::sync::oneshot::channel::<()>();
        queues
            .push("a", first, move |drain| async move {
                let _ = released.await;
                drop(drain);
            })
            .expect("queued");
        tokio::task::yield_now().await;
        let (second, second_dropped) = tokio::sync::oneshot::channel::<()>();
        let (third, _) = tokio::sync::oneshot::channel::<()>();
        queues.push("a", second, |_| async {}).expect("waits");
        assert_eq!(
            queues.push("a", third, |_| async {}).err(),
            Some(Overloaded::QueueFull)
        );
        release.send(()).expect("the worker waits");
        assert!(
            first_dropped.await.is_err(),
            "the ended worker's items are dropped"
        );
        assert!(second_dropped.await.is_err());
        assert_eq!(queues.streams_in_flight(), 0);
        let (again, _) = tokio::sync::oneshot::channel::<()>();
        let (started, was_started) = tokio::sync::oneshot::channel();
        queues
            .push("a", again, move |_| async move {
                let _ = started.send(());
            })
            .expect("a freed stream takes work again");
        was_started.await.expect("with a new worker");
    }
}
