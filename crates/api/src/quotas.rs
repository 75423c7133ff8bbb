//! Per-user quotas on what a user creates: live (not deleted) tasks and projects, and agents
//! still registered that the user registered (`SPARC_MAX_TASKS_PER_USER`,
//! `SPARC_MAX_PROJECTS_PER_USER`, `SPARC_MAX_AGENTS_PER_USER`; `0`: no cap). A create at the
//! cap is refused with 409 `{"detail"}`.
//!
//! The count is taken from the read model at create time, through a partial index that holds
//! exactly the rows counted, and stops at the cap, so it costs at most the cap's index entries
//! however many rows the user has. A read model may lag its log by milliseconds: creates
//! through this instance that answered before their read model had them are waited for when
//! they could make the difference (so creates one after another meet the cap exactly), but
//! concurrent creates by one user, or creates through another instance moments before, may
//! pass it by the few not yet applied. That is the trade: a create never waits for the read
//! models while the user is clear of the cap, and the cap holds within a handful.

use sparc_domain::agent::Agent;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use sparc_projections::Indexed;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::App;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Live tasks the user owns.
    Tasks,
    /// Live projects the user owns.
    Projects,
    /// Registered agents the user registered.
    Agents,
}

impl Quota {
    /// The cap configured for it (`0`: none).
    fn cap(self, app: &App) -> usize {
        match self {
            Quota::Tasks => app.settings.max_tasks_per_user,
            Quota::Projects => app.settings.max_projects_per_user,
            Quota::Agents => app.settings.max_agents_per_user,
        }
    }

    /// The read model it counts.
    fn table(self) -> &'static str {
        match self {
            Quota::Tasks => <Task as Indexed>::TABLE,
            Quota::Projects => <Project as Indexed>::TABLE,
            Quota::Agents => <Agent as Indexed>::TABLE,
        }
    }

    /// The refusal at `cap`.
    fn refusal(self, cap: usize) -> ApiError {
        ApiError::Conflict(match self {
            Quota::Tasks => format!(
                "Task quota reached: a user may have at most {cap} tasks that are not deleted; \
                 delete one to create another"
            ),
            Quota::Projects => format!(
                "Project quota reached: a user may have at most {cap} projects that are not \
                 deleted; delete one to create another"
            ),
            Quota::Agents => format!(
                "Agent quota reached: a user may have registered at most {cap} agents that are \
                 still registered; deregister one to register another"
            ),
        })
    }

    /// How many `user` has, counted no further than `up_to`.
    async fn count(self, app: &App, user: Uuid, up_to: i64) -> Result<i64, ApiError> {
        let counted = match self {
            Quota::Tasks => app.reads.live_tasks_of(user, up_to).await,
            Quota::Projects => app.reads.live_projects_of(user, up_to).await,
            Quota::Agents => app.reads.registered_agents_of(user, up_to).await,
        };
        counted.map_err(ApiError::internal)
    }
}

/// Refuses with 409 when `user` has reached their `quota` already; see the module
/// documentation for how exact that is.
pub async fn ensure_below(app: &App, quota: Quota, user: Uuid) -> Result<(), ApiError> {
    let cap = quota.cap(app);
    if cap == 0 {
        return Ok(());
    }
    let up_to = i64::try_from(cap).unwrap_or(i64::MAX);
    let counted = quota.count(app, user, up_to).await?;
    // This user's creates this instance answered that the read model may not show yet: would
    // they reach the cap? Only then is it worth waiting for them and counting again; a user
    // clear of the cap never waits.
    let unseen = app
        .answered_creates
        .pending(Some(user))
        .writes
        .iter()
        .filter(|written| written.table == quota.table())
        .count();
    let counted = if counted.saturating_add(unseen as i64) >= up_to && unseen > 0 {
        app.answered_creates_visible(Some(user)).await?;
        quota.count(app, user, up_to).await?
    } else {
        counted
    };
    if counted >= up_to {
        return Err(quota.refusal(cap));
    }
    Ok(())
}
