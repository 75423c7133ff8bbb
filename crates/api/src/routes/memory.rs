//! `/api/v1/memory`: the agents' memory, through the Memory MCP server behind its circuit
//! breaker, answered from the `memories` read model whenever the server is unset, down, slow or
//! broken (`source: "fallback"`). Every store is an event whether or not the server took it, so
//! the fallback is complete, and the sync policy pushes what the server missed once it is back.
//!
//! An entry belongs to the owner of its task (or project), else to whoever stored it; a user
//! sees and searches only their own entries, admins and auditors all.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sparc_domain::memory::{Intent, Memory, MemoryCommand, MemoryEntry};
use sparc_domain::project::ProjectStatus;
use sparc_domain::task::TaskStatus;
use sparc_memory::{Hit, Record, Unavailable};
use sparc_projections::Row;
use sparc_projections::memories::{Reach, Scope};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, AppQuery, JsonLimits, Text, check_free_form};
use crate::openapi::LISTED_VALUE_MAX;
use crate::routes::RequestContext;
use crate::state::{App, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(store_memory))
        .routes(routes!(search_memories))
        .routes(routes!(task_memories))
        .routes(routes!(memory_health))
        .routes(routes!(project_summary))
}

/// The longest content of an entry, in characters.
pub const MAX_CONTENT: usize = 65_536;
/// The longest search query, in characters.
const MAX_QUERY: usize = 1000;
/// Hits of the Memory MCP server looked up at most per search.
const MAX_SERVER_HITS: usize = 200;
/// Entries of a task listed at most.
const MAX_TASK_ENTRIES: i64 = 100;
/// Related tasks listed at most.
const MAX_RELATED: i64 = 20;

/// Whose entries `user` sees.
fn reach(user: &AuthUser) -> Reach {
    if user.role.can_read_all() {
        Reach::Everyone
    } else {
        Reach::Owner(user.user_id)
    }
}

fn iso(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A memory entry as the endpoints show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryResult {
    pub id: Uuid,
    pub task_id: Option<Uuid>,
    pub content: String,
    /// 0..1, higher is better (1 outside searches).
    pub similarity_score: f64,
    /// WHO/WHEN/PROJECT/WHY tags and the writer's `additional_metadata`.
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: Option<String>,
}

impl MemoryResult {
    fn of(row: &Row<Memory>, score: f64) -> Option<Self> {
        let memory = &row.state;
        let entry = memory.entry.as_ref()?;
        let at = memory.created_at?;
        Some(Self {
            id: memory.id,
            task_id: entry.task_id,
            content: entry.content.clone(),
            similarity_score: score,
            metadata: sparc_memory::tags(entry, at),
            created_at: Some(iso(at)),
        })
    }
}

/// A new entry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreMemory {
    /// 1..65,536 characters.
    #[schema(value_type = String, min_length = 1, max_length = 65536)]
    pub content: Text<MAX_CONTENT>,
    /// Why it was written.
    #[schema(schema_with = crate::openapi::intent)]
    pub intent: Text<LISTED_VALUE_MAX>,
    /// A task of the caller's (admins: anyone's); the entry then belongs to the task's owner.
    pub task_id: Option<Uuid>,
    /// A project of the caller's; taken from the task when only the task is given.
    pub project_id: Option<Uuid>,
    /// A JSON object, kept with the entry (`description` becomes WHY's description, `agent_id`
    /// WHO's agent).
    #[schema(value_type = Option<Object>)]
    pub additional_metadata: Option<Value>,
}

/// The answer to a store.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryStored {
    pub id: Uuid,
    /// `success`, or `degraded` when the Memory MCP server should have taken it and did not.
    pub status: &'static str,
    /// `memory_mcp` or `fallback`.
    pub storage: &'static str,
    pub task_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The warning of an answer that came from the fallback, if the server should have answered.
fn warning(why: &Unavailable) -> Option<String> {
    (*why != Unavailable::Disabled).then(|| format!("{why}; answered from the fallback"))
}

/// A live task the caller may write to.
async fn writable_task(
    app: &App,
    user: &AuthUser,
    id: Uuid,
) -> Result<Row<sparc_domain::task::Task>, ApiError> {
    let task = app
        .reads
        .task(id)
        .await
        .map_err(ApiError::internal)?
        .filter(|t| t.state.status != TaskStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound("Task not found".to_owned()))?;
    user.ensure_can_write(task.state.user_id)?;
    Ok(task)
}

/// A live project the caller may read (or, with `write`, change).
async fn project(
    app: &App,
    user: &AuthUser,
    id: Uuid,
    write: bool,
) -> Result<Row<sparc_domain::project::Project>, ApiError> {
    let project = app
        .reads
        .project(id)
        .await
        .map_err(ApiError::internal)?
        .filter(|p| p.state.status != ProjectStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound("Project not found".to_owned()))?;
    if write {
        user.ensure_can_write(project.state.user_id)?;
    } else {
        user.ensure_can_read(project.state.user_id)?;
    }
    Ok(project)
}

/// The intent a body field names, or its 422 error.
fn parse_intent(raw: &str, field: &str) -> Result<Intent, FieldError> {
    Intent::parse(raw).map_err(|e| FieldError::body(field, e.0, "enum"))
}

impl StoreMemory {
    /// The entry's intent and its `additional_metadata` (an object, `{}` by default), or 422
    /// with every invalid field.
    fn checked(&self, app: &App) -> Result<(Intent, Value), ApiError> {
        let mut errors = Vec::new();
        if self.content.is_empty() {
            errors.push(FieldError::body(
                "content",
                "String should have at least 1 character",
                "string_too_short",
            ));
        }
        let intent = parse_intent(&self.intent, "intent")
            .map_err(|e| errors.push(e))
            .ok();
        let additional = self
            .additional_metadata
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !additional.is_object() {
            errors.push(FieldError::body(
                "additional_metadata",
                "additional_metadata must be an object",
                "dict_type",
            ));
        } else if let Err(error) = check_free_form(
            "additional_metadata",
            &additional,
            JsonLimits::from_settings(&app.settings),
        ) {
            errors.push(error);
        }
        let (Some(intent), true) = (intent, errors.is_empty()) else {
            return Err(ApiError::Validation(errors));
        };
        Ok((intent, additional))
    }
}

/// Stores an entry: in the Memory MCP server if it is up (`storage: "memory_mcp"`), and in the
/// log in any case, so the fallback has it (`storage: "fallback"`, `status: "degraded"` and a
/// warning when the server should have taken it; it is pushed there once it is back).
#[utoipa::path(post, path = "/api/v1/memory/store", tag = "memory", request_body = StoreMemory,
    responses((status = 201, body = MemoryStored),
        (status = 403, description = "The task or project is another user's"),
        (status = 404, description = "Task or project not found"),
        (status = 422, description = "Invalid fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn store_memory(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<StoreMemory>,
) -> Result<Response, ApiError> {
    let (intent, additional) = body.checked(&app)?;
    let mut owner = user.user_id;
    let mut project_id = body.project_id;
    if let Some(task_id) = body.task_id {
        let task = writable_task(&app, &user, task_id).await?;
        owner = task.state.user_id;
        project_id = project_id.or(task.state.project_id);
    }
    if let Some(project_id) = body.project_id {
        let project = project(&app, &user, project_id, true).await?;
        if body.task_id.is_none() {
            owner = project.state.user_id;
        }
    }
    let agent_id = additional
        .get("agent_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse().ok());
    let entry = MemoryEntry {
        content: body.content.into_string(),
        intent,
        user_id: owner,
        agent_id,
        task_id: body.task_id,
        project_id,
        additional_metadata: additional,
    };
    let stored = store_entry(&app, entry, &ctx.metadata(user.user_id.to_string())).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// Hands `entry` to the Memory MCP server (if it takes it) and records it in the log; the
/// store endpoint and finished agent runs both store this way.
pub(crate) async fn store_entry(
    app: &App,
    entry: MemoryEntry,
    metadata: &sparc_store::EventMetadata,
) -> Result<MemoryStored, ApiError> {
    let id = Uuid::now_v7();
    let at = Utc::now();
    let pushed = app.memory.store(&Record::of(id, &entry, at)).await;
    let tags = sparc_memory::tags(&entry, at);
    let task_id = entry.task_id;
    app.create::<Memory>(
        id,
        MemoryCommand::Store {
            memory_id: id,
            entry,
            in_memory_mcp: pushed.is_ok(),
            at,
        },
        metadata,
    )
    .await?
    .answered(app);
    let (status, storage, warning) = match &pushed {
        Ok(()) => ("success", "memory_mcp", None),
        Err(Unavailable::Disabled) => ("success", "fallback", None),
        Err(why) => (
            "degraded",
            "fallback",
            Some(format!(
                "{why}; stored in the fallback, to be synced when the server is back"
            )),
        ),
    };
    Ok(MemoryStored {
        id,
        status,
        storage,
        task_id,
        metadata: tags,
        warning,
    })
}

/// A search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchMemories {
    /// 1..1000 characters.
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub query: Text<MAX_QUERY>,
    /// Only this project's entries (a project the caller may read).
    pub project_id: Option<Uuid>,
    /// Only entries of this intent.
    #[schema(schema_with = crate::openapi::intent)]
    pub task_type: Option<Text<LISTED_VALUE_MAX>>,
    /// 1..50, default 10.
    #[schema(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// Search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchAnswer {
    pub query: String,
    pub results: Vec<MemoryResult>,
    pub total_results: usize,
    pub search_time_ms: f64,
    /// `memory_mcp` or `fallback`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl SearchMemories {
    /// The result limit and the intent to narrow to, or 422 with every invalid field.
    fn checked(&self) -> Result<(i64, Option<Intent>), ApiError> {
        let mut errors = Vec::new();
        if self.query.trim().is_empty() {
            errors.push(FieldError::body(
                "query",
                "String should have at least 1 character that is not white space",
                "string_too_short",
            ));
        }
        let limit = self.limit.unwrap_or(10);
        if !(1..=50).contains(&limit) {
            errors.push(FieldError::body(
                "limit",
                "limit must be between 1 and 50",
                "value_error",
            ));
        }
        let intent = self
            .task_type
            .as_deref()
            .map(|raw| parse_intent(raw, "task_type"))
            .transpose()
            .map_err(|e| errors.push(e))
            .ok()
            .flatten();
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok((limit, intent))
    }
}

/// The Memory MCP server's `hits` the caller may see within `scope`, best first, at most
/// `limit`: each as the log recorded it.
async fn in_scope(
    app: &App,
    hits: Vec<Hit>,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<MemoryResult>, ApiError> {
    let hits: Vec<_> = hits.into_iter().take(MAX_SERVER_HITS).collect();
    let ids: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
    let rows = app
        .reads
        .memories(&ids, scope.reach)
        .await
        .map_err(ApiError::internal)?;
    let mut by_id: HashMap<Uuid, Row<Memory>> = rows.into_iter().map(|r| (r.state.id, r)).collect();
    let mut results: Vec<(MemoryResult, Option<chrono::DateTime<Utc>>)> = hits
        .iter()
        .filter_map(|hit| {
            let row = by_id.remove(&hit.id)?;
            let entry = row.state.entry.as_ref()?;
            let in_scope = scope.project_id.is_none_or(|p| entry.project_id == Some(p))
                && scope.intent.is_none_or(|i| entry.intent == i);
            let created = row.state.created_at;
            in_scope.then(|| MemoryResult::of(&row, hit.score).map(|r| (r, created)))?
        })
        .collect();
    // Best first; equal scores, newest first.
    results.sort_by(|(a, at), (b, bt)| {
        b.similarity_score
            .total_cmp(&a.similarity_score)
            .then(bt.cmp(at))
    });
    Ok(results
        .into_iter()
        .take(limit as usize)
        .map(|(r, _)| r)
        .collect())
}

/// Searches the caller's entries (admins and auditors: everyone's), best first: through the
/// Memory MCP server when it is up, else full-text search of the read model (PostgreSQL
/// `tsvector`, SQLite FTS5), with `similarity_score` in 0..1.
#[utoipa::path(post, path = "/api/v1/memory/search", tag = "memory", request_body = SearchMemories,
    responses((status = 200, body = SearchAnswer),
        (status = 403, description = "The project is another user's"),
        (status = 404, description = "Project not found"),
        (status = 422, description = "Invalid fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn search_memories(
    State(app): State<AppState>,
    user: AuthUser,
    AppJson(body): AppJson<SearchMemories>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (limit, intent) = body.checked()?;
    if let Some(project_id) = body.project_id {
        project(&app, &user, project_id, false).await?;
    }
    let scope = Scope {
        reach: reach(&user),
        project_id: body.project_id,
        intent,
    };
    let query = body.query.as_str();
    let (results, source, warning) = match app.memory.search(query, limit as usize).await {
        Ok(hits) => (
            in_scope(&app, hits, &scope, limit).await?,
            "memory_mcp",
            None,
        ),
        Err(why) => {
            let ranked = app
                .reads
                .search_memories(query, scope, limit)
                .await
                .map_err(ApiError::internal)?;
            let results: Vec<MemoryResult> = ranked
                .iter()
                .filter_map(|r| MemoryResult::of(&r.row, r.score))
                .collect();
            (results, "fallback", warning(&why))
        }
    };
    Ok(Json(SearchAnswer {
        query: query.to_owned(),
        total_results: results.len(),
        results,
        search_time_ms: started.elapsed().as_secs_f64() * 1000.0,
        source,
        warning,
    })
    .into_response())
}

/// `GET /memory/task/{task_id}`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskMemoryQuery {
    /// List the other tasks of the task's project that have entries (default true).
    pub include_related: Option<bool>,
}

/// A task's entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskMemory {
    pub task_id: Uuid,
    pub project_id: Option<Uuid>,
    pub skill_name: Option<String>,
    /// Newest first, at most 100.
    pub entries: Vec<MemoryResult>,
    pub total_entries: i64,
}

/// Another task of the same project with entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelatedTask {
    pub task_id: Uuid,
    pub entries: i64,
}

/// The answer of `GET /memory/task/{task_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskMemoryAnswer {
    pub task: TaskMemory,
    pub related_tasks: Vec<RelatedTask>,
    /// `memory_mcp` or `fallback`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A task's entries within `reach`, newest first (at most `MAX_TASK_ENTRIES`), their total,
/// and where they came from: the Memory MCP server, or the fallback with the reason.
async fn entries_of_task(
    app: &App,
    task_id: Uuid,
    reach: Reach,
) -> Result<(Vec<Row<Memory>>, i64, &'static str, Option<String>), ApiError> {
    let (mut rows, total, source, warning) = match app.memory.task_entries(task_id).await {
        Ok(ids) => {
            let rows = app
                .reads
                .memories(&ids, reach)
                .await
                .map_err(ApiError::internal)?;
            let total = rows.len() as i64;
            (rows, total, "memory_mcp", None)
        }
        Err(why) => {
            let (rows, total) = app
                .reads
                .memories_of_task(task_id, reach, MAX_TASK_ENTRIES)
                .await
                .map_err(ApiError::internal)?;
            (rows, total, "fallback", warning(&why))
        }
    };
    rows.sort_by(|a, b| {
        b.state
            .created_at
            .cmp(&a.state.created_at)
            .then(b.state.id.cmp(&a.state.id))
    });
    rows.truncate(MAX_TASK_ENTRIES as usize);
    Ok((rows, total, source, warning))
}

/// The other tasks of project `project_id` with entries within `reach`, and how many each has.
async fn related_tasks(
    app: &App,
    project_id: Uuid,
    task_id: Uuid,
    reach: Reach,
) -> Result<Vec<RelatedTask>, ApiError> {
    Ok(app
        .reads
        .memories_of_project_tasks(project_id, task_id, reach, MAX_RELATED)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(task_id, entries)| RelatedTask { task_id, entries })
        .collect())
}

/// A task's entries (those the caller sees), newest first, and with `include_related` the
/// other tasks of its project that have entries.
#[utoipa::path(get, path = "/api/v1/memory/task/{task_id}", tag = "memory",
    params(("task_id" = Uuid, Path), TaskMemoryQuery),
    responses((status = 200, body = TaskMemoryAnswer),
        (status = 403, description = "Another user's task"),
        (status = 404, description = "Task not found")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %task_id))]
async fn task_memories(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(task_id): AppPath<Uuid>,
    AppQuery(query): AppQuery<TaskMemoryQuery>,
) -> Result<Response, ApiError> {
    let task = app
        .reads
        .task(task_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound("Task not found".to_owned()))?;
    user.ensure_can_read(task.state.user_id)?;
    let reach = reach(&user);
    let (rows, total, source, warning) = entries_of_task(&app, task_id, reach).await?;
    let related_tasks = match (query.include_related.unwrap_or(true), task.state.project_id) {
        (true, Some(project_id)) => related_tasks(&app, project_id, task_id, reach).await?,
        _ => Vec::new(),
    };
    Ok(Json(TaskMemoryAnswer {
        task: TaskMemory {
            task_id,
            project_id: task.state.project_id,
            skill_name: task
                .state
                .skill_name
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            entries: rows
                .iter()
                .filter_map(|r| MemoryResult::of(r, 1.0))
                .collect(),
            total_entries: total,
        },
        related_tasks,
        source,
        warning,
    })
    .into_response())
}

/// The counters of `/memory/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryStats {
    pub total_requests: u64,
    pub failed_requests: u64,
    pub fallback_requests: u64,
    pub circuit_opens: u64,
}

/// The memory's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHealthAnswer {
    /// `healthy`, or `degraded` when a Memory MCP server is configured and is not connected
    /// with the breaker closed, or the fallback is unavailable.
    pub status: &'static str,
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    #[schema(schema_with = breaker_state)]
    pub circuit_breaker_state: &'static str,
    pub mcp_available: bool,
    pub fallback_available: bool,
    /// Entries the server has yet to be given (0 without a server).
    pub pending_sync: i64,
    /// When the server was last called (`null`: never).
    pub last_check: Option<String>,
    pub stats: MemoryStats,
}

fn breaker_state() -> utoipa::openapi::schema::ObjectBuilder {
    crate::openapi::one_of(["CLOSED", "OPEN", "HALF_OPEN"])
}

/// The circuit breaker's state and counters, whether the server and the fallback are
/// available, and how many entries await the server.
#[utoipa::path(get, path = "/api/v1/memory/health", tag = "memory",
    responses((status = 200, body = MemoryHealthAnswer)), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all)]
async fn memory_health(State(app): State<AppState>, _user: AuthUser) -> Json<MemoryHealthAnswer> {
    let health = app.memory.health();
    let fallback_available = app.db.ping().await;
    let pending_sync = if health.enabled && fallback_available {
        app.reads
            .memories_pending_sync()
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "could not count the entries awaiting the memory server");
                0
            })
    } else {
        0
    };
    // Healthy: no server configured, or one connected with the breaker closed.
    let mcp_ok = matches!(health.status(), "disabled" | "available");
    Json(MemoryHealthAnswer {
        status: if mcp_ok && fallback_available {
            "healthy"
        } else {
            "degraded"
        },
        circuit_breaker_state: health.state.as_str(),
        mcp_available: health.mcp_available(),
        fallback_available,
        pending_sync,
        last_check: health.last_check.map(iso),
        stats: MemoryStats {
            total_requests: health.requests.total_requests,
            failed_requests: health.requests.failed_requests,
            fallback_requests: health.requests.fallback_requests,
            circuit_opens: health.breaker.opens,
        },
    })
}

/// A project's entries at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectMemorySummary {
    pub project_id: Uuid,
    pub total_entries: i64,
    /// Entries per intent.
    pub by_intent: HashMap<String, i64>,
    /// Entries per agent id (`none`: written by no agent).
    pub by_agent: HashMap<String, i64>,
    /// The newest ten.
    pub recent: Vec<MemoryResult>,
}

/// The project's entries (those the caller sees) by intent and by agent, and the newest ten.
#[utoipa::path(get, path = "/api/v1/memory/projects/{project_id}/summary", tag = "memory",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, body = ProjectMemorySummary),
        (status = 403, description = "Another user's project"),
        (status = 404, description = "Project not found")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %project_id))]
async fn project_summary(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(project_id): AppPath<Uuid>,
) -> Result<Response, ApiError> {
    project(&app, &user, project_id, false).await?;
    let summary = app
        .reads
        .memory_summary(project_id, reach(&user))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ProjectMemorySummary {
        project_id,
        total_entries: summary.total,
        by_intent: summary.by_intent.into_iter().collect(),
        by_agent: summary
            .by_agent
            .into_iter()
            .map(|(agent, n)| (agent.unwrap_or_else(|| "none".to_owned()), n))
            .collect(),
        recent: summary
            .recent
            .iter()
            .filter_map(|r| MemoryResult::of(r, 1.0))
            .collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_answer_warns_only_when_a_server_should_have_answered() {
        assert_eq!(warning(&Unavailable::Disabled), None);
        assert!(
            warning(&Unavailable::BreakerOpen).is_some_and(|w| w.contains("circuit breaker open"))
        );
    }

    #[test]
    fn an_unknown_intent_is_a_field_error_at_its_field() {
        let error = parse_intent("whim", "task_type").unwrap_err();
        assert_eq!(error.loc, vec!["body", "task_type"]);
        assert_eq!(error.kind, "enum");
    }
}
