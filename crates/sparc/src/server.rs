//! The composition root of `sparc serve`: connects the database, runs migrations, starts the
//! projections, the policies, the hash chainer and the outbox relay, and serves the HTTP API and
//! the WebSocket gateway until shutdown. The projection loops, the policies, the chainer and
//! the scheduler run on the [`BackgroundRuntime`], behind the requests.
//!
//! [`Server::start`] takes a bound listener's address from the settings (port 0 works), so the
//! black-box tests run exactly the code path `main` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use sparc_api::job_queue::ReadModelQueue;
use sparc_api::{App, ServiceInfo};
use sparc_bus::{JobStream, Subjects};
use sparc_domain::execution::{Execution, ExecutionCommand, ExecutionStatus};
use sparc_domain::task::{RunReport, Task, TaskCommand};
use sparc_memory::{MemoryService, MemorySync};
use sparc_projections::catalog::{READ_MODELS, ReadModel};
use sparc_projections::policies::{ProjectCascade, RunCompletion, TaskCommands};
use sparc_projections::{CommandFailure, Projection, ProjectionRunner, ReadModels};
use sparc_store::session_lock::{Asking, SessionLock};
use sparc_store::{
    Chainer, CommandBus, Database, EventMetadata, Generations, Planning, RecordedEvent,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::background::BackgroundRuntime;
use crate::config::Settings;
use crate::jobs::{JetStreamQueue, JobDispatch};
use crate::keys;

/// The policies the service runs beside the read models (`catalog::READ_MODELS`); the memory
/// sync only with a Memory MCP server to push to, the job dispatch only with a job stream.
pub fn policies(
    db: &Database,
    commands: Arc<CommandBus>,
    memory: &Arc<MemoryService>,
    jobs: Option<&JobStream>,
) -> Vec<Arc<dyn Projection>> {
    let policy_commands = Arc::new(PolicyCommands(commands.clone()));
    let mut policies: Vec<Arc<dyn Projection>> = vec![
        Arc::new(ProjectCascade::new(db.clone(), policy_commands.clone())),
        Arc::new(RunCompletion::new(policy_commands)),
    ];
    if memory.enabled() {
        policies.push(Arc::new(MemorySync::new(memory.clone(), commands)));
    }
    if let Some(jobs) = jobs {
        policies.push(Arc::new(JobDispatch::new(jobs.clone())));
    }
    policies
}

/// The job stream of a deployment with NATS (`NATS_URL`); none embedded.
pub async fn job_stream(settings: &Settings) -> anyhow::Result<Option<JobStream>> {
    match &settings.nats_url {
        Some(url) => JobStream::connect(url, &Subjects::new(settings.nats_namespace.clone()))
            .await
            .map(Some)
            .context("could not set up the job stream"),
        None => Ok(None),
    }
}

/// The command side as the policies see it.
struct PolicyCommands(Arc<CommandBus>);

/// The metadata of a command a policy issues because of `cause`.
fn caused_by(cause: &RecordedEvent) -> EventMetadata {
    EventMetadata::from_json(&cause.metadata)
        .map(|m| m.caused_by(cause.position.to_string()))
        .unwrap_or_else(|_| EventMetadata::system(cause.position.to_string()))
}

#[async_trait]
impl TaskCommands for PolicyCommands {
    async fn finish_task_run(
        &self,
        execution_id: uuid::Uuid,
        cause: &RecordedEvent,
    ) -> Result<(), CommandFailure> {
        let (execution, _) = self
            .0
            .load::<Execution>(&execution_id.to_string())
            .await
            .map_err(CommandFailure::from)?;
        if !execution.exists || !execution.status.is_final() {
            return Ok(());
        }
        let finished = self
            .0
            .execute::<Task>(
                &execution.task_id.to_string(),
                TaskCommand::FinishRun {
                    execution_id,
                    status: execution.status,
                    report: RunReport {
                        agent_id: execution.agent_id,
                        output: execution.output_text,
                        error: execution.error_text,
                    },
                    at: execution.ended_at.unwrap_or_else(chrono::Utc::now),
                },
                &caused_by(cause),
                None,
            )
            .await;
        match finished {
            // A task that no longer runs it already recorded the end.
            Ok(_) | Err(sparc_store::CommandError::Rejected(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn cancel_waiting_runs(
        &self,
        task_id: uuid::Uuid,
        cause: &RecordedEvent,
    ) -> Result<(), CommandFailure> {
        let (task, _) = self
            .0
            .load::<Task>(&task_id.to_string())
            .await
            .map_err(CommandFailure::from)?;
        let runs = task
            .running_execution_id
            .into_iter()
            .chain(task.overlapping_runs.iter().copied());
        for execution_id in runs {
            let id = execution_id.to_string();
            let (execution, _) = self
                .0
                .load::<Execution>(&id)
                .await
                .map_err(CommandFailure::from)?;
            if execution.agent_id.is_some() || execution.status.is_final() {
                continue;
            }
            let cancelled = self
                .0
                .execute::<Execution>(
                    &id,
                    ExecutionCommand::Finish {
                        agent_id: None,
                        status: ExecutionStatus::Cancelled,
                        output: None,
                        error: Some("the task was deleted before an agent took the run".into()),
                        duration_ms: None,
                        at: chrono::Utc::now(),
                    },
                    &caused_by(cause),
                    None,
                )
                .await;
            match cancelled {
                // An agent took it, or it ended, since it was read: it runs its course.
                Ok(_) | Err(sparc_store::CommandError::Rejected(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    async fn delete_task(
        &self,
        task_id: uuid::Uuid,
        cause: &RecordedEvent,
    ) -> Result<(), CommandFailure> {
        let metadata = caused_by(cause);
        self.0
            .execute::<Task>(
                &task_id.to_string(),
                TaskCommand::Delete {
                    at: chrono::Utc::now(),
                },
                &metadata,
                None,
            )
            .await
            .map(|_| ())
            .map_err(CommandFailure::from)
    }
}

/// A running service.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    /// Stopped once its tasks have ended.
    background: BackgroundRuntime,
}

impl Server {
    /// Starts everything and returns once the listener is bound.
    pub async fn start(settings: Settings) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        Self::start_on(listener, settings).await
    }

    /// Starts everything on an already bound listener.
    pub async fn start_on(listener: TcpListener, settings: Settings) -> anyhow::Result<Server> {
        let key = keys::signing_key(&settings)?;
        let db = settings.connect_database().await?;
        if settings.migrate_on_start {
            db.migrate().await.context("could not run migrations")?;
        }
        let commands = Arc::new(CommandBus::new(&db));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let generations = Generations::default();
        let mut tasks = vec![tokio::spawn(sparc_store::changes::follow(
            db.clone(),
            generations.clone(),
            shutdown_rx.clone(),
        ))];
        let memory_config = settings
            .api
            .memory()
            .context("invalid Memory MCP settings")?;
        let (memory, memory_supervisor) = MemoryService::start(memory_config, shutdown_rx.clone());
        tasks.extend(memory_supervisor);

        let jobs = job_stream(&settings).await?;
        let background =
            BackgroundRuntime::start().context("could not start the background runtime")?;
        let projection_handle = {
            let _on_background = background.handle().enter();
            // Its own pool and command bus, whose connections are opened on its runtime: a
            // connection of the requests' pool opened there would answer them through it.
            let db = db.dedicated(
                BACKGROUND_APPLICATION_NAME,
                BACKGROUND_CONNECTIONS,
                Planning::Auto,
            );
            let commands = Arc::new(CommandBus::new(&db));
            let runner = ProjectionRunner::new(
                db.clone(),
                READ_MODELS.iter().map(ReadModel::live).collect(),
                policies(&db, commands.clone(), &memory, jobs.as_ref()),
            )
            .with_poll_interval(Duration::from_millis(100))
            .with_generations(generations.clone());
            let projection_handle = runner.handle();
            tasks.extend(runner.spawn(shutdown_rx.clone()));
            tasks.push(spawn_chainer(&db, shutdown_rx.clone()));
            tasks.push(tokio::spawn(crate::scheduler::run(
                db,
                commands,
                projection_handle.clone(),
                crate::scheduler::PASS_INTERVAL,
                shutdown_rx.clone(),
            )));
            projection_handle
        };

        let info = ServiceInfo {
            environment: settings.environment.clone(),
            bus: if settings.nats_url.is_some() {
                "connected"
            } else {
                "embedded"
            },
            started_at: chrono::Utc::now(),
            stall_after: settings.projection_stall_after(),
        };
        let bus = crate::realtime::bus(&settings).await?;
        let relay_news = crate::realtime::RelayNews {
            committed: projection_handle.committed(),
            generations: generations.clone(),
            loop_runs_here: projection_handle.follow_read_models_here(),
        };
        let app = Arc::new(
            App::new(
                db.clone(),
                commands,
                projection_handle,
                &key,
                settings.api.clone(),
                info,
                generations,
            )?
            .with_memory(memory)
            .with_jobs(match jobs {
                Some(jobs) => Arc::new(JetStreamQueue(jobs)),
                None => Arc::new(ReadModelQueue(ReadModels::new(db.clone()))),
            }),
        );
        let gateway = settings.gateway();
        let (realtime, realtime_tasks) = crate::realtime::start(
            &db,
            bus,
            app.clone(),
            relay_news,
            gateway,
            shutdown_rx.clone(),
        )
        .await?;
        tasks.extend(realtime_tasks);
        let router = sparc_api::router(app, realtime);
        let addr = listener.local_addr()?;
        let mut http_shutdown = shutdown_rx.clone();
        let http = tokio::spawn(crate::http::serve(
            listener,
            router,
            settings.http_limits(),
            async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            },
        ));
        tracing::info!(%addr, backend = %db.backend(), "listening");
        Ok(Server {
            addr,
            shutdown,
            tasks,
            http,
            background,
        })
    }

    /// Stops accepting requests, lets running ones finish, and stops the background loops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.background);
    }
}

/// The `application_name` of the background work's PostgreSQL connections (the policies' and
/// the scheduler's; the loops' own are `sparc projections`).
pub const BACKGROUND_APPLICATION_NAME: &str = "sparc background";

/// Connections of the background work's pool.
const BACKGROUND_CONNECTIONS: u32 = 4;

/// Events the chainer hashes per transaction at most.
const CHAIN_BATCH: i64 = 1000;

/// Starts the chainer on the current runtime (the background one). On PostgreSQL it runs on a
/// thread of its own, with a runtime and a connection of its own: a pass decodes and hashes the
/// events of a tenth of a second at once, which would hold back the projection loops. On SQLite
/// (embedded, one writer) it shares the runtime and the pool.
fn spawn_chainer(db: &Database, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let Database::Postgres(pool) = db else {
        return tokio::spawn(run_chainer(db.clone(), shutdown));
    };
    let options = pool.connect_options().as_ref().clone();
    tokio::task::spawn_blocking(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "hash chain: could not start its runtime");
                return;
            }
        };
        runtime.block_on(async move {
            // Made inside the runtime, so that the pool's own tasks run there too.
            let pool = sparc_store::postgres_pool_options(1).connect_lazy_with(options);
            run_chainer(Database::Postgres(pool), shutdown).await;
        });
    })
}

/// The session lock of the one chainer of a PostgreSQL database.
const CHAINER_LOCK: &str = "sparc.chainer";

/// How often a chainer checks its lock, and a standby one tries for it.
const CHAINER_LOCK_EVERY: Duration = Duration::from_secs(1);

/// Hashes newly committed events into the chain, in global order, until shutdown (or until
/// the server that would signal it is gone). Short of a backlog it pauses between passes, so
/// that under load a pass hashes the events of a tenth of a second in one transaction instead
/// of a handful each.
///
/// On PostgreSQL it chains only while it holds the chainer's session lock: with several
/// instances on one database the others would hash the same events again, and their writes,
/// which the log readers of other processes cannot look past, would hold those readers back.
async fn run_chainer(db: Database, mut shutdown: watch::Receiver<bool>) {
    let chainer = Chainer::new(&db);
    let mut lock: Option<(SessionLock, Instant)> = None;
    let mut asking = None;
    while !*shutdown.borrow() {
        if !holds_chainer_lock(&db, &mut lock, &mut asking).await {
            tokio::select! {
                _ = tokio::time::sleep(CHAINER_LOCK_EVERY) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let pause = match chainer.chain_pending(CHAIN_BATCH).await {
            Ok(0) => Duration::from_millis(250),
            Ok(chained) if chained as i64 >= CHAIN_BATCH => Duration::ZERO,
            Ok(_) => Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(%error, "hash chain: batch failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            signalled = shutdown.changed() => {
                if signalled.is_err() {
                    break;
                }
            }
        }
    }
    if let Some((lock, _)) = lock {
        lock.release().await;
    }
}

/// Whether this chainer holds the chainer's lock: checked once every `CHAINER_LOCK_EVERY`,
/// taken if free. SQLite has one process, whose chainer always chains.
async fn holds_chainer_lock(
    db: &Database,
    lock: &mut Option<(SessionLock, Instant)>,
    asking: &mut Asking,
) -> bool {
    let Database::Postgres(pool) = db else {
        return true;
    };
    if let Some((held, checked)) = lock {
        if checked.elapsed() < CHAINER_LOCK_EVERY {
            return true;
        }
        if held.holds().await {
            *checked = Instant::now();
            return true;
        }
        tracing::warn!("hash chain: lost the chainer's lock; standing by");
        *lock = None;
    }
    match SessionLock::try_acquire(pool, CHAINER_LOCK, asking).await {
        Ok(Some(acquired)) => {
            tracing::info!("hash chain: this instance chains the log");
            *lock = Some((acquired, Instant::now()));
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(%error, "hash chain: could not ask for the chainer's lock");
            false
        }
    }
}

/// Resolves when the process is asked to stop (ctrl-c or SIGTERM). The handlers are installed
/// when this is called, not when it is first awaited: a signal that comes while the server is
/// still starting (it may already answer readiness) must stop it gracefully, not kill it.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let received = |handler: Option<tokio::signal::unix::Signal>| async move {
            match handler {
                Some(mut handler) => {
                    handler.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = received(interrupt) => {}
            _ = received(terminate) => {}
        }
    }
}
