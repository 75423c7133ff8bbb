//! The changes a batch of the published read models hands to clients: one `outbox` row per
//! applied event (the aggregate's state after it), collected from every read model of the batch
//! and written in log order in the batch's transaction.
//!
//! When the batch is next in line (every published read model starts it from the same
//! checkpoint, so no row can later appear before its rows, and no row waits for a number) it
//! numbers its rows itself, under the numbering lock it took with its checkpoints; otherwise it
//! leaves them for the relay ([`sparc_store::outbox`]).

use sparc_store::{RecordedEvent, StoreTx};

use crate::runner::ProjectionError;
use sparc_store::on_tx;

use crate::sql::{SqlValue, bind_all};

/// One change for clients.
#[derive(Debug, Clone)]
pub struct Change {
    transaction_id: i64,
    position: i64,
    values: Vec<SqlValue>,
}

/// The changes of one batch, in the order the read models produced them.
#[derive(Debug, Default)]
pub struct Outgoing(Vec<Change>);

impl Outgoing {
    /// Adds the change `event` made: `state` (its JSON) of an aggregate of the read model
    /// `kind`, visible to `audience` (everyone signed in when `None`).
    pub fn push(
        &mut self,
        kind: &str,
        event: &RecordedEvent,
        audience: Option<String>,
        state: String,
    ) {
        self.0.push(Change {
            transaction_id: event.transaction_id,
            position: event.position,
            values: vec![
                SqlValue::Int(Some(event.position)),
                SqlValue::Int(Some(event.transaction_id)),
                SqlValue::Text(Some(kind.to_owned())),
                SqlValue::Text(Some(event.aggregate_id.clone())),
                SqlValue::Text(audience),
                SqlValue::Int(Some(event.sequence)),
                SqlValue::Text(Some(event.event_type.clone())),
                SqlValue::Text(Some(state)),
                Some(event.recorded_at).into(),
            ],
        });
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The columns of a change, in the order of [`Outgoing::push`]'s values.
const COLUMNS: &str = "position, transaction_id, kind, aggregate_id, audience, version, event_type, state, recorded_at";

/// Rows per statement (nine parameters each).
const ROWS_PER_STATEMENT: usize = 200;

/// Writes `outgoing` in log order inside `tx`, skipping events that already have a row. With
/// `numbering_start` (the transaction holds the numbering lock, see
/// [`StoreTx::lock_checkpoints_and_numbering`]) the rows get the event ids after it; otherwise
/// the relay numbers them.
pub(crate) async fn write(
    tx: &mut StoreTx,
    mut outgoing: Outgoing,
    numbering_start: Option<i64>,
) -> Result<(), ProjectionError> {
    if outgoing.is_empty() {
        return Ok(());
    }
    outgoing
        .0
        .sort_unstable_by_key(|change| (change.transaction_id, change.position));
    let mut last_numbered = numbering_start;
    for chunk in outgoing.0.chunks(ROWS_PER_STATEMENT) {
        let width = chunk[0].values.len();
        let tuples: Vec<String> = (0..chunk.len())
            .map(|row| {
                let params: Vec<String> = (0..width)
                    .map(|column| format!("${}", 2 + row * width + column))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        // `$1 + row_number()` is NULL (unnumbered) when `$1` is.
        let sql = format!(
            "WITH changes ({COLUMNS}) AS (VALUES {}) \
             INSERT INTO outbox ({COLUMNS}, published_seq) \
             SELECT {COLUMNS}, $1 + row_number() OVER (ORDER BY transaction_id, position) \
             FROM changes \
             WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.position = changes.position)",
            tuples.join(", ")
        );
        let values = chunk.iter().flat_map(|change| &change.values);
        let inserted = on_tx!(tx, conn => {
            bind_all!(sqlx::query(&sql).bind(last_numbered), values)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if let Some(last) = &mut last_numbered {
            *last += inserted as i64;
        }
    }
    Ok(())
}
