//! The application state shared by every handler, and the two things handlers do with it:
//! run a command with the request's metadata (mapping refusals to HTTP errors), and wait until
//! a read model shows a write, so a client that got 2xx reads its own write.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sparc_domain::{DomainError, ErrorKind};
use sparc_projections::{Indexed, ProjectionHandle};
use sparc_store::{CommandBus, CommandError, Database, EventMetadata, Outcome, Routed};
use uuid::Uuid;

use crate::auth::{AuthState, Secret, SessionDirectory, TokenConfigError, TokenService};
use crate::error::ApiError;
use crate::error::BoxError;
use crate::idempotency::IdempotencyStore;
use crate::settings::ApiSettings;

/// Facts about the running service for the health endpoints.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// Deployment name.
    pub environment: String,
    /// `embedded` or `connected`.
    pub bus: &'static str,
    /// Start time.
    pub started_at: DateTime<Utc>,
}

/// Everything a handler can reach.
pub struct App {
    /// The database (event store and read models).
    pub db: Database,
    /// The command side.
    pub commands: Arc<CommandBus>,
    /// Pokes the projections and waits for them.
    pub projections: ProjectionHandle,
    /// Issues and checks tokens.
    pub tokens: Arc<TokenService>,
    /// Checks that a token's session is still live.
    pub sessions: Arc<dyn SessionDirectory>,
    /// HTTP settings.
    pub settings: ApiSettings,
    /// Facts for health checks.
    pub info: ServiceInfo,
    /// Stored first answers of `Idempotency-Key` requests.
    pub idempotency: IdempotencyStore,
    /// Rebuilds started through the admin API.
    pub rebuilds: Arc<crate::routes::admin::Rebuilds>,
}

/// The state of the router: a cheap handle on the one [`App`].
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl AuthState for AppState {
    fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    fn sessions(&self) -> &dyn SessionDirectory {
        self.sessions.as_ref()
    }
}

/// How long a write waits for the read model before answering anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

impl App {
    /// Builds the state; `signing_key` signs every token.
    pub fn new(
        db: Database,
        commands: Arc<CommandBus>,
        projections: ProjectionHandle,
        signing_key: &Secret,
        settings: ApiSettings,
        info: ServiceInfo,
    ) -> Result<Self, TokenConfigError> {
        let tokens = Arc::new(TokenService::from_settings(signing_key, &settings)?);
        Ok(Self {
            sessions: Arc::new(UserSessions { db: db.clone() }),
            idempotency: IdempotencyStore::new(db.clone()),
            rebuilds: Arc::default(),
            db,
            commands,
            projections,
            tokens,
            settings,
            info,
        })
    }

    /// Runs `command` on aggregate `id` and maps a refusal to its HTTP error.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<usize>,
    ) -> Result<Outcome<A>, ApiError>
    where
        A: Routed,
        A::Command: Clone,
        A::Error: DomainError,
    {
        self.commands
            .execute::<A>(id, command, metadata, expected_version)
            .await
            .map_err(command_error)
    }

    /// Runs `command` on a new aggregate `id` the handler has just minted, without loading it
    /// first ([`CommandBus::create`]), and maps a refusal to its HTTP error.
    pub async fn create<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Outcome<A>, ApiError>
    where
        A: Routed,
        A::Command: Clone,
        A::Error: DomainError,
    {
        self.commands
            .create::<A>(id, command, metadata)
            .await
            .map_err(command_error)
    }

    /// Waits until the read model of `A` holds `id` at `version` or later, so the next read by
    /// this client sees the write. Gives up quietly after a timeout: the write is committed
    /// either way, only the read may lag.
    pub async fn settle<A: Indexed>(&self, id: Uuid, version: usize) -> Result<(), ApiError> {
        if version == 0 {
            return Ok(());
        }
        let mut progress = self.projections.progress();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            self.projections.poke();
            let current = sparc_projections::state_table::get::<A>(&self.db, &id.to_string())
                .await
                .map_err(ApiError::internal)?;
            if current.is_some_and(|row| row.version >= version as i64) {
                return Ok(());
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(table = A::TABLE, %id, version, "read model did not catch up in time");
                    return Ok(());
                }
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
    }
}

/// Maps a command failure to its HTTP answer: the domain's refusal by kind, a stale `If-Match`
/// to 412, a lost race to 409, a store failure to 500.
pub fn command_error<E: DomainError>(error: CommandError<E>) -> ApiError {
    match error {
        CommandError::Rejected(refusal) => match refusal.kind() {
            ErrorKind::NotFound => ApiError::NotFound(refusal.to_string()),
            ErrorKind::Conflict => ApiError::Conflict(refusal.to_string()),
            ErrorKind::Invalid => ApiError::BadRequest(refusal.to_string()),
        },
        CommandError::VersionMismatch { .. } => ApiError::PreconditionFailed,
        CommandError::Conflict => {
            ApiError::Conflict("The resource was modified concurrently; retry".to_owned())
        }
        CommandError::Store(message) => ApiError::internal(message),
    }
}

/// Session liveness from the `users` read model.
struct UserSessions {
    db: Database,
}

impl SessionDirectory for UserSessions {
    fn is_active(&self, user_id: Uuid, session_id: Uuid) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async move {
            let row = sparc_projections::users::get(&self.db, user_id).await?;
            Ok(row.is_some_and(|row| row.state.session_is_live(session_id, Utc::now())))
        })
    }
}
