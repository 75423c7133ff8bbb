//! The cqrs-es event store of sparc: loads an aggregate (from a snapshot and the events after
//! it, or from all its events) and commits the events a command produced, over an
//! [`EventRepository`].
//!
//! It replaces `cqrs_es::persist::PersistedEventStore`, whose snapshots are wrong in cqrs-es
//! 0.5.0: since 0.5 `EventSink::write` applies each new event to the aggregate during `handle`,
//! and `PersistedEventStore::commit` applies the same events to that aggregate again before
//! serializing the snapshot (a counter at 6 that adds 1 is snapshotted as 8). It also stores the
//! last sequence of the whole commit with a snapshot that may cover only part of it. Here the
//! snapshot is the aggregate after `handle`, which is exactly the state at the commit's last
//! sequence.
//!
//! ```no_run
//! # use cqrs_es::Aggregate;
//! # fn f<A: Aggregate>(db: &sparc_store::Database, services: A::Services) {
//! let cqrs: sparc_store::Cqrs<A> = cqrs_es::CqrsFramework::new(
//!     sparc_store::snapshot_store::<A>(db, 100).with_upcasters(vec![/* EventUpcaster… */]),
//!     vec![],
//!     services,
//! );
//! # }
//! ```

use std::collections::HashMap;
use std::marker::PhantomData;

use cqrs_es::persist::{
    EventStoreAggregateContext, EventUpcaster, PersistedEventRepository, PersistenceError,
    SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventEnvelope, EventStore};

use crate::db::Database;
use crate::event_repository::EventRepository;

/// A `CqrsFramework` over a [`Store`].
pub type Cqrs<A> = CqrsFramework<A, Store<A>>;

/// The event store of one aggregate type: events are the source of truth, optionally with a
/// snapshot every N events.
pub struct Store<A> {
    repo: EventRepository,
    /// Take a snapshot whenever a commit crosses a multiple of this many events.
    snapshot_every: Option<usize>,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for Store<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("repo", &self.repo)
            .field("snapshot_every", &self.snapshot_every)
            .field("upcasters", &self.upcasters.len())
            .finish()
    }
}

/// A store that rebuilds the aggregate from all its events on every command.
pub fn event_store<A: Aggregate>(db: &Database) -> Store<A> {
    Store::on(EventRepository::new(db))
}

/// A store that also saves a snapshot of the aggregate every `every` events (at least 1) and
/// loads the snapshot plus the events after it (for long-lived aggregates).
pub fn snapshot_store<A: Aggregate>(db: &Database, every: usize) -> Store<A> {
    event_store(db).with_snapshots_every(every)
}

impl<A: Aggregate> Store<A> {
    /// A store over `repo` that rebuilds the aggregate from all its events on every command.
    pub fn on(repo: EventRepository) -> Self {
        Self {
            repo,
            snapshot_every: None,
            upcasters: Vec::new(),
            _aggregate: PhantomData,
        }
    }

    /// Also saves a snapshot every `every` events (at least 1) and loads the snapshot plus the
    /// events after it.
    pub fn with_snapshots_every(self, every: usize) -> Self {
        Self {
            snapshot_every: Some(every.max(1)),
            ..self
        }
    }

    /// Upcasters applied, in this order, to every stored event before it is deserialized (an
    /// upcaster for version 1.2 goes before one for 1.3).
    pub fn with_upcasters(self, upcasters: Vec<Box<dyn EventUpcaster>>) -> Self {
        Self { upcasters, ..self }
    }

    /// The context of a stream with no events and no snapshot, for committing its first events
    /// without loading it.
    pub fn empty_context(&self, aggregate_id: &str) -> EventStoreAggregateContext<A> {
        EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        }
    }

    /// Brings `context`, a state of the stream loaded earlier, up to date with the events
    /// committed after it (one read; usually none).
    pub async fn catch_up(
        &self,
        mut context: EventStoreAggregateContext<A>,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let events = self
            .repo
            .get_last_events::<A>(&context.aggregate_id, context.current_sequence)
            .await?;
        for envelope in self.envelopes(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    /// Commits `events`, each with its own metadata (the commands of one stream decided
    /// together: [`crate::CommandBus`]), after the stream's version in `context`, in one
    /// transaction, and moves `context` to the version they reach. `context.aggregate` must
    /// already be the state after the last of them (`handle` has applied them): it is what a
    /// snapshot stores.
    pub async fn commit_each(
        &self,
        events: Vec<(A::Event, HashMap<String, String>)>,
        context: &mut EventStoreAggregateContext<A>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let first = context.current_sequence + 1;
        let last = context.current_sequence + events.len();
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(first..)
            .map(|((payload, metadata), sequence)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence,
                payload,
                metadata,
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let snapshot = match self.snapshot_every {
            Some(every) if last / every > context.current_sequence / every => Some((
                context.aggregate_id.clone(),
                serde_json::to_value(&context.aggregate)?,
                context.current_snapshot.map_or(1, |n| n + 1),
            )),
            _ => None,
        };
        let snapshotted = snapshot.as_ref().map(|(_, _, number)| *number);
        self.repo.persist::<A>(&serialized, snapshot).await?;
        context.current_sequence = last;
        if snapshotted.is_some() {
            context.current_snapshot = snapshotted;
        }
        Ok(envelopes)
    }

    fn envelopes(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<EventEnvelope<A>>, PersistenceError> {
        events
            .into_iter()
            .map(|event| {
                let event = self.upcasters.iter().fold(event, |event, upcaster| {
                    if upcaster.can_upcast(&event.event_type, &event.event_version) {
                        upcaster.upcast(event)
                    } else {
                        event
                    }
                });
                EventEnvelope::try_from(event)
            })
            .collect()
    }
}

impl<A: Aggregate> EventStore<A> for Store<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = self.repo.get_events::<A>(aggregate_id).await?;
        Ok(self.envelopes(events)?)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        let mut context = self.empty_context(aggregate_id);
        if self.snapshot_every.is_some()
            && let Some(snapshot) = self.repo.get_snapshot::<A>(aggregate_id).await?
        {
            let current_snapshot = snapshot.current_snapshot;
            match EventStoreAggregateContext::<A>::try_from(snapshot) {
                Ok(from_snapshot) => context = from_snapshot,
                // The aggregate's shape changed since the snapshot: replay every event, and
                // overwrite that snapshot (not add a second one) at the next commit.
                Err(PersistenceError::DeserializationError(_)) => {
                    context.current_snapshot = Some(current_snapshot);
                }
                Err(other) => return Err(other.into()),
            }
        }
        let events = if context.current_sequence == 0 {
            self.repo.get_events::<A>(aggregate_id).await?
        } else {
            self.repo
                .get_last_events::<A>(aggregate_id, context.current_sequence)
                .await?
        };
        for envelope in self.envelopes(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        mut context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = events
            .into_iter()
            .map(|event| (event, metadata.clone()))
            .collect();
        self.commit_each(events, &mut context).await
    }
}
