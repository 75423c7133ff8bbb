//! The application layer: workflows of several commands on several aggregates, free of HTTP.
//!
//! Each takes the command bus and its checked input, makes every check before its first
//! command (so a refused request changes nothing), and returns what it wrote as an
//! [`Unsettled`](crate::unsettled::Unsettled) result, which the handler settles before it
//! answers. Their tests are given/when/then on SQLite: given commands already recorded, when the
//! workflow runs, then the aggregates' states and the writes it owes.
//!
//! - [`task_runs`]: a task run now, and a waiting run claimed by an agent.
//! - [`agent_activity`]: an agent's report of a run: started, claimed or finished.
//! - [`agent_registry`]: registering, changing and deregistering agents under unique names.

pub mod agent_activity;
pub mod agent_registry;
pub mod task_runs;

#[cfg(test)]
mod given;

use sparc_domain::DomainError;
use sparc_store::{CommandBus, Routed};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::command_error;

/// The current state of aggregate `id` of `A`, from its events (not a read model, which may lag
/// behind the commands this workflow is about to check).
async fn load<A>(commands: &CommandBus, id: Uuid) -> Result<A, ApiError>
where
    A: Routed,
    A::Error: DomainError,
{
    let (state, _) = commands
        .load::<A>(&id.to_string())
        .await
        .map_err(command_error)?;
    Ok(state)
}
