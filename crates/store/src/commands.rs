//! The command side: runs a command against an aggregate loaded from the event store and
//! commits the events it decides, with the request's metadata on every event.
//!
//! This is `CqrsFramework::execute` without in-process queries (read models follow the log
//! instead) plus what the API needs from a write: an expected version (`If-Match`) checked
//! against the loaded stream, the committed version and the new state in the answer, and a
//! bounded retry when another writer committed to the same stream first.
//!
//! Commands on one stream take turns in this process ([`crate::overload`]): they never lose a
//! race to one another, and one waits for its turn only until its request's deadline.
//!
//! [`CommandBus::create`] is the write path of a resource whose id the server has just minted
//! (a UUIDv7): its stream cannot exist yet, so the command is decided on the empty aggregate
//! without reading the store, and the commit is the stream's first event. Should the stream
//! exist after all, the insert fails on the stream's primary key and the command runs on the
//! loaded stream like any other.

use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventStore};
use sparc_domain::agent::Agent;
use sparc_domain::execution::Execution;
use sparc_domain::project::Project;
use sparc_domain::reservation::Reservation;
use sparc_domain::task::Task;
use sparc_domain::user::User;

use crate::event_repository::EventRepository;
use crate::event_store::Store;
use crate::group_commit::GroupCommit;
use crate::metrics::{CommandMetrics, CommandOutcome, command_name};
use crate::overload::{Overloaded, StreamQueues};
use crate::{Database, EventMetadata};

/// Long streams (tasks accumulate runs, agents accumulate activity, users sessions) are loaded
/// from a snapshot plus the events after it; one is written every this many events.
pub const SNAPSHOT_EVERY: usize = 100;

/// How often a command is decided again after losing a race on its stream.
const CONFLICT_RETRIES: usize = 5;

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
    /// The store failed.
    #[error("event store: {0}")]
    Store(String),
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

/// One event store per aggregate type, over one database.
pub struct CommandBus {
    users: Store<User>,
    projects: Store<Project>,
    tasks: Store<Task>,
    executions: Store<Execution>,
    agents: Store<Agent>,
    reservations: Store<Reservation>,
    metrics: CommandMetrics,
    streams: StreamQueues,
}

/// Selects an aggregate's store on the bus.
pub trait Routed: Aggregate<Services = ()> + Clone {
    /// The store of this aggregate type.
    fn store(bus: &CommandBus) -> &Store<Self>;
    /// The command's name, for the metrics.
    fn command_name(command: &Self::Command) -> String;
}

macro_rules! routed {
    ($($aggregate:ty => $field:ident),+ $(,)?) => {
        $(impl Routed for $aggregate {
            fn store(bus: &CommandBus) -> &Store<Self> {
                &bus.$field
            }

            fn command_name(command: &Self::Command) -> String {
                command_name(command)
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
        Self {
            users: store(db, &group_commit).with_snapshots_every(SNAPSHOT_EVERY),
            projects: store(db, &group_commit),
            tasks: store(db, &group_commit).with_snapshots_every(SNAPSHOT_EVERY),
            executions: store(db, &group_commit),
            agents: store(db, &group_commit).with_snapshots_every(SNAPSHOT_EVERY),
            reservations: store(db, &group_commit),
            metrics: CommandMetrics::default(),
            streams: StreamQueues::default(),
        }
    }

    /// This bus with queues of at most `limit` commands per stream (see [`StreamQueues`]).
    pub fn with_stream_queue_limit(self, limit: usize) -> Self {
        Self {
            streams: StreamQueues::with_limit(limit),
            ..self
        }
    }

    /// What this bus has done: commands by outcome, events by type.
    pub fn metrics(&self) -> &CommandMetrics {
        &self.metrics
    }

    /// Counts a command named `name` and the events it recorded.
    fn count<A: Routed>(&self, name: String, result: &Result<Outcome<A>, CommandError<A::Error>>) {
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
        let context = A::store(self)
            .load_aggregate(id)
            .await
            .map_err(store_error)?;
        Ok((context.aggregate, context.current_sequence))
    }

    /// Decides `command` on a new aggregate `id`, which the caller has just minted, and commits
    /// its events as the first of the stream without loading it first (one statement on
    /// Postgres). An id that is taken after all falls back to [`CommandBus::execute`].
    pub async fn create<A: Routed>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Outcome<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let store: &Store<A> = A::store(self);
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

    /// Decides `command` on the aggregate `id` and commits its events with `metadata`.
    /// With `expected_version`, the stream must be at exactly that version (no retry: the
    /// caller asked for that state). Without it, a lost race is decided again on the new state.
    pub async fn execute<A: Routed>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<usize>,
    ) -> Result<Outcome<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let store: &Store<A> = A::store(self);
        let decided = async {
            // Alone on the stream in this process: a conflict below is another process's.
            let _turn = self
                .streams
                .turn(A::TYPE, id)
                .await
                .map_err(CommandError::Overloaded)?;
            let mut attempt = 0;
            loop {
                let context = store.load_aggregate(id).await.map_err(store_error)?;
                if let Some(expected) = expected_version
                    && expected != context.current_sequence
                {
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: context.current_sequence,
                    });
                }
                match decide_and_commit(store, context, command.clone(), metadata).await {
                    Err(AggregateError::AggregateConflict)
                        if expected_version.is_none() && attempt < CONFLICT_RETRIES =>
                    {
                        attempt += 1;
                    }
                    Err(AggregateError::AggregateConflict) => {
                        return Err(match expected_version {
                            Some(expected) => CommandError::VersionMismatch {
                                expected,
                                actual: expected + 1,
                            },
                            None => CommandError::Conflict,
                        });
                    }
                    decided => return decided.map_err(store_error),
                }
            }
        }
        .await;
        self.count(A::command_name(&command), &decided);
        decided
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
            None => CommandError::Store(AggregateError::<E>::UnexpectedError(e).to_string()),
        },
        other => CommandError::Store(other.to_string()),
    }
}
