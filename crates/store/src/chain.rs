//! The hash chain over the log: each event has a link in `event_hashes` (beside the log, so
//! event rows are never updated),
//! `hash = hex(sha256(previous hash ‖ canonical bytes of the event))`, in global order (the
//! first event's previous hash is [`GENESIS_HASH`]), so editing, deleting or reordering a stored
//! event is detectable by [`verify`].
//!
//! The bytes of an event that the chain covers are the JSON array
//! `[position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
//! metadata]` with the payload and metadata exactly as stored ([`stored_bytes`]): the chainer and
//! verification never decode them, so no stored event, however shaped, can stop them. The
//! service stores every payload and metadata as canonical JSON ([`canonical_json`]: object keys
//! sorted by their UTF-8 bytes, no whitespace), so for its events these bytes are also the
//! [`canonical_bytes`] of the decoded event. The [`Chainer`] extends the chain in the same global order consumers read, so it
//! never hashes past a transaction that might still commit an earlier event.

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, PG_SAVE_CHECKPOINTS, SQLITE_SAVE_CHECKPOINT};
use crate::db::{Database, StoreTx};
use crate::error::StoreError;
use crate::log::{LogReader, RecordedEvent, StoredEvent};

/// The "previous hash" of the first event: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The name of the chainer's checkpoint: the last event it has hashed.
pub const CHAIN_CHECKPOINT: &str = "chain";

/// The condition on a checkpoint save's update that the stored checkpoint is still `($4, $5)`,
/// where the chainer's reads began.
const FROM_WHERE_THE_READS_BEGAN: &str =
    "WHERE checkpoints.transaction_id = $4 AND checkpoints.position = $5";

/// The chain link of the event at `$1`: no row if there is no such event, NULL if it is
/// unhashed (a link whose event was deleted does not count).
const HASH_OF_EVENT: &str = "SELECT (SELECT h.hash FROM event_hashes h \
     WHERE h.global_position = e.global_position) FROM events e WHERE e.global_position = $1";

/// Hashes written per statement on Postgres (see [`Chainer::chain_pending`]).
const HASHES_PER_STATEMENT: usize = 100;

/// At most this many bad positions are listed in a [`VerifyReport`].
const MAX_BAD_POSITIONS: usize = 100;

/// Rows fetched per round trip while verifying.
const VERIFY_BATCH: i64 = 2_000;

/// `value` as canonical JSON: object keys sorted recursively (by UTF-8 bytes), no whitespace,
/// strings and numbers as serde_json writes them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("canonical JSON is built from UTF-8 strings")
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        scalar => write_json_scalar(scalar, out),
    }
}

fn write_json_scalar(value: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("writing JSON into a Vec cannot fail");
}

/// Writes `[position,"aggregate_type","aggregate_id",sequence,"event_type","event_version",`.
fn write_header(
    out: &mut Vec<u8>,
    position: i64,
    aggregate: [&String; 2],
    sequence: i64,
    event: [&String; 2],
) {
    write!(out, "[{position},").expect("writing into a Vec cannot fail");
    for text in aggregate {
        write_json_scalar(&Value::String(text.clone()), out);
        out.push(b',');
    }
    write!(out, "{sequence},").expect("writing into a Vec cannot fail");
    for text in event {
        write_json_scalar(&Value::String(text.clone()), out);
        out.push(b',');
    }
}

/// The canonical JSON of a decoded event: `[position,
/// aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata]`.
pub fn canonical_bytes(event: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_header(
        &mut out,
        event.position,
        [&event.aggregate_type, &event.aggregate_id],
        event.sequence,
        [&event.event_type, &event.event_version],
    );
    write_canonical(&event.payload, &mut out);
    out.push(b',');
    write_canonical(&event.metadata, &mut out);
    out.push(b']');
    out
}

/// The bytes of `event` that the chain hashes: [`canonical_bytes`]' array, with the payload
/// and metadata as stored.
pub fn stored_bytes(event: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + event.payload.len() + event.metadata.len());
    write_header(
        &mut out,
        event.position,
        [&event.aggregate_type, &event.aggregate_id],
        event.sequence,
        [&event.event_type, &event.event_version],
    );
    out.extend_from_slice(event.payload.as_bytes());
    out.push(b',');
    out.extend_from_slice(event.metadata.as_bytes());
    out.push(b']');
    out
}

/// The chain link of `event` after an event whose hash is `prev_hash`:
/// `hex(sha256(prev_hash ‖ stored_bytes(event)))`.
pub fn stored_chain_hash(prev_hash: &str, event: &StoredEvent) -> String {
    link(prev_hash, &stored_bytes(event))
}

/// The chain link of a decoded `event` (`hex(sha256(prev_hash ‖ canonical_bytes(event)))`):
/// the same as [`stored_chain_hash`] for every event the service stored.
pub fn chain_hash(prev_hash: &str, event: &RecordedEvent) -> String {
    link(prev_hash, &canonical_bytes(event))
}

fn link(prev_hash: &str, bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

/// Extends the hash chain over newly committed events. Run one loop of
/// [`chain_pending`](Chainer::chain_pending) per deployment; concurrent chainers never move the
/// chain over an event twice: a chainer moves the checkpoint only if it is still where its reads
/// began (two may write an event's hash, which is the same value either way).
#[derive(Clone, Debug)]
pub struct Chainer {
    db: Database,
}

impl Chainer {
    /// A chainer over `db`.
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Hashes up to `batch` unchained events in global order, storing each row's hash and the
    /// `"chain"` checkpoint together. Returns how many events it chained (0: nothing to do yet,
    /// or another chainer got there first). Fails with [`StoreError::ChainBroken`] if the last
    /// chained event has been deleted or lost its hash.
    ///
    /// The reads take no lock and the write moves the checkpoint only from where they began. On
    /// Postgres a writing transaction holds back every log reader until it ends (see
    /// [`crate::log`]), so the hashes are written first, [`HASHES_PER_STATEMENT`] rows per
    /// transaction (a few milliseconds each rather than tens for the whole batch, which
    /// readers, and the writers waiting to read their writes, felt as a stall), each declared a
    /// [bystander](crate::bystanders) so that the readers of this process do not wait for it
    /// at all, and the checkpoint last. A crash, or another chainer, in between leaves hashes past the
    /// checkpoint: the next pass computes the very same values from the log (the chain is a
    /// function of it) and writes them again.
    pub async fn chain_pending(&self, batch: i64) -> Result<usize, StoreError> {
        let after = crate::checkpoint::load(&self.db, CHAIN_CHECKPOINT).await?;
        let events = LogReader::new(&self.db)
            .read_stored_after(after, batch)
            .await?;
        let Some(reached) = events.last().map(StoredEvent::checkpoint) else {
            return Ok(0);
        };
        let mut prev = if after == Checkpoint::ORIGIN {
            GENESIS_HASH.to_string()
        } else {
            self.hash_at(after.position)
                .await?
                .ok_or(StoreError::ChainBroken(after.position))?
        };
        let mut positions = Vec::with_capacity(events.len());
        let mut hashes = Vec::with_capacity(events.len());
        for event in &events {
            prev = stored_chain_hash(&prev, event);
            positions.push(event.position);
            hashes.push(prev.clone());
        }
        let stored = match &self.db {
            Database::Postgres(pool) => {
                for (positions, hashes) in positions
                    .chunks(HASHES_PER_STATEMENT)
                    .zip(hashes.chunks(HASHES_PER_STATEMENT))
                {
                    let (mut tx, _bystander) = crate::bystanders::begin(pool).await?;
                    sqlx::query(
                        "INSERT INTO event_hashes (global_position, hash) \
                         SELECT * FROM unnest($1::bigint[], $2::text[]) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(positions)
                    .bind(hashes)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                }
                let moved: Option<i32> = sqlx::query_scalar(&format!(
                    "{PG_SAVE_CHECKPOINTS} {FROM_WHERE_THE_READS_BEGAN} RETURNING 1"
                ))
                .bind(&[CHAIN_CHECKPOINT][..])
                .bind(reached.transaction_id)
                .bind(reached.position)
                .bind(after.transaction_id)
                .bind(after.position)
                .fetch_optional(pool)
                .await?;
                moved.is_some()
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let moved: Option<i64> = sqlx::query_scalar(&format!(
                    "{SQLITE_SAVE_CHECKPOINT} {FROM_WHERE_THE_READS_BEGAN} RETURNING 1"
                ))
                .bind(CHAIN_CHECKPOINT)
                .bind(reached.transaction_id)
                .bind(reached.position)
                .bind(after.transaction_id)
                .bind(after.position)
                .fetch_optional(&mut *tx)
                .await?;
                if moved.is_some() {
                    for (position, hash) in positions.iter().zip(&hashes) {
                        sqlx::query(
                            "INSERT INTO event_hashes (global_position, hash) VALUES (?, ?) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(position)
                        .bind(hash)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                }
                moved.is_some()
            }
        };
        Ok(if stored { events.len() } else { 0 })
    }

    /// The stored hash of the event at `position`, `None` if there is no such event or it is
    /// unhashed.
    async fn hash_at(&self, position: i64) -> Result<Option<String>, StoreError> {
        let hash: Option<Option<String>> = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar(HASH_OF_EVENT)
                    .bind(position)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar(HASH_OF_EVENT)
                    .bind(position)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(hash.flatten())
    }
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when no event is bad.
    pub ok: bool,
    /// Events walked (chained and unchained).
    pub events_checked: u64,
    /// The first bad event in global order.
    pub first_bad_position: Option<i64>,
    /// Bad events in global order (at most 100): an event whose stored hash does not match
    /// its content and the previous event's stored hash (an edited event, or the event right
    /// after a deleted one), an unhashed event before a hashed one or within the chained part,
    /// and the chain's last event if it has been deleted.
    pub bad_positions: Vec<i64>,
    /// Bad events in all (`bad_positions` is capped).
    pub bad_events: u64,
    /// Events at the tail of the log that the chainer has not reached yet (not bad).
    pub unchained: u64,
}

/// Walks the whole log in global order and checks every stored hash against
/// `sha256(previous event's stored hash ‖ canonical bytes)`, so one run finds every edited
/// event and every hole. Reads one consistent snapshot.
pub async fn verify(db: &Database) -> Result<VerifyReport, StoreError> {
    let mut tx = match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            StoreTx::Postgres(tx)
        }
        // A deferred transaction: its first read fixes the snapshot, writers are not blocked.
        Database::Sqlite(pool) => StoreTx::Sqlite(pool.begin().await?),
    };
    let mut walk = Walk::new(tx.load_checkpoint(CHAIN_CHECKPOINT).await?);
    let mut after = Checkpoint::ORIGIN;
    loop {
        let events = tx.read_visible_after(after, VERIFY_BATCH).await?;
        let Some(last) = events.last() else { break };
        after = last.checkpoint();
        events.iter().for_each(|event| walk.visit(event));
    }
    tx.rollback().await?;
    Ok(walk.finish())
}

/// The state of a [`verify`] walk.
struct Walk {
    report: VerifyReport,
    /// The `"chain"` checkpoint: every event up to it must be hashed.
    chained_upto: Checkpoint,
    chain_tip_seen: bool,
    /// The previous event's stored hash (`None` if it had none).
    prev: Option<String>,
    /// Unhashed events since the last hashed one: bad if a hashed event follows, else the
    /// unchained tail.
    pending_unhashed: Vec<i64>,
}

impl Walk {
    fn new(chained_upto: Checkpoint) -> Self {
        Self {
            report: VerifyReport::default(),
            chained_upto,
            chain_tip_seen: false,
            prev: Some(GENESIS_HASH.to_string()),
            pending_unhashed: Vec::new(),
        }
    }

    fn visit(&mut self, event: &StoredEvent) {
        self.report.events_checked += 1;
        let checkpoint = event.checkpoint();
        if checkpoint == self.chained_upto {
            self.chain_tip_seen = true;
        }
        match &event.hash {
            None if checkpoint <= self.chained_upto => {
                self.bad(event.position);
                self.prev = None;
            }
            None => {
                self.pending_unhashed.push(event.position);
                self.prev = None;
            }
            Some(hash) => {
                for position in std::mem::take(&mut self.pending_unhashed) {
                    self.bad(position);
                }
                let expected = self
                    .prev
                    .as_deref()
                    .map(|prev| stored_chain_hash(prev, event));
                if expected.as_deref() != Some(hash.as_str()) {
                    self.bad(event.position);
                }
                self.prev = Some(hash.clone());
            }
        }
    }

    fn bad(&mut self, position: i64) {
        self.report.bad_events += 1;
        self.report.first_bad_position.get_or_insert(position);
        if self.report.bad_positions.len() < MAX_BAD_POSITIONS {
            self.report.bad_positions.push(position);
        }
    }

    fn finish(mut self) -> VerifyReport {
        if self.chained_upto != Checkpoint::ORIGIN && !self.chain_tip_seen {
            // The last chained event is gone (the tail was cut).
            self.bad(self.chained_upto.position);
        }
        self.report.unchained = self.pending_unhashed.len() as u64;
        self.report.ok = self.report.bad_events == 0;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn recorded(position: i64, payload: Value) -> RecordedEvent {
        RecordedEvent {
            position,
            transaction_id: 0,
            aggregate_type: "Task".into(),
            aggregate_id: "t-1".into(),
            sequence: position,
            event_type: "Renamed".into(),
            event_version: "1.0".into(),
            payload,
            metadata: json!({"b": "2", "a": "1"}),
            recorded_at: Utc::now(),
            hash: None,
        }
    }

    /// The event as the service stores it: payload and metadata as canonical JSON.
    fn event(position: i64, payload: Value) -> StoredEvent {
        let e = recorded(position, payload);
        StoredEvent {
            position: e.position,
            transaction_id: e.transaction_id,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            payload: canonical_json(&e.payload),
            metadata: canonical_json(&e.metadata),
            recorded_at: e.recorded_at,
            hash: None,
        }
    }

    /// Events 1..=n chained from genesis.
    fn chained(n: i64) -> Vec<StoredEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|position| {
                let mut e = event(position, json!({"n": position}));
                prev = stored_chain_hash(&prev, &e);
                e.hash = Some(prev.clone());
                e
            })
            .collect()
    }

    fn walk(events: &[StoredEvent], chained_upto: i64) -> VerifyReport {
        let mut walk = Walk::new(Checkpoint {
            transaction_id: 0,
            position: chained_upto,
        });
        events.iter().for_each(|e| walk.visit(e));
        walk.finish()
    }

    #[test]
    fn canonical_json_sorts_keys_recursively_and_drops_whitespace() {
        let value: Value = serde_json::from_str(
            r#"{ "z": [ {"b": 1, "a": "é\n"} ], "a": {"y": null, "x": 1.5} }"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"x":1.5,"y":null},"z":[{"a":"é\n","b":1}]}"#
        );
    }

    #[test]
    fn canonical_bytes_list_the_event_fields_in_order() {
        let e = recorded(7, json!({"k": true}));
        assert_eq!(
            String::from_utf8(canonical_bytes(&e)).unwrap(),
            r#"[7,"Task","t-1",7,"Renamed","1.0",{"k":true},{"a":"1","b":"2"}]"#
        );
    }

    #[test]
    fn stored_canonical_text_hashes_as_the_decoded_event() {
        let payload = json!({"z": [1.5, "é\n", null], "a": {"y": -3, "x": "\u{1}"}});
        let stored = event(9, payload.clone());
        assert_eq!(
            stored_bytes(&stored),
            canonical_bytes(&recorded(9, payload.clone()))
        );
        assert_eq!(
            stored_chain_hash(GENESIS_HASH, &stored),
            chain_hash(GENESIS_HASH, &recorded(9, payload))
        );
    }

    #[test]
    fn stored_bytes_are_hashed_as_they_are_without_decoding() {
        let mut e = event(3, json!({}));
        e.payload = r#"{"deep": [[[[1e400]]]], "b": 1, "b": 2}"#.to_owned();
        let hash = stored_chain_hash(GENESIS_HASH, &e);
        e.payload = r#"{"deep": [[[[1e400]]]], "b": 1, "b": 3}"#.to_owned();
        assert_ne!(stored_chain_hash(GENESIS_HASH, &e), hash);
    }

    #[test]
    fn an_intact_chain_with_an_unchained_tail_verifies() {
        let mut events = chained(5);
        events.push(event(6, json!({})));
        let report = walk(&events, 5);
        assert!(report.ok, "{report:?}");
        assert_eq!((report.events_checked, report.unchained), (6, 1));
    }

    #[test]
    fn an_unhashed_event_before_a_hashed_one_is_bad() {
        let mut events = chained(4);
        events[1].hash = None;
        let report = walk(&events, 4);
        // The unhashed event, and the next one, whose predecessor's hash is gone.
        assert_eq!(report.bad_positions, vec![2, 3]);
    }

    #[test]
    fn a_cut_tail_is_bad() {
        let events = chained(4);
        let report = walk(&events[..3], 4);
        assert_eq!(report.bad_positions, vec![4]);
    }
}
