//! Command-path benchmark: concurrent writers creating tasks through [`CommandBus`] on a real
//! PostgreSQL, each command's latency recorded in an HDR histogram.
//!
//! ```text
//! cargo run --release -p sparc-bench --bin commands -- --writers 16,64 --seconds 10
//! ```
//!
//! Every command is `TaskCommand::Schedule` on a fresh UUIDv7 task id through
//! `CommandBus::create`, the path of `POST /tasks`: decided on the empty aggregate without a
//! read, committed as one `TaskScheduled` event in one autocommit `INSERT`. One line per writer count is printed; with `--json` one JSON object per line
//! goes to stdout and the human line to stderr.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sparc_bench::workload::{Template, create_task, population};
use sparc_bench::{Window, run_writers};
use sparc_store::{CommandBus, Database, postgres_pool_options};

#[derive(Debug, Parser)]
#[command(about = "Benchmark the CQRS create-task command path on PostgreSQL")]
struct Args {
    /// The PostgreSQL database to write to (it is migrated; it is not dropped).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sparc_bench"
    )]
    database_url: String,
    /// Writer counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    writers: Vec<usize>,
    /// Connections in the pool (default: as many as writers).
    #[arg(long)]
    pool_size: Option<u32>,
    /// Measured seconds per writer count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON object per writer count on stdout (the human line goes to stderr).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.database_url.starts_with("postgres://")
            || args.database_url.starts_with("postgresql://"),
        "--database-url must be a postgres:// URL"
    );
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");

    let db = Database::connect(&args.database_url)
        .await
        .context("connecting to the database")?;
    db.migrate().await.context("applying the migrations")?;
    if let Database::Postgres(pool) = db {
        pool.close().await;
    }

    let template = Arc::new(Template::new()?);
    let window = Window {
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };

    for &writers in &args.writers {
        anyhow::ensure!(writers > 0, "writer counts must be at least 1");
        // `Database::connect` has a fixed pool size (16): build the pool here with the same
        // options, sized to the writers, and wrap it.
        let pool_size = match args.pool_size {
            Some(size) => size,
            None => u32::try_from(writers).context("too many writers")?,
        };
        let pool = postgres_pool_options(pool_size)
            .min_connections(pool_size)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&args.database_url)
            .await
            .context("opening the benchmark pool")?;
        let bus = Arc::new(CommandBus::new(&Database::Postgres(pool.clone())));
        let population = Arc::new(population(writers));
        let template = template.clone();

        let report = run_writers(
            "cqrs create-task",
            writers,
            pool_size,
            window,
            move |writer, n| {
                let bus = bus.clone();
                let template = template.clone();
                let population = population.clone();
                async move { create_task(&bus, &template, &population[writer], n).await }
            },
        )
        .await?;
        pool.close().await;

        if args.json {
            eprintln!("{}", report.line());
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.line());
        }
        if let Some(error) = &report.first_error {
            eprintln!("  first error: {error}");
        }
    }
    Ok(())
}
