//! Reads while other users write (issue 26): user A lists his tasks at a fixed rate while user
//! B creates tasks of his own (none that A can see) at a fixed rate, through one running
//! `sparc serve` or through two on the same database.
//!
//! ```text
//! cargo run --release -p sparc-bench --bin reads -- --api http://127.0.0.1:8080 --tasks 10000
//! ```
//!
//! A (`--reader`, through `--api`) is first made to own `--tasks` tasks: topped up by
//! concurrent creates when he owns fewer (`--seed-only` stops there). Then the phases, each
//! open loop at a fixed rate with latency from each request's scheduled start
//! ([`run_at_rate`]), after a warm-up:
//!
//! 1. **write-only**: B (`--writer`, through `--writer-api`) `POST /api/v1/tasks` at
//!    `--write-rate`: the baseline B's latency is held to;
//! 2. **read-only**: A `GET /api/v1/tasks?limit=20` at `--read-rate`;
//! 3. **mixed**: both at once, a line for each side;
//! 4. **mixed**, A's list filtered by a skill none of his tasks has (`skill_name=nomatch`), by a
//!    status all of them have (`status=pending`), and a deep page (`offset=5000`).
//!
//! With `--writer-api` another instance than `--api`, the reads and the writes go through two
//! processes, which learn of each other's changes through the database. One line per phase and
//! side; with `--json` one JSON object each on stdout (the fields of [`Report`] plus `tasks`,
//! `instances`, `phase`, `side`, `list` and `asked_per_s`) and the human line on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use sparc_bench::rest::{self, Session, create_tasks};
use sparc_bench::{Report, Window, run_at_rate};

#[derive(Debug, Parser)]
#[command(about = "Benchmark one user's task list while another user creates tasks")]
struct Args {
    /// Base URL of the `sparc serve` A reads through.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Base URL of the `sparc serve` B writes through (default: `--api`).
    #[arg(long)]
    writer_api: Option<String>,
    /// A, the reader (registered unless he can log in).
    #[arg(long, default_value = "reads-a")]
    reader: String,
    /// B, the writer.
    #[arg(long, default_value = "reads-b")]
    writer: String,
    /// Tasks A owns during the phases.
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Stop once A owns `--tasks` tasks.
    #[arg(long)]
    seed_only: bool,
    /// A's lists per second.
    #[arg(long, default_value_t = 1_000)]
    read_rate: u32,
    /// B's creates per second.
    #[arg(long, default_value_t = 500)]
    write_rate: u32,
    /// Requests in flight at most, per side (and connections when seeding).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON object per phase and side on stdout (the human line goes to stderr).
    #[arg(long)]
    json: bool,
}

/// What one side does in a phase.
enum Load {
    /// A lists with this query.
    List(Arc<Session>, &'static str),
    /// B creates.
    Create(Arc<Session>),
}

/// A's plain list.
const LIST: &str = "limit=20";
/// A's lists that are filtered or deep.
const OTHER_LISTS: [&str; 3] = [
    "limit=20&skill_name=nomatch",
    "limit=20&status=pending",
    "limit=20&offset=5000",
];

/// One printed measurement.
#[derive(Serialize)]
struct Line<'a> {
    tasks: u64,
    instances: u8,
    phase: &'a str,
    side: &'a str,
    /// A's list query in this phase (none when only B writes).
    list: Option<&'a str>,
    asked_per_s: u32,
    #[serde(flatten)]
    report: &'a Report,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    let writer_api = args.writer_api.clone().unwrap_or_else(|| args.api.clone());
    let instances = if writer_api == args.api { 1 } else { 2 };

    let a = sign_in(&args.api, &args.reader, args.connections).await?;
    let owned = a.task_total().await?;
    anyhow::ensure!(
        owned <= args.tasks,
        "A owns {owned} tasks, more than --tasks"
    );
    if owned < args.tasks {
        let started = Instant::now();
        create_tasks(&a, owned + 1, args.tasks - owned, args.connections).await?;
        let seconds = started.elapsed().as_secs_f64();
        let now = a.task_total().await?;
        anyhow::ensure!(now == args.tasks, "A owns {now} tasks, not {}", args.tasks);
        eprintln!(
            "A: {owned} -> {now} tasks in {seconds:.1} s ({:.0} creates/s)",
            (now - owned) as f64 / seconds
        );
    }
    if args.seed_only {
        return Ok(());
    }
    let b = sign_in(&writer_api, &args.writer, args.connections).await?;

    let args = &args;
    let run = move |phase, loads| measure(args, instances, phase, loads);
    run("write-only", vec![Load::Create(b.clone())]).await?;
    run("read-only", vec![Load::List(a.clone(), LIST)]).await?;
    for list in std::iter::once(LIST).chain(OTHER_LISTS) {
        let loads = vec![Load::List(a.clone(), list), Load::Create(b.clone())];
        run("mixed", loads).await?;
    }
    Ok(())
}

/// Logs `username` in at `api` (registering him first if he cannot), on a client of his own.
async fn sign_in(api: &str, username: &str, connections: usize) -> anyhow::Result<Arc<Session>> {
    let client = rest::client(connections)?;
    let token = match rest::login(&client, api, username, rest::PASSWORD).await {
        Ok(token) => token,
        Err(_) => rest::register_and_login(&client, api, username).await?,
    };
    let api = api.to_owned();
    Ok(Arc::new(Session { client, api, token }))
}

/// Runs the loads of one phase at once, each at its side's rate, and prints a line for each.
async fn measure(args: &Args, instances: u8, phase: &str, loads: Vec<Load>) -> anyhow::Result<()> {
    let window = Window {
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };
    let list = loads.iter().find_map(|load| match load {
        Load::List(_, query) => Some(*query),
        Load::Create(_) => None,
    });
    let runs = loads.into_iter().map(|load| async move {
        let (side, rate) = match load {
            Load::List(..) => ("A list", args.read_rate),
            Load::Create(..) => ("B create", args.write_rate),
        };
        let report = match load {
            Load::List(a, query) => {
                let call = move |_| {
                    let a = a.clone();
                    async move { a.list_tasks(query).await }
                };
                run_at_rate(side, rate, args.connections, window, call).await?
            }
            Load::Create(b) => {
                let call = move |n| {
                    let b = b.clone();
                    async move { b.create_task(n).await }
                };
                run_at_rate(side, rate, args.connections, window, call).await?
            }
        };
        anyhow::Ok((side, rate, report))
    });
    for (side, asked_per_s, report) in futures::future::try_join_all(runs).await? {
        let line = Line {
            tasks: args.tasks,
            instances,
            phase,
            side,
            list,
            asked_per_s,
            report: &report,
        };
        print(&line, args.json)?;
    }
    Ok(())
}

fn print(line: &Line, json: bool) -> anyhow::Result<()> {
    let report = line.report;
    let human = format!(
        "tasks={} instances={} {:<10} {:<8} {:<28} served/s={:.0} of {}  p50={:.2}ms  p99={:.2}ms  errors={}",
        line.tasks,
        line.instances,
        line.phase,
        line.side,
        line.list.unwrap_or("-"),
        report.commands_per_s,
        line.asked_per_s,
        report.p50_ms,
        report.p99_ms,
        report.errors
    );
    if json {
        eprintln!("{human}");
        println!("{}", serde_json::to_string(line)?);
    } else {
        println!("{human}");
    }
    if let Some(error) = &report.first_error {
        eprintln!("  first error: {error}");
    }
    Ok(())
}
