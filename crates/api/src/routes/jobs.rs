//! `GET /api/v1/agents/{id}/jobs`: how runs reach agents. A fired run waits in the executions
//! read model, unclaimed, until an agent whose capabilities include its skill asks for work;
//! the answer claims it for that agent. The claim is a command on the run's own stream, so
//! however many agents poll on however many instances, optimistic concurrency lets exactly one
//! of them take each run (the others are refused and move on to the next run).
//!
//! The request long-polls: with nothing to claim it waits, up to `wait` seconds, for the read
//! models to change (a bump of the read-model generations, which follow every instance's
//! commits on PostgreSQL), and looks again at least every [`LOOK_AGAIN`].

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sparc_domain::agent::{Agent, AgentStatus};
use sparc_store::EventMetadata;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppPath, AppQuery};
use crate::job_queue::WaitingRun;
use crate::resources::JobResource;
use crate::routes::RequestContext;
use crate::routes::agents::{WRITERS, agent_row};
use crate::services::task_runs;
use crate::state::{App, AppState};

/// The longest long poll, in seconds.
const MAX_WAIT_SECONDS: u64 = 30;
/// The most jobs one answer hands out.
const MAX_JOBS: usize = 50;
/// How often a waiting poll looks again without a change notice (one from an instance that
/// does not notify, or a notice that came between its look and its wait).
const LOOK_AGAIN: Duration = Duration::from_millis(500);

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(take_jobs))
}

/// How long to wait and how many jobs to take.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Seconds to wait for a job when none is waiting: 0..30, default 0 (answer at once).
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<i64>,
    /// Jobs to take at most: 1..50, default 1.
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// The jobs claimed for the agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobResource>,
}

/// Takes jobs for agent `id` (role `agent` or `admin`): each run returned is claimed by it, its
/// execution's `agent_id` set and the agent `busy`. Only runs of a skill among the agent's
/// `capabilities` (or any, with `"*"`); none for an `offline` agent. The agent reports each
/// run through `POST /agents/activity` with its `execution_id`; one not finished within its
/// `timeout_seconds` becomes `timeout`.
#[utoipa::path(get, path = "/api/v1/agents/{id}/jobs", tag = "agents",
    params(("id" = Uuid, Path), JobsQuery),
    responses((status = 200, body = JobList), (status = 403, description = "Not an agent or admin"),
        (status = 404, description = "Agent not found"), (status = 422, description = "wait or limit out of range")),
    security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn take_jobs(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppPath(id): AppPath<Uuid>,
    AppQuery(query): AppQuery<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    user.require_role(WRITERS)?;
    let (wait, limit) = parse_query(&query)?;
    let agent = agent_row(&app, id).await?.state;
    if agent.status == AgentStatus::Offline {
        return Ok(Json(JobList { jobs: Vec::new() }));
    }
    let metadata = ctx.metadata(user.user_id.to_string());
    let until = Instant::now() + wait;
    loop {
        let bumped = app.pages.generations().next_bump();
        tokio::pin!(bumped);
        bumped.as_mut().enable();
        // Each look gets the request's time limit afresh: a claim late in a long poll is as
        // welcome as an early one.
        let jobs = sparc_store::overload::with_deadline(
            Instant::now() + app.settings.request_timeout(),
            claim(&app, &agent, limit, &metadata),
        )
        .await?;
        let now = Instant::now();
        if !jobs.is_empty() || now >= until {
            return Ok(Json(JobList { jobs }));
        }
        let _ = tokio::time::timeout((until - now).min(LOOK_AGAIN), bumped).await;
    }
}

fn parse_query(query: &JobsQuery) -> Result<(Duration, usize), ApiError> {
    let mut errors = Vec::new();
    let wait = query.wait.unwrap_or(0);
    if !(0..=MAX_WAIT_SECONDS as i64).contains(&wait) {
        errors.push(FieldError::query(
            "wait",
            format!("wait must be between 0 and {MAX_WAIT_SECONDS}"),
            "value_error",
        ));
    }
    let limit = query.limit.unwrap_or(1);
    if !(1..=MAX_JOBS as i64).contains(&limit) {
        errors.push(FieldError::query(
            "limit",
            format!("limit must be between 1 and {MAX_JOBS}"),
            "value_error",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok((Duration::from_secs(wait as u64), limit as usize))
}

/// Claims up to `limit` waiting runs that `agent` can do, oldest first.
async fn claim(
    app: &App,
    agent: &Agent,
    limit: usize,
    metadata: &EventMetadata,
) -> Result<Vec<JobResource>, ApiError> {
    let skills = (!agent.capabilities.iter().any(|c| c == "*")).then_some(&agent.capabilities);
    let waiting = app
        .jobs
        .waiting(skills.map(Vec::as_slice), limit)
        .await
        .map_err(ApiError::internal)?;
    let mut jobs = Vec::new();
    let mut waiting = waiting.into_iter();
    for run in waiting.by_ref() {
        if jobs.len() == limit {
            hand_back(run).await;
            break;
        }
        match claim_one(app, agent.id, run.execution_id, metadata).await {
            Ok(job) => {
                if let Some(receipt) = &run.receipt {
                    receipt.done().await;
                }
                jobs.extend(job);
            }
            Err(error) => {
                hand_back(run).await;
                for rest in waiting {
                    hand_back(rest).await;
                }
                return Err(error);
            }
        }
    }
    for rest in waiting {
        hand_back(rest).await;
    }
    Ok(jobs)
}

async fn hand_back(run: WaitingRun) {
    if let Some(receipt) = run.receipt {
        receipt.hand_back().await;
    }
}

/// Claims run `execution_id` for `agent_id`; `None` when another agent (or another poll of
/// this one) took it first, it ended meanwhile, or it does not exist.
async fn claim_one(
    app: &App,
    agent_id: Uuid,
    execution_id: Uuid,
    metadata: &EventMetadata,
) -> Result<Option<JobResource>, ApiError> {
    let claimed = task_runs::claim(&app.commands, agent_id, execution_id, metadata, Utc::now());
    let Some(claimed) = claimed.await? else {
        return Ok(None);
    };
    let claimed = claimed.settled(app).await?;
    Ok(Some(JobResource::new(&claimed.execution, claimed.params)))
}
