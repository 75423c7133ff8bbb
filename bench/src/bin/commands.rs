//! Command-path benchmark: concurrent writers creating tasks through [`CommandBus`] on a real
//! PostgreSQL, each command's latency recorded in an HDR histogram.
//!
//! ```text
//! cargo run --release -p sparc-bench --bin commands -- --writers 16,64 --seconds 10
//! ```
//!
//! Every command is `TaskCommand::Schedule` on a fresh UUIDv7 task id, so it loads an empty
//! stream (snapshot lookup + event lookup) and commits one `TaskScheduled` event: the path of
//! `POST /tasks`. One line per writer count is printed; with `--json` one JSON object per line
//! goes to stdout and the human line to stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use sparc_domain::task::{Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, SkillName, TimeZoneName};
use sparc_store::{CommandBus, Database, EventMetadata};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Highest latency the histograms track, in microseconds (a minute).
const MAX_LATENCY_US: u64 = 60_000_000;

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
    /// Writer counts to measure, one run each (the pool has as many connections as writers).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    writers: Vec<usize>,
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

/// The result for one writer count.
#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    writers: usize,
    seconds: f64,
    commands: u64,
    commands_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    errors: u64,
    first_error: Option<String>,
    /// CPU time this process used during the measured window, per second of wall time
    /// (2.0 = both cores of the development machine).
    client_cpu_cores: Option<f64>,
}

/// What one writer measured.
struct WriterResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The constant parts of every command, parsed once.
struct Template {
    skill: SkillName,
    cron: CronSchedule,
    timezone: TimeZoneName,
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

    let template = Arc::new(Template {
        skill: SkillName::parse("code-review")?,
        cron: CronSchedule::parse("*/15 9-18 * * 1-5")?,
        timezone: TimeZoneName::parse("Europe/Paris")?,
    });

    for &writers in &args.writers {
        anyhow::ensure!(writers > 0, "writer counts must be at least 1");
        let report = run(&args, writers, template.clone()).await?;
        let line = format!(
            "cqrs create-task  writers={}  commands/s={:.0}  p50={:.2}ms  p99={:.2}ms  errors={}",
            report.writers, report.commands_per_s, report.p50_ms, report.p99_ms, report.errors
        );
        if args.json {
            eprintln!("{line}");
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{line}");
        }
        if let Some(error) = &report.first_error {
            eprintln!("  first error: {error}");
        }
    }
    Ok(())
}

/// Runs `writers` concurrent writers for the warm-up and the measured window.
async fn run(args: &Args, writers: usize, template: Arc<Template>) -> anyhow::Result<Report> {
    // `Database::connect` has a fixed pool size: size this one to the writers.
    let writers_u32 = u32::try_from(writers).context("too many writers")?;
    let pool = PgPoolOptions::new()
        .max_connections(writers_u32)
        .min_connections(writers_u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&args.database_url)
        .await
        .context("opening the benchmark pool")?;
    let db = Database::Postgres(pool.clone());
    let bus = Arc::new(CommandBus::new(&db));

    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let measure_until = measure_from + Duration::from_secs(args.seconds);

    let mut handles = Vec::with_capacity(writers);
    for writer in 0..writers {
        let bus = bus.clone();
        let template = template.clone();
        handles.push(tokio::spawn(async move {
            writer_loop(writer, &bus, &template, measure_from, measure_until).await
        }));
    }

    // Client CPU over the measured window.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = process_cpu_seconds();
    tokio::time::sleep_until(measure_until.into()).await;
    let cpu_end = process_cpu_seconds();

    let mut histogram = new_histogram();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for handle in handles {
        let result = handle.await.context("writer panicked")??;
        histogram.add(&result.histogram)?;
        ok += result.ok;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    pool.close().await;

    let seconds = args.seconds as f64;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        benchmark: "cqrs create-task",
        writers,
        seconds,
        commands: ok,
        commands_per_s: ok as f64 / seconds,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
        mean_ms: histogram.mean() / 1000.0,
        errors,
        first_error,
        client_cpu_cores: cpu_start
            .zip(cpu_end)
            .map(|(start, end)| (end - start) / seconds),
    })
}

/// One writer: creates tasks back to back until the window closes. A command counts (and its
/// latency is recorded) when it completes inside the measured window.
async fn writer_loop(
    writer: usize,
    bus: &CommandBus,
    template: &Template,
    measure_from: Instant,
    measure_until: Instant,
) -> anyhow::Result<WriterResult> {
    let mut result = WriterResult {
        histogram: new_histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    // Each writer stands for one dashboard user working in one project.
    let user_id = Uuid::now_v7();
    let project_id = Uuid::now_v7();
    let ip = format!("10.0.{}.{}", writer / 250, writer % 250 + 1);
    let mut n: u64 = 0;
    loop {
        let start = Instant::now();
        if start >= measure_until {
            return Ok(result);
        }
        n += 1;
        let task_id = Uuid::now_v7();
        let metadata = EventMetadata::new(user_id.to_string(), Uuid::now_v7().to_string())
            .with_ip(ip.clone())
            .with_user_agent(
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            );
        let command = TaskCommand::Schedule {
            task_id,
            user_id,
            skill_name: template.skill.clone(),
            schedule_cron: template.cron.clone(),
            timezone: template.timezone,
            params: json!({
                "repository": "git@github.com:example/sparc.git",
                "branch": "main",
                "paths": ["crates/", "projections/"],
                "max_findings": 50,
                "run": n,
            }),
            status: TaskStatus::Pending,
            project_id: Some(project_id),
            at: Utc::now(),
        };
        let outcome = bus
            .execute::<Task>(&task_id.to_string(), command, &metadata, None)
            .await;
        let end = Instant::now();
        if end < measure_from || end >= measure_until {
            continue;
        }
        match outcome {
            Ok(_) => {
                result.ok += 1;
                let us = u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                result.histogram.saturating_record(us.max(1));
            }
            Err(error) => {
                result.errors += 1;
                if result.first_error.is_none() {
                    result.first_error = Some(error.to_string());
                }
            }
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// User + system CPU time of this process so far (Linux; `None` elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}
