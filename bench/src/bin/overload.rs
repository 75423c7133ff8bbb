//! Overload of one stream: `PUT /api/v1/tasks/{id}` on **one** task at each of `--rates` per
//! second, open loop, with a WebSocket client timing each update to its `task_updated` frame.
//!
//! ```text
//! SPARC_TOKEN=… cargo run --release -p sparc-bench --bin overload -- \
//!     --api http://127.0.0.1:8080 --task <task id> --rates 100,250,500,1000,2000 --seconds 10
//! ```
//!
//! Per rate, request `n` is due at `n / rate` seconds whether or not earlier ones have been
//! answered. At most `--max-in-flight` are outstanding (one keep-alive connection each): a
//! request due while all are busy is not sent and counts as `unsent` (a client at its bound
//! gives up rather than queueing, so the schedule never slips); one sent over 5 ms behind its
//! due time (this client lagging) counts as `late`. Each PUT sets `params = {"seq": n}` (`n`
//! unique over the run); the WebSocket client (`/ws?token=…`, the token's user owns the task)
//! notes when the `task_updated` frame carrying that `seq` arrives. Latencies count from the
//! due time: PUT = its answer, PUT → frame = the frame's arrival.
//!
//! Per rate: offered (requests due), unsent, late, 2xx answers (all, drained after the window
//! too), goodput (2xx answered inside the window ÷ its seconds), refusals under load (503, and 429
//! from the cap on one client's requests in flight), other non-2xx, transport errors, p50/p99
//! of the 2xx PUTs and of PUT → frame (and of the refusals), 2xx without a frame,
//! and frames whose PUT was answered non-2xx (a change committed although its request was
//! refused). The service must run with rate limits off. One human line per rate on stderr;
//! with `--json` one JSON object per rate on stdout.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(
    about = "Open-loop updates of one task at several rates, timed to their WebSocket frames"
)]
struct Args {
    /// REST base URL of `sparc serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Gateway base URL (default: the API's, as ws://).
    #[arg(long)]
    gateway: Option<String>,
    /// Access token of the task's owner.
    #[arg(long, env = "SPARC_TOKEN", hide_env_values = true)]
    token: String,
    /// The task to update.
    #[arg(long)]
    task: String,
    /// Updates per second, one step each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000,2000")]
    rates: Vec<u32>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests outstanding at most (connections); one due while all are busy is not sent.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Seconds between steps (after the previous step's answers and frames are in).
    #[arg(long, default_value_t = 2)]
    pause: u64,
    /// Print one JSON object per step on stdout (the human line goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Latencies in microseconds, up to a minute.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What the WebSocket client saw: when each `seq` first arrived in a `task_updated` frame of
/// the task.
struct Frames {
    task: String,
    arrived: Mutex<HashMap<u64, Instant>>,
    closed: AtomicBool,
}

impl Frames {
    /// Notes a `task_updated` frame of the task; other frames are ignored.
    fn note(&self, text: &str, at: Instant) {
        if !text.starts_with(r#"{"type":"task_updated""#) {
            return;
        }
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let task = &frame["payload"]["task"];
        if task["id"].as_str() != Some(self.task.as_str()) {
            return;
        }
        if let Some(seq) = task["params"]["seq"].as_u64() {
            self.arrived
                .lock()
                .expect("never poisoned")
                .entry(seq)
                .or_insert(at);
        }
    }

    fn get(&self, seq: u64) -> Option<Instant> {
        self.arrived
            .lock()
            .expect("never poisoned")
            .get(&seq)
            .copied()
    }
}

/// Connects to the gateway, waits for the `ack`, then reads frames into `frames` (answering
/// the server's pings) until the socket ends.
async fn watch(url: String, frames: Arc<Frames>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("connecting the WebSocket")?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.contains(r#""type":"ack""#) => {}
        other => anyhow::bail!("no ack from the gateway: {other:?}"),
    }
    Ok(tokio::spawn(async move {
        let ended = loop {
            let message = socket.next().await;
            let at = Instant::now();
            match message {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(r#"{"type":"ping""#)
                        && let Err(error) = socket.send(Message::text(r#"{"type":"pong"}"#)).await
                    {
                        break format!("failed to answer a ping: {error}");
                    }
                    frames.note(&text, at);
                }
                Some(Ok(Message::Close(frame))) => {
                    break format!("closed by the gateway: {frame:?}");
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => break format!("failed: {error}"),
                None => break "ended".to_owned(),
            }
        };
        frames.closed.store(true, Ordering::Relaxed);
        eprintln!("the WebSocket {ended}");
    }))
}

/// The answer to one PUT.
enum Outcome {
    Status(u16),
    Failed(String),
}

/// One sent PUT.
struct Sent {
    seq: u64,
    due: Instant,
    answered: Instant,
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Step {
    rate: u32,
    seconds: u64,
    offered: u64,
    unsent: u64,
    late: u64,
    completed: u64,
    completed_in_window: u64,
    goodput_per_s: f64,
    /// 503s (overloaded) and 429s (the client's requests in flight at their cap).
    shed: u64,
    other_statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    put: Percentiles,
    put_to_frame: Percentiles,
    /// How soon the refusals under load were answered.
    refused: Percentiles,
    without_frame: u64,
    frames_of_refused: u64,
}

impl Step {
    fn line(&self) -> String {
        let other: u64 = self.other_statuses.values().sum();
        format!(
            "| {:>5} | {:>6} | {:>5} | {:>4} | {:>6} | {:>7.0} | {:>7} | {:>5} | {:>8.1} / {:<8.1} | {:>8.1} / {:<8.1} | {:>5} | {:>4} |",
            self.rate,
            self.offered,
            self.unsent,
            self.late,
            self.completed,
            self.goodput_per_s,
            self.shed,
            other + self.transport_errors,
            self.put.p50_ms,
            self.put.p99_ms,
            self.put_to_frame.p50_ms,
            self.put_to_frame.p99_ms,
            self.without_frame,
            self.frames_of_refused,
        )
    }
}

const HEADER: &str = "| rate/s | offered | unsent | late | 2xx | goodput/s | 503/429 | other | PUT p50 / p99 ms | PUT→frame p50 / p99 ms | no frame | refused yet framed |";

/// Calls of a run share this.
struct Target {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Target {
    async fn put(&self, seq: u64) -> Outcome {
        let sent = self
            .client
            .put(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "params": { "seq": seq } }))
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) => Outcome::Status(status),
                    Err(error) => Outcome::Failed(error.to_string()),
                }
            }
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

/// One step: `rate` updates per second for `seconds`, then the answers and frames drained.
async fn step(
    target: &Arc<Target>,
    frames: &Frames,
    next_seq: &AtomicU64,
    rate: u32,
    seconds: u64,
    max_in_flight: usize,
) -> anyhow::Result<Step> {
    anyhow::ensure!(rate > 0, "a rate must be at least 1 per second");
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let (mut offered, mut unsent, mut late) = (0u64, 0u64, 0u64);
    let mut calls = Vec::new();
    loop {
        let due = start + interval.mul_f64(offered as f64);
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        offered += 1;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            unsent += 1;
            continue;
        };
        if Instant::now().duration_since(due) > Duration::from_millis(5) {
            late += 1;
        }
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let target = target.clone();
        calls.push(tokio::spawn(async move {
            let outcome = target.put(seq).await;
            drop(slot);
            Sent {
                seq,
                due,
                answered: Instant::now(),
                outcome,
            }
        }));
    }
    let mut sent = Vec::with_capacity(calls.len());
    for call in calls {
        sent.push(call.await?);
    }
    // The frames of the last answers: up to 5 s after the last answer.
    let wanted: Vec<u64> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Status(200..=299)))
        .map(|s| s.seq)
        .collect();
    let give_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < give_up
        && !frames.closed.load(Ordering::Relaxed)
        && wanted.iter().any(|&seq| frames.get(seq).is_none())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut put, mut put_to_frame, mut refused) = (histogram(), histogram(), histogram());
    let mut step = Step {
        rate,
        seconds,
        offered,
        unsent,
        late,
        completed: 0,
        completed_in_window: 0,
        goodput_per_s: 0.0,
        shed: 0,
        other_statuses: BTreeMap::new(),
        transport_errors: 0,
        first_error: None,
        put: Percentiles::from(&put),
        put_to_frame: Percentiles::from(&put_to_frame),
        refused: Percentiles::from(&refused),
        without_frame: 0,
        frames_of_refused: 0,
    };
    for s in &sent {
        let frame = frames.get(s.seq);
        match s.outcome {
            Outcome::Status(200..=299) => {
                step.completed += 1;
                if s.answered < until {
                    step.completed_in_window += 1;
                }
                put.saturating_record(micros(s.answered.duration_since(s.due)));
                match frame {
                    Some(at) => put_to_frame.saturating_record(micros(at.duration_since(s.due))),
                    None => step.without_frame += 1,
                }
            }
            Outcome::Status(status) => {
                if status == 503 || status == 429 {
                    step.shed += 1;
                    refused.saturating_record(micros(s.answered.duration_since(s.due)));
                } else {
                    *step.other_statuses.entry(status).or_default() += 1;
                }
                if frame.is_some() {
                    step.frames_of_refused += 1;
                }
            }
            Outcome::Failed(ref error) => {
                step.transport_errors += 1;
                step.first_error.get_or_insert_with(|| error.clone());
            }
        }
    }
    step.goodput_per_s = step.completed_in_window as f64 / seconds as f64;
    step.put = Percentiles::from(&put);
    step.put_to_frame = Percentiles::from(&put_to_frame);
    step.refused = Percentiles::from(&refused);
    Ok(step)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    let api = args.api.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        // Below the service's idle keep-alive limit, so that no request goes out on a
        // connection the service is closing.
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;

    let url = format!("{api}/api/v1/tasks/{}", args.task);
    let task: Value = client
        .get(&url)
        .bearer_auth(&args.token)
        .send()
        .await?
        .error_for_status()
        .context("reading the task")?
        .json()
        .await?;
    let task_id = task["id"]
        .as_str()
        .context("the task has an id")?
        .to_owned();

    let gateway = match &args.gateway {
        Some(gateway) => gateway.trim_end_matches('/').to_owned(),
        None => api.replacen("http", "ws", 1),
    };
    let frames = Arc::new(Frames {
        task: task_id,
        arrived: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
    });
    let reader = watch(format!("{gateway}/ws?token={}", args.token), frames.clone()).await?;

    let target = Arc::new(Target {
        client,
        url,
        token: args.token.clone(),
    });
    let next_seq = AtomicU64::new(1);
    eprintln!("{HEADER}");
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, &rate) in args.rates.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(args.pause)).await;
        }
        let step = step(
            &target,
            &frames,
            &next_seq,
            rate,
            args.seconds,
            args.max_in_flight,
        )
        .await?;
        eprintln!("{}", step.line());
        if let Some(error) = &step.first_error {
            eprintln!("  first transport error: {error}");
        }
        if step.shed > 0 {
            eprintln!(
                "  503/429s answered in p50 {:.1} ms, p99 {:.1} ms",
                step.refused.p50_ms, step.refused.p99_ms
            );
        }
        if !step.other_statuses.is_empty() {
            eprintln!("  other statuses: {:?}", step.other_statuses);
        }
        if args.json {
            println!("{}", serde_json::to_string(&step)?);
        }
        anyhow::ensure!(
            !frames.closed.load(Ordering::Relaxed),
            "the WebSocket closed during the step at {rate}/s"
        );
    }
    reader.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tasks_updated_frames_are_noted_by_seq() {
        let frames = Frames {
            task: "t1".into(),
            arrived: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        };
        let now = Instant::now();
        frames.note(
            r#"{"type":"task_updated","event_id":"7","timestamp":"x","payload":{"task":{"id":"t1","params":{"seq":3}}}}"#,
            now,
        );
        frames.note(
            r#"{"type":"task_updated","event_id":"8","timestamp":"x","payload":{"task":{"id":"t2","params":{"seq":4}}}}"#,
            now,
        );
        frames.note(
            r#"{"type":"task_status_update","event_id":"7","timestamp":"x","payload":{"taskId":"t1"}}"#,
            now,
        );
        let later = now + Duration::from_millis(1);
        frames.note(
            r#"{"type":"task_updated","event_id":"9","timestamp":"x","payload":{"task":{"id":"t1","params":{"seq":3}}}}"#,
            later,
        );
        assert_eq!(frames.get(3), Some(now), "the first arrival counts");
        assert_eq!(frames.get(4), None, "another task's frame");
        assert_eq!(frames.arrived.lock().unwrap().len(), 1);
    }
}
