//! Projection rebuild benchmark: writes a realistic log of `--events` events (default one
//! million) straight into a fresh Postgres database — users, projects, agents, and thousands of
//! tasks that are scheduled, changed and run many times — then rebuilds every read model from
//! it, as `sparc projections rebuild --all` does, and prints events/s.
//!
//! `cargo run --release -p sparc-bench --bin rebuild -- --events 1000000`

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use clap::Parser;
use serde_json::{Value, json};
use sparc_domain::agent::{AgentEvent, AgentStatus, AgentType};
use sparc_domain::execution::{ExecutionEvent, ExecutionStatus};
use sparc_domain::project::ProjectEvent;
use sparc_domain::task::{TaskChanges, TaskEvent, TaskStatus};
use sparc_domain::values::{AgentName, CronSchedule, ProjectName, SkillName, TimeZoneName};
use sparc_projections::catalog::{READ_MODELS, ReadModel};
use sparc_projections::rebuild::rebuild_all;
use sparc_store::Database;
use uuid::Uuid;

/// Rebuild benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Admin connection used to create the benchmark database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_url: String,
    /// The benchmark database (dropped and created again).
    #[arg(long, default_value = "sparc_bench_rebuild")]
    database: String,
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Tasks the runs are spread over.
    #[arg(long, default_value_t = 5_000)]
    tasks: usize,
    /// Projects the tasks are spread over.
    #[arg(long, default_value_t = 1_000)]
    projects: usize,
}

/// One event row as postgres-es writes it.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: Value,
}

fn row<E: serde::Serialize + cqrs_es_event::EventName>(
    aggregate_type: &'static str,
    id: Uuid,
    sequence: i64,
    event: E,
) -> Row {
    Row {
        aggregate_type,
        aggregate_id: id.to_string(),
        sequence,
        event_type: event.name(),
        payload: serde_json::to_value(&event).expect("events serialize"),
    }
}

/// The `event_type` of a domain event, through cqrs-es's `DomainEvent`.
mod cqrs_es_event {
    pub trait EventName {
        fn name(&self) -> String;
    }

    impl<T: cqrs_es::DomainEvent> EventName for T {
        fn name(&self) -> String {
            self.event_type()
        }
    }
}

/// A deterministic, realistic log: what a busy deployment writes.
fn generate(args: &Args) -> Vec<Row> {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut rows = Vec::with_capacity(args.events);
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let projects: Vec<(Uuid, Uuid)> = (0..args.projects)
        .map(|i| (Uuid::now_v7(), users[i % users.len()]))
        .collect();
    for (i, (id, owner)) in projects.iter().enumerate() {
        rows.push(row(
            "Project",
            *id,
            1,
            ProjectEvent::ProjectCreated {
                project_id: *id,
                user_id: *owner,
                name: ProjectName::parse(&format!("project {i}")).unwrap(),
                description: Some(format!("the {i}th project of the benchmark")),
                at: t0,
            },
        ));
    }
    let agents: Vec<(Uuid, i64)> = (0..50).map(|_| (Uuid::now_v7(), 1)).collect();
    let mut agents = agents;
    for (i, (id, _)) in agents.iter().enumerate() {
        rows.push(row(
            "Agent",
            *id,
            1,
            AgentEvent::AgentRegistered {
                agent_id: *id,
                name: AgentName::parse(&format!("agent-{i}")).unwrap(),
                agent_type: AgentType::Coder,
                capabilities: vec!["rust".into(), "sql".into()],
                status: AgentStatus::Idle,
                registered_by: None,
                at: t0,
            },
        ));
    }
    let schedule = CronSchedule::parse("*/15 * * * *").unwrap();
    let mut tasks: Vec<(Uuid, Uuid, i64)> = Vec::with_capacity(args.tasks);
    for i in 0..args.tasks {
        let (project, owner) = projects[i % projects.len()];
        let id = Uuid::now_v7();
        rows.push(row(
            "Task",
            id,
            1,
            TaskEvent::TaskScheduled {
                task_id: id,
                user_id: owner,
                skill_name: SkillName::parse(&format!("skill-{}", i % 40)).unwrap(),
                schedule_cron: schedule.clone(),
                timezone: TimeZoneName::default(),
                params: json!({"repository": format!("repo-{i}"), "depth": i % 5}),
                status: TaskStatus::Pending,
                project_id: Some(project),
                next_run_at: Some(t0 + Duration::minutes(15)),
                run: sparc_domain::task::RunPolicy::default(),
                at: t0,
            },
        ));
        tasks.push((id, owner, 1));
    }
    let mut n = 0usize;
    while rows.len() < args.events {
        n += 1;
        let at = t0 + Duration::seconds(n as i64);
        let slot = tasks.len();
        let (task_id, owner, seq) = &mut tasks[n % slot];
        if n.is_multiple_of(10) {
            *seq += 1;
            rows.push(row(
                "Task",
                *task_id,
                *seq,
                TaskEvent::TaskUpdated {
                    changes: TaskChanges {
                        params: Some(json!({"run": n})),
                        ..TaskChanges::default()
                    },
                    next_run_at: Some(at + Duration::minutes(15)),
                    at,
                },
            ));
            continue;
        }
        let execution = Uuid::now_v7();
        let (agent, agent_seq) = &mut agents[n % 50];
        let status = if n.is_multiple_of(7) {
            ExecutionStatus::Failed
        } else {
            ExecutionStatus::Success
        };
        *seq += 1;
        rows.push(row(
            "Task",
            *task_id,
            *seq,
            TaskEvent::TaskFired {
                execution_id: execution,
                scheduled_for: at,
                manual: false,
                agent_id: Some(*agent),
                next_run_at: Some(at + Duration::minutes(15)),
                at,
            },
        ));
        rows.push(row(
            "Execution",
            execution,
            1,
            ExecutionEvent::ExecutionStarted {
                execution_id: execution,
                task_id: *task_id,
                user_id: *owner,
                agent_id: Some(*agent),
                skill_name: None,
                timeout_seconds: Default::default(),
                scheduled_for: at,
                at,
            },
        ));
        rows.push(row(
            "Execution",
            execution,
            2,
            ExecutionEvent::ExecutionFinished {
                agent_id: Some(*agent),
                status,
                output: Some("ok".into()),
                error: (status == ExecutionStatus::Failed).then(|| "exit status 1".into()),
                duration_ms: 1200 + (n % 900) as u64,
                at: at + Duration::seconds(2),
            },
        ));
        *seq += 1;
        rows.push(row(
            "Task",
            *task_id,
            *seq,
            TaskEvent::TaskRunFinished {
                execution_id: execution,
                status,
                agent_id: Some(*agent),
                output: Some("ok".into()),
                error: (status == ExecutionStatus::Failed).then(|| "exit status 1".into()),
                next_run_at: Some(at + Duration::minutes(15)),
                skipped_slots: 0,
                at: at + Duration::seconds(2),
            },
        ));
        *agent_seq += 1;
        rows.push(row(
            "Agent",
            *agent,
            *agent_seq,
            AgentEvent::AgentActivityRecorded {
                task_id: *task_id,
                execution_id: execution,
                run_status: status,
                status: AgentStatus::after_activity(status),
                at: at + Duration::seconds(2),
            },
        ));
    }
    rows.truncate(args.events);
    rows
}

/// Writes the rows with multi-row inserts, 1000 a statement, in one transaction per 50,000.
async fn load(pool: &sqlx::PgPool, rows: &[Row]) -> anyhow::Result<()> {
    let metadata = json!({"actor": "bench", "request_id": "bench", "correlation_id": "bench", "causation_id": "bench", "recorded_at": "2026-01-01T00:00:00Z"});
    for big in rows.chunks(50_000) {
        let mut tx = pool.begin().await?;
        for chunk in big.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, '1.1', ${}, $1)",
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                ));
            }
            let mut query = sqlx::query(&sql).bind(&metadata);
            for r in chunk {
                query = query
                    .bind(r.aggregate_type)
                    .bind(&r.aggregate_id)
                    .bind(r.sequence)
                    .bind(&r.event_type)
                    .bind(&r.payload);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    // The live projections are up to date with this log (their tables are replaced by the
    // rebuild), so the rebuild may read all of it.
    sqlx::query(
        "INSERT INTO checkpoints (name, transaction_id, position) \
         SELECT n, (SELECT max(transaction_id::text::bigint) FROM events), (SELECT max(global_position) FROM events) \
         FROM unnest($1::text[]) AS n",
    )
    .bind(READ_MODELS.iter().map(|m| m.name.to_owned()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = sqlx::PgPool::connect(&args.admin_url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        args.database
    ))
    .execute(&admin)
    .await?;
    sqlx::query(&format!("CREATE DATABASE {}", args.database))
        .execute(&admin)
        .await?;
    let url = match args.admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{}", args.database),
        None => anyhow::bail!("--admin-url must end in /<database>"),
    };
    let db = Database::connect(&url).await?;
    db.migrate().await?;
    let Database::Postgres(pool) = &db else {
        anyhow::bail!("the rebuild benchmark runs on Postgres")
    };

    let started = Instant::now();
    let rows = generate(&args);
    load(pool, &rows).await?;
    println!(
        "generated and loaded {} events in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    drop(rows);

    let started = Instant::now();
    let models: Vec<&ReadModel> = READ_MODELS.iter().collect();
    let done = rebuild_all(&db, &models, &|_| {}).await?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "rebuild all read models ({}) in one pass: {} events in {:.2} s = {:.0} events/s (target >= 50000)",
        models.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        done.processed,
        total,
        done.processed as f64 / total
    );
    Ok(())
}
