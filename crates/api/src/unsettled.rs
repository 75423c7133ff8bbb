//! What a write owes the read models before its request may answer.
//!
//! A command run through the API yields an [`Unsettled`] value: the command's result together
//! with the read-model rows it wrote. The result is reached only by settling it: waiting until
//! the read models show those rows ([`Unsettled::settled`]) or, for a create, noting it so that
//! the next reads through this instance wait instead ([`Unsettled::answered`]). So a handler
//! cannot answer before its client could read its own write. A workflow of several commands
//! gathers their writes in [`Writes`] and hands them on as one [`Unsettled`].

use sparc_domain::DomainError;
use sparc_projections::Indexed;
use sparc_store::{CommandBus, EventMetadata, Outcome, Routed};
use uuid::Uuid;

use crate::answered_creates::Written;
use crate::error::ApiError;
use crate::state::{App, command_error};

/// A result whose writes the read models may not show yet.
#[must_use = "a write must be settled before its request answers: `.settled(&app)`, or `.answered(&app)` for a create"]
#[derive(Debug)]
pub struct Unsettled<T> {
    value: T,
    writes: Vec<Written>,
}

impl<A: Indexed> Unsettled<Outcome<A>> {
    /// The outcome of a command on `id` of `A`: it wrote that row at the outcome's version.
    pub fn of_outcome(id: Uuid, outcome: Outcome<A>) -> Self {
        let written = Written {
            table: A::TABLE,
            id,
            version: outcome.version,
            audience: outcome.state.audience(),
        };
        Self {
            value: outcome,
            writes: vec![written],
        }
    }
}

impl<T> Unsettled<T> {
    /// The same writes, owed for `f`'s result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Unsettled<U> {
        Unsettled {
            value: f(self.value),
            writes: self.writes,
        }
    }

    /// Waits until the read models show every write (see [`App::settle_writes`]), then gives
    /// the result.
    ///
    /// # Errors
    /// A failure to read a read model.
    pub async fn settled(self, app: &App) -> Result<T, ApiError> {
        app.settle_writes(&self.writes).await?;
        Ok(self.value)
    }

    /// [`Unsettled::settled`], saying whether the read models showed every write in time
    /// (`false`: it gave up waiting). For a published read model, shown means the change is in
    /// the outbox, from which it reaches the change bus.
    ///
    /// # Errors
    /// A failure to read a read model.
    pub async fn settled_in_time(self, app: &App) -> Result<(T, bool), ApiError> {
        let in_time = app.settle_writes(&self.writes).await?;
        Ok((self.value, in_time))
    }

    /// For creates: answers at once and notes the writes, which the next reads through this
    /// instance that could see them wait for ([`App::answered_creates_visible`]).
    pub fn answered(self, app: &App) -> T {
        for written in self.writes {
            app.note_created(written);
        }
        self.value
    }

    /// The result and the writes it owes, for tests of the workflows that make them.
    #[cfg(test)]
    pub(crate) fn into_parts(self) -> (T, Vec<Written>) {
        (self.value, self.writes)
    }
}

/// The writes of a workflow's commands so far.
#[derive(Debug, Default)]
pub struct Writes(Vec<Written>);

impl Writes {
    /// Takes over what `unsettled` owes and gives its result.
    pub fn take<T>(&mut self, unsettled: Unsettled<T>) -> T {
        self.0.extend(unsettled.writes);
        unsettled.value
    }

    /// All the writes, owed for `value`.
    pub fn owed_for<T>(self, value: T) -> Unsettled<T> {
        Unsettled {
            value,
            writes: self.0,
        }
    }
}

/// Runs `command` on aggregate `id` of `A` (at `expected_version`, when given) and maps a
/// refusal to its HTTP error.
///
/// # Errors
/// See [`command_error`].
pub async fn execute<A>(
    commands: &CommandBus,
    id: Uuid,
    command: A::Command,
    metadata: &EventMetadata,
    expected_version: Option<usize>,
) -> Result<Unsettled<Outcome<A>>, ApiError>
where
    A: Routed + Indexed,
    A::Command: Clone,
    A::Error: DomainError,
{
    let outcome = commands
        .execute::<A>(&id.to_string(), command, metadata, expected_version)
        .await
        .map_err(command_error)?;
    Ok(Unsettled::of_outcome(id, outcome))
}

/// Runs `command` on a new aggregate `id` of `A` that the caller has just minted, without
/// loading it first ([`CommandBus::create`]).
///
/// # Errors
/// See [`command_error`].
pub async fn create<A>(
    commands: &CommandBus,
    id: Uuid,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<Unsettled<Outcome<A>>, ApiError>
where
    A: Routed + Indexed,
    A::Command: Clone,
    A::Error: DomainError,
{
    let outcome = commands
        .create::<A>(&id.to_string(), command, metadata)
        .await
        .map_err(command_error)?;
    Ok(Unsettled::of_outcome(id, outcome))
}
