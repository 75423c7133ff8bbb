//! Memory benchmark of a running `sparc serve`, through `/api/v1/memory`:
//!
//! ```text
//! cargo run --release -p sparc-bench --bin memory -- store-search --entries 10000
//! cargo run --release -p sparc-bench --bin memory -- store --entries 1000
//! cargo run --release -p sparc-bench --bin memory -- wait-sync
//! ```
//!
//! - `store-search`: a fresh user stores `--entries` entries over `--connections` clients
//!   (rate, p50/p99, and where they were stored: `memory_mcp` or `fallback`), then searches for
//!   `--seconds` at saturation over the same clients (rate, p50/p99, and the `source`).
//! - `store`: only the stores (to leave entries pending while the server is down).
//! - `wait-sync`: polls `/memory/health` every 20 ms and prints how long `pending_sync` took to
//!   reach 0 (started right after the server was let up; `bench/memory.sh` drives the three).
//!
//! The service must allow the load (high `SPARC_RATE_LIMIT_PER_MINUTE`, as the script sets).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sparc_bench::rest::{post, register_and_login};
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the memory endpoints of a running sparc")]
struct Args {
    /// Base URL of `sparc serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16, global = true)]
    connections: usize,
    /// Entries to store.
    #[arg(long, default_value_t = 10_000, global = true)]
    entries: u64,
    /// Measured seconds of searching.
    #[arg(long, default_value_t = 10, global = true)]
    seconds: u64,
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Debug, Subcommand)]
enum Phase {
    /// Store, then search.
    StoreSearch,
    /// Store only.
    Store,
    /// Wait until nothing awaits the Memory MCP server.
    WaitSync,
}

/// Words the entries are made of, so searches find some of them.
const WORDS: [&str; 16] = [
    "axum",
    "tokio",
    "extractor",
    "router",
    "breaker",
    "circuit",
    "postgres",
    "sqlite",
    "search",
    "ranking",
    "agent",
    "memory",
    "schedule",
    "cron",
    "project",
    "task",
];

fn content(n: u64) -> String {
    (0..8)
        .map(|i| WORDS[((n * 7 + i * 3) % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" entry {n}")
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn summary(name: &str, measured: &Measured) {
    let ms = |q: f64| measured.latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name}  n={}  per_s={:.0}  p50={:.2}ms  p99={:.2}ms  max={:.2}ms  {:?}",
        measured.calls,
        measured.calls as f64 / measured.elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        measured.latencies.max() as f64 / 1000.0,
        measured.tally,
    );
}

/// What a phase measured: calls, time, latencies, and the answers' values of the tallied key.
struct Measured {
    calls: u64,
    elapsed: Duration,
    latencies: Histogram<u64>,
    tally: BTreeMap<String, u64>,
}

/// `connections` clients share `total` calls of `op(n)`, starting none after `until`; each
/// call's latency and the value of `key` in its answer are recorded.
async fn run_count<F, Fut>(
    connections: usize,
    total: u64,
    until: Option<Instant>,
    key: &'static str,
    op: F,
) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Value>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(new_histogram()));
    let tally = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (op, next, latencies, tally) =
            (op.clone(), next.clone(), latencies.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            loop {
                if until.is_some_and(|until| Instant::now() >= until) {
                    return anyhow::Ok(());
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                let start = Instant::now();
                let answer = op(n).await?;
                latencies
                    .lock()
                    .await
                    .record(start.elapsed().as_micros() as u64)?;
                let value = answer[key].as_str().unwrap_or("?").to_owned();
                *tally.lock().await.entry(value).or_insert(0) += 1;
            }
        }));
    }
    for client in clients {
        client.await??;
    }
    let elapsed = started.elapsed();
    let latencies = latencies.lock().await.clone();
    let tally = tally.lock().await.clone();
    Ok(Measured {
        calls: latencies.len(),
        elapsed,
        latencies,
        tally,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let api = args.api.trim_end_matches('/').to_owned();
    if let Phase::WaitSync = args.phase {
        return wait_sync(&client, &api).await;
    }
    let user = format!("memory{}", uuid::Uuid::new_v4().simple());
    let token = register_and_login(&client, &api, &user).await?;

    let (store_client, store_api, store_token) = (client.clone(), api.clone(), token.clone());
    let stored = run_count(args.connections, args.entries, None, "storage", move |n| {
        let (client, api, token) = (store_client.clone(), store_api.clone(), store_token.clone());
        async move {
            let body = json!({"content": content(n), "intent": "research"});
            post(
                &client,
                format!("{api}/api/v1/memory/store"),
                Some(&token),
                body,
            )
            .await
        }
    })
    .await
    .context("storing")?;
    summary("store", &stored);
    if let Phase::Store = args.phase {
        return Ok(());
    }
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let searched = run_count(
        args.connections,
        u64::MAX,
        Some(until),
        "source",
        move |n| {
            let (client, api, token) = (client.clone(), api.clone(), token.clone());
            async move {
                let query = format!(
                    "{} {}",
                    WORDS[(n % 16) as usize],
                    WORDS[((n / 16) % 16) as usize]
                );
                let body = json!({"query": query, "limit": 10});
                post(
                    &client,
                    format!("{api}/api/v1/memory/search"),
                    Some(&token),
                    body,
                )
                .await
            }
        },
    )
    .await
    .context("searching")?;
    summary("search", &searched);
    Ok(())
}

async fn wait_sync(client: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let token = register_and_login(
        client,
        api,
        &format!("sync{}", uuid::Uuid::new_v4().simple()),
    )
    .await?;
    let started = Instant::now();
    loop {
        let health: Value = client
            .get(format!("{api}/api/v1/memory/health"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if health["pending_sync"] == 0 && health["circuit_breaker_state"] == "CLOSED" {
            println!(
                "sync  pending_sync=0 after {:.2}s  {}",
                started.elapsed().as_secs_f64(),
                health["stats"]
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("still pending after 10 minutes: {health}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
