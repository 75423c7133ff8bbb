//! Reading the Postgres log in global order while transactions commit out of order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sparc_store::testing;
use sparc_store::{Checkpoint, Database, LogReader};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio::time::{Instant, sleep};

const WRITERS: usize = 16;
const TRANSACTIONS_PER_WRITER: usize = 12;

const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
    event_version, payload, metadata) VALUES ($1, $2, $3, 'Written', '1.0', '{}', '{}') \
    RETURNING global_position";

/// What the writers did: positions of committed and of rolled-back rows.
#[derive(Default)]
struct Outcome {
    committed: HashSet<i64>,
    rolled_back: HashSet<i64>,
}

/// One random writer: transactions of 1–3 rows, some sleeping before commit, some rolled back.
async fn writer(pool: PgPool, writer: usize, outcome: Arc<Mutex<Outcome>>) {
    for t in 0..TRANSACTIONS_PER_WRITER {
        let mut tx = pool.begin().await.unwrap();
        let mut positions = Vec::new();
        for sequence in 1..=(1 + (writer + t) % 3) {
            let position: i64 = sqlx::query_scalar(INSERT)
                .bind(format!("W{writer}"))
                .bind(format!("w{writer}-t{t}"))
                .bind(sequence as i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            positions.push(position);
        }
        if (writer + t).is_multiple_of(3) {
            sqlx::query("SELECT pg_sleep(random() * 0.2)")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let mut outcome_guard;
        if (writer * 7 + t).is_multiple_of(5) {
            tx.rollback().await.unwrap();
            outcome_guard = outcome.lock().await;
            outcome_guard.rolled_back.extend(positions);
        } else {
            tx.commit().await.unwrap();
            outcome_guard = outcome.lock().await;
            outcome_guard.committed.extend(positions);
        }
    }
}

/// The race a position reader loses, made deterministic: the slow transaction takes a position,
/// the fast one takes the next and commits, and the slow one commits only once the naive reader
/// has seen (and moved past) the fast one's position.
async fn slow_and_fast_pair(
    pool: PgPool,
    fast_position: Arc<Mutex<Option<i64>>>,
    naive_saw_fast: Arc<Notify>,
    outcome: Arc<Mutex<Outcome>>,
) -> (i64, i64) {
    let (reserved_tx, reserved) = oneshot::channel();
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let position: i64 = sqlx::query_scalar(INSERT)
                .bind("Slow")
                .bind("slow")
                .bind(1_i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            reserved_tx.send(()).unwrap();
            // At most a few seconds, so a broken naive reader cannot hang the test.
            let _ = tokio::time::timeout(Duration::from_secs(5), naive_saw_fast.notified()).await;
            sqlx::query("SELECT pg_sleep(0.3)")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            position
        })
    };
    reserved.await.unwrap();
    let fast: i64 = sqlx::query_scalar(INSERT)
        .bind("Fast")
        .bind("fast")
        .bind(1_i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    *fast_position.lock().await = Some(fast);
    let slow = slow.await.unwrap();
    let mut outcome = outcome.lock().await;
    outcome.committed.extend([slow, fast]);
    (slow, fast)
}

/// A reader that follows the log by `global_position > last_seen` (what not to do).
async fn naive_reader(
    pool: PgPool,
    done: Arc<AtomicBool>,
    fast_position: Arc<Mutex<Option<i64>>>,
    saw_fast: Arc<Notify>,
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut last = 0_i64;
    loop {
        let finished = done.load(Ordering::SeqCst);
        let positions: Vec<i64> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE global_position > $1 ORDER BY global_position",
        )
        .bind(last)
        .fetch_all(&pool)
        .await
        .unwrap();
        if let Some(&max) = positions.last() {
            last = max;
        }
        seen.extend(positions);
        if let Some(fast) = *fast_position.lock().await
            && last >= fast
        {
            saw_fast.notify_one();
        }
        if finished {
            return seen;
        }
        sleep(Duration::from_millis(3)).await;
    }
}

/// A reader that follows the log with `LogReader::read_after` from its checkpoint.
async fn checkpointed_reader(reader: LogReader, done: Arc<AtomicBool>) -> Vec<Checkpoint> {
    let mut seen = Vec::new();
    let mut checkpoint = Checkpoint::ORIGIN;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finished = done.load(Ordering::SeqCst);
        let batch = reader.read_after(checkpoint, 50).await.unwrap();
        for event in &batch {
            seen.push(event.checkpoint());
            checkpoint = event.checkpoint();
        }
        // Drained: the writers are done and no committed event lies beyond the checkpoint
        // (transactions elsewhere in the cluster may hold the reader back for a while).
        if finished && batch.is_empty() && reader.count_after(checkpoint).await.unwrap() == 0 {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the reader did not drain the log"
        );
        if batch.is_empty() {
            sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Identity values are taken at INSERT and become visible at COMMIT, so transactions commit
/// positions out of order. A reader that remembers the largest position it has seen skips every
/// event that commits after a larger position was read: here the slow transaction's event, and
/// any random writer's sleeping transaction overtaken by another. `read_after` only returns
/// events of transactions older than every running one, in (transaction id, position) order,
/// so it sees every committed event exactly once, and never a rolled-back one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reader_sees_every_committed_event_exactly_once_under_concurrent_writers() {
    let Some(test_db) = testing::postgres_test_database().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 4)
        .connect(&test_db.url)
        .await
        .unwrap();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let done = Arc::new(AtomicBool::new(false));
    let fast_position = Arc::new(Mutex::new(None));
    let naive_saw_fast = Arc::new(Notify::new());

    let checkpointed = tokio::spawn(checkpointed_reader(
        LogReader::new(&test_db.database),
        Arc::clone(&done),
    ));
    let naive = tokio::spawn(naive_reader(
        pool.clone(),
        Arc::clone(&done),
        Arc::clone(&fast_position),
        Arc::clone(&naive_saw_fast),
    ));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(pool.clone(), w, Arc::clone(&outcome))))
        .collect();

    let pair = tokio::spawn(slow_and_fast_pair(
        pool.clone(),
        Arc::clone(&fast_position),
        Arc::clone(&naive_saw_fast),
        Arc::clone(&outcome),
    ));

    for w in writers {
        w.await.unwrap();
    }
    let (slow, fast) = pair.await.unwrap();
    done.store(true, Ordering::SeqCst);

    let seen = checkpointed.await.unwrap();
    let naive_seen: HashSet<i64> = naive.await.unwrap().into_iter().collect();
    let outcome = outcome.lock().await;

    let positions: Vec<i64> = seen.iter().map(|c| c.position).collect();
    let unique: HashSet<i64> = positions.iter().copied().collect();
    assert_eq!(unique.len(), positions.len(), "no event is read twice");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "checkpoints only move forward"
    );
    assert!(
        unique.is_disjoint(&outcome.rolled_back),
        "no rolled-back event is read"
    );
    assert!(!outcome.rolled_back.is_empty());
    assert_eq!(unique, outcome.committed, "every committed event is read");
    assert!(slow < fast);

    let missed: HashSet<i64> = outcome.committed.difference(&naive_seen).copied().collect();
    assert!(
        missed.contains(&slow),
        "the naive reader should have skipped the slow event {slow}; it missed {missed:?}"
    );
}

/// Waits until `reader` returns the event at `position` (other tests' transactions on the same
/// cluster may hold every reader back for a moment), or gives up after 10 s.
async fn eventually_read(reader: &LogReader, position: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let events = reader.read_after(Checkpoint::ORIGIN, 100).await.unwrap();
        if events.iter().any(|event| event.position == position) {
            return true;
        }
        sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn insert_committed(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar(INSERT)
        .bind("Bystanders")
        .bind(id)
        .bind(1_i64)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A running transaction holds back every log reader, since it might still commit an earlier
/// event; one declared a bystander (it inserts no events) holds back no reader of this
/// process on its server while its guard lives, and holds them back again once the guard is
/// gone. A reader whose pool names the server otherwise does not know it and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bystander_transaction_holds_back_no_reader_of_its_process_while_declared() {
    let Some(test_db) = testing::postgres_test_database().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&test_db.url)
        .await
        .unwrap();
    let reader = LogReader::new(&test_db.database);

    let (bystander, guard) = test_db.database.begin_bystander().await.unwrap();
    let past_the_bystander = insert_committed(&pool, "past-the-bystander").await;
    assert!(
        eventually_read(&reader, past_the_bystander).await,
        "an event committed while a bystander runs is read at once"
    );
    let other_name = if test_db.url.contains("127.0.0.1") {
        test_db.url.replacen("127.0.0.1", "localhost", 1)
    } else {
        test_db.url.replacen("localhost", "127.0.0.1", 1)
    };
    let other_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&other_name)
        .await
        .unwrap();
    let other_reader = LogReader::new(&Database::Postgres(other_pool));
    sleep(Duration::from_millis(200)).await;
    let events = other_reader
        .read_after(Checkpoint::ORIGIN, 100)
        .await
        .unwrap();
    assert!(
        events.iter().all(|e| e.position != past_the_bystander),
        "a reader of a pool that names the server otherwise waits for the bystander"
    );

    let mut writer = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *writer)
        .await
        .unwrap();
    let behind_the_writer = insert_committed(&pool, "behind-the-writer").await;
    sleep(Duration::from_millis(200)).await;
    let events = reader.read_after(Checkpoint::ORIGIN, 100).await.unwrap();
    assert!(
        events.iter().all(|e| e.position != behind_the_writer),
        "a running transaction that was not declared holds the reader back"
    );
    writer.rollback().await.unwrap();
    assert!(eventually_read(&reader, behind_the_writer).await);

    drop(guard);
    let behind_the_former_bystander = insert_committed(&pool, "behind-the-former").await;
    sleep(Duration::from_millis(200)).await;
    let events = reader.read_after(Checkpoint::ORIGIN, 100).await.unwrap();
    assert!(
        events
            .iter()
            .all(|e| e.position != behind_the_former_bystander),
        "once its guard is dropped, the transaction holds the reader back again"
    );
    bystander.commit().await.unwrap();
    assert!(eventually_read(&reader, behind_the_former_bystander).await);
}
