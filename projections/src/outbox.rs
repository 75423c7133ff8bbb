//! The changes a batch of the published read models hands to clients: one `outbox` row per
//! applied event (the aggregate's state after it), collected from every read model of the batch
//! and written in log order in the batch's transaction.
//!
//! When the batch is next in line (every published read model starts it from the same
//! checkpoint, so no row can later appear before its rows, and no row waits for a number) it
//! numbers its rows itself, under the numbering lock it took with its checkpoints; otherwise it
//! leaves them for the relay ([`sparc_store::outbox`]). The rows it numbered go to the relay in
//! process once the transaction has committed, so they are published without being read back.

use std::collections::{BTreeSet, HashMap};

use sparc_store::outbox::NumberedChange;
use sparc_store::{RecordedEvent, StoreTx};

use crate::runner::ProjectionError;
use crate::sql::format_timestamp;

/// One change for clients.
#[derive(Debug, Clone)]
pub struct Change {
    transaction_id: i64,
    position: i64,
    kind: String,
    aggregate_id: String,
    audience: Option<String>,
    version: i64,
    event_type: String,
    state: String,
    recorded_at: String,
}

/// The changes of one batch, in the order the read models produced them, and the views of the
/// read models they moved (for caches, see [`sparc_store::Generations`]).
#[derive(Debug, Default)]
pub struct Outgoing {
    changes: Vec<Change>,
    touched: BTreeSet<String>,
}

impl Outgoing {
    /// Adds the changes of `other` after these.
    pub fn extend(&mut self, other: Outgoing) {
        self.changes.extend(other.changes);
        self.touched.extend(other.touched);
    }

    /// Records that a row of `read_model` visible to `audience` changed (whether or not it is
    /// published): the owner's view (a [`sparc_store::changes::scope`]), or every view when
    /// everyone sees the row.
    pub fn touch(&mut self, read_model: &str, audience: Option<&str>) {
        let name = match audience {
            Some(owner) => sparc_store::changes::scope(read_model, owner),
            None => read_model.to_owned(),
        };
        self.touched.insert(name);
    }

    /// The views the batch changed, to notify and bump once it commits.
    pub fn take_touched(&mut self) -> Vec<String> {
        std::mem::take(&mut self.touched).into_iter().collect()
    }

    /// Adds the change `event` made: `state` (its JSON) of an aggregate of the read model
    /// `kind`, visible to `audience` (everyone signed in when `None`).
    pub fn push(
        &mut self,
        kind: &str,
        event: &RecordedEvent,
        audience: Option<String>,
        state: String,
    ) {
        self.changes.push(Change {
            transaction_id: event.transaction_id,
            position: event.position,
            kind: kind.to_owned(),
            aggregate_id: event.aggregate_id.clone(),
            audience,
            version: event.sequence,
            event_type: event.event_type.clone(),
            state,
            recorded_at: format_timestamp(event.recorded_at),
        });
    }
}

/// The columns of a change, in the order [`write`] binds them.
const COLUMNS: &str = "position, transaction_id, kind, aggregate_id, audience, version, event_type, state, recorded_at";

/// Parameters per row on SQLite.
const WIDTH: usize = 9;

/// Rows per statement on SQLite (Postgres takes them all in one, as arrays).
const ROWS_PER_STATEMENT: usize = 200;

/// Writes `outgoing` in log order inside `tx`, skipping events that already have a row. With
/// `numbering_start` (the transaction holds the numbering lock, see
/// [`StoreTx::lock_checkpoints_and_numbering`]) the rows get the event ids after it, and the
/// rows written are returned as numbered (in event order, to hand to the relay once the
/// transaction commits); otherwise the relay numbers them and nothing is returned.
pub(crate) async fn write(
    tx: &mut StoreTx,
    mut outgoing: Outgoing,
    numbering_start: Option<i64>,
) -> Result<Vec<NumberedChange>, ProjectionError> {
    outgoing
        .changes
        .sort_unstable_by_key(|change| (change.transaction_id, change.position));
    let mut last_numbered = numbering_start;
    let mut event_ids: HashMap<i64, i64> = HashMap::new();
    // `$1 + row_number()` is NULL (unnumbered) when `$1` is.
    let insert = format!(
        "WITH changes ({COLUMNS}) AS ({{rows}}) \
         INSERT INTO outbox ({COLUMNS}, published_seq) \
         SELECT {COLUMNS}, $1 + row_number() OVER (ORDER BY transaction_id, position) \
         FROM changes \
         WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.position = changes.position) \
         RETURNING position, published_seq"
    );
    let chunk_size = match tx {
        // One statement whatever the number of rows.
        StoreTx::Postgres(_) => outgoing.changes.len().max(1),
        StoreTx::Sqlite(_) => ROWS_PER_STATEMENT,
    };
    for chunk in outgoing.changes.chunks(chunk_size) {
        let written: Vec<(i64, Option<i64>)> = match tx {
            StoreTx::Postgres(tx) => {
                let sql = insert.replace(
                    "{rows}",
                    "SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
                     $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[])",
                );
                let column =
                    |value: fn(&Change) -> &str| -> Vec<&str> { chunk.iter().map(value).collect() };
                sqlx::query_as(&sql)
                    .bind(last_numbered)
                    .bind(chunk.iter().map(|c| c.position).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|c| c.transaction_id).collect::<Vec<_>>())
                    .bind(column(|c| &c.kind))
                    .bind(column(|c| &c.aggregate_id))
                    .bind(
                        chunk
                            .iter()
                            .map(|c| c.audience.as_deref())
                            .collect::<Vec<_>>(),
                    )
                    .bind(chunk.iter().map(|c| c.version).collect::<Vec<_>>())
                    .bind(column(|c| &c.event_type))
                    .bind(column(|c| &c.state))
                    .bind(column(|c| &c.recorded_at))
                    .fetch_all(&mut **tx)
                    .await?
            }
            StoreTx::Sqlite(tx) => {
                let tuples: Vec<String> = (0..chunk.len())
                    .map(|row| {
                        let params: Vec<String> = (0..WIDTH)
                            .map(|column| format!("${}", 2 + row * WIDTH + column))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                let sql = insert.replace("{rows}", &format!("VALUES {}", tuples.join(", ")));
                let mut query = sqlx::query_as(&sql).bind(last_numbered);
                for change in chunk {
                    query = query
                        .bind(change.position)
                        .bind(change.transaction_id)
                        .bind(&change.kind)
                        .bind(&change.aggregate_id)
                        .bind(&change.audience)
                        .bind(change.version)
                        .bind(&change.event_type)
                        .bind(&change.state)
                        .bind(&change.recorded_at);
                }
                query.fetch_all(&mut **tx).await?
            }
        };
        if let Some(last) = &mut last_numbered {
            *last += written.len() as i64;
        }
        event_ids.extend(
            written
                .into_iter()
                .filter_map(|(position, event_id)| Some((position, event_id?))),
        );
    }
    Ok(outgoing
        .changes
        .into_iter()
        .filter_map(|change| {
            Some(NumberedChange {
                event_id: *event_ids.get(&change.position)?,
                kind: change.kind,
                aggregate_id: change.aggregate_id,
                audience: change.audience,
                version: change.version,
                event_type: change.event_type,
                state: change.state,
                recorded_at: change.recorded_at,
            })
        })
        .collect())
}
