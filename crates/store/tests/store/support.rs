//! A tiny aggregate for the tests, and helpers to run a test body on both backends.

use std::collections::HashMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sparc_store::testing::{self, SqliteTestFile};
use sparc_store::{Database, EventRepository};
use tokio::sync::Barrier;

/// A counter: the smallest aggregate that has commands, events and state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { amount: i64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Added".to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

pub enum CounterCommand {
    /// Add `amount`, which must be positive.
    Add(i64),
    /// Add, but only after as many commands as the barrier counts have loaded the counter:
    /// makes concurrent commands race deterministically.
    AddInLockstep(i64),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CounterError(String);

/// The services of [`Counter`]: the barrier of `AddInLockstep`.
pub struct Lockstep(pub Barrier);

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = Lockstep;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let amount = match command {
            CounterCommand::Add(amount) => amount,
            CounterCommand::AddInLockstep(amount) => {
                services.0.wait().await;
                amount
            }
        };
        if amount <= 0 {
            return Err(CounterError("amount must be positive".to_string()));
        }
        sink.write(CounterEvent::Added { amount }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CounterEvent::Added { amount } => self.value += amount,
        }
    }
}

/// A migrated SQLite database, and the migrated Postgres one when PostgreSQL is running.
pub async fn both_backends() -> Vec<(Database, Option<SqliteTestFile>)> {
    let (sqlite, file) = testing::sqlite_database().await;
    let mut databases = vec![(sqlite, Some(file))];
    if let Some(postgres) = testing::postgres_database().await {
        databases.push((postgres, None));
    }
    databases
}

/// A migrated Postgres database and its pool, or `None` when PostgreSQL is not running.
pub async fn postgres_with_pool() -> Option<(Database, sqlx::PgPool)> {
    let db = testing::postgres_database().await?;
    let Database::Postgres(pool) = &db else {
        unreachable!("postgres_database opens Postgres")
    };
    let pool = pool.clone();
    Some((db, pool))
}

/// Appends events `first..first + count` of counter `id` straight through the repository.
pub async fn append(db: &Database, id: &str, first: usize, count: usize) {
    let events: Vec<SerializedEvent> = (first..first + count)
        .map(|sequence| {
            SerializedEvent::new(
                id.to_string(),
                sequence,
                Counter::TYPE.to_string(),
                "Added".to_string(),
                "1.0".to_string(),
                serde_json::json!({ "Added": { "amount": sequence } }),
                serde_json::to_value(HashMap::from([("actor", "test")])).unwrap(),
            )
        })
        .collect();
    EventRepository::new(db)
        .persist::<Counter>(&events, None)
        .await
        .expect("append events");
}

/// Runs one SQL statement without parameters.
pub async fn execute(db: &Database, sql: &str) -> u64 {
    match db {
        Database::Postgres(pool) => sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
        Database::Sqlite(pool) => sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
    }
}

/// Waits until the log reader returns `count` events from the origin. On Postgres it holds back
/// events behind any older transaction still running in the cluster (other tests run in
/// parallel), so what was just committed may take a moment to become readable.
pub async fn wait_until_readable(db: &Database, count: usize) {
    let reader = sparc_store::LogReader::new(db);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let readable = reader
            .read_after(sparc_store::Checkpoint::ORIGIN, count as i64 + 1)
            .await
            .unwrap()
            .len();
        if readable >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {readable} of {count} events became readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the chainer in batches of `batch` until it has chained `count` events in all.
pub async fn chain(db: &Database, count: usize, batch: i64) {
    let chainer = sparc_store::Chainer::new(db);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut chained = 0;
    while chained < count {
        chained += chainer.chain_pending(batch).await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "chained only {chained} of {count} events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(chained, count);
}
