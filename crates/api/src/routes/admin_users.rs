//! `/api/v1/admin/users`: accounts as an admin sees them. The contract has roles change "only
//! through an admin"; this is where: an admin lists accounts and changes another account's role
//! or deactivates it. Either change ends every session of that account (its tokens name the old
//! role, or belong to an account that may no longer sign in), so the next request with one of
//! them is 401 and the user signs in again with the new role.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sparc_domain::user::{Role, User, UserCommand};
use sparc_projections::users::UserQuery;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, AppQuery, Text};
use crate::openapi::LISTED_VALUE_MAX;
use crate::resources::UserResource;
use crate::routes::{PageInfo, RequestContext, page, parse_query_value};
use crate::state::AppState;
use crate::unsettled::Writes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(update_user))
}

/// Account list filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListUsers {
    /// Only this role: `admin`, `auditor`, `agent` or `user`.
    #[param(schema_with = crate::openapi::role)]
    pub role: Option<String>,
    /// Only active (`true`) or deactivated (`false`) accounts.
    pub is_active: Option<bool>,
    /// 1..100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
}

/// A page of accounts, ordered by username.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserResource>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// Lists every account (admins only), ordered by username.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(ListUsers),
    responses((status = 200, body = UserList), (status = 403, description = "Not an admin"), (status = 422, description = "Invalid query")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_users(
    State(app): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<ListUsers>,
) -> Result<Json<UserList>, ApiError> {
    user.require_admin()?;
    let (limit, offset) = page(query.limit, query.offset, 20, 100)?;
    let role = parse_query_value("role", query.role.as_deref(), Role::parse)?;
    let (rows, total) = app
        .reads
        .users(&UserQuery {
            role,
            is_active: query.is_active,
            limit,
            offset,
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(UserList {
        users: rows
            .iter()
            .map(|row| UserResource::from(&row.state))
            .collect(),
        page: PageInfo::new(total, limit, offset),
    }))
}

/// What an admin may change of an account (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `admin`, `auditor`, `agent` or `user`.
    #[schema(schema_with = crate::openapi::role)]
    pub role: Option<Text<LISTED_VALUE_MAX>>,
    /// `false` deactivates the account (it can no longer sign in), `true` activates it again.
    #[schema(nullable = false)]
    pub is_active: Option<bool>,
}

/// Changes another account's role or active state (admins only); ends that account's sessions.
#[utoipa::path(method(put, patch), path = "/api/v1/admin/users/{id}", tag = "admin", params(("id" = Uuid, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserResource), (status = 400, description = "No fields to update, or the admin's own account"), (status = 403, description = "Not an admin"), (status = 404, description = "User not found"),
        (status = 409, description = "The account kept changing concurrently"), (status = 422, description = "Invalid or unknown fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(admin = %admin.user_id, %id))]
async fn update_user(
    State(app): State<AppState>,
    admin: AuthUser,
    ctx: RequestContext,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateUser>,
) -> Result<Response, ApiError> {
    admin.require_admin()?;
    let role = body
        .role
        .as_deref()
        .map(Role::parse)
        .transpose()
        .map_err(|e| ApiError::Validation(vec![FieldError::body("role", e.to_string(), "enum")]))?;
    let at = Utc::now();
    let mut commands = role
        .map(|role| UserCommand::ChangeRole { role, at })
        .into_iter()
        .chain(
            body.is_active
                .map(|active| UserCommand::SetActive { active, at }),
        );
    let Some(first) = commands.next() else {
        return Err(ApiError::BadRequest("No fields to update".to_owned()));
    };
    if id == admin.user_id {
        return Err(ApiError::BadRequest(
            "You cannot change your own role or deactivate your own account".to_owned(),
        ));
    }
    let metadata = ctx.metadata(admin.user_id.to_string());
    let mut writes = Writes::default();
    let mut outcome = writes.take(app.execute::<User>(id, first, &metadata, None).await?);
    for command in commands {
        outcome = writes.take(app.execute::<User>(id, command, &metadata, None).await?);
    }
    let outcome = writes.owed_for(outcome).settled(&app).await?;
    Ok(Json(UserResource::from(&outcome.state)).into_response())
}
