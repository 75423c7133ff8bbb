//! Creating accounts, shared by `POST /auth/register` and `sparc user create`: validate the
//! fields, reserve the username and the e-mail (each a `Reservation` stream, so two concurrent
//! registrations of one name cannot both succeed), hash the password, record `UserRegistered`.
//! A reservation taken for a registration that then fails is released again.

use chrono::Utc;
use sparc_domain::reservation::{
    Reservation, ReservationCommand, ReservationError, reservation_id,
};
use sparc_domain::user::{Role, User, UserCommand};
use sparc_domain::values::{Email, Username};
use sparc_store::{CommandBus, CommandError, EventMetadata, Outcome};
use uuid::Uuid;

use crate::password::{HashCost, PasswordError, hash_password, password_policy};

/// The longest display name.
pub const MAX_FULL_NAME: usize = 100;

/// What a new account is made of.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Login name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Password in clear (hashed here, never stored or logged).
    pub password: String,
    /// Display name.
    pub full_name: Option<String>,
    /// Role.
    pub role: Role,
    /// What hashing the password costs.
    pub hash_cost: HashCost,
}

/// Why an account was not created.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Invalid fields: (field, message) pairs.
    #[error("invalid registration: {}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(&'static str, String)>),
    /// The username is taken.
    #[error("Username already registered")]
    UsernameTaken,
    /// The e-mail is taken.
    #[error("Email already registered")]
    EmailTaken,
    /// Refused unattempted under load (see `sparc_store::overload`); nothing was registered.
    #[error("{0}")]
    Overloaded(sparc_store::overload::Overloaded),
    /// The store or the hasher failed.
    #[error("registration failed: {0}")]
    Failed(String),
}

/// Validates, reserves and records a new account; returns the new user.
pub async fn register_user(
    commands: &CommandBus,
    registration: Registration,
    metadata: &EventMetadata,
) -> Result<Outcome<User>, RegistrationError> {
    let mut invalid = Vec::new();
    let username = Username::parse(&registration.username)
        .map_err(|e| invalid.push(("username", e.0)))
        .ok();
    let email = Email::parse(&registration.email)
        .map_err(|e| invalid.push(("email", e.0)))
        .ok();
    if let Err(msg) = password_policy(&registration.password) {
        invalid.push(("password", msg.to_owned()));
    }
    if registration
        .full_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_FULL_NAME)
    {
        invalid.push((
            "full_name",
            format!("full_name must be at most {MAX_FULL_NAME} characters"),
        ));
    }
    let (Some(username), Some(email), true) = (username, email, invalid.is_empty()) else {
        return Err(RegistrationError::Invalid(invalid));
    };
    let user_id = Uuid::now_v7();
    let username_claim = reservation_id("username", username.as_str());
    let email_claim = reservation_id("email", email.as_str());
    claim(commands, &username_claim, user_id, metadata)
        .await
        .map_err(|e| e.unwrap_or(RegistrationError::UsernameTaken))?;
    if let Err(error) = claim(commands, &email_claim, user_id, metadata).await {
        release(commands, &username_claim, user_id, metadata).await;
        return Err(error.unwrap_or(RegistrationError::EmailTaken));
    }
    let registered = async {
        let password_hash = hash_password(registration.password, registration.hash_cost)
            .await
            .map_err(|error| match error {
                PasswordError::Overloaded(overloaded) => RegistrationError::Overloaded(overloaded),
                other => RegistrationError::Failed(other.to_string()),
            })?;
        commands
            .create::<User>(
                &user_id.to_string(),
                UserCommand::Register {
                    user_id,
                    username,
                    email,
                    password_hash,
                    role: registration.role,
                    full_name: registration.full_name,
                    at: Utc::now(),
                },
                metadata,
            )
            .await
            .map_err(failed)
    }
    .await;
    if registered.is_err() {
        release(commands, &username_claim, user_id, metadata).await;
        release(commands, &email_claim, user_id, metadata).await;
    }
    registered
}

/// Claims a name; `Err(None)` means taken, `Err(Some(_))` a failure.
async fn claim(
    commands: &CommandBus,
    id: &str,
    owner: Uuid,
    metadata: &EventMetadata,
) -> Result<(), Option<RegistrationError>> {
    match commands
        .execute::<Reservation>(
            id,
            ReservationCommand::Claim {
                owner,
                at: Utc::now(),
            },
            metadata,
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(ReservationError::Taken)) => Err(None),
        Err(other) => Err(Some(failed(other))),
    }
}

/// A command's failure as a registration's.
fn failed<E: std::error::Error>(error: CommandError<E>) -> RegistrationError {
    match error {
        CommandError::Overloaded(overloaded) => RegistrationError::Overloaded(overloaded),
        other => RegistrationError::Failed(other.to_string()),
    }
}

/// Releases a claim; failures are logged (the name stays reserved, which is safe).
async fn release(commands: &CommandBus, id: &str, owner: Uuid, metadata: &EventMetadata) {
    if let Err(error) = commands
        .execute::<Reservation>(
            id,
            ReservationCommand::Release {
                owner,
                at: Utc::now(),
            },
            metadata,
            None,
        )
        .await
    {
        tracing::warn!(%error, reservation = id, "could not release a reservation");
    }
}
