//! `/api/v1/projects`: an owner's projects. Deleting a project soft-deletes it; the
//! `ProjectCascade` policy then deletes each of its tasks through the task's own event.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sparc_domain::project::{
    MAX_DESCRIPTION, Project, ProjectChanges, ProjectCommand, ProjectStatus,
};
use sparc_domain::task::Task;
use sparc_domain::values::ProjectName;
use sparc_projections::projects::{ProjectQuery, ProjectSort};
use sparc_projections::{Indexed, Row};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AuthUser, Author};
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, AppQuery, Text};
use crate::idempotency::idempotency_key;
use crate::openapi::LISTED_VALUE_MAX;
use crate::pages::AcceptsGzip;
use crate::quotas::{self, Quota};
use crate::resources::{ProjectResource, TaskResource};
use crate::routes::{
    AsOfQuery, HistoryQuery, HistoryResponse, IdempotencyKey, IfMatch, PageInfo, RequestContext,
    cached_list, history, if_match, page, parse_query_value, state_as_of, with_etag,
};
use crate::state::{App, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(project_history))
}

const NOT_FOUND: &str = "Project not found";

/// Loads a live project the caller may read (or, with `write`, change).
async fn project_for(
    app: &App,
    user: &AuthUser,
    id: Uuid,
    write: bool,
) -> Result<Row<Project>, ApiError> {
    let row = app
        .reads
        .project(id)
        .await
        .map_err(ApiError::internal)?
        .filter(|row| row.state.status != ProjectStatus::Deleted)
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.to_owned()))?;
    if write {
        user.ensure_can_write(row.state.user_id)?;
    } else {
        user.ensure_can_read(row.state.user_id)?;
    }
    Ok(row)
}

async fn tasks_count(app: &App, id: Uuid) -> Result<i64, ApiError> {
    let counts = app
        .reads
        .tasks_counts(&[id])
        .await
        .map_err(ApiError::internal)?;
    Ok(counts.get(&id).copied().unwrap_or(0))
}

fn check_name(raw: &str, errors: &mut Vec<FieldError>) -> Option<ProjectName> {
    ProjectName::parse(raw)
        .map_err(|e| errors.push(FieldError::body("name", e.0, "value_error")))
        .ok()
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// The new resource's id, if the client chooses it (a UUID not yet used: 409 otherwise);
    /// by default the server generates one (UUIDv7).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<Uuid>,
    /// 1..255 characters, trimmed, not blank.
    #[schema(schema_with = crate::openapi::name)]
    pub name: Text<255>,
    /// At most 2000 characters.
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub description: Option<Text<MAX_DESCRIPTION>>,
}

/// Creates a project (`active`, no tasks). Honours `Idempotency-Key`. A user may have at most
/// `SPARC_MAX_PROJECTS_PER_USER` (default 100) projects that are not deleted.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = CreateProject, params(IdempotencyKey),
    responses((status = 201, body = ProjectResource),
        (status = 409, description = "The caller has reached their quota of projects that are not deleted (SPARC_MAX_PROJECTS_PER_USER)"),
        (status = 422, description = "Invalid fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn create_project(
    State(app): State<AppState>,
    Author(user): Author,
    ctx: RequestContext,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateProject>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let name = check_name(&body.name, &mut errors);
    let (Some(name), true) = (name, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let key = idempotency_key(&headers);
    app.idempotency
        .run(
            user.user_id,
            "POST /api/v1/projects",
            key.as_deref(),
            || async {
                // Inside the idempotent run: a repeated request gets its first answer back
                // even when that create filled the quota.
                quotas::ensure_below(&app, Quota::Projects, user.user_id).await?;
                let project_id = body.id.unwrap_or_else(Uuid::now_v7);
                let outcome = app
                    .create::<Project>(
                        project_id,
                        ProjectCommand::Create {
                            project_id,
                            user_id: user.user_id,
                            name,
                            description: body.description.map(String::from),
                            at: Utc::now(),
                        },
                        &ctx.metadata(user.user_id.to_string()),
                    )
                    .await?
                    .answered(&app);
                let resource = ProjectResource::new(&outcome.state, outcome.version as i64, 0);
                Ok((
                    StatusCode::CREATED,
                    serde_json::to_value(resource).map_err(ApiError::internal)?,
                ))
            },
        )
        .await
}

/// The orders of the project list: a field, descending with a leading `-`.
const PROJECT_SORTS: [(&str, ProjectSort); 3] = [
    ("created_at", ProjectSort::CreatedAt),
    ("name", ProjectSort::Name),
    ("tasks_count", ProjectSort::TasksCount),
];

/// `sort_by` of the project list.
fn project_sort() -> utoipa::openapi::ObjectBuilder {
    let names: Vec<String> = PROJECT_SORTS
        .iter()
        .flat_map(|(name, _)| [name.to_string(), format!("-{name}")])
        .collect();
    crate::openapi::one_of(names.iter().map(String::as_str))
}

/// Project list filters, order and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListProjects {
    /// Case-insensitive text in the name or description.
    #[param(max_length = 255)]
    pub search: Option<String>,
    /// `active` or `archived`.
    #[param(schema_with = crate::openapi::settable_project_status)]
    pub status: Option<String>,
    /// 1..100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
    /// `created_at`, `-created_at` (default), `name`, `-name`, `tasks_count`, `-tasks_count`.
    #[param(schema_with = project_sort)]
    pub sort_by: Option<String>,
}

/// A page of projects.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectResource>,
    #[serde(flatten)]
    pub page: PageInfo,
}

impl ListProjects {
    /// The list this query asks `user` for, or 422.
    fn filter(self, user: &AuthUser) -> Result<ProjectQuery, ApiError> {
        let (limit, offset) = page(self.limit, self.offset, 20, 100)?;
        let status = parse_query_value("status", self.status.as_deref(), settable_status)?;
        let (sort, descending) = parse_query_value("sort_by", self.sort_by.as_deref(), |raw| {
            let (descending, field) = raw.strip_prefix('-').map_or((false, raw), |f| (true, f));
            PROJECT_SORTS
                .iter()
                .find(|(name, _)| *name == field)
                .map(|&(_, sort)| (sort, descending))
                .ok_or("sort_by must be one of: created_at, -created_at, name, -name, tasks_count, -tasks_count")
        })?
        .unwrap_or((ProjectSort::CreatedAt, true));
        if self
            .search
            .as_ref()
            .is_some_and(|s| s.chars().count() > 255)
        {
            return Err(ApiError::Validation(vec![FieldError::query(
                "search",
                "search must be at most 255 characters",
                "string_too_long",
            )]));
        }
        Ok(ProjectQuery {
            owner: (!user.role.can_read_all()).then_some(user.user_id),
            search: self.search,
            status,
            sort,
            descending,
            limit,
            offset,
        })
    }
}

/// Lists the caller's projects (everyone's for admins and auditors); deleted ones never.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(ListProjects),
    responses((status = 200, body = ProjectList), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_projects(
    State(app): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<ListProjects>,
    gzip: AcceptsGzip,
) -> Result<Response, ApiError> {
    let filter = query.filter(&user)?;
    let (limit, offset) = (filter.limit, filter.offset);
    let key = crate::pages::ListKey::Projects(&filter);
    // A project's tasks are its owner's (`ensure_project`), so its task counts move with the
    // owner's part of the tasks read model.
    let projects = sparc_store::changes::view(<Project as Indexed>::TABLE, filter.owner);
    let tasks = sparc_store::changes::view(<Task as Indexed>::TABLE, filter.owner);
    cached_list(&app, &[&projects, &tasks], key, gzip, async {
        let (rows, total) = app
            .reads
            .projects(&filter)
            .await
            .map_err(ApiError::internal)?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.state.id).collect();
        let counts = app
            .reads
            .tasks_counts(&ids)
            .await
            .map_err(ApiError::internal)?;
        Ok(ProjectList {
            projects: rows
                .iter()
                .map(|r| {
                    ProjectResource::new(
                        &r.state,
                        r.version,
                        counts.get(&r.state.id).copied().unwrap_or(0),
                    )
                })
                .collect(),
            page: PageInfo::new(total, limit, offset),
        })
    })
    .await
}

/// One project with its live tasks; with `as_of` or `version`, the state rebuilt from the log.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects", params(("id" = Uuid, Path), AsOfQuery),
    responses((status = 200, body = ProjectResource), (status = 404, description = "Project not found")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn get_project(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(as_of): AppQuery<AsOfQuery>,
) -> Result<Response, ApiError> {
    let row = project_for(&app, &user, id, false).await?;
    let (state, version) = if as_of.is_past() {
        let past = state_as_of::<Project>(&app.db, id, &as_of)
            .await?
            .ok_or_else(|| ApiError::NotFound("Project did not exist at that point".to_owned()))?;
        (past.state, past.version)
    } else {
        (row.state, row.version)
    };
    let tasks = app
        .reads
        .tasks_of_project(id)
        .await
        .map_err(ApiError::internal)?;
    let mut resource = ProjectResource::new(&state, version, tasks.len() as i64);
    resource.tasks = Some(
        tasks
            .iter()
            .map(|t| TaskResource::new(&t.state, t.version))
            .collect(),
    );
    Ok(with_etag(version, resource))
}

/// A status an owner may set or filter by ([`ProjectStatus::is_settable`]).
fn settable_status(raw: &str) -> Result<ProjectStatus, String> {
    ProjectStatus::parse(raw)
        .ok()
        .filter(|status| status.is_settable())
        .ok_or_else(|| {
            let settable: Vec<&str> = ProjectStatus::settable()
                .map(|status| status.as_str())
                .collect();
            format!("status must be one of: {}", settable.join(", "))
        })
}

/// Fields to change (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[schema(schema_with = crate::openapi::name)]
    pub name: Option<Text<255>>,
    #[schema(value_type = Option<String>, nullable = false, max_length = 2000)]
    pub description: Option<Text<MAX_DESCRIPTION>>,
    /// `active` or `archived`.
    #[schema(schema_with = crate::openapi::settable_project_status)]
    pub status: Option<Text<LISTED_VALUE_MAX>>,
}

/// Changes a project; honours `If-Match`.
#[utoipa::path(method(put, patch), path = "/api/v1/projects/{id}", tag = "projects", params(("id" = Uuid, Path), IfMatch), request_body = UpdateProject,
    responses((status = 200, body = ProjectResource), (status = 400, description = "No fields to update"),
        (status = 409, description = "The project kept changing concurrently"), (status = 422, description = "Invalid or unknown fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn update_project(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateProject>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    project_for(&app, &user, id, true).await?;
    if body.name.is_none() && body.description.is_none() && body.status.is_none() {
        return Err(ApiError::BadRequest("No fields to update".to_owned()));
    }
    let mut errors = Vec::new();
    let name = body
        .name
        .as_deref()
        .and_then(|raw| check_name(raw, &mut errors));
    let status = body
        .status
        .as_deref()
        .and_then(|raw| match settable_status(raw) {
            Ok(status) => Some(status),
            Err(message) => {
                errors.push(FieldError::body("status", message, "enum"));
                None
            }
        });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let changes = ProjectChanges {
        name,
        description: body.description.map(String::from),
        status,
    };
    let outcome = app
        .execute::<Project>(
            id,
            ProjectCommand::Update {
                changes,
                at: Utc::now(),
            },
            &ctx.metadata(user.user_id.to_string()),
            expected,
        )
        .await?
        .settled(&app)
        .await?;
    let count = tasks_count(&app, id).await?;
    Ok(with_etag(
        outcome.version as i64,
        ProjectResource::new(&outcome.state, outcome.version as i64, count),
    ))
}

/// Soft-deletes a project; each of its tasks becomes `deleted` through its own event.
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "projects", params(("id" = Uuid, Path), IfMatch),
    responses((status = 204, description = "Deleted"), (status = 404, description = "Project not found"),
        (status = 409, description = "The project kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn delete_project(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let expected = if_match(&headers)?;
    project_for(&app, &user, id, true).await?;
    app.execute::<Project>(
        id,
        ProjectCommand::Delete { at: Utc::now() },
        &ctx.metadata(user.user_id.to_string()),
        expected,
    )
    .await?
    .settled(&app)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's events, oldest first, with their metadata.
#[utoipa::path(get, path = "/api/v1/projects/{id}/history", tag = "projects", params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = HistoryResponse)), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn project_history(
    State(app): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppQuery(query): AppQuery<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let row = app
        .reads
        .project(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.to_owned()))?;
    user.ensure_can_read(row.state.user_id)?;
    Ok(Json(history(&app.db, "Project", id, &query).await?))
}
