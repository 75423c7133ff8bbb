//! Rebuilding a read model without downtime, and checking a live one against a rebuild.
//!
//! A rebuild replays the whole log into a shadow table under its own checkpoint while the live
//! table keeps serving reads and following new events. It only ever reads up to the live
//! projection's checkpoint, so it never gets ahead of it. Then, in one transaction that holds the
//! live projection's checkpoint lock (the live loop waits), it applies the last few events, and
//! replaces the live rows with the shadow's: readers see the old rows until the commit and the new
//! ones after, never a mix. The live checkpoint does not move, so the live loop carries on where
//! it was. A shadow publishes nothing: clients never see a change twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sparc_store::{
    Checkpoint, Database, LogReader, RecordedEvent, StoreTx, checkpoint, on_backend,
};

use crate::catalog::ReadModel;
use crate::runner::{Projection, ProjectionError};

/// Events per transaction: large, so each touched row is loaded and written once per batch.
const BATCH: i64 = 50_000;

/// How far a rebuild got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Events replayed so far.
    pub processed: u64,
    /// Events in the log when the rebuild started (a floor: new ones keep coming).
    pub total: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

impl Progress {
    /// Replay speed.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.processed as f64 / secs
        } else {
            0.0
        }
    }
}

/// Rebuilds `model` and swaps it in; `on_progress` hears about every batch.
pub async fn rebuild(
    db: &Database,
    model: &ReadModel,
    on_progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Progress, ProjectionError> {
    rebuild_all(db, &[model], on_progress).await
}

/// Rebuilds several read models in one pass over the log (each event is read once and handed to
/// every shadow), then swaps them all in one transaction.
pub async fn rebuild_all(
    db: &Database,
    models: &[&ReadModel],
    on_progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Progress, ProjectionError> {
    let shadows: Vec<(&ReadModel, String, Arc<dyn Projection>)> = models
        .iter()
        .map(|model| {
            let table = format!("{}_rebuild", model.name);
            let shadow = model.shadow(&table);
            (*model, table, shadow)
        })
        .collect();
    let started = Instant::now();
    let total = LogReader::new(db).stats().await?.events.max(0) as u64;
    for (model, table, _) in &shadows {
        create_shadow(db, model.name, table).await?;
    }
    let mut progress = Progress {
        processed: 0,
        total,
        elapsed: Duration::ZERO,
    };
    let mut at = Checkpoint::ORIGIN;
    // Shadows are read models, folded from payloads alone.
    let reader = LogReader::new(db).without_metadata();
    loop {
        // Never past the slowest live projection, so no shadow gets ahead of its live table.
        let mut live_at = None;
        for (model, _, _) in &shadows {
            let live = checkpoint::load(db, model.name).await?;
            live_at = Some(live_at.map_or(live, |l: Checkpoint| l.min(live)));
        }
        let events = bounded(
            reader.read_after(at, BATCH).await?,
            live_at.unwrap_or(Checkpoint::ORIGIN),
        );
        let Some(last) = events.last().map(RecordedEvent::checkpoint) else {
            break;
        };
        let mut tx = db.begin().await?;
        for (_, table, shadow) in &shadows {
            // A shadow publishes nothing.
            crate::isolation::apply_parking(shadow.as_ref(), &mut tx, &events).await?;
            tx.save_checkpoint(table, last).await?;
        }
        tx.commit().await?;
        at = last;
        progress.processed += events.len() as u64;
        progress.elapsed = started.elapsed();
        on_progress(progress);
    }
    let mut tx = db.begin().await?;
    let rebuilt_at = crate::format_timestamp(chrono::Utc::now());
    // All live checkpoints at once, in the order the live loop takes them.
    let names: Vec<&str> = models.iter().map(|model| model.name).collect();
    let live_ats = tx.lock_checkpoints(&names).await?;
    for ((model, table, shadow), live_at) in shadows.iter().zip(live_ats) {
        finish_in(&mut tx, shadow.as_ref(), at, live_at).await?;
        on_backend!(StoreTx &mut tx, conn => {
            sqlx::query(&format!("DELETE FROM {}", model.name)).execute(&mut *conn).await?;
            sqlx::query(&format!("INSERT INTO {} SELECT * FROM {table}", model.name)).execute(&mut *conn).await?;
            sqlx::query(&format!("DROP TABLE {table}")).execute(&mut *conn).await?;
            // The shadow's list counts become the live ones, as its rows did.
            sqlx::query("DELETE FROM list_counts WHERE read_model = $1").bind(model.name).execute(&mut *conn).await?;
            sqlx::query("UPDATE list_counts SET read_model = $1 WHERE read_model = $2")
                .bind(model.name)
                .bind(table)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO projection_rebuilds (name, rebuilt_at, events) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET rebuilt_at = excluded.rebuilt_at, events = excluded.events",
            )
            .bind(model.name)
            .bind(&rebuilt_at)
            .bind(progress.processed as i64)
            .execute(&mut *conn)
            .await?;
        });
        tx.delete_checkpoint(table).await?;
        tx.move_parked(table, model.name).await?;
    }
    tx.notify_changed(&names).await?;
    tx.commit().await?;
    progress.elapsed = started.elapsed();
    on_progress(progress);
    let names: Vec<&str> = models.iter().map(|m| m.name).collect();
    tracing::info!(read_models = ?names, events = progress.processed, secs = progress.elapsed.as_secs_f64(), "rebuilt");
    Ok(progress)
}

/// Rebuilds `model` into a scratch table up to the live checkpoint and compares the two: the
/// ids whose version or state differ (or that only one side has). Empty means the live read
/// model equals a rebuild from the log.
pub async fn differences(db: &Database, model: &ReadModel) -> Result<Vec<String>, ProjectionError> {
    let check_table = format!("{}_check", model.name);
    let check = model.shadow(&check_table);
    create_shadow(db, model.name, &check_table).await?;
    let mut tx = db.begin().await?;
    let live_at = tx.lock_checkpoint(model.name).await?;
    finish_in(&mut tx, check.as_ref(), Checkpoint::ORIGIN, live_at).await?;
    let live = model.name;
    let sql = format!(
        "SELECT id FROM (SELECT id, version, body FROM {live} EXCEPT SELECT id, version, body FROM {check_table}) a \
         UNION SELECT id FROM (SELECT id, version, body FROM {check_table} EXCEPT SELECT id, version, body FROM {live}) b \
         ORDER BY id"
    );
    let ids: Vec<String> = on_backend!(StoreTx &mut tx, conn => {
        let ids = sqlx::query_scalar(&sql).fetch_all(&mut *conn).await?;
        sqlx::query(&format!("DROP TABLE {check_table}")).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM list_counts WHERE read_model = $1").bind(&check_table).execute(&mut *conn).await?;
        ids
    });
    tx.delete_checkpoint(&check_table).await?;
    tx.forget_parked(&check_table).await?;
    tx.commit().await?;
    Ok(ids)
}

/// Applies every event in `(from, to]` to `projection` inside `tx`; returns how many.
async fn finish_in(
    tx: &mut StoreTx,
    projection: &dyn Projection,
    from: Checkpoint,
    to: Checkpoint,
) -> Result<u64, ProjectionError> {
    let mut at = from;
    let mut applied = 0;
    loop {
        let events = bounded(tx.read_after(at, BATCH).await?, to);
        let Some(last) = events.last().map(RecordedEvent::checkpoint) else {
            return Ok(applied);
        };
        crate::isolation::apply_parking(projection, tx, &events).await?;
        applied += events.len() as u64;
        at = last;
    }
}

/// The events up to and including `limit`.
fn bounded(mut events: Vec<RecordedEvent>, limit: Checkpoint) -> Vec<RecordedEvent> {
    events.retain(|e| e.checkpoint() <= limit);
    events
}

/// (Re)creates `shadow` as an empty copy of `live`'s columns with a unique id, in one
/// transaction: a SQLite connection that loaded the schema between the table and its index
/// would keep a table without the index its upserts need (SQLite does not look again at the
/// schema for that error), so both appear at once.
async fn create_shadow(db: &Database, live: &str, shadow: &str) -> Result<(), ProjectionError> {
    let mut tx = db.begin().await?;
    on_backend!(StoreTx &mut tx, conn => {
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}")).execute(&mut *conn).await?;
        sqlx::query(&format!("CREATE TABLE {shadow} AS SELECT * FROM {live} WHERE 1 = 0")).execute(&mut *conn).await?;
        sqlx::query(&format!("CREATE UNIQUE INDEX {shadow}_id ON {shadow} (id)")).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM checkpoints WHERE name = $1").bind(shadow).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM list_counts WHERE read_model = $1").bind(shadow).execute(&mut *conn).await?;
    });
    tx.commit().await?;
    Ok(())
}
