//! `sparc worker`: the built-in agent. It logs in as a user with role `agent`, puts itself in
//! the agent registry with its skills as capabilities, long-polls the API for the jobs the
//! scheduler dispatches to it, runs each as a local command and reports how it ended through
//! `POST /api/v1/agents/activity`. It needs no database: the API is its only interface.
//!
//! - [`config`]: the TOML file and its checks.
//! - [`client`]: the HTTP calls, the tokens, and the retry policy.
//! - [`runner`]: one command, with its time limit and captured output.
//!
//! On a stop signal it stops polling, lets running jobs finish for a grace period, kills the
//! rest (reported `cancelled`), marks the agent `offline` and returns.

pub mod client;
pub mod config;
pub mod runner;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use self::client::{AgentEntry, ApiClient, Backoff, CallError, Job, Registration, Report};
use self::config::WorkerConfig;

/// The most jobs one poll may claim (the API's limit).
const MAX_JOBS_PER_POLL: usize = 50;
/// The shortest time between two polls that found nothing, for a server that answers at once
/// (`poll_wait_seconds = 0`): an idle worker must not spin.
const MIN_EMPTY_POLL: Duration = Duration::from_secs(1);
/// How often a report is tried before it is given up; the API then times the run out.
const REPORT_ATTEMPTS: u32 = 5;
/// How long killed jobs have to report `cancelled` before the worker stops anyway.
const CANCEL_REPORT_GRACE: Duration = Duration::from_secs(15);

/// Runs the worker until `shutdown` resolves. Fails when the API refuses the credentials or
/// the registration, or refuses a poll for a reason other than load (the agent was
/// deregistered, the user lost role `agent`); transient failures are retried.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = pin!(shutdown);
    let client = Arc::new(ApiClient::new(
        config.api_url.clone(),
        config.username.clone(),
        config.password.clone(),
    )?);
    tracing::info!(
        api_url = %config.api_url,
        agent_id = %config.agent_id,
        name = %config.name,
        skills = ?config.skills.keys().collect::<Vec<_>>(),
        concurrency = config.concurrency,
        "worker starting"
    );
    let login = retrying("logging in", || client.login());
    let Some(login) = until(shutdown.as_mut(), login).await else {
        return Ok(());
    };
    login.with_context(|| format!("logging in as {}", config.username))?;
    let entry = AgentEntry {
        id: config.agent_id,
        name: config.name.to_string(),
        agent_type: config.agent_type.as_str().to_owned(),
        capabilities: config.skills.keys().cloned().collect(),
    };
    let registered = retrying("registering", || client.register(&entry));
    let Some(registered) = until(shutdown.as_mut(), registered).await else {
        return Ok(());
    };
    match registered.context("registering the agent")? {
        Registration::Created => tracing::info!(agent_id = %entry.id, "agent registered"),
        Registration::Resumed => tracing::info!(agent_id = %entry.id, "agent entry taken over"),
        Registration::Refused { detail } => bail!(
            "the registry refused agent {:?} ({}): {detail}. The name may belong to another \
             agent, or the id to a deregistered one: set another `name` or an `agent_id`",
            entry.name,
            entry.id
        ),
    }

    let config = Arc::new(config);
    let (kill, killed) = watch::channel(false);
    let mut jobs = JoinSet::new();
    let polled = poll_jobs(&client, &config, &mut jobs, &killed, shutdown).await;
    stop_jobs(jobs, &kill, config.shutdown_grace).await;
    if let Err(error) = client.set_status(config.agent_id, "offline").await {
        tracing::warn!(error = %describe(&error), "could not mark the agent offline");
    }
    tracing::info!("worker stopped");
    polled
}

/// Polls for jobs and starts them, at most `concurrency` at once, until `shutdown` resolves
/// (`Ok`) or a poll is refused (`Err`).
async fn poll_jobs(
    client: &Arc<ApiClient>,
    config: &Arc<WorkerConfig>,
    jobs: &mut JoinSet<()>,
    killed: &watch::Receiver<bool>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    loop {
        while let Some(done) = jobs.try_join_next() {
            note_ended(done);
        }
        if jobs.len() >= config.concurrency {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                Some(done) = jobs.join_next() => note_ended(done),
            }
            continue;
        }
        let free = (config.concurrency - jobs.len()).min(MAX_JOBS_PER_POLL);
        let started = Instant::now();
        // A stop signal drops a poll in flight: jobs it was claiming time out on the server.
        let polled = tokio::select! {
            () = &mut shutdown => return Ok(()),
            polled = client.poll(config.agent_id, config.poll_wait, free) => polled,
        };
        let pause = match polled {
            Ok(found) => {
                backoff.reset();
                let idle = found.is_empty();
                for job in found {
                    jobs.spawn(run_job(
                        Arc::clone(client),
                        Arc::clone(config),
                        job,
                        killed.clone(),
                    ));
                }
                if idle {
                    MIN_EMPTY_POLL.saturating_sub(started.elapsed())
                } else {
                    Duration::ZERO
                }
            }
            Err(error) if error.is_transient() => {
                let delay = backoff.next_delay(error.retry_after());
                tracing::warn!(
                    error = %describe(&error),
                    retry_in_ms = delay.as_millis() as u64,
                    "polling for jobs failed"
                );
                delay
            }
            Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                return Err(error).context(
                    "polling for jobs: the agent is no longer in the registry, or the API has \
                     no jobs endpoint",
                );
            }
            Err(error) => return Err(error).context("polling for jobs"),
        };
        if until(shutdown.as_mut(), tokio::time::sleep(pause))
            .await
            .is_none()
        {
            return Ok(());
        }
    }
}

/// Runs one claimed job and reports how it ended.
async fn run_job(
    client: Arc<ApiClient>,
    config: Arc<WorkerConfig>,
    job: Job,
    mut killed: watch::Receiver<bool>,
) {
    tracing::info!(
        execution_id = %job.execution_id,
        task_id = %job.task_id,
        skill = %job.skill_name,
        attempt = job.attempt,
        "job started"
    );
    let outcome = match config.skills.get(&job.skill_name) {
        Some(skill) => {
            let job_limit = Duration::from_secs(job.timeout_seconds);
            let limit = skill.timeout.map_or(job_limit, |own| own.min(job_limit));
            let env = runner::job_env(
                &job.execution_id.to_string(),
                &job.task_id.to_string(),
                &job.skill_name,
                &job.params,
            );
            let cancel = async move {
                if killed.wait_for(|&kill| kill).await.is_err() {
                    // No one can ask for the kill any more.
                    std::future::pending::<()>().await;
                }
            };
            runner::run(skill, &env, limit, cancel).await
        }
        None => runner::Outcome::failed(format!("this worker has no skill {:?}", job.skill_name)),
    };
    let duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        execution_id = %job.execution_id,
        skill = %job.skill_name,
        status = %outcome.status.as_str(),
        duration_ms,
        "job finished"
    );
    let report = Report {
        agent_id: config.agent_id,
        task_id: job.task_id,
        execution_id: job.execution_id,
        status: outcome.status.as_str(),
        output: outcome.output,
        error: outcome.error,
        duration_ms,
    };
    let mut backoff = Backoff::default();
    for attempt in 1..=REPORT_ATTEMPTS {
        match client.report(&report).await {
            Ok(()) => return,
            Err(error) if error.is_transient() && attempt < REPORT_ATTEMPTS => {
                let delay = backoff.next_delay(error.retry_after());
                tracing::warn!(
                    execution_id = %job.execution_id,
                    error = %describe(&error),
                    retry_in_ms = delay.as_millis() as u64,
                    "reporting the run failed"
                );
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                // The run stays `running` until the API times it out, unless the API refused
                // the report because it had already finished the run (409).
                tracing::error!(
                    execution_id = %job.execution_id,
                    error = %describe(&error),
                    "could not report the run"
                );
                return;
            }
        }
    }
}

/// Lets running jobs finish within `grace`, then kills the rest and gives them a little
/// longer to report that.
async fn stop_jobs(mut jobs: JoinSet<()>, kill: &watch::Sender<bool>, grace: Duration) {
    if jobs.is_empty() {
        return;
    }
    tracing::info!(
        running = jobs.len(),
        grace_seconds = grace.as_secs(),
        "stopping: letting running jobs finish"
    );
    if tokio::time::timeout(grace, join_all(&mut jobs))
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        running = jobs.len(),
        "grace period over: killing running jobs"
    );
    let _ = kill.send(true);
    if tokio::time::timeout(CANCEL_REPORT_GRACE, join_all(&mut jobs))
        .await
        .is_err()
    {
        tracing::warn!(running = jobs.len(), "leaving jobs unreported");
        jobs.shutdown().await;
    }
}

async fn join_all(jobs: &mut JoinSet<()>) {
    while let Some(done) = jobs.join_next().await {
        note_ended(done);
    }
}

fn note_ended(done: Result<(), JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "a job's task ended abnormally");
    }
}

/// `work`'s result, or `None` if `shutdown` resolves first.
async fn until<T>(
    shutdown: Pin<&mut impl Future<Output = ()>>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        () = shutdown => None,
        done = work => Some(done),
    }
}

/// Calls `call` until it succeeds or fails for good, waiting between attempts; for the
/// start-up calls, where the API may not be up yet.
async fn retrying<T, F: Future<Output = Result<T, CallError>>>(
    what: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, CallError> {
    let mut backoff = Backoff::default();
    loop {
        match call().await {
            Err(error) if error.is_transient() => {
                let delay = backoff.next_delay(error.retry_after());
                tracing::warn!(
                    error = %describe(&error),
                    retry_in_ms = delay.as_millis() as u64,
                    "{what} failed"
                );
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

/// The error and its causes on one line (`could not reach the API: …: connection refused`).
fn describe(error: &CallError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
