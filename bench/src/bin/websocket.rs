//! WebSocket load against running gateways: opens many authenticated connections (spread over
//! several source addresses so ports do not run out), then measures
//!
//! 1. connect time, and gateway memory per idle connection (from `/proc/<pid>/status` of the
//!    gateway processes given with `--gateway-pids`);
//! 2. commit → client latency: tasks are created over REST at `--rate` per second and every
//!    connection of their owner records `receive time − frame.timestamp` (the event's commit
//!    time; one clock on one machine);
//! 3. fan-out: an agent change, which every connection receives, `--broadcasts` times.
//!
//! The service must run with rate limits off (`SPARC_RATE_LIMIT_PER_MINUTE=0`,
//! `SPARC_AUTH_RATE_LIMIT_PER_MINUTE=0`) and an admin must exist (`sparc user create --role
//! admin`). One process holds at most ~19,000 connections here (20,000 open files): run several
//! for more, each with its own `--run` name.
//!
//! ```sh
//! SPARC_PASSWORD=… cargo run --release -p sparc-bench --bin websocket -- \
//!     --api http://127.0.0.1:8080 --gateways ws://127.0.0.1:8080 --gateway-pids $(pidof sparc) \
//!     --connections 10000 --users 1000 --rate 1000 --seconds 10
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use sparc_bench::rest::{login, post, register_and_login};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Parser)]
#[command(
    about = "Load the WebSocket gateways: connections, memory, commit-to-client latency, fan-out"
)]
struct Args {
    /// REST base URL of `sparc serve` (registrations, logins and writes).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Gateway base URLs; connections are spread over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    gateways: Vec<String>,
    /// PIDs of the gateway processes, to report their memory per connection.
    #[arg(long, value_delimiter = ',')]
    gateway_pids: Vec<u32>,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users the connections belong to (each change goes to its owner's connections).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, … to connect from.
    #[arg(long, default_value_t = 4)]
    source_addresses: u8,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000)]
    ramp: u64,
    /// Tasks created per second in the latency phase; 0 holds the connections through it
    /// without writing (so that another process's memory reading sees only idle ones).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the latency phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Agent changes sent to every connection in the fan-out phase.
    #[arg(long, default_value_t = 5)]
    broadcasts: u32,
    /// An admin's username (agent changes need one).
    #[arg(long, default_value = "admin")]
    admin: String,
    /// The admin's password.
    #[arg(long, env = "SPARC_PASSWORD")]
    admin_password: String,
    /// A name for this run's users, unique per process.
    #[arg(long, default_value_t = std::process::id().to_string())]
    run: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Latencies in microseconds, up to a minute.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The `type` and `timestamp` of a change frame, read from its head: the gateway writes `type`,
/// `event_id` and `timestamp` before `payload`, so the (large) payload is never parsed. On one
/// machine with the gateways, what the load client spends per frame is taken from them.
fn frame_head(text: &str) -> Option<(&str, &str)> {
    let (kind, rest) = text.strip_prefix(r#"{"type":""#)?.split_once('"')?;
    let at = rest.find(r#""timestamp":""#)? + r#""timestamp":""#.len();
    let (timestamp, _) = rest[at..].split_once('"')?;
    Some((kind, timestamp))
}

/// What the connections record, shared.
struct Recorder {
    tasks: Mutex<Histogram<u64>>,
    agents: Mutex<Histogram<u64>>,
    agent_frames: AtomicU64,
}

impl Recorder {
    fn record(&self, text: &str) {
        let Some((kind, timestamp)) = frame_head(text) else {
            return;
        };
        let target = match kind {
            "task_updated" => &self.tasks,
            "agent_updated" => {
                self.agent_frames.fetch_add(1, Ordering::Relaxed);
                &self.agents
            }
            _ => return,
        };
        let Ok(sent) = DateTime::parse_from_rfc3339(timestamp) else {
            return;
        };
        let latency = Utc::now().signed_duration_since(sent.with_timezone(&Utc));
        let micros = latency.num_microseconds().unwrap_or(i64::MAX).max(1) as u64;
        let _ = target
            .lock()
            .expect("never poisoned")
            .record(micros.min(60_000_000));
    }
}

#[derive(Debug, Serialize)]
struct Percentiles {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    connections: usize,
    connect_errors: u64,
    connect: Percentiles,
    gateway_kib_per_connection: Option<f64>,
    commands: u64,
    commands_per_s: f64,
    commit_to_client: Percentiles,
    fan_out: Percentiles,
    fan_out_frames_expected: u64,
    fan_out_frames_received: u64,
}

/// Resident memory of `pids` together, in KiB.
fn resident_kib(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .sum()
}

/// Opens one connection from `source` and reads frames into `recorder` until the socket ends.
async fn connection(
    url: String,
    target: SocketAddr,
    source: Ipv4Addr,
    recorder: Arc<Recorder>,
    connected: tokio::sync::oneshot::Sender<Result<Duration, String>>,
) {
    let started = Instant::now();
    let opened = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .map_err(|e| e.to_string())?;
        let stream = socket.connect(target).await.map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut socket, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                .await
                .map_err(|e| e.to_string())?;
        match socket.next().await {
            Some(Ok(Message::Text(_))) => Ok(socket),
            other => Err(format!("no ack: {other:?}")),
        }
    };
    let mut socket = match opened.await {
        Ok(socket) => {
            let _ = connected.send(Ok(started.elapsed()));
            socket
        }
        Err(error) => {
            let _ = connected.send(Err(error));
            return;
        }
    };
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            recorder.record(&text);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let admin = login(&client, &args.api, &args.admin, &args.admin_password).await?;

    let mut tokens = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let username = format!("ws-{}-{i}", args.run);
        tokens.push(register_and_login(&client, &args.api, &username).await?);
    }

    let baseline = resident_kib(&args.gateway_pids);
    let recorder = Arc::new(Recorder {
        tasks: Mutex::new(histogram()),
        agents: Mutex::new(histogram()),
        agent_frames: AtomicU64::new(0),
    });
    let mut connect_times = histogram();
    let mut connect_errors = 0u64;
    let mut pending = Vec::with_capacity(args.connections);
    let pause = Duration::from_secs_f64(1.0 / args.ramp.max(1) as f64);
    for i in 0..args.connections {
        let gateway = &args.gateways[i % args.gateways.len()];
        let authority = gateway
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default();
        let target: SocketAddr = authority.parse().context("gateways must be ws://ip:port")?;
        let url = format!("{gateway}/ws?token={}", tokens[i % tokens.len()]);
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % args.source_addresses.max(1) as usize) as u8,
        );
        let (connected, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(connection(url, target, source, recorder.clone(), connected));
        pending.push(outcome);
        tokio::time::sleep(pause).await;
    }
    for outcome in pending {
        match outcome.await {
            Ok(Ok(took)) => {
                let _ = connect_times.record(took.as_micros().max(1) as u64);
            }
            Ok(Err(error)) => {
                connect_errors += 1;
                if connect_errors <= 3 {
                    eprintln!("connect failed: {error}");
                }
            }
            Err(_) => connect_errors += 1,
        }
    }
    let open = args.connections as u64 - connect_errors;
    // Two heartbeat ticks of idling before memory is read.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let per_connection = match (baseline, resident_kib(&args.gateway_pids)) {
        (Some(before), Some(after)) if open > 0 => {
            Some(after.saturating_sub(before) as f64 / open as f64)
        }
        _ => None,
    };

    // Commit → client latency at a steady command rate.
    let in_flight = Arc::new(Semaphore::new(64));
    let commands = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut timer = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    if args.rate == 0 {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    }
    while args.rate > 0 && started.elapsed() < Duration::from_secs(args.seconds) {
        timer.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (client, api, token, commands) = (
            client.clone(),
            args.api.clone(),
            tokens[n % tokens.len()].clone(),
            commands.clone(),
        );
        n += 1;
        tokio::spawn(async move {
            let created = post(
                &client,
                format!("{api}/api/v1/tasks"),
                Some(&token),
                json!({"skill_name": "load", "schedule_cron": "0 0 1 1 *"}),
            )
            .await;
            if created.is_ok() {
                commands.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(64).await?;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Fan-out: each agent change goes to every connection.
    let agent = post(
        &client,
        format!("{}/api/v1/agents", args.api),
        Some(&admin),
        json!({"name": format!("ws-load-{}-{}", args.run, SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis()), "type": "tester"}),
    )
    .await?;
    let agent_id = agent["id"].as_str().context("an agent id")?.to_owned();
    for i in 0..args.broadcasts {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = if i % 2 == 0 { "active" } else { "idle" };
        client
            .put(format!("{}/api/v1/agents/{agent_id}", args.api))
            .bearer_auth(&admin)
            .json(&json!({"status": status}))
            .send()
            .await?
            .error_for_status()?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let report = Report {
        connections: args.connections,
        connect_errors,
        connect: Percentiles::from(&connect_times),
        gateway_kib_per_connection: per_connection,
        commands: commands.load(Ordering::Relaxed),
        commands_per_s: commands.load(Ordering::Relaxed) as f64 / elapsed,
        commit_to_client: Percentiles::from(&*recorder.tasks.lock().expect("never poisoned")),
        fan_out: Percentiles::from(&*recorder.agents.lock().expect("never poisoned")),
        fan_out_frames_expected: open * (u64::from(args.broadcasts) + 1),
        fan_out_frames_received: recorder.agent_frames.load(Ordering::Relaxed),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::frame_head;

    #[test]
    fn the_head_of_a_change_frame_is_read_without_its_payload() {
        let frame = r#"{"type":"agent_updated","event_id":"42","timestamp":"2026-03-02T09:00:00.000000Z","payload":{"agent":{"timestamp":"x"}}}"#;
        assert_eq!(
            frame_head(frame),
            Some(("agent_updated", "2026-03-02T09:00:00.000000Z"))
        );
        assert_eq!(frame_head(r#"{"type":"ping"}"#), None, "no timestamp");
        assert_eq!(frame_head("not json"), None);
    }
}
