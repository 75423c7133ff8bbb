//! How far each projection has read the log: position, lag in events and seconds, and whether
//! it is live, rebuilding or stalled. Shown by `sparc projections list`, the admin endpoint and
//! the detailed health check.

use chrono::{DateTime, Utc};
use sparc_store::{Checkpoint, Database, LogReader, checkpoint};

use crate::on_db;
use crate::runner::ProjectionError;

/// A projection is stalled when its oldest unread event is older than this.
const STALLED_AFTER_SECONDS: f64 = 30.0;

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
    /// `live`, `rebuilding` or `stalled`.
    pub status: &'static str,
    /// When it was last rebuilt.
    pub rebuilt_at: Option<String>,
}

/// The progress of every projection and policy (not of rebuild shadows, which show as their
/// read model's `rebuilding` status).
pub async fn statuses(db: &Database) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let checkpoints = checkpoint::list(db).await?;
    let rebuilds: Vec<(String, String)> = on_db!(db, pool => sqlx::query_as("SELECT name, rebuilt_at FROM projection_rebuilds").fetch_all(pool).await?);
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
            .read_after(at, 1)
            .await?
            .first()
            .map(|e| e.recorded_at);
        let lag_seconds =
            oldest_unread.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
        let rebuilding = checkpoints
            .iter()
            .any(|(n, _)| *n == format!("{name}_rebuild"));
        let status = if rebuilding {
            "rebuilding"
        } else if lag_seconds > STALLED_AFTER_SECONDS {
            "stalled"
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
            status,
            rebuilt_at,
        });
    }
    Ok(out)
}
