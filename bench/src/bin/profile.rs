//! Where the create-task command's time goes: the CQRS path next to raw sqlx variants that do
//! part of its database work, with the same harness, rows and pool.
//!
//! ```text
//! cargo run --release -p sparc-bench --bin profile -- --writers 64 \
//!     --variants cqrs,insert,tx-insert,load-tx-insert,load1-insert [--pool-size 16] [--no-ping]
//! ```
//!
//! Variants (raw ones write into `profile_events`, a `LIKE events INCLUDING ALL` copy):
//! - `cqrs`: `CommandBus::create::<Task>(Schedule)` (what `commands` measures);
//! - `insert`: one autocommit INSERT of the event row (1 statement, what pgbench does);
//! - `tx-insert`: BEGIN; INSERT; COMMIT (postgres-es `persist` without a snapshot);
//! - `load-tx-insert`: SELECT snapshot; SELECT events; BEGIN; INSERT; COMMIT, each on its own
//!   pool checkout (the statements the CQRS path sends, without cqrs-es);
//! - `load1-insert`: one SELECT of snapshot and events together, then one autocommit INSERT
//!   (what a batched repository could send).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;
use sparc_bench::workload::{Template, create_task, event_row, population};
use sparc_bench::{Window, run_writers};
use sparc_store::{CommandBus, Database};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Parser)]
#[command(about = "Break the create-task command's cost down against raw sqlx variants")]
struct Args {
    /// The PostgreSQL database (migrated; `profile_events` is created in it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sparc_bench"
    )]
    database_url: String,
    /// Variants to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cqrs,insert,tx-insert,load-tx-insert,load1-insert"
    )]
    variants: Vec<String>,
    /// Writer counts.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    writers: Vec<usize>,
    /// Connections in the pool (default: as many as writers).
    #[arg(long)]
    pool_size: Option<u32>,
    /// Skip sqlx's liveness ping on every pool checkout (`test_before_acquire(false)`).
    #[arg(long)]
    no_ping: bool,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// One JSON object per run on stdout.
    #[arg(long)]
    json: bool,
}

const INSERT: &str = "INSERT INTO profile_events \
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
    VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SELECT_SNAPSHOT: &str = "SELECT aggregate_type, aggregate_id, last_sequence, \
    current_snapshot, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2";
const SELECT_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, \
    event_version, payload, metadata FROM profile_events \
    WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
/// Snapshot and events in one statement (the events after the snapshot, or all of them).
const SELECT_BOTH: &str = "WITH s AS (SELECT last_sequence, payload FROM snapshots \
      WHERE aggregate_type = $1 AND aggregate_id = $2) \
    SELECT 0 AS kind, last_sequence AS sequence, payload, NULL::json AS metadata FROM s \
    UNION ALL \
    SELECT 1, sequence, payload, metadata FROM profile_events \
      WHERE aggregate_type = $1 AND aggregate_id = $2 \
        AND sequence > coalesce((SELECT last_sequence FROM s), 0) \
    ORDER BY kind, sequence";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = Database::connect(&args.database_url)
        .await
        .context("connecting")?;
    db.migrate().await.context("migrating")?;
    if let Database::Postgres(pool) = &db {
        sqlx::query("CREATE TABLE IF NOT EXISTS profile_events (LIKE events INCLUDING ALL)")
            .execute(pool)
            .await?;
        pool.close().await;
    }
    let template = Arc::new(Template::new()?);
    let window = Window {
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };

    for &writers in &args.writers {
        for variant in &args.variants {
            let pool_size = args
                .pool_size
                .unwrap_or(u32::try_from(writers).context("too many writers")?);
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .min_connections(pool_size)
                .test_before_acquire(!args.no_ping)
                .acquire_timeout(Duration::from_secs(30))
                .connect(&args.database_url)
                .await?;
            let bus = Arc::new(CommandBus::new(&Database::Postgres(pool.clone())));
            let people = Arc::new(population(writers));
            let template = template.clone();
            let kind = variant.clone();
            let raw_pool = pool.clone();
            anyhow::ensure!(
                [
                    "cqrs",
                    "insert",
                    "tx-insert",
                    "load-tx-insert",
                    "load1-insert"
                ]
                .contains(&variant.as_str()),
                "unknown variant {variant}"
            );
            let name = format!(
                "{variant} pool={pool_size}{}",
                if args.no_ping { " no-ping" } else { "" }
            );
            let report = run_writers(&name, writers, pool_size, window, move |w, n| {
                let (bus, template, people, pool, kind) = (
                    bus.clone(),
                    template.clone(),
                    people.clone(),
                    raw_pool.clone(),
                    kind.clone(),
                );
                async move {
                    let writer = &people[w];
                    if kind == "cqrs" {
                        return create_task(&bus, &template, writer, n).await;
                    }
                    let (id, payload, metadata) = event_row(&template, writer, n);
                    raw(&kind, &pool, &id, &payload, &metadata)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await?;
            pool.close().await;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}  client_cpu={:.2} machine_cpu={:.2} cores",
                    report.line(),
                    report.client_cpu_cores.unwrap_or(f64::NAN),
                    report.machine_cpu_cores.unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}

async fn raw(
    kind: &str,
    pool: &PgPool,
    id: &str,
    payload: &Value,
    metadata: &Value,
) -> Result<(), sqlx::Error> {
    let insert = || {
        sqlx::query(INSERT)
            .bind("Task")
            .bind(id)
            .bind(1_i32)
            .bind("TaskScheduled")
            .bind("1.0")
            .bind(payload)
            .bind(metadata)
    };
    match kind {
        "insert" => {
            insert().execute(pool).await?;
        }
        "tx-insert" => {
            let mut tx = pool.begin().await?;
            insert().execute(&mut *tx).await?;
            tx.commit().await?;
        }
        "load-tx-insert" => {
            sqlx::query(SELECT_SNAPSHOT)
                .bind("Task")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            sqlx::query(SELECT_EVENTS)
                .bind("Task")
                .bind(id)
                .fetch_all(pool)
                .await?;
            let mut tx = pool.begin().await?;
            insert().execute(&mut *tx).await?;
            tx.commit().await?;
        }
        "load1-insert" => {
            sqlx::query(SELECT_BOTH)
                .bind("Task")
                .bind(id)
                .fetch_all(pool)
                .await?;
            insert().execute(pool).await?;
        }
        _ => unreachable!("checked before the run"),
    }
    Ok(())
}
