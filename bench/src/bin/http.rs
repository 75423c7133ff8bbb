//! HTTP benchmark of a running `sparc serve`: creating tasks, and listing the tasks of a user
//! who has many, over HTTP/1.1 keep-alive connections.
//!
//! ```text
//! cargo run --release -p sparc-bench --bin http -- --api http://127.0.0.1:8080 --connections 64
//! ```
//!
//! 1. **create at a fixed rate** (with `--create-rate`): `POST /api/v1/tasks` (a fresh user; a
//!    yearly cron in Europe/Paris, a params object) at that many requests/s over at most
//!    `--connections` connections, open loop (latency from each request's scheduled start):
//!    p50/p99 of the 201s at a load the service is asked to carry.
//! 2. **create at saturation**: `--connections` clients, each on its own connection, loop on
//!    the same request: the most requests/s, and p50/p99 of the 201s. With every client always
//!    waiting, the mean latency is `connections / (requests/s)` (Little's law): at 64
//!    connections it is above 20 ms for any rate below 3,200/s, so this phase shows throughput
//!    and the fixed-rate one latency.
//! 3. **seed**: a second user gets `--tasks` tasks through the same endpoint.
//! 4. **list at a fixed rate**: `GET /api/v1/tasks?limit=20` as that user at `--rate` requests/s,
//!    open loop.
//! 5. **list at saturation**: the same request, `--connections` clients back to back.
//!
//! The service must allow the load: start it with high rate limits
//! (`SPARC_RATE_LIMIT_PER_MINUTE`, `SPARC_AUTH_RATE_LIMIT_PER_MINUTE`), as `bench/commands.sh`
//! does. One line per phase; with `--json` one JSON object per phase on stdout and the human
//! line on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sparc_bench::rest::{Session, client, create_tasks, register_and_login};
use sparc_bench::{Report, Window, run_at_rate, run_writers};

#[derive(Debug, Parser)]
#[command(about = "Benchmark task creation and the task list over HTTP against a running sparc")]
struct Args {
    /// Base URL of `sparc serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Concurrent connections for the create and saturation phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Tasks the list user owns.
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Requests per second of a fixed-rate create phase before the saturation one (none if 0).
    #[arg(long, default_value_t = 0)]
    create_rate: u32,
    /// Requests per second of the fixed-rate list phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON object per phase on stdout (the human line goes to stderr).
    #[arg(long)]
    json: bool,
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        eprintln!("{}", report.line());
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", report.line());
    }
    if let Some(error) = &report.first_error {
        eprintln!("  first error: {error}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    let http = client(args.connections)?;
    let run = chrono::Utc::now().format("%H%M%S%3f");

    let creator = Arc::new(Session {
        token: register_and_login(&http, &args.api, &format!("http-create-{run}")).await?,
        client: http.clone(),
        api: args.api.clone(),
    });

    // 1. create at a fixed rate
    if args.create_rate > 0 {
        let name = format!("http create-task rate={}", args.create_rate);
        let create = |target: Arc<Session>, n| async move { target.create_task(n).await };
        phase(&name, &args, Some(args.create_rate), &creator, create).await?;
    }

    // 2. create at saturation
    let create = |target: Arc<Session>, n| async move { target.create_task(n).await };
    phase("http create-task saturation", &args, None, &creator, create).await?;

    // 3. seed
    let lister = Arc::new(Session {
        token: register_and_login(&http, &args.api, &format!("http-list-{run}")).await?,
        client: http.clone(),
        api: args.api.clone(),
    });
    let started = Instant::now();
    create_tasks(&lister, 1, args.tasks, args.connections).await?;
    let total = lister.task_total().await?;
    anyhow::ensure!(
        total == args.tasks,
        "the list user should own {} tasks: {total}",
        args.tasks
    );
    eprintln!(
        "seeded {} tasks in {:.1} s",
        args.tasks,
        started.elapsed().as_secs_f64()
    );

    // 4. list at a fixed rate
    let name = format!("http list-tasks rate={}", args.rate);
    let list = |target: Arc<Session>, _| async move { target.list_tasks("limit=20").await };
    phase(&name, &args, Some(args.rate), &lister, list).await?;

    // 5. list at saturation
    phase("http list-tasks saturation", &args, None, &lister, list).await
}

/// Runs one phase and prints its report: `call` on `target` at `rate` requests/s (open loop,
/// at most `--connections` in flight) or, without a rate, by `--connections` clients back to
/// back.
async fn phase<F, Fut>(
    name: &str,
    args: &Args,
    rate: Option<u32>,
    target: &Arc<Session>,
    call: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Session>, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let window = Window {
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };
    let target = target.clone();
    let report = match rate {
        Some(rate) => {
            let op = move |n| call(target.clone(), n);
            run_at_rate(name, rate, args.connections, window, op).await?
        }
        None => {
            let clients = u32::try_from(args.connections).context("too many connections")?;
            let op = move |_, n| call(target.clone(), n);
            run_writers(name, args.connections, clients, window, op).await?
        }
    };
    print(&report, args.json)
}
