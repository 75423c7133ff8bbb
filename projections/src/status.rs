//! How far each consumer of the log (read models, policies, the hash chainer) has read it:
//! position, lag in events and seconds, parked events, and whether it is live, degraded (it has
//! parked events), stalled (an event has waited for it longer than the stall time) or
//! rebuilding. Shown by `sparc projections list`, the admin endpoint, the health checks and
//! `/metrics`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sparc_store::{Checkpoint, Database, LogReader, checkpoint, on_backend, parked};

use crate::runner::ProjectionError;

/// The default stall time: a consumer is stalled when its oldest unread event is older.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// One projection's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// The global position of the last event it applied.
    pub position: i64,
    /// Committed events it has not applied yet.
    pub lag_events: i64,
    /// Age of the oldest event it has not applied yet.
    pub lag_seconds: f64,
    /// Events it has parked (see `sparc projections parked`).
    pub parked: i64,
    /// `live`, `degraded` (it has parked events), `stalled` (an event has waited for it
    /// longer than the stall time) or `rebuilding`.
    pub status: &'static str,
    /// When it was last rebuilt.
    pub rebuilt_at: Option<String>,
}

impl ProjectionStatus {
    /// Whether it needs an operator: stalled or degraded.
    pub fn unhealthy(&self) -> bool {
        matches!(self.status, "stalled" | "degraded")
    }
}

/// The progress of every consumer of the log (not of rebuild shadows, which show as their
/// read model's `rebuilding` status); `stalled_after` is the stall time.
pub async fn statuses(
    db: &Database,
    stalled_after: Duration,
) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let checkpoints = checkpoint::list(db).await?;
    let parked = parked::counts(db).await?;
    let rebuilds: Vec<(String, String)> = on_backend!(Database db, pool => sqlx::query_as("SELECT name, rebuilt_at FROM projection_rebuilds").fetch_all(pool).await?);
    let reader = LogReader::new(db);
    let now = Utc::now();
    let is_shadow = |name: &str| name.ends_with("_rebuild") || name.ends_with("_check");
    let mut names: Vec<String> = crate::catalog::READ_MODELS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    for (name, _) in &checkpoints {
        if !is_shadow(name) && !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let at = checkpoints
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Checkpoint::ORIGIN, |(_, c)| *c);
        let lag_events = reader.count_after(at).await?;
        let oldest_unread: Option<DateTime<Utc>> = reader
            .read_stored_after(at, 1)
            .await?
            .first()
            .map(|e| e.recorded_at);
        let lag_seconds = seconds_since(now, oldest_unread);
        let rebuilding = checkpoints
            .iter()
            .any(|(n, _)| *n == format!("{name}_rebuild"));
        let parked = parked.get(&name).copied().unwrap_or(0);
        let status = if rebuilding {
            "rebuilding"
        } else if lag_seconds > stalled_after.as_secs_f64() {
            "stalled"
        } else if parked > 0 {
            "degraded"
        } else {
            "live"
        };
        let rebuilt_at = rebuilds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone());
        out.push(ProjectionStatus {
            name,
            position: at.position,
            lag_events,
            lag_seconds,
            parked,
            status,
            rebuilt_at,
        });
    }
    out.extend(relay_status(db, now, stalled_after).await?);
    Ok(out)
}

fn seconds_since(now: DateTime<Utc>, then: Option<DateTime<Utc>>) -> f64 {
    then.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
}

/// The outbox relay's progress, once a relay has run: its position is the last change it had
/// the bus acknowledge, its lag the changes not yet acknowledged (it reads the read models'
/// outbox, not the log, and parks nothing: a change that cannot be published is retried).
async fn relay_status(
    db: &Database,
    now: DateTime<Utc>,
    stalled_after: Duration,
) -> Result<Option<ProjectionStatus>, ProjectionError> {
    const RELAY: &str = "relay";
    let published: Option<i64> = on_backend!(Database db, pool => sqlx::query_scalar("SELECT published_seq FROM outbox_relay WHERE name = $1").bind(RELAY).fetch_optional(pool).await?);
    let Some(published) = published else {
        return Ok(None);
    };
    let (lag_events, oldest): (i64, Option<String>) = on_backend!(Database db, pool => sqlx::query_as(
        "SELECT count(*), min(recorded_at) FROM outbox \
         WHERE published_seq IS NULL OR published_seq > $1",
    )
    .bind(published)
    .fetch_one(pool)
    .await?);
    let oldest = oldest.and_then(|at| DateTime::parse_from_rfc3339(&at).ok());
    let lag_seconds = seconds_since(now, oldest.map(|at| at.with_timezone(&Utc)));
    Ok(Some(ProjectionStatus {
        name: RELAY.to_owned(),
        position: published,
        lag_events,
        lag_seconds,
        parked: 0,
        status: if lag_seconds > stalled_after.as_secs_f64() {
            "stalled"
        } else {
            "live"
        },
        rebuilt_at: None,
    }))
}
