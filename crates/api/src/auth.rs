//! Who is calling, over HTTP: the [`AuthUser`], [`Author`] and [`MaybeAuthUser`] extractors,
//! the bearer token they read, the ownership checks handlers make, and how the accounts crate's
//! errors answer (401 `"Not authenticated"` without a token, 401 `"Could not validate
//! credentials"` for one that does not check out, 503 for a password hash that had to wait too
//! long). Tokens and sessions themselves live in `sparc_accounts` ([`sparc_accounts::tokens`],
//! [`sparc_accounts::sessions`]).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sparc_accounts::caller::{Caller, authenticate, authenticate_claims};
use sparc_accounts::password::PasswordError;
use sparc_accounts::sessions::SessionDirectory;
use sparc_accounts::tokens::{AuthError, Claims, TokenService};
use uuid::Uuid;

use crate::error::ApiError;

/// The message of a 401 for a missing or non-bearer `Authorization` header.
pub const NOT_AUTHENTICATED: &str = "Not authenticated";
/// The message of a 401 for a bearer token that does not check out.
pub const INVALID_CREDENTIALS: &str = "Could not validate credentials";

/// What a user may do: the domain's role (`admin`, `auditor`, `agent`, `user` on the wire), with
/// `can_read_all()` (admin, auditor) and `can_write_all()` (admin). Re-exported so the API and
/// the event log share one definition.
pub use sparc_domain::user::Role;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Signing(err) => ApiError::internal(err),
            AuthError::Unavailable(cause) => ApiError::Internal(cause),
            AuthError::Invalid(_)
            | AuthError::Expired
            | AuthError::WrongKind { .. }
            | AuthError::SessionInactive => ApiError::Unauthorized(INVALID_CREDENTIALS.to_owned()),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::Overloaded(overloaded) => Self::overloaded(overloaded),
            other => Self::internal(other),
        }
    }
}

/// What the auth extractors need from the router state.
///
/// A trait of this crate rather than `FromRef` bounds: the orphan rule forbids
/// `impl FromRef<Arc<App>> for Arc<TokenService>` outside axum and std, while `impl AuthState for
/// Arc<App>` is allowed wherever `App` lives.
pub trait AuthState: Send + Sync {
    /// The service that checks tokens.
    fn tokens(&self) -> &TokenService;
    /// The directory that says whether a session is live.
    fn sessions(&self) -> &dyn SessionDirectory;
    /// Waits until the creates this instance has answered that `reader` could see (`None`: one
    /// who sees everything) are visible to reads (see [`crate::answered_creates`]); a state
    /// that answers no create early has nothing to wait for.
    fn answered_creates_visible(
        &self,
        _reader: Option<Uuid>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The authenticated caller, extracted from `Authorization: Bearer <access token>`.
///
/// Needs a state implementing [`AuthState`].
/// Rejections: 401 `"Not authenticated"` without a bearer header, 401
/// `"Could not validate credentials"` for a bad token or a dead session, 500 if the session
/// directory fails. The result is cached in the request extensions, so extracting it twice asks
/// the directory once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The `sub` claim.
    pub user_id: Uuid,
    /// The `username` claim.
    pub username: String,
    /// The `role` claim.
    pub role: Role,
    /// The `sid` claim.
    pub session_id: Uuid,
}

impl AuthUser {
    /// `Ok` for admins.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for everyone else.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_role(&[Role::Admin])
    }

    /// `Ok` if the caller has one of `allowed` (agent registry writes: `[Admin, Agent]`).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] otherwise.
    pub fn require_role(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// `Ok` if the caller owns the resource or may read everything (admin, auditor).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] otherwise (BOLA).
    pub fn ensure_can_read(&self, owner_id: Uuid) -> Result<(), ApiError> {
        if owner_id == self.user_id || self.role.can_read_all() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// `Ok` if the caller owns the resource or may write everything (admin).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] otherwise; auditors are read-only.
    pub fn ensure_can_write(&self, owner_id: Uuid) -> Result<(), ApiError> {
        if owner_id == self.user_id || self.role.can_write_all() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl From<Caller> for AuthUser {
    fn from(caller: Caller) -> Self {
        Self {
            user_id: caller.user_id,
            username: caller.username,
            role: caller.role,
            session_id: caller.session_id,
        }
    }
}

/// The claims of a request's access token, checked by a layer before the handler (the rate
/// limiter, which needs the user): [`AuthUser`] takes them instead of checking the token again.
/// Only server code puts them in a request's extensions.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub Claims);

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Marks a request that has waited for the creates answered before it.
#[derive(Clone, Copy)]
struct AnsweredCreatesVisible;

impl<S: AuthState> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    /// Authenticates like [`Author`], then waits until the creates this instance answered
    /// before are in the read models (once per request), so that what the handler reads shows
    /// them.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Author(user) = Author::from_request_parts(parts, state).await?;
        if parts.extensions.insert(AnsweredCreatesVisible).is_none() {
            // Only a plain user reads nothing but their own; an agent reports on anyone's
            // tasks, so it waits for every create, as admins and auditors do.
            let reader = (user.role == Role::User).then_some(user.user_id);
            state.answered_creates_visible(reader).await?;
        }
        Ok(user)
    }
}

/// The authenticated caller of a request that creates a resource and reads no read model before
/// it writes: unlike [`AuthUser`] it does not wait for earlier creates to reach the read models
/// (the create's answer is built from the command's outcome). Same rejections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author(pub AuthUser);

impl<S: AuthState> FromRequestParts<S> for Author {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(Self(user.clone()));
        }
        let caller = match parts.extensions.remove::<VerifiedClaims>() {
            Some(VerifiedClaims(claims)) => authenticate_claims(state.sessions(), claims).await?,
            None => {
                let token = bearer_token(&parts.headers)
                    .ok_or_else(|| ApiError::Unauthorized(NOT_AUTHENTICATED.to_owned()))?;
                authenticate(state.tokens(), state.sessions(), token).await?
            }
        };
        let user = AuthUser::from(caller);
        parts.extensions.insert(user.clone());
        Ok(Self(user))
    }
}

/// The caller if a bearer token was sent, `None` if not. A token that was sent but does not
/// check out is still a 401: a client that tried to authenticate should learn it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl<S: AuthState> FromRequestParts<S> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.headers.contains_key(AUTHORIZATION) {
            AuthUser::from_request_parts(parts, state)
                .await
                .map(|user| Self(Some(user)))
        } else {
            Ok(Self(None))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use futures::future::BoxFuture;
    use serde_json::{Value, json};
    use sparc_accounts::sessions::BoxError;
    use tower::ServiceExt;

    pub(crate) use sparc_accounts::testing::token_service;

    fn alice() -> (Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    #[test]
    fn ownership_checks_follow_the_roles() {
        let owner = Uuid::new_v4();
        let caller = |role| AuthUser {
            user_id: Uuid::new_v4(),
            username: "x".into(),
            role,
            session_id: Uuid::new_v4(),
        };
        let me = AuthUser {
            user_id: owner,
            ..caller(Role::User)
        };
        assert!(me.ensure_can_read(owner).is_ok() && me.ensure_can_write(owner).is_ok());
        assert!(matches!(
            caller(Role::User).ensure_can_read(owner),
            Err(ApiError::Forbidden)
        ));
        assert!(caller(Role::Auditor).ensure_can_read(owner).is_ok());
        assert!(matches!(
            caller(Role::Auditor).ensure_can_write(owner),
            Err(ApiError::Forbidden)
        ));
        assert!(caller(Role::Admin).ensure_can_write(owner).is_ok());
        assert!(matches!(
            caller(Role::Agent).require_admin(),
            Err(ApiError::Forbidden)
        ));
        assert!(
            caller(Role::Agent)
                .require_role(&[Role::Admin, Role::Agent])
                .is_ok()
        );
    }

    /// Live sessions as a set; `fail` makes the directory unreachable.
    #[derive(Default)]
    struct FakeSessions {
        live: Mutex<HashSet<(Uuid, Uuid)>>,
        fail: bool,
    }

    impl SessionDirectory for FakeSessions {
        fn is_active(
            &self,
            user_id: Uuid,
            session_id: Uuid,
        ) -> BoxFuture<'_, Result<bool, BoxError>> {
            let answer = if self.fail {
                Err("session store unreachable".into())
            } else {
                Ok(self
                    .live
                    .lock()
                    .expect("not poisoned")
                    .contains(&(user_id, session_id)))
            };
            Box::pin(async move { answer })
        }
    }

    #[derive(Clone)]
    struct TestState {
        tokens: Arc<TokenService>,
        sessions: Arc<dyn SessionDirectory>,
    }

    impl AuthState for TestState {
        fn tokens(&self) -> &TokenService {
            &self.tokens
        }
        fn sessions(&self) -> &dyn SessionDirectory {
            self.sessions.as_ref()
        }
    }

    struct Fixture {
        app: Router,
        tokens: Arc<TokenService>,
        sessions: Arc<FakeSessions>,
    }

    fn fixture(fail: bool) -> Fixture {
        let tokens = Arc::new(token_service());
        let sessions = Arc::new(FakeSessions {
            fail,
            ..FakeSessions::default()
        });
        let state = TestState {
            tokens: tokens.clone(),
            sessions: sessions.clone(),
        };
        let app = Router::new()
            .route("/me", get(|user: AuthUser| async move { user.username }))
            .route(
                "/maybe",
                get(|MaybeAuthUser(user): MaybeAuthUser| async move {
                    user.map_or_else(|| "anonymous".to_owned(), |u| u.username)
                }),
            )
            .with_state(state);
        Fixture {
            app,
            tokens,
            sessions,
        }
    }

    impl Fixture {
        fn login(&self) -> (String, Uuid, Uuid) {
            let (user, session) = alice();
            self.sessions
                .live
                .lock()
                .expect("not poisoned")
                .insert((user, session));
            let token = self
                .tokens
                .issue_access(user, "alice", Role::User, session)
                .expect("signs");
            (token.token, user, session)
        }

        async fn get(&self, uri: &str, authorization: Option<&str>) -> (StatusCode, String, bool) {
            let mut request = Request::get(uri);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = self
                .app
                .clone()
                .oneshot(request.body(Body::empty()).expect("a valid request"))
                .await
                .expect("infallible")
                .into_response();
            let status = response.status();
            let challenged = response.headers().get(header::WWW_AUTHENTICATE).is_some();
            let body = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("readable");
            (
                status,
                String::from_utf8_lossy(&body).into_owned(),
                challenged,
            )
        }
    }

    #[tokio::test]
    async fn a_valid_bearer_token_with_a_live_session_authenticates() {
        let fixture = fixture(false);
        let (token, _, _) = fixture.login();
        let (status, body, _) = fixture.get("/me", Some(&format!("Bearer {token}"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
        let (status, _, _) = fixture.get("/me", Some(&format!("bearer {token}"))).await;
        assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
    }

    #[tokio::test]
    async fn no_authorization_header_is_401_not_authenticated_with_a_challenge() {
        let (status, body, challenged) = fixture(false).get("/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            serde_json::from_str::<Value>(&body).ok(),
            Some(json!({"detail": NOT_AUTHENTICATED}))
        );
        assert!(challenged);
    }

    #[tokio::test]
    async fn a_bad_token_is_401_could_not_validate_credentials() {
        let (status, body, challenged) = fixture(false).get("/me", Some("Bearer nope")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            serde_json::from_str::<Value>(&body).ok(),
            Some(json!({"detail": INVALID_CREDENTIALS}))
        );
        assert!(challenged);
    }

    #[tokio::test]
    async fn a_refresh_token_as_bearer_is_401() {
        let fixture = fixture(false);
        let (_, user, session) = fixture.login();
        let refresh = fixture
            .tokens
            .issue_refresh(user, "alice", Role::User, session, Uuid::new_v4())
            .expect("signs");
        let (status, _, _) = fixture
            .get("/me", Some(&format!("Bearer {}", refresh.token)))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_revoked_session_is_401_even_with_a_valid_token() {
        let fixture = fixture(false);
        let (token, user, session) = fixture.login();
        fixture
            .sessions
            .live
            .lock()
            .expect("not poisoned")
            .remove(&(user, session));
        let (status, body, _) = fixture.get("/me", Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains(INVALID_CREDENTIALS));
    }

    #[tokio::test]
    async fn an_unreachable_session_directory_is_500_not_401() {
        let fixture = fixture(true);
        let (token, _, _) = fixture.login();
        let (status, body, _) = fixture.get("/me", Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !body.contains("unreachable"),
            "the cause must not leak: {body}"
        );
    }

    #[tokio::test]
    async fn maybe_auth_user_is_none_without_a_header_and_401_with_a_bad_one() {
        let fixture = fixture(false);
        let (status, body, _) = fixture.get("/maybe", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
        let (status, _, _) = fixture.get("/maybe", Some("Bearer nope")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (token, _, _) = fixture.login();
        let (_, body, _) = fixture
            .get("/maybe", Some(&format!("Bearer {token}")))
            .await;
        assert_eq!(body, "alice");
    }
}
