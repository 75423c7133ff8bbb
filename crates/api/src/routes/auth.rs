//! `/api/v1/auth`: registration, login, refresh-token rotation, logout, the caller's profile,
//! password change and session management. Every session change is a `User` event; requests
//! wait for the `users` read model, which authenticates the next request, before answering.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sparc_accounts::password::{
    MAX_PASSWORD_CHARS, hash_password, password_policy, verify_password,
};
use sparc_accounts::registration::{MAX_FULL_NAME, Registration, RegistrationError, register_user};
use sparc_accounts::tokens::IssuedToken;
use sparc_domain::user::{ProfileChanges, Role, User, UserCommand, UserEvent};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppPath, Text, Validator, is_http_url};
use crate::resources::{Message, UserResource};
use crate::routes::RequestContext;
use crate::state::{App, AppState};
use crate::unsettled::Unsettled;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, update_me))
        .routes(routes!(change_password))
        .routes(routes!(list_sessions, revoke_all_sessions))
        .routes(routes!(revoke_session))
}

const BAD_LOGIN: &str = "Incorrect username or password";
const BAD_REFRESH: &str = "Invalid refresh token";

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3..50 of letters, digits, `_` and `-`.
    #[schema(value_type = String, min_length = 3, max_length = 50, pattern = "^[A-Za-z0-9_-]+$")]
    pub username: Text<50>,
    #[schema(value_type = String, format = Email, max_length = 254)]
    pub email: Text<254>,
    /// 8..128 characters with an upper-case letter, a lower-case letter and a digit.
    #[schema(schema_with = crate::openapi::new_password)]
    pub password: Text<MAX_PASSWORD_CHARS>,
    #[schema(value_type = Option<String>, max_length = 100)]
    pub full_name: Option<Text<MAX_FULL_NAME>>,
}

/// Creates an account with role `user`.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = UserResource), (status = 400, description = "Username or email already registered"), (status = 422, description = "Invalid fields")))]
#[tracing::instrument(level = "debug", skip_all)]
async fn register(
    State(app): State<AppState>,
    ctx: RequestContext,
    AppJson(body): AppJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let registration = Registration {
        username: body.username.into(),
        email: body.email.into(),
        password: body.password.into(),
        full_name: body.full_name.map(String::from),
        role: Role::User,
        hash_cost: app.settings.password_hash_cost(),
    };
    let user = register_user(&app.commands, registration, &ctx.metadata("anonymous"))
        .await
        .map_err(|error| match error {
            RegistrationError::Invalid(fields) => ApiError::Validation(
                fields
                    .into_iter()
                    .map(|(f, m)| FieldError::body(f, m, "value_error"))
                    .collect(),
            ),
            RegistrationError::UsernameTaken | RegistrationError::EmailTaken => {
                ApiError::BadRequest(error.to_string())
            }
            RegistrationError::Overloaded(overloaded) => ApiError::overloaded(overloaded),
            RegistrationError::Failed(message) => ApiError::internal(message),
        })?;
    let user = Unsettled::of_outcome(user.state.id, user)
        .settled(&app)
        .await?;
    Ok((StatusCode::CREATED, Json(UserResource::from(&user.state))).into_response())
}

/// Credentials; no account has a longer username or password than these allow.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(value_type = String, max_length = 50)]
    pub username: Text<50>,
    #[schema(value_type = String, max_length = 128)]
    pub password: Text<MAX_PASSWORD_CHARS>,
}

/// A fresh pair of tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// A login: the user and their tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserResource,
    #[serde(flatten)]
    pub tokens: TokenPair,
}

fn pair(access: IssuedToken, refresh: IssuedToken) -> TokenPair {
    TokenPair {
        access_token: access.token,
        refresh_token: refresh.token,
        token_type: "bearer",
        expires_in: access.expires_in,
    }
}

fn issue(
    app: &App,
    user: &User,
    session_id: Uuid,
    refresh_jti: Uuid,
) -> Result<TokenPair, ApiError> {
    let username = user.username.as_ref().map_or("", |u| u.as_str());
    let access = app
        .tokens
        .issue_access(user.id, username, user.role, session_id)?;
    let refresh =
        app.tokens
            .issue_refresh(user.id, username, user.role, session_id, refresh_jti)?;
    Ok(pair(access, refresh))
}

/// Logs in with a username and password and starts a session.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, description = "Incorrect username or password, or inactive account"),
        (status = 429, description = "Too many failed logins for this account: try again after Retry-After")))]
#[tracing::instrument(level = "debug", skip_all)]
async fn login(
    State(app): State<AppState>,
    ctx: RequestContext,
    AppJson(body): AppJson<LoginRequest>,
) -> Result<Response, ApiError> {
    if let Err(wait) = app.logins.check(&body.username) {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let row = app
        .reads
        .user_by_username(&body.username)
        .await
        .map_err(ApiError::internal)?;
    let hash = row.as_ref().map(|r| r.state.password_hash.clone());
    // Verified even for unknown users (against no hash), so timing does not reveal who exists.
    let cost = app.settings.password_hash_cost();
    let verified = verify_password(body.password.into(), hash, cost).await?;
    let Some(row) = row.filter(|_| verified) else {
        app.logins.failed(&body.username);
        return Err(ApiError::Unauthorized(BAD_LOGIN.to_owned()));
    };
    app.logins.succeeded(&body.username);
    if !row.state.is_active {
        return Err(ApiError::Unauthorized(
            "User account is inactive".to_owned(),
        ));
    }
    let user_id = row.state.id;
    let (session_id, refresh_jti) = (Uuid::now_v7(), Uuid::new_v4());
    let outcome = app
        .execute::<User>(
            user_id,
            UserCommand::StartSession {
                session_id,
                refresh_jti,
                expires_at: Utc::now() + app.tokens.refresh_ttl(),
                ip_address: ctx.ip.clone(),
                user_agent: ctx.user_agent.clone(),
                // Beyond the cap the oldest sessions end, and with them their tokens.
                max_sessions: app.settings.max_sessions_per_user,
                at: Utc::now(),
            },
            &ctx.metadata(user_id.to_string()),
            None,
        )
        .await
        .map_err(|e| match e {
            ApiError::Conflict(_) => ApiError::Unauthorized("User account is inactive".to_owned()),
            other => other,
        })?;
    let outcome = outcome.settled(&app).await?;
    let tokens = issue(&app, &outcome.state, session_id, refresh_jti)?;
    Ok(Json(LoginResponse {
        user: UserResource::from(&outcome.state),
        tokens,
    })
    .into_response())
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// A JWT as login or refresh issued it (a few hundred characters).
    #[schema(value_type = String, max_length = 2048)]
    pub refresh_token: Text<2048>,
}

/// Trades a refresh token for a new pair; the old refresh token stops working. Presenting a
/// token that was already rotated revokes its whole session (the newest token too).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, description = "Invalid, expired, revoked or reused refresh token")))]
#[tracing::instrument(level = "debug", skip_all)]
async fn refresh(
    State(app): State<AppState>,
    ctx: RequestContext,
    AppJson(body): AppJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let claims = app
        .tokens
        .decode_refresh(&body.refresh_token)
        .map_err(|_| ApiError::Unauthorized(BAD_REFRESH.to_owned()))?;
    let new_jti = Uuid::new_v4();
    let outcome = app
        .execute::<User>(
            claims.sub,
            UserCommand::RefreshSession {
                session_id: claims.sid,
                presented_jti: claims.jti,
                new_jti,
                expires_at: Utc::now() + app.tokens.refresh_ttl(),
                at: Utc::now(),
            },
            &ctx.metadata(claims.sub.to_string()),
            None,
        )
        .await
        .map_err(|error| match error {
            // The service failing or too busy says nothing about the token: the client keeps
            // it and retries, rather than signing out.
            ApiError::Internal(_) | ApiError::Overloaded { .. } => error,
            _ => ApiError::Unauthorized(BAD_REFRESH.to_owned()),
        })?;
    let outcome = outcome.settled(&app).await?;
    if outcome
        .events
        .iter()
        .any(|e| matches!(e, UserEvent::SessionRevoked { .. }))
    {
        tracing::warn!(user_id = %claims.sub, session_id = %claims.sid, "refresh token reuse: session revoked");
        return Err(ApiError::Unauthorized(
            "Refresh token reuse detected; the session was revoked".to_owned(),
        ));
    }
    let tokens = issue(&app, &outcome.state, claims.sid, new_jti)?;
    Ok(Json(tokens).into_response())
}

/// Logs out: ends the session of the given refresh token (which must be the caller's).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Message), (status = 401, description = "Not authenticated"),
        (status = 409, description = "The account kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn logout(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let session_id = match app.tokens.decode_refresh(&body.refresh_token) {
        Ok(claims) if claims.sub == user.user_id => claims.sid,
        _ => user.session_id,
    };
    end_session(&app, &user, session_id, &ctx).await?;
    Ok(Json(Message::new("Logout successful")).into_response())
}

async fn end_session(
    app: &App,
    user: &AuthUser,
    session_id: Uuid,
    ctx: &RequestContext,
) -> Result<(), ApiError> {
    let outcome = app
        .execute::<User>(
            user.user_id,
            UserCommand::RevokeSession {
                session_id,
                at: Utc::now(),
            },
            &ctx.metadata(user.user_id.to_string()),
            None,
        )
        .await?;
    outcome.settled(app).await.map(drop)
}

async fn current_user(
    app: &App,
    user: &AuthUser,
) -> Result<sparc_projections::Row<User>, ApiError> {
    app.reads
        .user(user.user_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound("User not found".to_owned()))
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = UserResource)), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn me(State(app): State<AppState>, user: AuthUser) -> Result<Json<UserResource>, ApiError> {
    Ok(Json(UserResource::from(
        &current_user(&app, &user).await?.state,
    )))
}

/// Profile fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    /// At most 100 characters.
    #[schema(value_type = Option<String>, nullable = false, max_length = 100)]
    pub full_name: Option<Text<MAX_FULL_NAME>>,
    /// At most 500 characters.
    #[schema(value_type = Option<String>, nullable = false, max_length = 500)]
    pub bio: Option<Text<500>>,
    /// An `http://` or `https://` URL of at most 500 characters.
    #[schema(schema_with = crate::openapi::http_url)]
    pub avatar_url: Option<Text<500>>,
}

/// Changes the caller's profile.
#[utoipa::path(method(put, patch), path = "/api/v1/auth/me", tag = "auth", request_body = ProfileRequest,
    responses((status = 200, body = UserResource), (status = 409, description = "The account kept changing concurrently"),
        (status = 422, description = "Invalid fields")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn update_me(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<ProfileRequest>,
) -> Result<Json<UserResource>, ApiError> {
    let mut check = Validator::new();
    check.check(
        body.avatar_url.as_deref().is_none_or(is_http_url),
        &["body", "avatar_url"],
        "avatar_url must be an http:// or https:// URL",
        "url_scheme",
    );
    check.finish()?;
    let outcome = app
        .execute::<User>(
            user.user_id,
            UserCommand::UpdateProfile {
                changes: ProfileChanges {
                    full_name: body.full_name.map(String::from),
                    bio: body.bio.map(String::from),
                    avatar_url: body.avatar_url.map(String::from),
                },
                at: Utc::now(),
            },
            &ctx.metadata(user.user_id.to_string()),
            None,
        )
        .await?;
    let outcome = outcome.settled(&app).await?;
    Ok(Json(UserResource::from(&outcome.state)))
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, max_length = 128)]
    pub current_password: Text<MAX_PASSWORD_CHARS>,
    /// 8..128 characters with an upper-case letter, a lower-case letter and a digit.
    #[schema(schema_with = crate::openapi::new_password)]
    pub new_password: Text<MAX_PASSWORD_CHARS>,
}

/// Changes the caller's password; every other session of the caller ends.
#[utoipa::path(post, path = "/api/v1/auth/change-password", tag = "auth", request_body = ChangePasswordRequest,
    responses((status = 200, body = Message), (status = 400, description = "Current password is incorrect"),
        (status = 409, description = "The account kept changing concurrently"), (status = 422, description = "Weak new password")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn change_password(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<ChangePasswordRequest>,
) -> Result<Json<Message>, ApiError> {
    if let Err(msg) = password_policy(&body.new_password) {
        return Err(ApiError::Validation(vec![FieldError::body(
            "new_password",
            msg,
            "value_error",
        )]));
    }
    let row = current_user(&app, &user).await?;
    let cost = app.settings.password_hash_cost();
    let verified = verify_password(
        body.current_password.into(),
        Some(row.state.password_hash.clone()),
        cost,
    )
    .await?;
    if !verified {
        return Err(ApiError::BadRequest(
            "Current password is incorrect".to_owned(),
        ));
    }
    let password_hash = hash_password(body.new_password.into(), cost).await?;
    app.execute::<User>(
        user.user_id,
        UserCommand::ChangePassword {
            password_hash,
            keep_session: Some(user.session_id),
            at: Utc::now(),
        },
        &ctx.metadata(user.user_id.to_string()),
        None,
    )
    .await?
    .settled(&app)
    .await?;
    Ok(Json(Message::new("Password changed successfully")))
}

/// A live session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResource {
    pub id: Uuid,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: String,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// Whether this is the session of the calling token.
    pub current: bool,
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "auth", responses((status = 200, body = [SessionResource])), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn list_sessions(
    State(app): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<SessionResource>>, ApiError> {
    let row = current_user(&app, &user).await?;
    let now = Utc::now();
    let text = |t: chrono::DateTime<Utc>| sparc_projections::format_timestamp(t);
    Ok(Json(
        row.state
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at > now)
            .map(|(id, s)| SessionResource {
                id: *id,
                created_at: text(s.created_at),
                expires_at: text(s.expires_at),
                last_used_at: text(s.last_used_at),
                user_agent: s.user_agent.clone(),
                ip_address: s.ip_address.clone(),
                current: *id == user.session_id,
            })
            .collect(),
    ))
}

/// Ends one of the caller's sessions.
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "auth", params(("id" = Uuid, Path, description = "Session id")),
    responses((status = 200, body = Message), (status = 404, description = "Session not found"),
        (status = 409, description = "The account kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id, %id))]
async fn revoke_session(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Message>, ApiError> {
    end_session(&app, &user, id, &ctx).await?;
    Ok(Json(Message::new("Session revoked successfully")))
}

/// Ends every session of the caller, this one included.
#[utoipa::path(delete, path = "/api/v1/auth/sessions", tag = "auth",
    responses((status = 200, body = Message), (status = 409, description = "The account kept changing concurrently")), security(("bearer" = [])))]
#[tracing::instrument(level = "debug", skip_all, fields(user = %user.user_id))]
async fn revoke_all_sessions(
    State(app): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
) -> Result<Json<Message>, ApiError> {
    app.execute::<User>(
        user.user_id,
        UserCommand::RevokeAllSessions { at: Utc::now() },
        &ctx.metadata(user.user_id.to_string()),
        None,
    )
    .await?
    .settled(&app)
    .await?;
    Ok(Json(Message::new("All sessions revoked successfully")))
}
