//! Finding the event a consumer cannot apply, so that it alone is parked and the consumer, and
//! every other one, goes on. After a deterministic failure of a batch ([`crate::fault`]) the
//! runner applies it again member by member, each in a savepoint: a member whose events fail
//! is bisected over prefixes of its events (a failure may surface only in a multi-row
//! statement) down to the first event that fails, which is parked with the rest of its stream;
//! the remaining events are applied. A transient failure on the way gives up the whole batch,
//! to be retried later, so nothing is parked for the moment's fault.

use std::borrow::Cow;

use sparc_store::parked::ParkedStream;
use sparc_store::{RecordedEvent, StoreTx};

use crate::fault::Fault;
use crate::outbox::Outgoing;
use crate::runner::{Projection, ProjectionError};

/// An event to park for a consumer, and why.
#[derive(Debug, Clone)]
pub struct Parking {
    /// The event.
    pub event: RecordedEvent,
    /// The failure, or the parked event it waits behind.
    pub error: String,
}

/// Splits `events` into those to apply and those of streams parked for the consumer (`parked`
/// are its parked streams), which are parked behind their stream's first parked event.
pub fn split_parked<'a>(
    events: &'a [RecordedEvent],
    parked: &[ParkedStream],
) -> (Cow<'a, [RecordedEvent]>, Vec<Parking>) {
    let blocked = |event: &RecordedEvent| {
        parked.iter().find(|stream| {
            stream.aggregate_id == event.aggregate_id
                && stream.aggregate_type == event.aggregate_type
        })
    };
    if !events.iter().any(|event| blocked(event).is_some()) {
        return (Cow::Borrowed(events), Vec::new());
    }
    let mut free = Vec::with_capacity(events.len());
    let mut behind = Vec::new();
    for event in events {
        match blocked(event) {
            Some(stream) => behind.push(Parking {
                event: event.clone(),
                error: waiting_behind(stream.since),
            }),
            None => free.push(event.clone()),
        }
    }
    (Cow::Owned(free), behind)
}

fn waiting_behind(position: i64) -> String {
    format!("its stream is parked at position {position}")
}

/// Applies `events` to `member` in savepoints of `tx`, parking each event that fails
/// deterministically together with the later events of its stream. Returns the changes of what
/// was applied and the events to park.
pub async fn apply_isolated(
    member: &dyn Projection,
    tx: &mut StoreTx,
    mut events: Vec<RecordedEvent>,
) -> Result<(Outgoing, Vec<Parking>), ProjectionError> {
    let mut parked = Vec::new();
    loop {
        if events.is_empty() {
            return Ok((Outgoing::default(), parked));
        }
        let mut outgoing = Outgoing::default();
        let error = match try_apply(member, tx, &events, &mut outgoing, true).await? {
            None => return Ok((outgoing, parked)),
            Some(error) => error,
        };
        // `ok` events apply, `failing` do not: narrow down to the first that fails.
        let (mut ok, mut failing, mut error) = (0, events.len(), error);
        while failing - ok > 1 {
            let middle = ok + (failing - ok) / 2;
            let mut discarded = Outgoing::default();
            match try_apply(member, tx, &events[..middle], &mut discarded, false).await? {
                None => ok = middle,
                Some(found) => (failing, error) = (middle, found),
            }
        }
        let culprit = events.remove(failing - 1);
        let (behind, rest): (Vec<_>, Vec<_>) = events
            .into_iter()
            .enumerate()
            .partition(|(index, event)| *index >= failing - 1 && same_stream(event, &culprit));
        events = rest.into_iter().map(|(_, event)| event).collect();
        let since = culprit.position;
        parked.push(Parking {
            event: culprit,
            error: error.to_string(),
        });
        parked.extend(behind.into_iter().map(|(_, event)| Parking {
            event,
            error: waiting_behind(since),
        }));
    }
}

/// [`apply_isolated`], parking what fails under `member`'s name in `tx`: for the loops that
/// apply a read model alone (rebuilds).
pub async fn apply_parking(
    member: &dyn Projection,
    tx: &mut StoreTx,
    events: &[RecordedEvent],
) -> Result<Outgoing, ProjectionError> {
    let (outgoing, parked) = apply_isolated(member, tx, events.to_vec()).await?;
    for parking in parked {
        tx.park(member.name(), &parking.event, &parking.error)
            .await?;
    }
    Ok(outgoing)
}

/// Applies `events` in a savepoint, kept if `keep` and it succeeds: `None` if they apply,
/// the failure if it is deterministic, `Err` if it is not (the batch is given up).
async fn try_apply(
    member: &dyn Projection,
    tx: &mut StoreTx,
    events: &[RecordedEvent],
    outgoing: &mut Outgoing,
    keep: bool,
) -> Result<Option<ProjectionError>, ProjectionError> {
    tx.savepoint().await?;
    match member.apply(tx, events, outgoing).await {
        Ok(()) if keep => {
            tx.release_savepoint().await?;
            Ok(None)
        }
        Ok(()) => {
            tx.rollback_to_savepoint().await?;
            Ok(None)
        }
        Err(error) => {
            tx.rollback_to_savepoint().await?;
            match error.fault() {
                Fault::Deterministic => Ok(Some(error)),
                Fault::Transient => Err(error),
            }
        }
    }
}

/// Lets `member` react to `events` one at a time, parking each event whose reaction fails
/// deterministically, and the later events of its stream.
pub async fn react_isolated(
    member: &dyn Projection,
    events: &[RecordedEvent],
) -> Result<Vec<Parking>, ProjectionError> {
    let mut parked: Vec<Parking> = Vec::new();
    for event in events {
        let first_parked = parked
            .iter()
            .find(|p| same_stream(&p.event, event))
            .map(|p| p.event.position);
        if let Some(position) = first_parked {
            parked.push(Parking {
                event: event.clone(),
                error: waiting_behind(position),
            });
            continue;
        }
        if let Err(error) = member.react(std::slice::from_ref(event)).await {
            if error.fault() != Fault::Deterministic {
                return Err(error);
            }
            parked.push(Parking {
                event: event.clone(),
                error: error.to_string(),
            });
        }
    }
    Ok(parked)
}

fn same_stream(a: &RecordedEvent, b: &RecordedEvent) -> bool {
    a.aggregate_id == b.aggregate_id && a.aggregate_type == b.aggregate_type
}
