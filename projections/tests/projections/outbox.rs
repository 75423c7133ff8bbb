//! The read-model loop's changes for clients, on both backends: when every published read model
//! is level, a batch numbers its own `outbox` rows (their `event_id`s) in log order; when one
//! lags, or a row already waits for a number, it leaves its rows for the relay.

use std::time::Duration;

use sparc_projections::ProjectionRunner;
use sparc_projections::catalog::{READ_MODELS, read_model};
use sparc_projections::runner::catch_up;
use sparc_store::Database;
use sparc_store::testing::{postgres_database, sqlite_database};
use tokio::sync::watch;

async fn schedule_tasks(db: &Database, count: usize) {
    for _ in 0..count {
        crate::schedule_task(db).await;
    }
}

/// The outbox as `(position, event_id)` in log order.
async fn outbox(db: &Database) -> Vec<(i64, Option<i64>)> {
    let sql = "SELECT position, published_seq FROM outbox ORDER BY transaction_id, position";
    match db {
        Database::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        Database::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    }
    .expect("the outbox should read")
}

/// Runs every live read model in one loop until the outbox holds `rows` rows.
async fn run_read_models_until(db: &Database, rows: usize) -> Vec<(i64, Option<i64>)> {
    let read_models = READ_MODELS.iter().map(|model| model.live()).collect();
    let (stop, stopped) = watch::channel(false);
    let loops = ProjectionRunner::new(db.clone(), read_models, Vec::new())
        .with_poll_interval(Duration::from_millis(20))
        .spawn(stopped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut written = outbox(db).await;
    while written.len() < rows && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        written = outbox(db).await;
    }
    stop.send(true).expect("the loop listens");
    for handle in loops {
        handle.await.expect("the loop stops cleanly");
    }
    written
}

async fn a_level_batch_numbers_its_changes_in_log_order(db: Database) {
    schedule_tasks(&db, 5).await;
    let written = run_read_models_until(&db, 5).await;
    let numbers: Vec<Option<i64>> = written.iter().map(|(_, number)| *number).collect();
    assert_eq!(
        numbers,
        (1..=5).map(Some).collect::<Vec<_>>(),
        "{written:?}"
    );

    schedule_tasks(&db, 2).await;
    let written = run_read_models_until(&db, 7).await;
    let numbers: Vec<Option<i64>> = written.iter().map(|(_, number)| *number).collect();
    assert_eq!(
        numbers,
        (1..=7).map(Some).collect::<Vec<_>>(),
        "numbering goes on"
    );
}

async fn changes_behind_a_lagging_read_model_are_left_for_the_relay(db: Database) {
    schedule_tasks(&db, 3).await;
    // The tasks read model alone runs ahead of the other published ones.
    let tasks = read_model("tasks").expect("the tasks read model");
    catch_up(&db, tasks.live(), 100)
        .await
        .expect("the tasks read model should catch up");
    let written = outbox(&db).await;
    assert_eq!(written.len(), 3);
    assert!(
        written.iter().all(|(_, number)| number.is_none()),
        "a read model running alone is not next in line: {written:?}"
    );

    // Now all are level, but earlier rows wait for the relay: the new ones queue behind them.
    schedule_tasks(&db, 2).await;
    let written = run_read_models_until(&db, 5).await;
    assert!(
        written.iter().all(|(_, number)| number.is_none()),
        "no row is numbered ahead of one waiting: {written:?}"
    );
}

#[tokio::test]
async fn a_level_batch_numbers_its_changes_in_log_order_on_postgres() {
    if let Some(db) = postgres_database().await {
        a_level_batch_numbers_its_changes_in_log_order(db).await;
    }
}

#[tokio::test]
async fn a_level_batch_numbers_its_changes_in_log_order_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    a_level_batch_numbers_its_changes_in_log_order(db).await;
}

#[tokio::test]
async fn changes_behind_a_lagging_read_model_are_left_for_the_relay_on_postgres() {
    if let Some(db) = postgres_database().await {
        changes_behind_a_lagging_read_model_are_left_for_the_relay(db).await;
    }
}

#[tokio::test]
async fn changes_behind_a_lagging_read_model_are_left_for_the_relay_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    changes_behind_a_lagging_read_model_are_left_for_the_relay(db).await;
}
