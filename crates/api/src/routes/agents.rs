//! `/api/v1/agents`: the agent registry shared by all users (anyone signed in reads it; admins
//! and agent service accounts write it), and `POST /agents/activity`, through which agents
//! start, claim and finish executions. Names are unique through a `Reservation`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sparc_domain::agent::{Agent, AgentChanges, AgentCommand, AgentStatus, AgentType};
use sparc_domain::execution::{Execution, ExecutionStatus};
use sparc_domain::user::Role;
use sparc_domain::values::AgentName;
use sparc_projections::agents::AgentQuery;
use sparc_projections::executions::{ActivityCursor, ActivityQuery};
use sparc_projections::{Indexed, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, AppQuery, Text};
use crate::idempotency::idempotency_key;
use crate::openapi::LISTED_VALUE_MAX;
use crate::pages::AcceptsGzip;
use crate::quotas::{self, Quota};
use crate::resources::{ActivityEntry, AgentResource, ExecutionResource};
use crate::routes::{
    IdempotencyKey, IfMatch, PageInfo, RequestContext, cached_list, if_match, page,
    parse_query_value, with_etag,
};
use crate::services::{agent_activity, agent_registry};
use crate::state::{App, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, register_agent))
        .routes(routes!(get_agent, update_agent, deregister_agent))
        .routes(routes!(report_activity, activity_feed))
}

pub(crate) const WRITERS: &[Role] = &[Role::Admin, Role::Agent];
const NOT_FOUND: &str = "Agent not found";
const MAX_CAPABILITIES: usize = 100;
/// The longest `capabilities` filter: [`MAX_CAPABILITIES`] names of 100 characters and the
/// commas between them.
const MAX_CAPABILITIES_QUERY: usize = MAX_CAPABILITIES * 101 - 1;
/// The longest `before` cursor of the activity feed: a time in microseconds and a UUID.
const MAX_CURSOR: usize = 64;

/// The longest `output` or `error` an agent may report for a run, in characters.
const MAX_RUN_TEXT: usize = 65_536;

pub(crate) async fn agent_row(app: &App, id: Uuid) -> Result<Row<Agent>, ApiError> {
    app.reads
        .agent(id)
        .await
        .map_err(ApiError::internal)?
        .filter(|row| row.state.registered)
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.to_owned()))
}

fn check_capabilities(capabilities: &[Text<100>], errors: &mut Vec<FieldError>) {
    let bad = capabilities
        .iter()
        .any(|c| c.is_empty() || c.chars().count() > 100 || c.contains(','));
    if bad || capabilities.len() > MAX_CAPABILITIES {
        errors.push(FieldError::body(
            "capabilities",
            "capabilities must be at most 100 names of 1 to 100 characters without commas",
            "value_error",
        ));
    }
}

fn parse_field<T>(
    field: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Result<T, sparc_domain::values::InvalidValue>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    raw.and_then(|raw| {
        parse(raw)
            .map_err(|e| errors.push(FieldError::body(field, e.0, "enum")))
            .ok()
    })
}

/// Agent list filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAgents {
    /// One of the agent types.
    #[serde(rename = "type")]
    #[param(rename = "type", schema_with = crate::openapi::agent_type)]
    pub agent_type: Option<String>,
    #[param(schema_with = crate::openapi::agent_status)]
    pub status: Option<String>,
    /// Comma-separated; an agent matches if it has any of them. At most 100 names of at most
    /// 100 characters, as an agent has.
    #[param(value_type = Option<String>, max_length = 10_099)]
    pub capabilities: Option<Text<MAX_CAPABILITIES_QUERY>>,
    /// 1..1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
}

/// A page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentResource>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// Lists registered agents, most recently active first.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(ListAgents),
    responses((status = 200, body = AgentList), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all)]
async fn list_agents(
    State(app): State<AppState>,
    _user: AuthUser,
    AppQuery(query): AppQuery<ListAgents>,
    gzip: AcceptsGzip,
) -> Result<Response, ApiError> {
    let (limit, offset) = page(query.limit, query.offset, 100, 1000)?;
    let capabilities: Vec<String> = query
        .capabilities
        .as_deref()
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // Each name becomes a parameter of the query: as many, and as long, as an agent can have.
    if capabilities.len() > MAX_CAPABILITIES || capabilities.iter().any(|c| c.chars().count() > 100)
    {
        return Err(ApiError::Validation(vec![FieldError::query(
            "capabilities",
            "capabilities must be at most 100 names of at most 100 characters",
            "value_error",
        )]));
    }
    let filter = AgentQuery {
        agent_type: parse_query_value("type", query.agent_type.as_deref(), AgentType::parse)?,
        status: parse_query_value("status", query.status.as_deref(), AgentStatus::parse)?,
        capabilities,
        limit,
        offset,
    };
    let key = crate::pages::ListKey::Agents(&filter);
    cached_list(&app, &[<Agent as Indexed>::TABLE], key, gzip, async {
        let (rows, total) = app
            .reads
            .agents(&filter)
            .await
            .map_err(ApiError::internal)?;
        Ok(AgentList {
            agents: rows
                .iter()
                .map(|r| AgentResource::new(&r.state, r.version))
                .collect(),
            page: PageInfo::new(total, limit, offset),
        })
    })
    .await
}

/// A new agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    /// The new resource's id, if the client chooses it (a UUID not yet used: 409 otherwise);
    /// by default the server generates one (UUIDv7).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<Uuid>,
    /// Unique, 1..255 characters, trimmed, not blank.
    #[schema(schema_with = crate::openapi::name)]
    pub name: Text<255>,
    /// One of the agent types.
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::agent_type)]
    pub agent_type: Text<LISTED_VALUE_MAX>,
    /// What the agent can run (skill names, or `*` for any), default none.
    #[schema(schema_with = crate::openapi::capabilities)]
    pub capabilities: Option<Vec<Text<100>>>,
    /// Default `idle`.
    #[schema(schema_with = crate::openapi::agent_status)]
    pub status: Option<Text<LISTED_VALUE_MAX>>,
}

/// Registers an agent (admins and agents). Honours `Idempotency-Key`. A user may have
/// registered at most `SPARC_MAX_AGENTS_PER_USER` (default 100) agents still registered.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", request_body = RegisterAgent, params(IdempotencyKey),
    responses((status = 201, body = AgentResource), (status = 403, description = "Not an admin or an agent"),
        (status = 409, description = "Name taken, or the caller has reached their quota of registered agents (SPARC_MAX_AGENTS_PER_USER)")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn register_agent(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppJson(body): AppJson<RegisterAgent>,
) -> Result<Response, ApiError> {
    user.require_role(WRITERS)?;
    let agent_id = body.id.unwrap_or_else(Uuid::now_v7);
    let (register, name) = body.checked(agent_id, user.user_id)?;
    let key = idempotency_key(&headers);
    app.idempotency
        .run(
            user.user_id,
            "POST /api/v1/agents",
            key.as_deref(),
            || async {
                // Before the name is claimed, so a refusal leaves nothing to release; inside
                // the idempotent run, so a repeated request gets its first answer back.
                quotas::ensure_below(&app, Quota::Agents, user.user_id).await?;
                let metadata = ctx.metadata(user.user_id.to_string());
                let outcome =
                    agent_registry::register(&app.commands, agent_id, register, &name, &metadata)
                        .await?
                        .settled(&app)
                        .await?;
                let resource = AgentResource::new(&outcome.state, outcome.version as i64);
                Ok((
                    StatusCode::CREATED,
                    serde_json::to_value(resource).map_err(ApiError::internal)?,
                ))
            },
        )
        .await
}

impl RegisterAgent {
    /// The `Register` command of agent `agent_id` for `registered_by`, and the name it takes;
    /// or 422 with every invalid field.
    fn checked(
        self,
        agent_id: Uuid,
        registered_by: Uuid,
    ) -> Result<(AgentCommand, AgentName), ApiError> {
        let mut errors = Vec::new();
        let name = AgentName::parse(&self.name)
            .map_err(|e| errors.push(FieldError::body("name", e.0, "value_error")))
            .ok();
        let agent_type = parse_field(
            "type",
            Some(self.agent_type.as_str()),
            AgentType::parse,
            &mut errors,
        );
        let status = parse_field(
            "status",
            Some(self.status.as_deref().unwrap_or("idle")),
            AgentStatus::parse,
            &mut errors,
        );
        let capabilities = self.capabilities.unwrap_or_default();
        check_capabilities(&capabilities, &mut errors);
        let (Some(name), Some(agent_type), Some(status), true) =
            (name, agent_type, status, errors.is_empty())
        else {
            return Err(ApiError::Validation(errors));
        };
        let register = AgentCommand::Register {
            agent_id,
            name: name.clone(),
            agent_type,
            capabilities: capabilities.into_iter().map(String::from).collect(),
            status,
            registered_by,
            at: Utc::now(),
        };
        Ok((register, name))
    }
}

/// Detail options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentDetailQuery {
    /// 1..500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub history_limit: Option<i64>,
}

/// An agent with its recent executions, success rate and average duration.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentResource,
    pub execution_history: Vec<ExecutionResource>,
    /// Successful share of the finished executions in the history (0..1).
    pub success_rate: f64,
    /// Mean duration of the finished executions in the history.
    pub avg_duration_ms: f64,
}

/// One agent with its execution history. The history lists only the caller's own executions
/// (every one for admins, auditors and agents), since executions belong to the owner of their
/// task; `success_rate` and `avg_duration_ms` describe the agent, over its last
/// `history_limit` executions whoever owns them.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path), AgentDetailQuery),
    responses((status = 200, body = AgentDetail), (status = 404, description = "Agent not found")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn get_agent(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(query): AppQuery<AgentDetailQuery>,
) -> Result<Response, ApiError> {
    let history_limit = query.history_limit.unwrap_or(50);
    if !(1..=500).contains(&history_limit) {
        return Err(ApiError::Validation(vec![FieldError::query(
            "history_limit",
            "history_limit must be between 1 and 500",
            "value_error",
        )]));
    }
    let row = agent_row(&app, id).await?;
    let history = app
        .reads
        .executions_of_agent(id, None, history_limit)
        .await
        .map_err(ApiError::internal)?;
    let sees_all = user.role.can_read_all() || user.role == Role::Agent;
    let own = if sees_all {
        None
    } else {
        Some(
            app.reads
                .executions_of_agent(id, Some(user.user_id), history_limit)
                .await
                .map_err(ApiError::internal)?,
        )
    };
    let visible = own.as_ref().unwrap_or(&history);
    let (success_rate, avg_duration_ms) = run_statistics(&history);
    Ok(with_etag(
        row.version,
        AgentDetail {
            agent: AgentResource::new(&row.state, row.version),
            execution_history: visible
                .iter()
                .map(|r| ExecutionResource::from(&r.state))
                .collect(),
            success_rate,
            avg_duration_ms,
        },
    ))
}

/// The successful share of the finished runs of `history` (0..1) and their mean duration in
/// milliseconds; both 0 without a finished run.
fn run_statistics(history: &[Row<Execution>]) -> (f64, f64) {
    let finished: Vec<&Execution> = history
        .iter()
        .map(|r| &r.state)
        .filter(|e| e.status.is_final())
        .collect();
    if finished.is_empty() {
        return (0.0, 0.0);
    }
    let count = finished.len() as f64;
    let succeeded = finished
        .iter()
        .filter(|e| e.status == ExecutionStatus::Success)
        .count() as f64;
    let total_ms: f64 = finished
        .iter()
        .map(|e| e.duration_ms.unwrap_or(0) as f64)
        .sum();
    (succeeded / count, total_ms / count)
}

/// Fields to change (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    #[schema(schema_with = crate::openapi::name)]
    pub name: Option<Text<255>>,
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::agent_type)]
    pub agent_type: Option<Text<LISTED_VALUE_MAX>>,
    #[schema(schema_with = crate::openapi::capabilities)]
    pub capabilities: Option<Vec<Text<100>>>,
    #[schema(schema_with = crate::openapi::agent_status)]
    pub status: Option<Text<LISTED_VALUE_MAX>>,
}

/// Changes an agent (admins and agents); honours `If-Match`.
#[utoipa::path(method(put, patch), path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path), IfMatch), request_body = UpdateAgent,
    responses((status = 200, body = AgentResource), (status = 400, description = "No fields to update"),
        (status = 403, description = "Not an admin or an agent"), (status = 404, description = "Agent not found"),
        (status = 409, description = "Name taken, or the agent kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn update_agent(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateAgent>,
) -> Result<Response, ApiError> {
    user.require_role(WRITERS)?;
    let expected = if_match(&headers)?;
    let row = agent_row(&app, id).await?;
    let changes = body.checked()?;
    let metadata = ctx.metadata(user.user_id.to_string());
    let outcome = agent_registry::update(
        &app.commands,
        &row.state,
        changes,
        expected,
        &metadata,
        Utc::now(),
    )
    .await?
    .settled(&app)
    .await?;
    Ok(with_etag(
        outcome.version as i64,
        AgentResource::new(&outcome.state, outcome.version as i64),
    ))
}

impl UpdateAgent {
    /// The changes asked for, or 422 with every invalid field.
    fn checked(self) -> Result<AgentChanges, ApiError> {
        let mut errors = Vec::new();
        let name = self.name.as_deref().and_then(|raw| {
            AgentName::parse(raw)
                .map_err(|e| errors.push(FieldError::body("name", e.0, "value_error")))
                .ok()
        });
        let agent_type = parse_field(
            "type",
            self.agent_type.as_deref(),
            AgentType::parse,
            &mut errors,
        );
        let status = parse_field(
            "status",
            self.status.as_deref(),
            AgentStatus::parse,
            &mut errors,
        );
        if let Some(capabilities) = &self.capabilities {
            check_capabilities(capabilities, &mut errors);
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(AgentChanges {
            name,
            agent_type,
            capabilities: self
                .capabilities
                .map(|all| all.into_iter().map(String::from).collect()),
            status,
        })
    }
}

/// Deregisters an agent (admins and agents): it goes offline, leaves the list and frees its
/// name. Honours `If-Match`.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path), IfMatch),
    responses((status = 204, description = "Deregistered"), (status = 403, description = "Not an admin or an agent"),
        (status = 404, description = "Agent not found"), (status = 409, description = "The agent kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn deregister_agent(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    user.require_role(WRITERS)?;
    let expected = if_match(&headers)?;
    let row = agent_row(&app, id).await?;
    let metadata = ctx.metadata(user.user_id.to_string());
    agent_registry::deregister(&app.commands, &row.state, expected, &metadata, Utc::now())
        .await?
        .settled(&app)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an agent reports about a run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    pub agent_id: Uuid,
    pub task_id: Uuid,
    /// The execution; without it, `running` starts one (or claims the task's running one) and
    /// a final status finishes the task's running one.
    pub execution_id: Option<Uuid>,
    /// `running`, `success`, `failed`, `timeout` or `cancelled`.
    #[schema(schema_with = crate::openapi::execution_status)]
    pub status: Text<LISTED_VALUE_MAX>,
    /// What the run printed, at most 65,536 characters.
    #[schema(value_type = Option<String>, max_length = 65536)]
    pub output: Option<Text<MAX_RUN_TEXT>>,
    /// Why the run failed, at most 65,536 characters.
    #[schema(value_type = Option<String>, max_length = 65536)]
    pub error: Option<Text<MAX_RUN_TEXT>>,
    /// At least 0.
    #[schema(minimum = 0)]
    pub duration_ms: Option<i64>,
}

/// The answer to an activity report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityRecorded {
    pub status: &'static str,
    pub agent_id: Uuid,
    pub task_id: Uuid,
    pub execution_id: Uuid,
    pub stored_in_memory_mcp: bool,
    pub broadcasted: bool,
}

/// An agent reports a run: `running` starts or claims an execution, a final status finishes
/// it; the agent's status follows (running→busy, success→idle, failed/timeout→error,
/// cancelled→idle). A finished run is also stored as a memory entry of the task (its output or
/// error, at most 4,000 characters each). `stored_in_memory_mcp`: the Memory MCP server took
/// that entry (otherwise it is in the fallback, to be synced); `broadcasted`: the agent's change
/// reached the read model and so the outbox, from which it goes out to WebSocket clients.
#[utoipa::path(post, path = "/api/v1/agents/activity", tag = "agents", request_body = ActivityReport,
    responses((status = 201, body = ActivityRecorded), (status = 400, description = "The execution belongs to another task"),
        (status = 403, description = "Not an admin or an agent"), (status = 404, description = "Unknown agent, task or execution"),
        (status = 409, description = "The execution already finished, the task runs another or is deleted")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn report_activity(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<ActivityReport>,
) -> Result<Response, ApiError> {
    user.require_role(WRITERS)?;
    let report = body.checked()?;
    let (agent_id, task_id) = (report.agent_id, report.task_id);
    let metadata = ctx.metadata(user.user_id.to_string());
    let recorded = agent_activity::report(&app.commands, report, &metadata, Utc::now()).await?;
    // The agents read model is published: once it shows the activity, the change is in the
    // outbox, which the relay hands to the change bus (at least once).
    let (recorded, broadcasted) = recorded.settled_in_time(&app).await?;
    let stored_in_memory_mcp = match recorded.memory {
        Some(entry) => {
            crate::routes::memory::store_entry(&app, entry, &metadata)
                .await?
                .storage
                == "memory_mcp"
        }
        None => false,
    };
    Ok((
        StatusCode::CREATED,
        Json(ActivityRecorded {
            status: "success",
            agent_id,
            task_id,
            execution_id: recorded.execution_id,
            stored_in_memory_mcp,
            broadcasted,
        }),
    )
        .into_response())
}

impl ActivityReport {
    /// The report as the workflow takes it, or 422 with every invalid field.
    fn checked(self) -> Result<agent_activity::Report, ApiError> {
        let mut errors = Vec::new();
        let status = parse_field(
            "status",
            Some(self.status.as_str()),
            ExecutionStatus::parse,
            &mut errors,
        );
        if self.duration_ms.is_some_and(|d| d < 0) {
            errors.push(FieldError::body(
                "duration_ms",
                "duration_ms must be 0 or more",
                "greater_than_equal",
            ));
        }
        let Some(status) = status.filter(|_| errors.is_empty()) else {
            return Err(ApiError::Validation(errors));
        };
        Ok(agent_activity::Report {
            agent_id: self.agent_id,
            task_id: self.task_id,
            execution_id: self.execution_id,
            status,
            output: self.output.map(String::from),
            error: self.error.map(String::from),
            duration_ms: self.duration_ms.map(|d| d as u64),
        })
    }
}

/// Activity feed filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityFeedQuery {
    /// Only this agent's runs.
    pub agent_id: Option<Uuid>,
    /// 1..200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `next_before` of the previous page: the entries after it.
    #[param(value_type = Option<String>, max_length = 64)]
    pub before: Option<Text<MAX_CURSOR>>,
}

/// A page of the activity feed, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityFeed {
    pub activity: Vec<ActivityEntry>,
    /// The `before` of the next page; `null` on the last.
    pub next_before: Option<String>,
}

/// The cursor after a run: when it started, in microseconds, and its id.
fn cursor_after(started_at: chrono::DateTime<Utc>, id: Uuid) -> String {
    format!("{}~{id}", started_at.timestamp_micros())
}

fn parse_cursor(raw: &str) -> Result<ActivityCursor, ApiError> {
    let invalid = || {
        ApiError::Validation(vec![FieldError::query(
            "before",
            "before must be the next_before of an earlier page",
            "value_error",
        )])
    };
    let (micros, id) = raw.split_once('~').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    Ok(ActivityCursor {
        started_at: chrono::DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
        id: Uuid::parse_str(id).map_err(|_| invalid())?,
    })
}

/// The activity feed across agents: the runs agents took up, newest started first (a run keeps
/// its place as it progresses, so paging with `before` never skips or repeats one). A user sees
/// the runs of their own tasks; admins and auditors see all.
#[utoipa::path(get, path = "/api/v1/agents/activity", tag = "agents", params(ActivityFeedQuery),
    responses((status = 200, body = ActivityFeed), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn activity_feed(
    State(app): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<ActivityFeedQuery>,
) -> Result<Json<ActivityFeed>, ApiError> {
    let (limit, _) = page(query.limit, None, 50, 200)?;
    let before = query.before.as_deref().map(parse_cursor).transpose()?;
    // One run more than the page: whether another page follows.
    let feed = ActivityQuery {
        owner: (!user.role.can_read_all()).then_some(user.user_id),
        agent_id: query.agent_id,
        before,
        limit: limit + 1,
    };
    let mut runs = app
        .reads
        .activity(&feed)
        .await
        .map_err(ApiError::internal)?;
    let more = runs.len() as i64 > limit;
    runs.truncate(limit as usize);
    let mut agents: Vec<Uuid> = runs.iter().filter_map(|run| run.state.agent_id).collect();
    agents.sort_unstable();
    agents.dedup();
    let names = app
        .reads
        .agent_names(&agents)
        .await
        .map_err(ApiError::internal)?;
    let next_before = more
        .then(|| runs.last())
        .flatten()
        .and_then(|last| Some(cursor_after(last.state.started_at?, last.state.id)));
    let activity = runs
        .iter()
        .filter_map(|run| {
            let name = run.state.agent_id.and_then(|id| names.get(&id).cloned());
            ActivityEntry::of(&run.state, name)
        })
        .collect();
    Ok(Json(ActivityFeed {
        activity,
        next_before,
    }))
}
