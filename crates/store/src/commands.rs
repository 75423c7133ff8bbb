//! The command side: runs a command against an aggregate loaded from the event store and
//! commits the events it decides, with the request's metadata on every event.
//!
//! This is `CqrsFramework::execute` without in-process queries (read models follow the log
//! instead) plus what the API needs from a write: an expected version (`If-Match`) checked
//! against the loaded stream, the committed version and the new state in the answer, and a
//! bounded retry when another writer committed to the same stream first.
//!
//! Commands on one stream wait in that stream's queue in this process ([`crate::overload`]),
//! which a worker drains a batch at a time: it reads the stream's current state once (what the
//! last batch left, brought up to date, or the stream loaded), decides the batch's commands one
//! after another, each on the state the ones before it left, and commits all their events in
//! one statement. They never lose a race to one another, a hot stream costs a read and a
//! commit per batch rather than a load and a commit per command, and a command waits only
//! until its request's deadline.
//!
//! [`CommandBus::create`] is the write path of a resource whose id the server has just minted
//! (a UUIDv7): its stream cannot exist yet, so the command is decided on the empty aggregate
//! without reading the store, and the commit is the stream's first event. Should the stream
//! exist after all, the insert fails on the stream's primary key and the command runs on the
//! loaded stream like any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventStore};
use hashlink::LruCache;
use sparc_domain::agent::Agent;
use sparc_domain::execution::Execution;
use sparc_domain::memory::Memory;
use sparc_domain::project::Project;
use sparc_domain::reservation::Reservation;
use sparc_domain::task::Task;
use sparc_domain::user::User;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::event_repository::EventRepository;
use crate::event_store::Store;
use crate::group_commit::GroupCommit;
use crate::metrics::{CommandMetrics, CommandOutcome};
use crate::overload::{Drain, Overloaded, StreamQueues, with_deadline};
use crate::{Database, EventMetadata};

/// Long streams (tasks accumulate runs, agents accumulate activity, users sessions) are loaded
/// from a snapshot plus the events after it; one is written every this many events.
pub const SNAPSHOT_EVERY: usize = 100;

/// How often a command is decided again after losing a race on its stream.
const CONFLICT_RETRIES: usize = 5;

/// Commands of one stream decided together at most: their events go in one statement.
const MAX_BATCH: usize = 64;

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused it.
    #[error("{0}")]
    Rejected(E),
    /// The stream is not at the version the caller expected (`If-Match`).
    #[error("expected version {expected}, found {actual}")]
    VersionMismatch {
        /// What the caller expected.
        expected: usize,
        /// What the stream is at.
        actual: usize,
    },
    /// Other writers kept winning the race on this stream.
    #[error("concurrent modification")]
    Conflict,
    /// It was not attempted: the stream's queue was full, or the request's deadline passed
    /// before it could commit.
    #[error("{0}")]
    Overloaded(Overloaded),
    /// The store failed (the cause, down to the database's error, is the source).
    #[error("event store failed")]
    Store(#[source] StoreFailure),
}

/// What failed in the store: shared, since one failure fails every command of a batch.
pub type StoreFailure = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The cause of a store failure `error` reports (its message, for the variants that carry no
/// error of their own).
fn failure<E: std::error::Error>(error: AggregateError<E>) -> StoreFailure {
    match error {
        AggregateError::DatabaseConnectionError(cause)
        | AggregateError::DeserializationError(cause)
        | AggregateError::UnexpectedError(cause) => Arc::from(cause),
        other => Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
            other.to_string(),
        )),
    }
}

/// What a committed (or refused-as-no-op) command left behind.
#[derive(Debug, Clone)]
pub struct Outcome<A: Aggregate> {
    /// The aggregate's state after the command.
    pub state: A,
    /// Its version: the sequence of its last event (0 for a stream with none).
    pub version: usize,
    /// The events this command recorded (empty when it changed nothing).
    pub events: Vec<A::Event>,
}

/// One lane per aggregate type, over one database.
pub struct CommandBus {
    users: Arc<Lane<User>>,
    projects: Arc<Lane<Project>>,
    tasks: Arc<Lane<Task>>,
    executions: Arc<Lane<Execution>>,
    agents: Arc<Lane<Agent>>,
    memories: Arc<Lane<Memory>>,
    reservations: Arc<Lane<Reservation>>,
    metrics: CommandMetrics,
}

/// Streams of one aggregate type whose last committed state a lane keeps at most: enough for
/// the hot ones, and a bound on the memory (a task's state may carry 64 KiB of params).
const RECENT_STREAMS: usize = 256;

/// The commands of one aggregate type: its event store, the queues of its streams, and the
/// state of the streams it committed to lately, which the next batch on such a stream brings
/// up to date with one read instead of loading it again.
pub struct Lane<A: Routed> {
    store: Store<A>,
    queues: StreamQueues<Queued<A>>,
    recent: Mutex<LruCache<String, EventStoreAggregateContext<A>>>,
}

impl<A: Routed> Lane<A> {
    fn new(store: Store<A>) -> Arc<Self> {
        Arc::new(Self {
            store,
            queues: StreamQueues::default(),
            recent: Mutex::new(LruCache::new(RECENT_STREAMS)),
        })
    }

    /// The current state of stream `id`: what this lane kept of it brought up to date, or
    /// loaded.
    async fn current(
        &self,
        id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let kept = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match kept {
            Some(context) => self.store.catch_up(context).await,
            None => self.store.load_aggregate(id).await,
        }
    }

    fn keep(&self, context: EventStoreAggregateContext<A>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.insert(context.aggregate_id.clone(), context);
    }
}

/// What a command's caller hears back.
type Answer<A> = Result<Outcome<A>, CommandError<<A as Aggregate>::Error>>;

/// A command waiting in its stream's queue.
pub struct Queued<A: Routed> {
    command: A::Command,
    metadata: HashMap<String, String>,
    expected_version: Option<usize>,
    deadline: Option<Instant>,
    /// Set once, by the first of: the worker taking the command up, or its caller giving up
    /// at the deadline. A command given up is never decided; one taken up is answered.
    claimed: Arc<AtomicBool>,
    answer: oneshot::Sender<Answer<A>>,
}

impl<A: Routed> Queued<A> {
    fn reply(self, answer: Answer<A>) {
        // The caller may have gone (its client hung up); what committed stays committed.
        let _ = self.answer.send(answer);
    }
}

/// Selects an aggregate's lane on the bus.
pub trait Routed:
    Aggregate<Services = (), Command: Clone + Send, Error: Send> + Clone + 'static
{
    /// The lane of this aggregate type.
    fn lane(bus: &CommandBus) -> &Arc<Lane<Self>>;
    /// The command's name, for the metrics.
    fn command_name(command: &Self::Command) -> &'static str;
}

macro_rules! routed {
    ($($aggregate:ty => $field:ident),+ $(,)?) => {
        $(impl Routed for $aggregate {
            fn lane(bus: &CommandBus) -> &Arc<Lane<Self>> {
                &bus.$field
            }

            fn command_name(command: &Self::Command) -> &'static str {
                command.name()
            }
        })+
    };
}

routed!(
    User => users,
    Project => projects,
    Task => tasks,
    Execution => executions,
    Agent => agents,
    Memory => memories,
    Reservation => reservations,
);

impl CommandBus {
    /// A bus over `db`.
    pub fn new(db: &Database) -> Self {
        // Every aggregate type's single-event appends go through one group commit.
        let group_commit = GroupCommit::of(db);
        fn store<A: Aggregate>(db: &Database, group_commit: &Option<GroupCommit>) -> Store<A> {
            Store::on(EventRepository::sharing(db, group_commit.clone()))
                .with_upcasters(sparc_domain::upcasting::upcasters())
        }
        fn snapshotted<A: Aggregate>(store: Store<A>) -> Store<A> {
            store.with_snapshots_every(SNAPSHOT_EVERY)
        }
        Self {
            users: Lane::new(snapshotted(store(db, &group_commit))),
            projects: Lane::new(store(db, &group_commit)),
            tasks: Lane::new(snapshotted(store(db, &group_commit))),
            executions: Lane::new(store(db, &group_commit)),
            agents: Lane::new(snapshotted(store(db, &group_commit))),
            memories: Lane::new(store(db, &group_commit)),
            reservations: Lane::new(store(db, &group_commit)),
            metrics: CommandMetrics::default(),
        }
    }

    /// What this bus has done: commands by outcome, events by type.
    pub fn metrics(&self) -> &CommandMetrics {
        &self.metrics
    }

    /// Counts a command named `name` and the events it recorded.
    fn count<A: Routed>(
        &self,
        name: &'static str,
        result: &Result<Outcome<A>, CommandError<A::Error>>,
    ) {
        let outcome = match result {
            Ok(done) if done.events.is_empty() => CommandOutcome::Unchanged,
            Ok(done) => {
                self.metrics
                    .count_events(A::TYPE, done.events.iter().map(DomainEvent::event_type));
                CommandOutcome::Committed
            }
            Err(CommandError::Rejected(_)) => CommandOutcome::Rejected,
            Err(CommandError::VersionMismatch { .. } | CommandError::Conflict) => {
                CommandOutcome::Conflict
            }
            Err(CommandError::Overloaded(_)) => CommandOutcome::Overloaded,
            Err(CommandError::Store(_)) => CommandOutcome::Failed,
        };
        self.metrics.count_command(A::TYPE, name, outcome);
    }

    /// Loads an aggregate's current state and version.
    pub async fn load<A: Routed>(&self, id: &str) -> Result<(A, usize), CommandError<A::Error>> {
        let context = A::lane(self)
            .store
            .load_aggregate(id)
            .await
            .map_err(store_error)?;
        Ok((context.aggregate, context.current_sequence))
    }

    /// Decides `command` on a new aggregate `id`, which the caller has just minted, and commits
    /// its events as the first of the stream without loading it first (one statement on
    /// Postgres). An id that is taken after all falls back to [`CommandBus::execute`].
    #[tracing::instrument(level = "debug", skip_all, fields(
        aggregate = A::TYPE, command = A::command_name(&command), id
    ))]
    pub async fn create<A: Routed>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Outcome<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let store = &A::lane(self).store;
        let context = store.empty_context(id);
        match decide_and_commit(store, context, command.clone(), metadata).await {
            // `execute` counts the command.
            Err(AggregateError::AggregateConflict) => {
                self.execute::<A>(id, command, metadata, None).await
            }
            decided => {
                let result = decided.map_err(store_error);
                self.count(A::command_name(&command), &result);
                result
            }
        }
    }

    /// Decides `command` on the aggregate `id` and commits its events with `metadata`, in
    /// turn with the other commands on the same stream (see the module's documentation).
    /// With `expected_version`, the stream must be at exactly that version when the command
    /// is decided (`If-Match`). A race lost to another process is decided again on the new
    /// state.
    #[tracing::instrument(level = "debug", skip_all, fields(
        aggregate = A::TYPE, command = A::command_name(&command), id
    ))]
    pub async fn execute<A: Routed>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<usize>,
    ) -> Result<Outcome<A>, CommandError<A::Error>> {
        let name = A::command_name(&command);
        let lane = A::lane(self);
        let (answer, answered) = oneshot::channel();
        let claimed = Arc::new(AtomicBool::new(false));
        let deadline = crate::overload::deadline();
        let queued = Queued {
            command,
            metadata: metadata.clone().into_map(),
            expected_version,
            deadline,
            claimed: claimed.clone(),
            answer,
        };
        let result = match lane.queues.push(id, queued, |queue| {
            drain_stream(lane.clone(), id.to_owned(), queue)
        }) {
            Ok(()) => wait_for_answer(answered, &claimed, deadline).await,
            Err(overloaded) => Err(CommandError::Overloaded(overloaded)),
        };
        self.count(name, &result);
        result
    }
}

/// Waits for the stream's worker to answer; at `deadline`, gives up unless the worker has
/// taken the command up (then its answer comes soon, and may be a commit).
async fn wait_for_answer<A: Routed>(
    mut answered: oneshot::Receiver<Answer<A>>,
    claimed: &AtomicBool,
    deadline: Option<Instant>,
) -> Answer<A> {
    let stopped = |_| {
        Err(CommandError::Store(Arc::from(Box::<
            dyn std::error::Error + Send + Sync,
        >::from(
            "the stream's worker stopped",
        ))))
    };
    if let Some(deadline) = deadline {
        tokio::select! {
            answer = &mut answered => return answer.unwrap_or_else(stopped),
            () = tokio::time::sleep_until(deadline) => {
                if !claimed.swap(true, Ordering::AcqRel) {
                    return Err(CommandError::Overloaded(Overloaded::DeadlinePassed));
                }
            }
        }
    }
    answered.await.unwrap_or_else(stopped)
}

/// The worker of one stream: decides and commits what waits in its queue, a batch at a time,
/// until the queue is empty.
async fn drain_stream<A: Routed>(lane: Arc<Lane<A>>, id: String, queue: Drain<Queued<A>>) {
    loop {
        let batch = queue.next_batch(MAX_BATCH);
        if batch.is_empty() {
            return;
        }
        let claimed = batch
            .into_iter()
            .filter(|queued| {
                !queued.claimed.swap(true, Ordering::AcqRel) && !queued.answer.is_closed()
            })
            .collect();
        decide_batch(&lane, &id, claimed).await;
    }
}

/// Decides `batch` (commands on stream `id`, in arrival order) one after another, each on the
/// state the ones before it left, commits all their events in one statement and answers each
/// command. Answers wait for the commit: a refusal or a version check may depend on what an
/// earlier command of the batch decided. A lost race decides the whole batch again on the
/// new state; a command whose deadline passes before the commit is refused, uncommitted.
async fn decide_batch<A: Routed>(lane: &Lane<A>, id: &str, mut batch: Vec<Queued<A>>) {
    let mut races_lost = 0;
    while !batch.is_empty() {
        let context = match lane.current(id).await {
            Ok(context) => context,
            Err(error) => return fail_all(batch, failure(error)),
        };
        let Decided {
            answers: decided,
            events,
            state,
        } = decide_each(&context, batch).await;
        if events.is_empty() {
            lane.keep(context);
            return answer_all(decided);
        }
        let deadline = decided
            .iter()
            .filter(|(_, answer)| answer.as_ref().is_ok_and(|done| !done.events.is_empty()))
            .filter_map(|(queued, _)| queued.deadline)
            .min();
        let mut context = EventStoreAggregateContext {
            aggregate: state,
            ..context
        };
        let commit = lane.store.commit_each(events, &mut context);
        let committed = match deadline {
            Some(deadline) => with_deadline(deadline, commit).await,
            None => commit.await,
        };
        // After a failure the stream is loaded afresh: it may have moved on meanwhile.
        batch = match committed {
            Ok(_) => {
                lane.keep(context);
                return answer_all(decided);
            }
            Err(AggregateError::AggregateConflict) if races_lost < CONFLICT_RETRIES => {
                races_lost += 1;
                decided.into_iter().map(|(queued, _)| queued).collect()
            }
            Err(AggregateError::AggregateConflict) => {
                for (queued, _) in decided {
                    let refusal = match queued.expected_version {
                        Some(expected) => CommandError::VersionMismatch {
                            expected,
                            actual: expected + 1,
                        },
                        None => CommandError::Conflict,
                    };
                    queued.reply(Err(refusal));
                }
                return;
            }
            Err(error) => match store_error::<A::Error>(error) {
                CommandError::Overloaded(overloaded) => {
                    // Refuse those whose deadline has passed; decide the others again.
                    let now = Instant::now();
                    let (late, in_time): (Vec<_>, Vec<_>) = decided
                        .into_iter()
                        .map(|(queued, _)| queued)
                        .partition(|queued| queued.deadline.is_some_and(|d| d <= now));
                    if late.is_empty() {
                        in_time.into_iter().for_each(|queued| {
                            queued.reply(Err(CommandError::Overloaded(overloaded)));
                        });
                        return;
                    }
                    late.into_iter().for_each(|queued| {
                        queued.reply(Err(CommandError::Overloaded(overloaded)));
                    });
                    in_time
                }
                failed => {
                    let cause = match failed {
                        CommandError::Store(cause) => cause,
                        other => Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                            other.to_string(),
                        )),
                    };
                    return fail_all(decided.into_iter().map(|(q, _)| q), cause);
                }
            },
        };
    }
}

/// What a batch's commands decided, before it commits.
struct Decided<A: Routed> {
    /// Each command with its answer, if the events commit.
    answers: Vec<(Queued<A>, Answer<A>)>,
    /// The events, each with its command's metadata.
    events: Vec<(A::Event, HashMap<String, String>)>,
    /// The stream's state after them.
    state: A,
}

/// Decides each command of `batch` in order on the state of `context` and the events decided
/// before it. A command past its deadline is refused at once, undecided.
async fn decide_each<A: Routed>(
    context: &EventStoreAggregateContext<A>,
    batch: Vec<Queued<A>>,
) -> Decided<A> {
    let now = Instant::now();
    let mut state = context.aggregate.clone();
    let mut version = context.current_sequence;
    let mut decided = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    for queued in batch {
        if queued.deadline.is_some_and(|deadline| deadline <= now) {
            queued.reply(Err(CommandError::Overloaded(Overloaded::DeadlinePassed)));
            continue;
        }
        if let Some(expected) = queued.expected_version
            && expected != version
        {
            let mismatch = CommandError::VersionMismatch {
                expected,
                actual: version,
            };
            decided.push((queued, Err(mismatch)));
            continue;
        }
        let mut candidate = state.clone();
        let sink = cqrs_es::event_sink::EventSink::default();
        let answer = match candidate.handle(queued.command.clone(), &(), &sink).await {
            Err(refusal) => Err(CommandError::Rejected(refusal)),
            Ok(()) => {
                let new = sink.collect().await;
                version += new.len();
                events.extend(new.iter().map(|e| (e.clone(), queued.metadata.clone())));
                state = candidate;
                Ok(Outcome {
                    state: state.clone(),
                    version,
                    events: new,
                })
            }
        };
        decided.push((queued, answer));
    }
    Decided {
        answers: decided,
        events,
        state,
    }
}

fn answer_all<A: Routed>(decided: Vec<(Queued<A>, Answer<A>)>) {
    for (queued, answer) in decided {
        queued.reply(answer);
    }
}

fn fail_all<A: Routed>(batch: impl IntoIterator<Item = Queued<A>>, failure: StoreFailure) {
    for queued in batch {
        queued.reply(Err(CommandError::Store(failure.clone())));
    }
}

/// Lets the aggregate in `context` (as loaded, or empty for a new stream) decide `command` and
/// commits the events it decides with `metadata`; a refusal is `UserError`, a lost race
/// `AggregateConflict`. Deciding nothing commits nothing.
async fn decide_and_commit<A: Routed>(
    store: &Store<A>,
    mut context: EventStoreAggregateContext<A>,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<Outcome<A>, AggregateError<A::Error>> {
    let sink = cqrs_es::event_sink::EventSink::default();
    context
        .aggregate()
        .handle(command, &(), &sink)
        .await
        .map_err(AggregateError::UserError)?;
    let events = sink.collect().await;
    let state = context.aggregate.clone();
    if events.is_empty() {
        return Ok(Outcome {
            state,
            version: context.current_sequence,
            events,
        });
    }
    let committed = store
        .commit(events.clone(), context, metadata.clone().into_map())
        .await?;
    Ok(Outcome {
        state,
        version: committed.last().map_or(0, |e| e.sequence),
        events,
    })
}

fn store_error<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::AggregateConflict => CommandError::Conflict,
        AggregateError::UserError(e) => CommandError::Rejected(e),
        // Group commit drops an append whose deadline passed before its statement.
        AggregateError::UnexpectedError(e) => match e.downcast_ref::<Overloaded>() {
            Some(overloaded) => CommandError::Overloaded(*overloaded),
            None => CommandError::Store(Arc::from(e)),
        },
        other => CommandError::Store(failure(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_the_database_error_as_its_source() {
        let database = sqlx::Error::PoolTimedOut;
        let error: CommandError<std::io::Error> =
            store_error(AggregateError::UnexpectedError(Box::new(database)));
        assert_eq!(error.to_string(), "event store failed");
        let source = std::error::Error::source(&error).expect("the cause is the source");
        assert!(source.to_string().contains("pool timed out"), "{source}");
    }
}
