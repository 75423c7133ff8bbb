//! Applying parked events again, after a fix (a new upcaster, a repaired row): what
//! `sparc projections retry` and `POST /api/v1/admin/projections/{name}/parked/retry` do. A
//! parked stream is retried whole and in log order, under the consumer's checkpoint lock (the
//! running loop waits meanwhile); each event that applies now is unparked in the same
//! transaction, and one that still fails stays parked, with its stream behind it, one more
//! attempt counted.

use std::collections::BTreeMap;

use serde::Serialize;
use sparc_store::{Database, LogReader, RecordedEvent, parked};

use crate::isolation::{self, Parking};
use crate::outbox::Outgoing;
use crate::runner::{Projection, ProjectionError};

/// Parked events a retry takes on at most.
const RETRY_AT_MOST: i64 = 10_000;

/// What a retry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryReport {
    /// Events that applied and are no longer parked.
    pub applied: u64,
    /// Events that failed again (or wait behind one that did) and stay parked.
    pub still_parked: u64,
}

/// Applies the parked events of `consumer` again: every parked stream, or with `position` only
/// the stream of the event parked there.
pub async fn retry(
    db: &Database,
    consumer: &dyn Projection,
    position: Option<i64>,
) -> Result<RetryReport, ProjectionError> {
    let name = consumer.name();
    let mut chosen = parked::list(db, Some(name), RETRY_AT_MOST).await?;
    if let Some(position) = position {
        let Some(at) = chosen.iter().find(|p| p.position == position).cloned() else {
            return Ok(RetryReport::default());
        };
        chosen
            .retain(|p| p.aggregate_type == at.aggregate_type && p.aggregate_id == at.aggregate_id);
    }
    let positions: Vec<i64> = chosen.iter().map(|p| p.position).collect();
    let events = LogReader::new(db).events_at(&positions).await?;
    // One stream after another, each in log order.
    let mut streams: BTreeMap<(String, String), Vec<RecordedEvent>> = BTreeMap::new();
    for event in events {
        streams
            .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
            .or_default()
            .push(event);
    }
    let mut report = RetryReport::default();
    let mut outgoing = Outgoing::default();
    let mut outcomes: Vec<(Vec<RecordedEvent>, Vec<Parking>)> = Vec::new();
    // A policy reacts by issuing commands, which on SQLite need the write lock that the
    // checkpoint transaction holds: it reacts first.
    let reacts = consumer.reacts();
    let streams: Vec<Vec<RecordedEvent>> = streams.into_values().collect();
    if reacts {
        for events in &streams {
            let still = isolation::react_isolated(consumer, events).await?;
            outcomes.push((events.clone(), still));
        }
    }
    let mut tx = db.begin_locking_checkpoints(&[name], false).await?;
    if !reacts {
        for events in streams {
            let (applied, still) =
                isolation::apply_isolated(consumer, &mut tx, events.clone()).await?;
            outgoing.extend(applied);
            outcomes.push((events, still));
        }
    }
    for (events, still) in &outcomes {
        for event in events {
            match still.iter().find(|p| p.event.position == event.position) {
                Some(parking) => {
                    report.still_parked += 1;
                    tx.park(name, event, &parking.error).await?;
                }
                None => {
                    report.applied += 1;
                    tx.unpark(name, event.position).await?;
                }
            }
        }
    }
    crate::outbox::write(&mut tx, outgoing, None).await?;
    if !reacts && report.applied > 0 {
        tx.notify_changed(&[name]).await?;
    }
    tx.commit().await?;
    tracing::info!(
        consumer = name,
        applied = report.applied,
        still_parked = report.still_parked,
        "parked events retried"
    );
    Ok(report)
}
