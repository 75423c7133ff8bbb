//! `/api/v1/tasks`: scheduled tasks, their runs and their history. Ownership is checked on
//! every id (403 for another user's task, 404 for an unknown one); lists only hold the
//! caller's tasks unless the caller is an admin or auditor.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sparc_domain::execution::{Execution, ExecutionStatus};
use sparc_domain::project::ProjectStatus;
use sparc_domain::task::{RunPolicy, Task, TaskChanges, TaskCommand, TaskStatus};
use sparc_domain::values::{
    CatchUp, CronSchedule, Overlap, SkillName, TimeZoneName, TimeoutSeconds,
};
use sparc_projections::tasks::{TaskQuery, TaskSort};
use sparc_projections::{Indexed, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AuthUser, Author};
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, AppQuery, JsonLimits, Text, check_free_form};
use crate::idempotency::idempotency_key;
use crate::openapi::LISTED_VALUE_MAX;
use crate::pages::AcceptsGzip;
use crate::quotas::{self, Quota};
use crate::resources::{ExecutionResource, TaskResource};
use crate::routes::{
    AsOfQuery, HistoryQuery, HistoryResponse, IdempotencyKey, IfMatch, PageInfo, RequestContext,
    cached_list, double_option, history, if_match, page, parse_query_value, state_as_of,
    state_until, with_etag,
};
use crate::services::task_runs;
use crate::state::{App, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, update_task, delete_task))
        .routes(routes!(run_task))
        .routes(routes!(task_executions))
        .routes(routes!(task_history))
}

const NOT_FOUND: &str = "Task not found";

/// Loads a task the caller may read (or, with `write`, change).
pub(crate) async fn task_for(
    app: &App,
    user: &AuthUser,
    id: Uuid,
    write: bool,
) -> Result<Row<Task>, ApiError> {
    let row = app
        .reads
        .task(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.to_owned()))?;
    if write {
        user.ensure_can_write(row.state.user_id)?;
    } else {
        user.ensure_can_read(row.state.user_id)?;
    }
    Ok(row)
}

/// Checks that `project_id` is a live project the task's owner may use.
async fn ensure_project(
    app: &App,
    user: &AuthUser,
    owner: Uuid,
    project_id: Uuid,
) -> Result<(), ApiError> {
    let project = app
        .reads
        .project(project_id)
        .await
        .map_err(ApiError::internal)?
        .filter(|p| p.state.status != ProjectStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound("Project not found".to_owned()))?;
    if project.state.user_id != owner {
        return Err(ApiError::Forbidden);
    }
    user.ensure_can_write(project.state.user_id)
}

fn value_error(field: &str, msg: impl Into<String>) -> FieldError {
    FieldError::body(field, msg, "value_error")
}

fn overlap_values() -> utoipa::openapi::ObjectBuilder {
    crate::openapi::one_of(Overlap::ALL.iter().map(Overlap::as_str))
}

fn catch_up_values() -> utoipa::openapi::ObjectBuilder {
    crate::openapi::one_of(CatchUp::ALL.iter().map(CatchUp::as_str))
}

/// The run policy fields of a create or an update, parsed where sent; a bad one is added to
/// `errors`.
fn run_fields(
    timeout_seconds: Option<i64>,
    overlap: Option<&str>,
    catch_up: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> (Option<TimeoutSeconds>, Option<Overlap>, Option<CatchUp>) {
    let timeout_seconds = timeout_seconds.and_then(|raw| {
        TimeoutSeconds::new(raw)
            .map_err(|e| errors.push(value_error("timeout_seconds", e.0)))
            .ok()
    });
    let overlap = overlap.and_then(|raw| {
        Overlap::parse(raw)
            .map_err(|e| errors.push(value_error("overlap", e.0)))
            .ok()
    });
    let catch_up = catch_up.and_then(|raw| {
        CatchUp::parse(raw)
            .map_err(|e| errors.push(value_error("catch_up", e.0)))
            .ok()
    });
    (timeout_seconds, overlap, catch_up)
}

/// `params` must be an object within the free-form limits.
fn check_params(params: &Value, app: &App, errors: &mut Vec<FieldError>) {
    if !params.is_object() {
        errors.push(FieldError::body(
            "params",
            "params must be an object",
            "dict_type",
        ));
    } else if let Err(error) =
        check_free_form("params", params, JsonLimits::from_settings(&app.settings))
    {
        errors.push(error);
    }
}

/// Refuses (422 at `schedule_cron`) a schedule whose runs may come closer together than
/// `SPARC_MIN_SCHEDULE_INTERVAL_SECONDS`.
fn check_interval(schedule: &CronSchedule, app: &App, errors: &mut Vec<FieldError>) {
    let minimum = app.settings.min_schedule_interval_seconds;
    // A 5-field expression fires at whole minutes: any meets a minimum of a minute or less.
    if minimum <= 60 {
        return;
    }
    let Some(shortest) = schedule.shortest_interval() else {
        return;
    };
    if shortest.num_seconds() < i64::try_from(minimum).unwrap_or(i64::MAX) {
        errors.push(value_error(
            "schedule_cron",
            format!(
                "schedule_cron fires as often as every {} seconds; runs must be at least \
                 {minimum} seconds apart",
                shortest.num_seconds()
            ),
        ));
    }
}

/// A new task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// The new resource's id, if the client chooses it (a UUID not yet used: 409 otherwise);
    /// by default the server generates one (UUIDv7).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<Uuid>,
    /// 1..255 of letters, digits, `_` and `-`.
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = "^[A-Za-z0-9_-]+$", example = "code-review")]
    pub skill_name: Text<255>,
    /// A 5-field cron expression (minute hour day-of-month month day-of-week) with ranges,
    /// lists, steps and names such as `MON`, whose runs are never closer together than
    /// `SPARC_MIN_SCHEDULE_INTERVAL_SECONDS` (default 60).
    #[schema(value_type = String, max_length = 255, example = "0 9 * * MON-FRI")]
    pub schedule_cron: Text<255>,
    /// An IANA time zone (default `UTC`).
    #[schema(schema_with = crate::openapi::time_zone)]
    pub timezone: Option<Text<64>>,
    /// Skill parameters: a JSON object, default `{}`, at most 32 levels deep and 64 KiB as
    /// compact JSON (the defaults of `SPARC_MAX_JSON_DEPTH` and `SPARC_MAX_JSON_BYTES`).
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// `pending` (default), `disabled`, `completed` or `failed`.
    #[schema(schema_with = crate::openapi::settable_task_status)]
    pub status: Option<Text<LISTED_VALUE_MAX>>,
    /// One of the caller's projects.
    pub project_id: Option<Uuid>,
    /// Seconds a run may take before it becomes `timeout`: 1..86400 (default 3600).
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: Option<i64>,
    /// `skip` (default: a slot that would overlap a run still going is skipped and counted)
    /// or `allow` (it runs beside it).
    #[schema(schema_with = overlap_values)]
    pub overlap: Option<Text<LISTED_VALUE_MAX>>,
    /// `once` (default: slots missed while no scheduler ran fire once on recovery) or `none`
    /// (they do not fire: a slot counts as missed when it is more than 60 s late).
    #[schema(schema_with = catch_up_values)]
    pub catch_up: Option<Text<LISTED_VALUE_MAX>>,
}

impl CreateTask {
    /// The new task's id (the client's, or a fresh one) and its `Schedule` command for
    /// `user_id`; or 422 with every invalid field.
    fn checked(self, app: &App, user_id: Uuid) -> Result<(Uuid, TaskCommand), ApiError> {
        let mut errors = Vec::new();
        let skill_name = SkillName::parse(&self.skill_name)
            .map_err(|e| errors.push(value_error("skill_name", e.0)))
            .ok();
        let schedule = CronSchedule::parse(&self.schedule_cron)
            .map_err(|e| errors.push(value_error("schedule_cron", e.0)))
            .ok();
        if let Some(schedule) = &schedule {
            check_interval(schedule, app, &mut errors);
        }
        let timezone = TimeZoneName::parse(self.timezone.as_deref().unwrap_or("UTC"))
            .map_err(|e| errors.push(value_error("timezone", e.0)))
            .ok();
        let status = TaskStatus::parse(self.status.as_deref().unwrap_or("pending"))
            .ok()
            .filter(|s| s.is_settable())
            .or_else(|| {
                errors.push(value_error(
                    "status",
                    "status must be one of: pending, completed, failed, disabled",
                ));
                None
            });
        let params = self
            .params
            .unwrap_or_else(|| Value::Object(Default::default()));
        check_params(&params, app, &mut errors);
        let (timeout_seconds, overlap, catch_up) = run_fields(
            self.timeout_seconds,
            self.overlap.as_deref(),
            self.catch_up.as_deref(),
            &mut errors,
        );
        let run = RunPolicy {
            timeout_seconds: timeout_seconds.unwrap_or_default(),
            overlap: overlap.unwrap_or_default(),
            catch_up: catch_up.unwrap_or_default(),
        };
        let (Some(skill_name), Some(schedule_cron), Some(timezone), Some(status), true) =
            (skill_name, schedule, timezone, status, errors.is_empty())
        else {
            return Err(ApiError::Validation(errors));
        };
        let task_id = self.id.unwrap_or_else(Uuid::now_v7);
        let schedule = TaskCommand::Schedule {
            task_id,
            user_id,
            skill_name,
            schedule_cron,
            timezone,
            params,
            status,
            project_id: self.project_id,
            run,
            at: Utc::now(),
        };
        Ok((task_id, schedule))
    }
}

/// Schedules a task. Honours `Idempotency-Key`. A user may have at most
/// `SPARC_MAX_TASKS_PER_USER` (default 1,000) tasks that are not deleted.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = CreateTask,
    params(IdempotencyKey),
    responses((status = 201, body = TaskResource), (status = 403, description = "The project is another user's"),
        (status = 404, description = "Project not found"),
        (status = 409, description = "The caller has reached their quota of tasks that are not deleted (SPARC_MAX_TASKS_PER_USER)"),
        (status = 422, description = "Invalid fields, or a schedule firing more often than SPARC_MIN_SCHEDULE_INTERVAL_SECONDS allows")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn create_task(
    State(app): State<AppState>,
    Author(user): Author,
    ctx: RequestContext,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateTask>,
) -> Result<Response, ApiError> {
    let project_id = body.project_id;
    let (task_id, schedule) = body.checked(&app, user.user_id)?;
    if let Some(project_id) = project_id {
        // The project may have just been created.
        app.answered_creates_visible(Some(user.user_id)).await?;
        ensure_project(&app, &user, user.user_id, project_id).await?;
    }
    let key = idempotency_key(&headers);
    app.idempotency
        .run(
            user.user_id,
            "POST /api/v1/tasks",
            key.as_deref(),
            || async {
                // Inside the idempotent run: a repeated request gets its first answer back
                // even when that create filled the quota.
                quotas::ensure_below(&app, Quota::Tasks, user.user_id).await?;
                let outcome = app
                    .create::<Task>(task_id, schedule, &ctx.metadata(user.user_id.to_string()))
                    .await?
                    .answered(&app);
                let resource = TaskResource::new(&outcome.state, outcome.version as i64);
                Ok((
                    StatusCode::CREATED,
                    serde_json::to_value(resource).map_err(ApiError::internal)?,
                ))
            },
        )
        .await
}

/// The orders of the task list, by name.
const TASK_SORTS: [(&str, TaskSort); 4] = [
    ("created_at", TaskSort::CreatedAt),
    ("next_run_at", TaskSort::NextRunAt),
    ("updated_at", TaskSort::UpdatedAt),
    ("status", TaskSort::Status),
];

/// `sort_by` of the task list.
fn task_sort() -> utoipa::openapi::ObjectBuilder {
    crate::openapi::one_of(TASK_SORTS.map(|(name, _)| name))
}

/// `sort_order` of the task list.
fn sort_order() -> utoipa::openapi::ObjectBuilder {
    crate::openapi::one_of(["asc", "desc"])
}

/// Task list filters, order and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasks {
    /// Only this status (deleted tasks are listed only with `status=deleted`).
    #[param(schema_with = crate::openapi::task_status)]
    pub status: Option<String>,
    /// Only this skill (a skill name has at most 255 characters).
    #[param(value_type = Option<String>, max_length = 255)]
    pub skill_name: Option<Text<255>>,
    pub project_id: Option<Uuid>,
    /// 1..100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
    /// `created_at` (default), `next_run_at`, `updated_at` or `status`.
    #[param(schema_with = task_sort)]
    pub sort_by: Option<String>,
    /// `asc` or `desc` (default).
    #[param(schema_with = sort_order)]
    pub sort_order: Option<String>,
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskResource>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// Lists the caller's tasks (everyone's for admins and auditors).
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(ListTasks),
    responses((status = 200, body = TaskList), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_tasks(
    State(app): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<ListTasks>,
    gzip: AcceptsGzip,
) -> Result<Response, ApiError> {
    let (limit, offset) = page(query.limit, query.offset, 20, 100)?;
    let status = parse_query_value("status", query.status.as_deref(), TaskStatus::parse)?;
    let sort = parse_query_value("sort_by", query.sort_by.as_deref(), |raw| {
        TASK_SORTS
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|&(_, sort)| sort)
            .ok_or("sort_by must be one of: created_at, next_run_at, updated_at, status")
    })?
    .unwrap_or_default();
    let ascending =
        parse_query_value("sort_order", query.sort_order.as_deref(), |raw| match raw {
            "asc" => Ok(true),
            "desc" => Ok(false),
            _ => Err("sort_order must be one of: asc, desc"),
        })?
        .unwrap_or(false);
    let filter = TaskQuery {
        owner: (!user.role.can_read_all()).then_some(user.user_id),
        status,
        skill_name: query.skill_name.map(String::from),
        project_id: query.project_id,
        sort,
        ascending,
        limit,
        offset,
    };
    let key = crate::pages::ListKey::Tasks(&filter);
    let view = sparc_store::changes::view(<Task as Indexed>::TABLE, filter.owner);
    cached_list(&app, &[&view], key, gzip, async {
        let (rows, total) = app.reads.tasks(&filter).await.map_err(ApiError::internal)?;
        Ok(TaskList {
            tasks: rows
                .iter()
                .map(|r| TaskResource::new(&r.state, r.version))
                .collect(),
            page: PageInfo::new(total, limit, offset),
        })
    })
    .await
}

/// One task with its last 10 executions; with `as_of` or `version`, both as they stood at that
/// point, rebuilt from the log.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path), AsOfQuery),
    responses((status = 200, body = TaskResource), (status = 403, description = "Not yours"), (status = 404, description = "Task not found")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn get_task(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(as_of): AppQuery<AsOfQuery>,
) -> Result<Response, ApiError> {
    let row = task_for(&app, &user, id, false).await?;
    let (state, version, executions) = if as_of.is_past() {
        let past = state_as_of::<Task>(&app.db, id, &as_of)
            .await?
            .ok_or_else(|| ApiError::NotFound("Task did not exist at that point".to_owned()))?;
        // The moment asked for: the `as_of` time, else when the asked version was recorded.
        let moment = as_of.time()?.unwrap_or(past.recorded_at);
        let executions = executions_as_of(&app, id, moment).await?;
        (past.state, past.version, executions)
    } else {
        let (executions, _) = app
            .reads
            .executions_of_task(id, None, 10, 0)
            .await
            .map_err(ApiError::internal)?;
        let executions = executions.into_iter().map(|e| e.state).collect();
        (row.state, row.version, executions)
    };
    let mut resource = TaskResource::new(&state, version);
    resource.execution_results = Some(executions.iter().map(ExecutionResource::from).collect());
    Ok(with_etag(version, resource))
}

/// The task's last 10 executions as they stood at `moment`: those started by then, each folded
/// from its own events up to it.
async fn executions_as_of(
    app: &App,
    task_id: Uuid,
    moment: DateTime<Utc>,
) -> Result<Vec<Execution>, ApiError> {
    let started = app
        .reads
        .executions_of_task_started_by(task_id, moment, 10)
        .await
        .map_err(ApiError::internal)?;
    let mut executions = Vec::with_capacity(started.len());
    for row in started {
        let id = row.state.id.to_string();
        if let Some(past) = state_until::<Execution>(&app.db, &id, None, Some(moment)).await? {
            executions.push(past.state);
        }
    }
    Ok(executions)
}

/// Fields to change (at least one); `skill_name` cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    #[schema(value_type = Option<String>, nullable = false, max_length = 255, example = "30 6 * * *")]
    pub schedule_cron: Option<Text<255>>,
    #[schema(schema_with = crate::openapi::time_zone)]
    pub timezone: Option<Text<64>>,
    /// As on creation: an object within the free-form limits.
    #[schema(value_type = Option<Object>, nullable = false)]
    pub params: Option<Value>,
    /// `pending`, `completed`, `failed` or `disabled`.
    #[schema(schema_with = crate::openapi::settable_task_status)]
    pub status: Option<Text<LISTED_VALUE_MAX>>,
    /// A project of the owner's, or `null` to detach.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub project_id: Option<Option<Uuid>>,
    /// Seconds a run may take before it becomes `timeout`: 1..86400 (default 3600).
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: Option<i64>,
    /// `skip` (default: a slot that would overlap a run still going is skipped and counted)
    /// or `allow` (it runs beside it).
    #[schema(schema_with = overlap_values)]
    pub overlap: Option<Text<LISTED_VALUE_MAX>>,
    /// `once` (default: slots missed while no scheduler ran fire once on recovery) or `none`
    /// (they do not fire: a slot counts as missed when it is more than 60 s late).
    #[schema(schema_with = catch_up_values)]
    pub catch_up: Option<Text<LISTED_VALUE_MAX>>,
}

impl UpdateTask {
    /// The changes asked for, or 422 with every invalid field.
    fn checked(&self, app: &App) -> Result<TaskChanges, ApiError> {
        let mut errors = Vec::new();
        let (timeout_seconds, overlap, catch_up) = run_fields(
            self.timeout_seconds,
            self.overlap.as_deref(),
            self.catch_up.as_deref(),
            &mut errors,
        );
        let changes = TaskChanges {
            schedule_cron: self.schedule_cron.as_deref().and_then(|raw| {
                CronSchedule::parse(raw)
                    .map_err(|e| errors.push(value_error("schedule_cron", e.0)))
                    .ok()
                    .inspect(|schedule| check_interval(schedule, app, &mut errors))
            }),
            timezone: self.timezone.as_deref().and_then(|raw| {
                TimeZoneName::parse(raw)
                    .map_err(|e| errors.push(value_error("timezone", e.0)))
                    .ok()
            }),
            params: self.params.clone(),
            status: self.status.as_deref().and_then(|raw| {
                TaskStatus::parse(raw)
                    .ok()
                    .filter(|s| s.is_settable())
                    .or_else(|| {
                        errors.push(value_error(
                            "status",
                            "status must be one of: pending, completed, failed, disabled",
                        ));
                        None
                    })
            }),
            project_id: self.project_id,
            timeout_seconds,
            overlap,
            catch_up,
        };
        if let Some(params) = &self.params {
            check_params(params, app, &mut errors);
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(changes)
    }
}

/// Changes a task; honours `If-Match`. A cron or time-zone change recomputes `next_run_at`.
#[utoipa::path(method(put, patch), path = "/api/v1/tasks/{id}", tag = "tasks", request_body = UpdateTask,
    params(("id" = Uuid, Path), IfMatch),
    responses((status = 200, body = TaskResource), (status = 400, description = "No fields to update"),
        (status = 403, description = "Another user's task, or the project is another user's"),
        (status = 404, description = "Task or project not found"),
        (status = 409, description = "The task is deleted, or kept changing concurrently"),
        (status = 422, description = "Invalid fields, or a schedule firing more often than SPARC_MIN_SCHEDULE_INTERVAL_SECONDS allows")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn update_task(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateTask>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let row = task_for(&app, &user, id, true).await?;
    let changes = body.checked(&app)?;
    if let Some(Some(project_id)) = changes.project_id {
        ensure_project(&app, &user, row.state.user_id, project_id).await?;
    }
    let outcome = app
        .execute::<Task>(
            id,
            TaskCommand::Update {
                changes,
                at: Utc::now(),
            },
            &ctx.metadata(user.user_id.to_string()),
            expected,
        )
        .await?
        .settled(&app)
        .await?;
    Ok(with_etag(
        outcome.version as i64,
        TaskResource::new(&outcome.state, outcome.version as i64),
    ))
}

/// The answer to a deletion.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDeleted {
    pub message: &'static str,
    pub task_id: Uuid,
    pub status: &'static str,
}

/// Soft-deletes a task; it stays readable with status `deleted`. Honours `If-Match`.
#[utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path), IfMatch),
    responses((status = 200, body = TaskDeleted), (status = 404, description = "Task not found"),
        (status = 409, description = "Already deleted, or kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn delete_task(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<TaskDeleted>, ApiError> {
    let expected = if_match(&headers)?;
    task_for(&app, &user, id, true).await?;
    app.execute::<Task>(
        id,
        TaskCommand::Delete { at: Utc::now() },
        &ctx.metadata(user.user_id.to_string()),
        expected,
    )
    .await?
    .settled(&app)
    .await?;
    Ok(Json(TaskDeleted {
        message: "Task successfully deleted",
        task_id: id,
        status: "deleted",
    }))
}

/// Runs a task now, outside its schedule: the run becomes a `running` execution.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/run", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 202, body = ExecutionResource), (status = 409, description = "Already running or deleted, or kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn run_task(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppPath(id): AppPath<Uuid>,
) -> Result<Response, ApiError> {
    task_for(&app, &user, id, true).await?;
    let metadata = ctx.metadata(user.user_id.to_string());
    let started = task_runs::run_now(
        &app.commands,
        id,
        Uuid::now_v7(),
        None,
        &metadata,
        Utc::now(),
    )
    .await?
    .settled(&app)
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ExecutionResource::from(&started.state)),
    )
        .into_response())
}

/// Execution list paging and filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListExecutions {
    /// 1..100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
    /// `running`, `success`, `failed`, `timeout` or `cancelled`.
    #[param(schema_with = crate::openapi::execution_status)]
    pub status: Option<String>,
}

/// A page of executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionResource>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// A task's executions, newest first.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/executions", tag = "tasks", params(("id" = Uuid, Path), ListExecutions),
    responses((status = 200, body = ExecutionList)), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn task_executions(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(query): AppQuery<ListExecutions>,
) -> Result<Json<ExecutionList>, ApiError> {
    task_for(&app, &user, id, false).await?;
    let (limit, offset) = page(query.limit, query.offset, 20, 100)?;
    let status = parse_query_value("status", query.status.as_deref(), ExecutionStatus::parse)?;
    let (rows, total) = app
        .reads
        .executions_of_task(id, status, limit, offset)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ExecutionList {
        executions: rows
            .iter()
            .map(|r| ExecutionResource::from(&r.state))
            .collect(),
        page: PageInfo::new(total, limit, offset),
    }))
}

/// A task's events, oldest first, with their metadata.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/history", tag = "tasks", params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = HistoryResponse)), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn task_history(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(query): AppQuery<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    task_for(&app, &user, id, false).await?;
    Ok(Json(history(&app.db, "Task", id, &query).await?))
}
