//! `sparc projections list|parked|retry|rebuild`: the operator's view of the log's consumers,
//! the events they parked and applying those again after a fix, and rebuilding read models
//! without downtime (the running service keeps serving the live tables until the swap).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use sparc_bus::JobStream;
use sparc_projections::catalog::{READ_MODELS, ReadModel, read_model};
use sparc_projections::rebuild::{Progress, rebuild_all};
use sparc_store::{CommandBus, Database};

/// Prints each consumer's position, lag, parked events and status as a table.
pub async fn list(db: &Database, stalled_after: Duration) -> anyhow::Result<()> {
    let statuses = sparc_projections::status::statuses(db, stalled_after).await?;
    println!(
        "{:<24} {:>10} {:>11} {:>12} {:>7} {:<10} REBUILT",
        "NAME", "POSITION", "LAG EVENTS", "LAG SECONDS", "PARKED", "STATUS"
    );
    for s in statuses {
        println!(
            "{:<24} {:>10} {:>11} {:>12.1} {:>7} {:<10} {}",
            s.name,
            s.position,
            s.lag_events,
            s.lag_seconds,
            s.parked,
            s.status,
            s.rebuilt_at.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Parked events listed at most.
const PARKED_LISTED: i64 = 1_000;

/// Prints the parked events of `name` (or of every consumer), one block each.
pub async fn parked(db: &Database, name: Option<&str>) -> anyhow::Result<()> {
    let events = sparc_store::parked::list(db, name, PARKED_LISTED).await?;
    if events.is_empty() {
        println!("no parked events");
    }
    for event in events {
        println!(
            "{} position {} ({} {} #{}, {})\n  error: {}\n  first seen {}, last seen {}, attempts {}",
            event.consumer,
            event.position,
            event.aggregate_type,
            event.aggregate_id,
            event.sequence,
            event.event_type,
            event.error,
            event.first_seen.to_rfc3339(),
            event.last_seen.to_rfc3339(),
            event.attempts
        );
    }
    Ok(())
}

/// Applies the parked events of the consumer `name` again (the stream of `position` only, if
/// given) and prints what happened; `jobs` is the deployment's job stream, for the dispatch.
pub async fn retry(
    db: &Database,
    jobs: Option<JobStream>,
    name: &str,
    position: Option<i64>,
) -> anyhow::Result<()> {
    let commands = Arc::new(CommandBus::new(db));
    // Not the memory sync: it pushes through the running service's connection to its server.
    let memory = Arc::new(sparc_memory::MemoryService::disabled());
    let consumers: Vec<_> = READ_MODELS
        .iter()
        .map(ReadModel::live)
        .chain(crate::server::policies(
            db,
            commands,
            &memory,
            jobs.as_ref(),
        ))
        .collect();
    let Some(consumer) = consumers.iter().find(|c| c.name() == name) else {
        let known: Vec<&str> = consumers.iter().map(|c| c.name()).collect();
        bail!("no consumer named '{name}'; known: {}", known.join(", "))
    };
    let report = sparc_projections::retry::retry(db, consumer.as_ref(), position).await?;
    println!(
        "{name}: {} applied, {} still parked",
        report.applied, report.still_parked
    );
    Ok(())
}

/// Rebuilds `name` (or every read model with `all`), with a progress bar on a terminal.
pub async fn rebuild_named(db: &Database, name: Option<&str>, all: bool) -> anyhow::Result<()> {
    let models: Vec<&ReadModel> = match (name, all) {
        (_, true) => READ_MODELS.iter().collect(),
        (Some(name), false) => match read_model(name) {
            Some(model) => vec![model],
            None => {
                let known: Vec<&str> = READ_MODELS.iter().map(|m| m.name).collect();
                bail!("no read model named '{name}'; known: {}", known.join(", "))
            }
        },
        (None, false) => bail!("name a read model or pass --all"),
    };
    let names: Vec<&str> = models.iter().map(|m| m.name).collect();
    let bar = progress_bar(&names.join(","));
    let report = |p: Progress| {
        bar.set_length(p.total.max(p.processed));
        bar.set_position(p.processed);
        bar.set_message(format!("{:.0} events/s", p.events_per_second()));
    };
    let done = rebuild_all(db, &models, &report).await?;
    bar.finish_and_clear();
    println!(
        "rebuilt {}: {} events in {:.2} s ({:.0} events/s)",
        names.join(", "),
        done.processed,
        done.elapsed.as_secs_f64(),
        done.events_per_second()
    );
    Ok(())
}

fn progress_bar(name: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
