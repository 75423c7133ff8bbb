//! `sparc projections list` and `sparc projections rebuild`: the operator's view of the read
//! models, and rebuilding them without downtime (the running service keeps serving the live
//! tables until the swap).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use sparc_projections::catalog::{READ_MODELS, ReadModel, read_model};
use sparc_projections::rebuild::{Progress, rebuild_all};
use sparc_store::Database;

/// Prints each projection's position, lag and status as a table.
pub async fn list(db: &Database) -> anyhow::Result<()> {
    let statuses = sparc_projections::status::statuses(db).await?;
    println!(
        "{:<24} {:>10} {:>11} {:>12} {:<10} REBUILT",
        "NAME", "POSITION", "LAG EVENTS", "LAG SECONDS", "STATUS"
    );
    for s in statuses {
        println!(
            "{:<24} {:>10} {:>11} {:>12.1} {:<10} {}",
            s.name,
            s.position,
            s.lag_events,
            s.lag_seconds,
            s.status,
            s.rebuilt_at.as_deref().unwrap_or("-")
        );
    }
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
