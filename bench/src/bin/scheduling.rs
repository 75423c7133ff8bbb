//! Seeds the scheduling benchmark (`bench/scheduling.sh`): `--tasks` tasks of skill `--skill`,
//! all due at the one minute `--slot` (a yearly schedule, so each fires once in the run),
//! written through the command bus by `--writers` concurrent writers:
//!
//! ```text
//! cargo run --release -p sparc-bench --bin scheduling -- --tasks 10000 --slot 2026-12-07T10:15:00Z
//! ```
//!
//! It prints how long the seeding took; the script measures the runs from the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use serde_json::json;
use sparc_domain::task::{RunPolicy, Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, SkillName, TimeZoneName};
use sparc_store::{CommandBus, Database, EventMetadata};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Seed tasks all due in one minute")]
struct Args {
    /// The event store (PostgreSQL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Tasks to create.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// The minute they are all due, RFC 3339 in UTC (seconds are dropped).
    #[arg(long)]
    slot: DateTime<Utc>,
    /// Their skill.
    #[arg(long, default_value = "noop")]
    skill: String,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    writers: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = Database::connect_with_pool_size(&args.database_url, args.writers as u32)
        .await
        .context("connecting to the database")?;
    let cron = CronSchedule::parse(&args.slot.format("%M %H %d %m *").to_string())
        .context("a schedule for the slot")?;
    let skill = SkillName::parse(&args.skill).context("a skill name")?;
    // Created before the slot, so the slot is their first `next_run_at`.
    let at = args.slot - Duration::minutes(1);
    anyhow::ensure!(
        cron.next_after(at, &TimeZoneName::default()).is_some(),
        "the slot must be a real minute"
    );
    let bus = Arc::new(CommandBus::new(&db));
    let owner = Uuid::now_v7();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|_| {
            let (bus, next, cron, skill) = (bus.clone(), next.clone(), cron.clone(), skill.clone());
            let tasks = args.tasks;
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < tasks {
                    let task_id = Uuid::now_v7();
                    let command = TaskCommand::Schedule {
                        task_id,
                        user_id: owner,
                        skill_name: skill.clone(),
                        schedule_cron: cron.clone(),
                        timezone: TimeZoneName::default(),
                        params: json!({}),
                        status: TaskStatus::Pending,
                        project_id: None,
                        run: RunPolicy::default(),
                        at,
                    };
                    let metadata = EventMetadata::new("bench", Uuid::now_v7().to_string());
                    bus.create::<Task>(&task_id.to_string(), command, &metadata)
                        .await
                        .map_err(|e| anyhow::anyhow!("creating a task: {e}"))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    println!(
        "seeded {} tasks due at {} in {:.1} s",
        args.tasks,
        args.slot.format("%Y-%m-%dT%H:%M:00Z"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
