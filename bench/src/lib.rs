//! Shared harness of the sparc benchmarks: N concurrent writers looping on one async operation
//! for a warm-up and a measured window, each operation's latency in an HDR histogram, and the
//! CPU the client process and the whole machine used meanwhile; the same at a fixed request
//! rate ([`run_at_rate`]); and the create-task workload ([`workload`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

pub mod rest;
pub mod workload;

/// Highest latency the histograms track, in microseconds (a minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The measurement of one benchmark at one writer count.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was measured, e.g. `cqrs create-task`.
    pub benchmark: String,
    /// Concurrent writers.
    pub writers: usize,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Length of the measured window.
    pub seconds: f64,
    /// Operations that succeeded inside the window.
    pub commands: u64,
    /// `commands / seconds`.
    pub commands_per_s: f64,
    /// Latency percentiles of the successful operations, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Operations that failed inside the window.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// CPU this process used per second of the window (2.0 = both cores of a 2-core machine).
    pub client_cpu_cores: Option<f64>,
    /// CPU the whole machine used per second of the window (client, PostgreSQL, the rest).
    pub machine_cpu_cores: Option<f64>,
}

impl Report {
    /// The one-line human form.
    pub fn line(&self) -> String {
        format!(
            "{}  writers={}  commands/s={:.0}  p50={:.2}ms  p99={:.2}ms  errors={}",
            self.benchmark,
            self.writers,
            self.commands_per_s,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }
}

/// How long to run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Unmeasured seconds first.
    pub warmup: Duration,
    /// Measured seconds.
    pub measured: Duration,
}

/// What one writer measured.
struct WriterResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `writers` concurrent tasks, each calling `op(writer, n)` back to back (`n` counts that
/// writer's calls from 1) until the window closes. An operation counts, and its latency is
/// recorded, when it completes inside the measured window.
pub async fn run_writers<F, Fut>(
    benchmark: &str,
    writers: usize,
    pool_size: u32,
    window: Window,
    op: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let measure_from = Instant::now() + window.warmup;
    let measure_until = measure_from + window.measured;

    let mut handles = Vec::with_capacity(writers);
    for writer in 0..writers {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut result = WriterResult {
                histogram: new_histogram(),
                ok: 0,
                errors: 0,
                first_error: None,
            };
            let mut n = 0;
            loop {
                let start = Instant::now();
                if start >= measure_until {
                    return result;
                }
                n += 1;
                let outcome = op(writer, n).await;
                let end = Instant::now();
                if end < measure_from || end >= measure_until {
                    continue;
                }
                result.record(start, end, outcome);
            }
        }));
    }

    let cpu = measure_cpu(measure_from, measure_until).await;
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await?);
    }
    report(benchmark, writers, pool_size, window, cpu, results)
}

/// Runs `op(n)` at a fixed `rate` per second, open loop: call `n` starts at `n / rate` seconds
/// whether or not earlier calls have finished, and its latency counts from that scheduled
/// start (so a stall shows as latency of every call it delayed, not as fewer calls). At most
/// `max_in_flight` calls run at once; a call that finds them all busy waits, and its wait counts
/// as latency. Calls that complete inside the measured window are counted; a call whose turn
/// comes after it is not made (it could not count), so a service that fell far behind is not
/// left working off the backlog after the measurement.
pub async fn run_at_rate<F, Fut>(
    benchmark: &str,
    rate: u32,
    max_in_flight: usize,
    window: Window,
    op: F,
) -> anyhow::Result<Report>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    anyhow::ensure!(rate > 0, "the rate must be at least 1 per second");
    let op = Arc::new(op);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let measure_until = measure_from + window.measured;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));

    let scheduler = tokio::spawn(async move {
        let mut calls = Vec::new();
        let mut n = 0u64;
        loop {
            let scheduled = start + interval.mul_f64(n as f64);
            if scheduled >= measure_until {
                return calls;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            n += 1;
            let (op, slots) = (op.clone(), slots.clone());
            calls.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                if Instant::now() >= measure_until {
                    return (
                        scheduled,
                        Instant::now(),
                        Err("after the window".to_owned()),
                    );
                }
                let outcome = op(n).await;
                (scheduled, Instant::now(), outcome)
            }));
        }
    });
    let cpu = measure_cpu(measure_from, measure_until).await;

    let mut result = WriterResult {
        histogram: new_histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    for call in scheduler.await? {
        let (scheduled, end, outcome) = call.await?;
        if end < measure_from || end >= measure_until {
            continue;
        }
        result.record(scheduled, end, outcome);
    }
    report(benchmark, max_in_flight, 0, window, cpu, vec![result])
}

impl WriterResult {
    fn record(&mut self, start: Instant, end: Instant, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                self.histogram.saturating_record(us.max(1));
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

/// Process and machine CPU seconds at `from` and at `until` (sleeping until each).
async fn measure_cpu(from: Instant, until: Instant) -> CpuWindow {
    tokio::time::sleep_until(from.into()).await;
    let start = (process_cpu_seconds(), machine_cpu_seconds());
    tokio::time::sleep_until(until.into()).await;
    let end = (process_cpu_seconds(), machine_cpu_seconds());
    CpuWindow { start, end }
}

/// CPU seconds (this process, the machine) at both ends of the measured window.
struct CpuWindow {
    start: (Option<f64>, Option<f64>),
    end: (Option<f64>, Option<f64>),
}

fn report(
    benchmark: &str,
    writers: usize,
    pool_size: u32,
    window: Window,
    cpu: CpuWindow,
    results: Vec<WriterResult>,
) -> anyhow::Result<Report> {
    let mut histogram = new_histogram();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for result in results {
        histogram.add(&result.histogram)?;
        ok += result.ok;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let (cpu_start, cpu_end) = (cpu.start, cpu.end);

    let seconds = window.measured.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let rate = |start: Option<f64>, end: Option<f64>| {
        start.zip(end).map(|(start, end)| (end - start) / seconds)
    };
    Ok(Report {
        benchmark: benchmark.to_string(),
        writers,
        pool_size,
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
        client_cpu_cores: rate(cpu_start.0, cpu_end.0),
        machine_cpu_cores: rate(cpu_start.1, cpu_end.1),
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// USER_HZ, the unit of `/proc` CPU times: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// User + system CPU seconds of this process so far (Linux; `None` elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3; utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// Busy (non-idle, non-iowait) CPU seconds of the whole machine so far (Linux).
fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = ticks.iter().take(8).sum::<f64>()
        - ticks.get(3).copied().unwrap_or(0.0)
        - ticks.get(4).copied().unwrap_or(0.0);
    Some(busy / CLOCK_TICKS)
}
