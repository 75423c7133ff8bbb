//! The application state shared by every handler, and the two things handlers do with it:
//! run a command with the request's metadata (mapping refusals to HTTP errors), and make sure a
//! client that got 2xx reads its own write: a change waits until the read model shows it; a
//! create answers at once and the next reads wait ([`App::answered_creates_visible`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sparc_accounts::login_guard::LoginGuard;
use sparc_accounts::sessions::{ReadModelSessions, SessionDirectory};
use sparc_accounts::tokens::{Secret, TokenConfigError, TokenService};
use sparc_domain::{DomainError, ErrorKind};
use sparc_memory::MemoryService;
use sparc_projections::{Indexed, ProjectionHandle, ReadModels};
use sparc_store::{
    CommandBus, CommandError, Database, EventMetadata, Generations, Outcome, Routed,
};
use uuid::Uuid;

use crate::answered_creates::{AnsweredCreates, Written};
use crate::auth::AuthState;
use crate::error::ApiError;
use crate::idempotency::IdempotencyStore;
use crate::job_queue::{JobQueue, ReadModelQueue};
use crate::pages::PageCache;
use crate::settings::ApiSettings;
use crate::unsettled::{self, Unsettled};

/// Facts about the running service for the health endpoints.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// Deployment name.
    pub environment: String,
    /// The configured bus, `embedded` or `connected`, until a [`RuntimeProbe`] reports it live.
    pub bus: &'static str,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// How long an event may wait for a consumer of the log before the consumer is reported
    /// `stalled` (`SPARC_PROJECTION_STALL_SECONDS`).
    pub stall_after: std::time::Duration,
}

/// What the health endpoints ask of the parts that run beside the API (the change bus and the
/// WebSocket gateway), registered by the composition root once they run ([`App::runtime`]).
pub trait RuntimeProbe: Send + Sync {
    /// `embedded`, `connected` or `disconnected`.
    fn bus(&self) -> &'static str;
    /// WebSocket connections this instance holds.
    fn websocket_connections(&self) -> u64;
    /// WebSocket messages this instance has sent and received.
    fn websocket_messages(&self) -> (u64, u64);
}

/// Everything a handler can reach.
pub struct App {
    /// The database (event store and read models).
    pub db: Database,
    /// The questions a request may ask of the read models.
    pub reads: ReadModels,
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
    /// Failed logins per account, and the backoff they earn.
    pub logins: LoginGuard,
    /// What the health checks and `/metrics` last read from the database.
    pub health_facts: crate::routes::health::HealthFacts,
    /// List answers, reused while their read model stands still.
    pub pages: PageCache,
    /// The bus and gateway, once started (unset: the configured bus, no connections).
    pub runtime: OnceLock<Arc<dyn RuntimeProbe>>,
    /// Creates answered before the read models had them, which the next reads wait for.
    pub answered_creates: AnsweredCreates,
    /// The Memory MCP port (disabled until [`App::with_memory`]).
    pub memory: Arc<MemoryService>,
    /// Where runs waiting for an agent are found (the read model until [`App::with_jobs`]).
    pub jobs: Arc<dyn JobQueue>,
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

    fn answered_creates_visible(
        &self,
        reader: Option<Uuid>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        self.0.answered_creates_visible(reader)
    }
}

/// How long a write waits for the read model before answering anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting write reads its row, in case another instance applied it.
const SETTLE_RECHECK: Duration = Duration::from_millis(50);

impl App {
    /// Builds the state; `signing_key` signs every token.
    pub fn new(
        db: Database,
        commands: Arc<CommandBus>,
        projections: ProjectionHandle,
        signing_key: &Secret,
        settings: ApiSettings,
        info: ServiceInfo,
        generations: Generations,
    ) -> Result<Self, TokenConfigError> {
        let tokens = Arc::new(TokenService::from_lifetimes(
            signing_key,
            settings.token_lifetimes(),
        )?);
        Ok(Self {
            sessions: Arc::new(ReadModelSessions::new(
                db.clone(),
                Some(generations.clone()),
            )),
            idempotency: IdempotencyStore::new(db.clone()),
            pages: PageCache::new(generations),
            runtime: OnceLock::new(),
            rebuilds: Arc::default(),
            health_facts: Default::default(),
            logins: LoginGuard::new(settings.login_failures_before_backoff),
            answered_creates: AnsweredCreates::default(),
            memory: Arc::new(MemoryService::disabled()),
            jobs: Arc::new(ReadModelQueue(ReadModels::new(db.clone()))),
            reads: ReadModels::new(db.clone()),
            db,
            commands,
            projections,
            tokens,
            settings,
            info,
        })
    }

    /// This state with `jobs` as its job queue (the read model's unclaimed runs by default).
    pub fn with_jobs(self, jobs: Arc<dyn JobQueue>) -> Self {
        Self { jobs, ..self }
    }

    /// This state with `memory` as its Memory MCP port.
    pub fn with_memory(self, memory: Arc<MemoryService>) -> Self {
        Self { memory, ..self }
    }

    /// Runs `command` on aggregate `id` of `A` ([`unsettled::execute`]): the outcome is had
    /// once the read model shows it.
    ///
    /// # Errors
    /// The command's refusal as its HTTP error ([`command_error`]).
    pub async fn execute<A>(
        &self,
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
        unsettled::execute(&self.commands, id, command, metadata, expected_version).await
    }

    /// Runs `command` on a new aggregate `id` of `A` the handler has just minted
    /// ([`unsettled::create`]).
    ///
    /// # Errors
    /// The command's refusal as its HTTP error ([`command_error`]).
    pub async fn create<A>(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Unsettled<Outcome<A>>, ApiError>
    where
        A: Routed + Indexed,
        A::Command: Clone,
        A::Error: DomainError,
    {
        unsettled::create(&self.commands, id, command, metadata).await
    }

    /// Waits until the read models hold every write at its version or later, so the next read
    /// by this client sees them; `false` if it gave up waiting (after `SETTLE_TIMEOUT` for all
    /// of them: the writes are committed either way, only reads may lag). A write to a user
    /// has then moved the `users` generation, which drops what this instance remembered of
    /// live sessions, so a revoked session fails its very next request here.
    ///
    /// This process's projections announce every batch they commit and remember which streams
    /// they applied lately ([`ProjectionHandle::applied_version`]), so a write applied here is
    /// learnt without asking the database; the row is read only every `SETTLE_RECHECK`, in
    /// case another instance applied the write.
    pub async fn settle_writes(&self, writes: &[Written]) -> Result<bool, ApiError> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        let mut in_time = true;
        for written in writes {
            in_time = in_time && self.settle_written(*written, deadline).await?;
        }
        Ok(in_time)
    }

    /// Notes a create answered before the read models have it and nudges the projections:
    /// every later read through this instance that could see it waits for it
    /// ([`App::answered_creates_visible`], which pokes them), so a create answers as soon as
    /// its event is committed.
    pub(crate) fn note_created(&self, written: Written) {
        self.answered_creates.note(written, |w| {
            self.applied_here(w.table, &w.id.to_string(), w.version)
        });
        self.projections.nudge();
    }

    /// Waits until the read models show the creates this instance has answered
    /// ([`Unsettled::answered`]), not yet seen applied, that `reader` could see (`None`: one who sees
    /// everything); usually there is nothing to wait for.
    pub async fn answered_creates_visible(&self, reader: Option<Uuid>) -> Result<(), ApiError> {
        let snapshot = self.answered_creates.pending(reader);
        // One deadline for all of them: a stuck read model costs a read one wait, not one per
        // create.
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        for written in &snapshot.writes {
            if !self.settle_written(*written, deadline).await? {
                break;
            }
        }
        self.answered_creates.done(&snapshot);
        Ok(())
    }

    /// Whether this process's projections have applied row `key` of `table` at `version`.
    fn applied_here(&self, table: &str, key: &str, version: usize) -> bool {
        self.projections
            .applied_version(table, key)
            .is_some_and(|applied| applied >= version as i64)
    }

    /// Waits for one write until `deadline` (`false`: it gave up).
    async fn settle_written(
        &self,
        written: Written,
        deadline: tokio::time::Instant,
    ) -> Result<bool, ApiError> {
        let Written {
            table,
            id,
            version,
            audience,
        } = written;
        if version == 0 {
            return Ok(true);
        }
        let key = id.to_string();
        // Batches applied here are announced; those applied by the instance that runs the
        // loop show in the read model, with a change notice that bumps a generation.
        let mut applied = self
            .projections
            .applied(table)
            .filter(|_| self.projections.runs_here(table));
        if let Some(rx) = applied.as_mut() {
            // Everything announced up to this value is already among the recent streams.
            rx.borrow_and_update();
        }
        if self.applied_here(table, &key, version) {
            return Ok(true);
        }
        self.projections.poke();
        let mut recheck = tokio::time::interval(SETTLE_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        // Without local announcements the first read is now, else after a recheck interval.
        let mut read_now = applied.is_none();
        let generations = self.pages.generations();
        let view = sparc_store::changes::view(table, audience);
        // The generation of the write's view at the last read: a notice that leaves it as it
        // was (another owner's rows, another read model) is no reason to read again.
        let mut read_at = None;
        loop {
            let bumped = generations.next_bump();
            tokio::pin!(bumped);
            // Enabled before the read, so that a change notice arriving during it still wakes.
            bumped.as_mut().enable();
            if read_now {
                read_at = generations.current(&view);
                let current = self
                    .reads
                    .row_version(table, &key)
                    .await
                    .map_err(ApiError::internal)?;
                if current.is_some_and(|row_version| row_version >= version as i64) {
                    // Perhaps applied by another instance whose change notice has not
                    // arrived yet: what this instance keeps of the read model may be stale.
                    generations.bump(&view);
                    return Ok(true);
                }
                self.projections.poke();
            }
            let announced_here = applied.is_some();
            let changed = async {
                match applied.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ok = changed => {
                    read_now = false;
                    if !ok {
                        // The runner stopped: only reads are left.
                        applied = None;
                    } else if let Some(rx) = applied.as_mut() {
                        rx.borrow_and_update();
                    }
                    if self.applied_here(table, &key, version) {
                        return Ok(true);
                    }
                }
                _ = recheck.tick() => read_now = true,
                _ = &mut bumped, if !announced_here => {
                    let now = generations.current(&view);
                    read_now = now.is_none() || now != read_at;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(table, %id, version, "read model did not catch up in time");
                    return Ok(false);
                }
            }
        }
    }
}

/// Maps a command failure to its HTTP answer: the domain's refusal by kind, a stale `If-Match`
/// to 412, a lost race to 409, a command refused unattempted under load to 503 with
/// `Retry-After`, a store failure to 500.
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
        CommandError::Overloaded(overloaded) => ApiError::overloaded(overloaded),
        CommandError::Store(cause) => ApiError::internal(cause),
    }
}
