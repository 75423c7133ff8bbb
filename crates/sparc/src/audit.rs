//! `sparc audit export`: the whole log, or a time window of it, in log order as JSON lines.
//!
//! Each line is one event in the shape the REST API returns ([`AuditEvent`]: password hashes
//! redacted). The log is read in batches on the same cursor as `GET /api/v1/audit/events`, so a
//! log of any size streams in constant memory and no event is skipped or written twice. A
//! progress bar (processed/total, events per second, ETA) is drawn on stderr when asked for;
//! the CLI asks when stderr is a terminal, so redirected or piped runs stay clean.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use sparc_store::{AuditEvent, AuditFilter, Database, LogReader};

/// Events read per round trip.
const BATCH: i64 = 1_000;

/// The format of an export. Only JSON lines for now; the flag exists so scripts can name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
}

/// What to export and how to report progress.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Only events recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events recorded before this time.
    pub until: Option<DateTime<Utc>>,
    /// The output format.
    pub format: ExportFormat,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Writes the events in `options`' window to `out` in log order and returns how many it wrote.
/// `out` is written to batch by batch; wrap files and stdout in a `BufWriter`.
///
/// The export ends at the first event not settled yet: on Postgres, events of transactions
/// newer than the oldest one still running wait for it (as for every reader of the log), so
/// the output is always a gap-free prefix of the log.
///
/// # Errors
/// A database error, or an error writing to `out`; what was written before it stays written.
pub async fn export(
    db: &Database,
    options: &ExportOptions,
    mut out: impl Write,
) -> anyhow::Result<u64> {
    let reader = LogReader::new(db);
    let mut filter = AuditFilter {
        from: options.since,
        to: options.until,
        limit: BATCH,
        ..AuditFilter::default()
    };
    let total = u64::try_from(reader.audit_count(&filter).await?).unwrap_or(0);
    let progress = progress_bar(total, options.progress);
    let mut written = 0;
    loop {
        let events = reader.audit_events(&filter).await?;
        let Some(last) = events.last() else { break };
        filter.after = last.checkpoint();
        for event in events {
            match options.format {
                ExportFormat::Jsonl => {
                    serde_json::to_writer(&mut out, &AuditEvent::from(event))?;
                    out.write_all(b"\n")?;
                }
            }
            written += 1;
        }
        // Events committed since the count make the total grow.
        progress.set_length(total.max(written));
        progress.set_position(written);
    }
    out.flush().context("could not write the export")?;
    progress.finish_and_clear();
    Ok(written)
}

/// [`export`] to `output` (a file, created or truncated) or to stdout, then a summary line on
/// stderr.
///
/// # Errors
/// As [`export`], or when `output` cannot be created.
pub async fn export_to(
    db: &Database,
    options: &ExportOptions,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let written = match output {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("could not create {}", path.display()))?;
            export(db, options, BufWriter::new(file)).await?
        }
        None => export(db, options, BufWriter::new(std::io::stdout())).await?,
    };
    eprintln!("exported {written} events");
    Ok(())
}

/// A bar on stderr for `total` events, or a hidden one.
fn progress_bar(total: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("export");
    bar
}

/// Parses an RFC 3339 time given on the command line.
pub fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2025-01-31T00:00:00Z: {e}"))
}
