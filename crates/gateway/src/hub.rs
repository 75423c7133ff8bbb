//! The hub: one subscription to the bus per gateway process, fanned out to the connections.
//!
//! Every change is rendered once ([`ChangeFrames`]) and offered to the bounded queue of each
//! connection allowed to see it (the change's audience, plus admins and auditors; changes with
//! no audience go to everyone). A connection whose queue is full is evicted: it is told through
//! its [`Subscription::evicted`] signal and closes with 4008, and no other connection waits for
//! it.
//!
//! The hub delivers changes in `event_id` order without gaps or repeats: a change at or below
//! the last one delivered is a repeat (a relay that published again) and is dropped; a change
//! beyond the next one means the bus lost some, and the hub reads those from the outbox first.
//! A connection that subscribes learns the hub's position ([`Subscription::head`]) under the
//! same lock that delivery takes, so it receives exactly the changes after that position.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sparc_bus::{Change, Outbox, Visibility};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::frames::ChangeFrames;

/// Changes read from the outbox per query when filling a gap.
const GAP_PAGE: i64 = 1000;
/// Attempts to read a gap before giving up on it.
const GAP_ATTEMPTS: u32 = 3;

/// Routes changes to connections.
pub(crate) struct Hub {
    registry: RwLock<Registry>,
    head: AtomicI64,
    connections: AtomicUsize,
    /// WebSocket messages written to and read from this process's connections.
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    outbox: Outbox,
    queue_capacity: usize,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_user: HashMap<Uuid, HashMap<u64, Mailbox>>,
    seeing_everything: HashMap<u64, Mailbox>,
}

impl Registry {
    /// Offers `frames` to the queue of every connection that may see them; a full queue gets its
    /// connection evicted.
    fn offer(&self, frames: &Arc<ChangeFrames>) {
        let offer = |mailbox: &Mailbox| {
            if let Err(mpsc::error::TrySendError::Full(_)) = mailbox.queue.try_send(frames.clone())
            {
                mailbox.evicted.notify_one();
            }
        };
        match frames.audience {
            Some(user) => {
                if let Some(mailboxes) = self.by_user.get(&user) {
                    mailboxes.values().for_each(offer);
                }
            }
            None => self
                .by_user
                .values()
                .flat_map(HashMap::values)
                .for_each(offer),
        }
        self.seeing_everything.values().for_each(offer);
    }

    /// Whether a connection may see a change for `audience`.
    fn anyone_sees(&self, audience: Option<Uuid>) -> bool {
        !self.seeing_everything.is_empty()
            || match audience {
                Some(user) => self.by_user.contains_key(&user),
                None => !self.by_user.is_empty(),
            }
    }
}

struct Mailbox {
    queue: mpsc::Sender<Arc<ChangeFrames>>,
    evicted: Arc<Notify>,
}

/// A connection's place in the hub; dropping it leaves.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    visibility: Visibility,
    /// The last event id delivered before this subscription: it receives every later one.
    pub head: i64,
    /// The changes for this connection, in order.
    pub changes: mpsc::Receiver<Arc<ChangeFrames>>,
    /// Signalled when the connection fell too far behind and must close.
    pub evicted: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id, self.visibility);
    }
}

impl Hub {
    /// A hub positioned at `head` (the outbox's last event id when the bus subscription began).
    pub(crate) fn new(outbox: Outbox, head: i64, queue_capacity: usize) -> Self {
        Self {
            registry: RwLock::new(Registry::default()),
            head: AtomicI64::new(head),
            connections: AtomicUsize::new(0),
            messages_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            outbox,
            queue_capacity,
        }
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts `count` messages written to a connection.
    pub(crate) fn count_sent(&self, count: u64) {
        self.messages_sent.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts a message read from a connection.
    pub(crate) fn count_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }

    /// The messages written to and read from connections so far.
    pub(crate) fn messages(&self) -> (u64, u64) {
        (
            self.messages_sent.load(Ordering::Relaxed),
            self.messages_received.load(Ordering::Relaxed),
        )
    }

    /// Registers a connection that sees `visibility`.
    pub(crate) fn subscribe(self: &Arc<Self>, visibility: Visibility) -> Subscription {
        let (queue, changes) = mpsc::channel(self.queue_capacity);
        let evicted = Arc::new(Notify::new());
        let mailbox = Mailbox {
            queue,
            evicted: evicted.clone(),
        };
        let mut registry = self
            .registry
            .write()
            .expect("the registry lock is never poisoned");
        let id = registry.next_id;
        registry.next_id += 1;
        match visibility {
            Visibility::Everything => {
                registry.seeing_everything.insert(id, mailbox);
            }
            Visibility::User(user) => {
                registry
                    .by_user
                    .entry(user)
                    .or_default()
                    .insert(id, mailbox);
            }
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        Subscription {
            hub: self.clone(),
            id,
            visibility,
            head: self.head.load(Ordering::Acquire),
            changes,
            evicted,
        }
    }

    fn leave(&self, id: u64, visibility: Visibility) {
        let mut registry = self
            .registry
            .write()
            .expect("the registry lock is never poisoned");
        let removed = match visibility {
            Visibility::Everything => registry.seeing_everything.remove(&id).is_some(),
            Visibility::User(user) => match registry.by_user.get_mut(&user) {
                Some(mailboxes) => {
                    let removed = mailboxes.remove(&id).is_some();
                    if mailboxes.is_empty() {
                        registry.by_user.remove(&user);
                    }
                    removed
                }
                None => false,
            },
        };
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes one change from the bus: drops a repeat, fills a gap from the outbox, then
    /// delivers.
    pub(crate) async fn accept(&self, change: &Change) {
        let head = self.head.load(Ordering::Acquire);
        if change.event_id <= head {
            return;
        }
        if change.event_id > head + 1 {
            self.fill_gap(head, change.event_id - 1).await;
        }
        self.deliver(change);
    }

    /// Delivers the changes in `(after, through]` from the outbox.
    async fn fill_gap(&self, mut after: i64, through: i64) {
        let mut failures = 0;
        while after < through {
            match self
                .outbox
                .between(Visibility::Everything, after, through, GAP_PAGE)
                .await
            {
                Ok(changes) if changes.is_empty() => break,
                Ok(changes) => {
                    for change in &changes {
                        self.deliver(change);
                    }
                    after = changes.last().map_or(through, |c| c.event_id);
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, after, through, "could not read missed changes");
                    if failures == GAP_ATTEMPTS {
                        tracing::error!(
                            after,
                            through,
                            "changes skipped: the outbox is unreadable"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                }
            }
        }
    }

    /// Renders `change` once and offers it to every connection that may see it, then moves the
    /// head, all under one read lock of the registry (so a connection subscribing meanwhile sees
    /// a head that agrees with what it is offered). Nobody to see it: nothing is rendered. A
    /// connection whose queue is full is signalled to close; it leaves the hub when it does.
    fn deliver(&self, change: &Change) {
        let registry = self
            .registry
            .read()
            .expect("the registry lock is never poisoned");
        if registry.anyone_sees(change.audience) {
            match ChangeFrames::render(change) {
                Ok(frames) => registry.offer(&Arc::new(frames)),
                Err(error) => tracing::error!(%error, "change skipped"),
            }
        }
        self.head.store(change.event_id, Ordering::Release);
    }
}
