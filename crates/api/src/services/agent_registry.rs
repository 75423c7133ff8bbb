//! The agent registry's writes, which keep agent names unique: each name is held by a
//! `Reservation` stream, claimed before the agent takes it and released when the agent lets it
//! go (renamed, deregistered) or when the write that needed it fails.

use chrono::{DateTime, Utc};
use sparc_domain::agent::{Agent, AgentChanges, AgentCommand};
use sparc_domain::reservation::{Reservation, ReservationCommand, reservation_id};
use sparc_domain::values::AgentName;
use sparc_store::{CommandBus, EventMetadata, Outcome};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::command_error;
use crate::unsettled::{Unsettled, create, execute};

/// Registers agent `agent_id` under its name (409 if another agent holds it); the `Register`
/// command names the agent.
///
/// # Errors
/// 409 for a name taken or an agent that exists already (which keeps the name it holds).
pub async fn register(
    commands: &CommandBus,
    agent_id: Uuid,
    register: AgentCommand,
    name: &AgentName,
    metadata: &EventMetadata,
) -> Result<Unsettled<Outcome<Agent>>, ApiError> {
    let took_name = claim_name(commands, name, agent_id, metadata).await?;
    match create::<Agent>(commands, agent_id, register, metadata).await {
        Ok(registered) => Ok(registered),
        Err(error) => {
            // An existing agent's id must keep the name it holds.
            if took_name {
                release_name(commands, name, agent_id, metadata).await?;
            }
            Err(error)
        }
    }
}

/// Changes agent `current` (at `expected_version`, when given): a new name is claimed first
/// and the old one released after; a change of case only keeps the reservation it holds.
///
/// # Errors
/// 409 for a name taken or a concurrent change; 412 for a stale `expected_version`.
pub async fn update(
    commands: &CommandBus,
    current: &Agent,
    changes: AgentChanges,
    expected_version: Option<usize>,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Unsettled<Outcome<Agent>>, ApiError> {
    let id = current.id;
    let renamed = changes.name.clone().filter(|new| {
        current
            .name
            .as_ref()
            .is_none_or(|old| name_claim(new) != name_claim(old))
    });
    if let Some(new_name) = &renamed {
        claim_name(commands, new_name, id, metadata).await?;
    }
    let update = AgentCommand::Update { changes, at };
    let updated = match execute::<Agent>(commands, id, update, metadata, expected_version).await {
        Ok(updated) => updated,
        Err(error) => {
            if let Some(new_name) = &renamed {
                release_name(commands, new_name, id, metadata).await?;
            }
            return Err(error);
        }
    };
    if let (Some(_), Some(old)) = (&renamed, &current.name) {
        release_name(commands, old, id, metadata).await?;
    }
    Ok(updated)
}

/// Deregisters agent `current` and frees its name.
///
/// # Errors
/// 409 for a concurrent change; 412 for a stale `expected_version`.
pub async fn deregister(
    commands: &CommandBus,
    current: &Agent,
    expected_version: Option<usize>,
    metadata: &EventMetadata,
    at: DateTime<Utc>,
) -> Result<Unsettled<Outcome<Agent>>, ApiError> {
    let deregister = AgentCommand::Deregister { at };
    let deregistered =
        execute::<Agent>(commands, current.id, deregister, metadata, expected_version).await?;
    if let Some(name) = &current.name {
        release_name(commands, name, current.id, metadata).await?;
    }
    Ok(deregistered)
}

fn name_claim(name: &AgentName) -> String {
    reservation_id("agent", name.as_str())
}

/// Claims an agent name for `owner`: 409 if another agent holds it. Whether this call took it
/// (`false`: `owner` held it already, and a failure after it must not release it).
async fn claim_name(
    commands: &CommandBus,
    name: &AgentName,
    owner: Uuid,
    metadata: &EventMetadata,
) -> Result<bool, ApiError> {
    let claim = ReservationCommand::Claim {
        owner,
        at: Utc::now(),
    };
    commands
        .execute::<Reservation>(&name_claim(name), claim, metadata, None)
        .await
        .map(|claimed| !claimed.events.is_empty())
        .map_err(|error| match command_error(error) {
            ApiError::Conflict(_) => ApiError::Conflict("Agent name already exists".to_owned()),
            other => other,
        })
}

async fn release_name(
    commands: &CommandBus,
    name: &AgentName,
    owner: Uuid,
    metadata: &EventMetadata,
) -> Result<(), ApiError> {
    let release = ReservationCommand::Release {
        owner,
        at: Utc::now(),
    };
    commands
        .execute::<Reservation>(&name_claim(name), release, metadata, None)
        .await
        .map(drop)
        .map_err(command_error)
}

#[cfg(test)]
mod tests {
    use sparc_domain::agent::{AgentStatus, AgentType};

    use super::*;
    use crate::services::given::Given;

    fn named(given: &Given, agent_id: Uuid, name: &str) -> (AgentCommand, AgentName) {
        let name = AgentName::parse(name).expect("name");
        let register = AgentCommand::Register {
            agent_id,
            name: name.clone(),
            agent_type: AgentType::Coder,
            capabilities: Vec::new(),
            status: AgentStatus::Idle,
            registered_by: given.user,
            at: Utc::now(),
        };
        (register, name)
    }

    async fn when_registered(given: &Given, name: &str) -> Result<Uuid, ApiError> {
        let agent_id = Uuid::now_v7();
        let (command, name) = named(given, agent_id, name);
        let registered =
            register(&given.commands, agent_id, command, &name, &given.metadata).await?;
        drop(registered.into_parts());
        Ok(agent_id)
    }

    #[tokio::test]
    async fn a_name_is_held_by_one_agent_until_it_lets_it_go() {
        let given = Given::new().await;
        let first = when_registered(&given, "builder")
            .await
            .expect("registered");

        let taken = when_registered(&given, "Builder").await;
        assert!(matches!(&taken, Err(ApiError::Conflict(m)) if m == "Agent name already exists"));

        let agent = given.state::<Agent>(first).await;
        let gone = deregister(&given.commands, &agent, None, &given.metadata, Utc::now()).await;
        drop(gone.expect("deregistered").into_parts());
        when_registered(&given, "builder")
            .await
            .expect("the name is free again");
    }

    #[tokio::test]
    async fn a_rename_frees_the_old_name_and_a_refused_one_keeps_it() {
        let given = Given::new().await;
        let agent_id = when_registered(&given, "old").await.expect("registered");
        when_registered(&given, "taken").await.expect("registered");
        let rename = |to: &str| AgentChanges {
            name: Some(AgentName::parse(to).expect("name")),
            ..AgentChanges::default()
        };

        let agent = given.state::<Agent>(agent_id).await;
        let refused = update(
            &given.commands,
            &agent,
            rename("taken"),
            None,
            &given.metadata,
            Utc::now(),
        )
        .await;
        assert!(matches!(refused, Err(ApiError::Conflict(_))));
        let renamed = update(
            &given.commands,
            &agent,
            rename("new"),
            None,
            &given.metadata,
            Utc::now(),
        )
        .await;

        let (renamed, writes) = renamed.expect("renamed").into_parts();
        assert_eq!(
            renamed.state.name.map(|n| n.as_str().to_owned()),
            Some("new".to_owned())
        );
        assert_eq!(given.tables(&writes), ["agents"]);
        when_registered(&given, "old")
            .await
            .expect("the old name is free");
        let again = when_registered(&given, "new").await;
        assert!(
            matches!(again, Err(ApiError::Conflict(_))),
            "the new name is held"
        );
    }

    #[tokio::test]
    async fn an_existing_agent_id_keeps_its_name() {
        let given = Given::new().await;
        let agent_id = when_registered(&given, "keeper").await.expect("registered");
        let (command, name) = named(&given, agent_id, "keeper");

        let again = register(&given.commands, agent_id, command, &name, &given.metadata).await;

        assert!(matches!(again, Err(ApiError::Conflict(_))));
        let other = when_registered(&given, "keeper").await;
        assert!(
            matches!(other, Err(ApiError::Conflict(_))),
            "still held by the first"
        );
    }
}
