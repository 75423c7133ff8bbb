//! Parked events: the dead letters of the log's consumers. An event a consumer cannot apply
//! (its payload does not decode, the database refuses what it makes of it) is parked for that
//! consumer alone, in the transaction that moves the consumer's checkpoint past it, so nothing
//! is lost and every other consumer goes on. Later events of the same stream are parked behind
//! it for that consumer (applying them to a state that misses the parked one would be wrong),
//! until an operator retries the stream after a fix.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::db::{Database, StoreTx};
use crate::error::StoreError;
use crate::log::{RecordedEvent, parse_timestamp};

/// One parked event of one consumer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParkedEvent {
    /// The consumer (read model or policy) that parked it.
    pub consumer: String,
    /// The event's global position.
    pub position: i64,
    /// The event's transaction id (its place in log order with `position`).
    pub transaction_id: i64,
    /// The event's aggregate type.
    pub aggregate_type: String,
    /// The event's aggregate id.
    pub aggregate_id: String,
    /// The event's sequence in its stream.
    pub sequence: i64,
    /// The event's type.
    pub event_type: String,
    /// Why it could not be applied (the last failure).
    pub error: String,
    /// When it was first parked.
    pub first_seen: DateTime<Utc>,
    /// When it last failed.
    pub last_seen: DateTime<Utc>,
    /// How many times applying it has failed.
    pub attempts: i32,
}

/// A stream a consumer has parked, from its first parked event on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParkedStream {
    /// The consumer.
    pub consumer: String,
    /// The stream's aggregate type.
    pub aggregate_type: String,
    /// The stream's aggregate id.
    pub aggregate_id: String,
    /// The global position of its first parked event.
    pub since: i64,
}

/// A select column: the streams the consumer `n.name` has parked, as a JSON array of
/// `[aggregate_type, aggregate_id, since]` (read with [`streams_of_json`]), so that the read
/// models' loop learns them in the statement that reads its checkpoints.
pub(crate) const PARKED_STREAMS_OF_NAME: &str = "(SELECT coalesce(json_agg(json_build_array(\
     s.aggregate_type, s.aggregate_id, s.since)), '[]')::text FROM (SELECT aggregate_type, \
     aggregate_id, min(global_position) AS since FROM parked_events p WHERE p.consumer = n.name \
     GROUP BY aggregate_type, aggregate_id) s)";

/// The streams of `consumer` from a [`PARKED_STREAMS_OF_NAME`] column.
pub(crate) fn streams_of_json(consumer: &str, json: &str) -> Result<Vec<ParkedStream>, StoreError> {
    let streams: Vec<(String, String, i64)> = serde_json::from_str(json)
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
    Ok(streams
        .into_iter()
        .map(|(aggregate_type, aggregate_id, since)| ParkedStream {
            consumer: consumer.to_owned(),
            aggregate_type,
            aggregate_id,
            since,
        })
        .collect())
}

const COLUMNS: &str = "consumer, global_position, transaction_id, aggregate_type, aggregate_id, \
     sequence, event_type, error, first_seen, last_seen, attempts";

impl StoreTx {
    /// Parks `event` for `consumer` because of `error`; parking it again records the new error,
    /// the time and one more attempt.
    pub async fn park(
        &mut self,
        consumer: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = match self {
            Self::Postgres(_) => "now()",
            Self::Sqlite(_) => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        };
        let sql = format!(
            "INSERT INTO parked_events (consumer, global_position, transaction_id, \
             aggregate_type, aggregate_id, sequence, event_type, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (consumer, global_position) DO UPDATE SET error = excluded.error, \
             last_seen = {now}, attempts = parked_events.attempts + 1"
        );
        crate::on_backend!(StoreTx self, conn => {
            sqlx::query(&sql)
                .bind(consumer)
                .bind(event.position)
                .bind(event.transaction_id)
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(event.sequence)
                .bind(&event.event_type)
                .bind(error)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    /// Deletes the parked event of `consumer` at `position` (applied after all).
    pub async fn unpark(&mut self, consumer: &str, position: i64) -> Result<(), StoreError> {
        crate::on_backend!(StoreTx self, conn => {
            sqlx::query("DELETE FROM parked_events WHERE consumer = $1 AND global_position = $2")
                .bind(consumer)
                .bind(position)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    /// The streams that `consumers` have parked.
    pub async fn parked_streams(
        &mut self,
        consumers: &[String],
    ) -> Result<Vec<ParkedStream>, StoreError> {
        if consumers.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, i64)> = match self {
            Self::Postgres(tx) => {
                sqlx::query_as(&format!("{SELECT} WHERE consumer = ANY($1) {GROUP}"))
                    .bind(consumers)
                    .fetch_all(&mut **tx)
                    .await?
            }
            Self::Sqlite(tx) => {
                let placeholders: Vec<String> =
                    (1..=consumers.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "{SELECT} WHERE consumer IN ({}) {GROUP}",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query_as(&sql);
                for consumer in consumers {
                    query = query.bind(consumer.clone());
                }
                query.fetch_all(&mut **tx).await?
            }
        };
        Ok(rows.into_iter().map(ParkedStream::from).collect())
    }

    /// Hands the parked events of `from` (a rebuild's shadow) to `to` (the live read model it
    /// replaces), dropping those `to` had: the rebuild tried every event again.
    pub async fn move_parked(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        crate::on_backend!(StoreTx self, conn => {
            sqlx::query("DELETE FROM parked_events WHERE consumer = $1")
                .bind(to)
                .execute(&mut *conn)
                .await?;
            sqlx::query("UPDATE parked_events SET consumer = $2 WHERE consumer = $1")
                .bind(from)
                .bind(to)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Deletes every parked event of `consumer` (a scratch copy of a read model, dropped).
    pub async fn forget_parked(&mut self, consumer: &str) -> Result<(), StoreError> {
        crate::on_backend!(StoreTx self, conn => {
            sqlx::query("DELETE FROM parked_events WHERE consumer = $1")
                .bind(consumer)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    /// Opens a savepoint: what follows can be undone alone by
    /// [`rollback_to_savepoint`](Self::rollback_to_savepoint) (on Postgres also after a failed
    /// statement, which otherwise aborts the whole transaction).
    pub async fn savepoint(&mut self) -> Result<(), StoreError> {
        self.raw("SAVEPOINT sparc_isolated").await
    }

    /// Keeps what was done since [`savepoint`](Self::savepoint).
    pub async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.raw("RELEASE SAVEPOINT sparc_isolated").await
    }

    /// Undoes what was done since [`savepoint`](Self::savepoint), and closes it.
    pub async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.raw("ROLLBACK TO SAVEPOINT sparc_isolated").await?;
        self.raw("RELEASE SAVEPOINT sparc_isolated").await
    }

    async fn raw(&mut self, sql: &'static str) -> Result<(), StoreError> {
        crate::on_backend!(StoreTx self, conn => {
            sqlx::query(sql).execute(conn).await?;
        });
        Ok(())
    }
}

const SELECT: &str = "SELECT consumer, aggregate_type, aggregate_id, \
     min(global_position) FROM parked_events";
const GROUP: &str = "GROUP BY consumer, aggregate_type, aggregate_id";

impl From<(String, String, String, i64)> for ParkedStream {
    fn from(
        (consumer, aggregate_type, aggregate_id, since): (String, String, String, i64),
    ) -> Self {
        Self {
            consumer,
            aggregate_type,
            aggregate_id,
            since,
        }
    }
}

/// The streams `consumer` has parked, read on the pool: for a consumer that reads them outside
/// its checkpoint transaction (a policy), without opening one (on SQLite a transaction holds
/// the write lock).
pub async fn streams_of(db: &Database, consumer: &str) -> Result<Vec<ParkedStream>, StoreError> {
    let sql = format!("{SELECT} WHERE consumer = $1 {GROUP}");
    let rows: Vec<(String, String, String, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(&sql).bind(consumer).fetch_all(pool).await?,
        Database::Sqlite(pool) => sqlx::query_as(&sql).bind(consumer).fetch_all(pool).await?,
    };
    Ok(rows.into_iter().map(ParkedStream::from).collect())
}

/// Parked events, of `consumer` or of every consumer, in log order per consumer, at most `limit`.
pub async fn list(
    db: &Database,
    consumer: Option<&str>,
    limit: i64,
) -> Result<Vec<ParkedEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM parked_events WHERE ($1 IS NULL OR consumer = $1) \
         ORDER BY consumer, transaction_id, global_position LIMIT $2"
    );
    match db {
        Database::Postgres(pool) => {
            let rows = sqlx::query(&sql)
                .bind(consumer)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| parked_of_row(row, |name| Ok(row.try_get::<DateTime<Utc>, _>(name)?)))
                .collect()
        }
        Database::Sqlite(pool) => {
            let rows = sqlx::query(&sql)
                .bind(consumer)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    parked_of_row(row, |name| {
                        parse_timestamp(&row.try_get::<String, _>(name)?)
                    })
                })
                .collect()
        }
    }
}

fn parked_of_row<R: Row>(
    row: &R,
    time: impl Fn(&str) -> Result<DateTime<Utc>, StoreError>,
) -> Result<ParkedEvent, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ParkedEvent {
        consumer: row.try_get("consumer")?,
        position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        error: row.try_get("error")?,
        first_seen: time("first_seen")?,
        last_seen: time("last_seen")?,
        attempts: row.try_get("attempts")?,
    })
}

/// How many events each consumer has parked (consumers with none are left out).
pub async fn counts(db: &Database) -> Result<HashMap<String, i64>, StoreError> {
    const SQL: &str = "SELECT consumer, count(*) FROM parked_events GROUP BY consumer";
    let rows: Vec<(String, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
    };
    Ok(rows.into_iter().collect())
}
