//! Who is calling: JWT issuing and checking ([`TokenService`]), the [`AuthUser`], [`Author`]
//! and [`MaybeAuthUser`] extractors, roles, and the [`SessionDirectory`] port through which the
//! extractor asks whether a session is still live.
//!
//! Tokens are HS256 JWTs with the claims `sub` (user id), `username`, `role`, `type`
//! (`access`|`refresh`), `iat`, `exp`, `jti` and `sid` (session id). Decoding accepts only HS256
//! with our key, no leeway on `exp`, and only the expected `type`, so `alg: none`, other
//! algorithms, forged, expired and swapped tokens are all refused. A token that checks out is not
//! enough: its session must still be live and its user active (logout, rotation reuse, password
//! change and deactivation all end sessions), which [`AuthUser`] asks the [`SessionDirectory`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Once;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, BoxError};
use crate::settings::ApiSettings;

/// The message of a 401 for a missing or non-bearer `Authorization` header.
pub const NOT_AUTHENTICATED: &str = "Not authenticated";
/// The message of a 401 for a bearer token that does not check out.
pub const INVALID_CREDENTIALS: &str = "Could not validate credentials";

/// The JWT signing secret. Its `Debug` prints `Secret(***)` so it cannot leak through logs or
/// config dumps.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; only for handing to a key constructor.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a user may do: the domain's role (`admin`, `auditor`, `agent`, `user` on the wire), with
/// `can_read_all()` (admin, auditor) and `can_write_all()` (admin). Re-exported so the API and
/// the event log share one definition.
pub use sparc_domain::user::Role;

/// Which of the two token kinds a JWT is; the `type` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Short-lived, sent as `Authorization: Bearer`.
    Access,
    /// Long-lived, only accepted by `/auth/refresh` and `/auth/logout`.
    Refresh,
}

/// The claims of our JWTs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The username at issue time (display only; authorization uses `sub` and `role`).
    pub username: String,
    /// The role at issue time.
    pub role: Role,
    /// Access or refresh.
    #[serde(rename = "type")]
    pub kind: TokenKind,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// The token id; for refresh tokens the rotation handle the session remembers.
    pub jti: Uuid,
    /// The session this token belongs to.
    pub sid: Uuid,
}

/// A freshly signed token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Lifetime in seconds, the `expires_in` of the login and refresh answers.
    pub expires_in: i64,
    /// The `exp` claim as a time, for the session's `expires_at`.
    pub expires_at: DateTime<Utc>,
    /// The `jti` claim.
    pub jti: Uuid,
}

/// Why a token (or its absence) does not authenticate anyone.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a JWT, wrong algorithm (`none` included), wrong key, or unreadable claims.
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// `exp` is in the past (no leeway).
    #[error("token has expired")]
    Expired,
    /// A refresh token where an access token belongs, or the reverse.
    #[error("expected a {expected:?} token")]
    WrongKind {
        /// The kind that was required.
        expected: TokenKind,
    },
    /// The session was revoked or expired, or the user was deactivated.
    #[error("session is no longer active")]
    SessionInactive,
    /// Signing failed: only possible with a broken crypto provider.
    #[error("token signing failed: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => ApiError::Unauthorized(NOT_AUTHENTICATED.to_owned()),
            AuthError::Signing(err) => ApiError::internal(err),
            AuthError::Invalid(_)
            | AuthError::Expired
            | AuthError::WrongKind { .. }
            | AuthError::SessionInactive => ApiError::Unauthorized(INVALID_CREDENTIALS.to_owned()),
        }
    }
}

/// Why a [`TokenService`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    /// HS256 keys shorter than the hash output are brute-forceable.
    #[error("the JWT secret must be at least {min} bytes long", min = TokenService::MIN_SECRET_BYTES)]
    WeakSecret,
    /// A token lifetime of zero or less would make every token expired at birth.
    #[error("token lifetimes must be positive")]
    NonPositiveLifetime,
}

/// Signs and checks our JWTs. Build one at startup and share it as `Arc<TokenService>`.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Shortest accepted secret: 32 bytes, the HS256 output size.
    pub const MIN_SECRET_BYTES: usize = 32;

    /// A service signing with `secret`, issuing tokens that live `access_ttl` and `refresh_ttl`.
    ///
    /// Installs jsonwebtoken's RustCrypto provider for the process if none is installed yet
    /// (jsonwebtoken 11 panics at first use without one).
    ///
    /// # Errors
    /// [`TokenConfigError`] for a secret under 32 bytes or a non-positive lifetime.
    pub fn new(
        secret: &Secret,
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> Result<Self, TokenConfigError> {
        if secret.expose().len() < Self::MIN_SECRET_BYTES {
            return Err(TokenConfigError::WeakSecret);
        }
        if access_ttl <= Duration::zero() || refresh_ttl <= Duration::zero() {
            return Err(TokenConfigError::NonPositiveLifetime);
        }
        install_crypto_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            access_ttl,
            refresh_ttl,
        })
    }

    /// A service with the lifetimes of `settings` (`access_token_minutes`, `refresh_token_days`).
    ///
    /// # Errors
    /// As [`TokenService::new`].
    pub fn from_settings(
        secret: &Secret,
        settings: &ApiSettings,
    ) -> Result<Self, TokenConfigError> {
        let access = Duration::try_minutes(settings.access_token_minutes)
            .ok_or(TokenConfigError::NonPositiveLifetime)?;
        let refresh = Duration::try_days(settings.refresh_token_days)
            .ok_or(TokenConfigError::NonPositiveLifetime)?;
        Self::new(secret, access, refresh)
    }

    /// Lifetime of refresh tokens, which is also how long a session lives without use.
    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }

    /// Signs an access token for a session, with a fresh `jti`.
    ///
    /// # Errors
    /// [`AuthError::Signing`] only with a broken crypto provider.
    pub fn issue_access(
        &self,
        user_id: Uuid,
        username: &str,
        role: Role,
        session_id: Uuid,
    ) -> Result<IssuedToken, AuthError> {
        let subject = Subject {
            user_id,
            username,
            role,
            session_id,
        };
        self.issue(TokenKind::Access, &subject, Uuid::new_v4(), Utc::now())
    }

    /// Signs a refresh token for a session; `jti` is the handle the session stores so that a
    /// rotated (reused) token can be recognised.
    ///
    /// # Errors
    /// [`AuthError::Signing`] only with a broken crypto provider.
    pub fn issue_refresh(
        &self,
        user_id: Uuid,
        username: &str,
        role: Role,
        session_id: Uuid,
        jti: Uuid,
    ) -> Result<IssuedToken, AuthError> {
        let subject = Subject {
            user_id,
            username,
            role,
            session_id,
        };
        self.issue(TokenKind::Refresh, &subject, jti, Utc::now())
    }

    fn issue(
        &self,
        kind: TokenKind,
        subject: &Subject<'_>,
        jti: Uuid,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, AuthError> {
        let ttl = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        let expires_at = now + ttl;
        let claims = Claims {
            sub: subject.user_id,
            username: subject.username.to_owned(),
            role: subject.role,
            kind,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti,
            sid: subject.session_id,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AuthError::Signing)?;
        Ok(IssuedToken {
            token,
            expires_in: ttl.num_seconds(),
            expires_at,
            jti,
        })
    }

    /// Checks an access token's signature, algorithm, expiry and kind. Does not check the
    /// session; [`authenticate`] does.
    ///
    /// # Errors
    /// [`AuthError::Invalid`], [`AuthError::Expired`] or [`AuthError::WrongKind`].
    pub fn decode_access(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token, TokenKind::Access)
    }

    /// Checks a refresh token the same way as [`TokenService::decode_access`].
    ///
    /// # Errors
    /// As [`TokenService::decode_access`].
    pub fn decode_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token, TokenKind::Refresh)
    }

    fn decode(&self, token: &str, expected: TokenKind) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                JwtErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(err),
            })?
            .claims;
        if claims.kind == expected {
            Ok(claims)
        } else {
            Err(AuthError::WrongKind { expected })
        }
    }
}

/// Who a token is issued to.
struct Subject<'a> {
    user_id: Uuid,
    username: &'a str,
    role: Role,
    session_id: Uuid,
}

/// jsonwebtoken 11 needs a process-wide crypto provider; install RustCrypto's unless the binary
/// already installed one (then `install_default` fails harmlessly).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _already_installed =
            jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

/// The port through which authentication asks the read side whether a session still counts.
///
/// Implemented over the sessions/users read model by the composition root; a fake in tests.
pub trait SessionDirectory: Send + Sync {
    /// `Ok(true)` if `session_id` belongs to `user_id`, is neither revoked nor expired, and the
    /// user is active.
    ///
    /// # Errors
    /// The read model could not be asked; the request then fails with a logged 500 rather than
    /// a 401 that would log the user out.
    fn is_active(&self, user_id: Uuid, session_id: Uuid) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Of `sessions` (user and session ids), those no longer live: asked for the sessions of
    /// many open connections at once. By default [`is_active`](Self::is_active) for each.
    ///
    /// # Errors
    /// The read model could not be asked.
    fn ended(
        &self,
        sessions: Vec<(Uuid, Uuid)>,
    ) -> BoxFuture<'_, Result<HashSet<(Uuid, Uuid)>, BoxError>> {
        Box::pin(async move {
            let mut ended = HashSet::new();
            for (user_id, session_id) in sessions {
                if !self.is_active(user_id, session_id).await? {
                    ended.insert((user_id, session_id));
                }
            }
            Ok(ended)
        })
    }

    /// Drops whatever this directory remembers about `user_id`'s sessions: called once a change
    /// to them (a logout, a revocation, a new password) has reached the read model.
    fn forget(&self, _user_id: Uuid) {}
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

/// Checks an access token and its session: what [`AuthUser`] does, for callers outside an
/// extractor (the WebSocket gateway's `?token=` and `authenticate` frames).
///
/// # Errors
/// 401 [`ApiError::Unauthorized`] for a bad token or dead session; 500 if the directory fails.
pub async fn authenticate(
    tokens: &TokenService,
    sessions: &dyn SessionDirectory,
    token: &str,
) -> Result<AuthUser, ApiError> {
    let claims = tokens.decode_access(token)?;
    authenticate_claims(sessions, claims).await
}

/// The claims of a request's access token, checked by a layer before the handler (the rate
/// limiter, which needs the user): [`AuthUser`] takes them instead of checking the token again.
/// Only server code puts them in a request's extensions.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub Claims);

/// [`authenticate`] after the token's check: the session must be live.
async fn authenticate_claims(
    sessions: &dyn SessionDirectory,
    claims: Claims,
) -> Result<AuthUser, ApiError> {
    match sessions.is_active(claims.sub, claims.sid).await {
        Ok(true) => Ok(AuthUser {
            user_id: claims.sub,
            username: claims.username,
            role: claims.role,
            session_id: claims.sid,
        }),
        Ok(false) => Err(AuthError::SessionInactive.into()),
        Err(err) => Err(ApiError::Internal(err)),
    }
}

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
        let user = match parts.extensions.remove::<VerifiedClaims>() {
            Some(VerifiedClaims(claims)) => authenticate_claims(state.sessions(), claims).await?,
            None => {
                let token = bearer_token(&parts.headers).ok_or(AuthError::Missing)?;
                authenticate(state.tokens(), state.sessions(), token).await?
            }
        };
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
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    pub(crate) const TEST_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    pub(crate) fn token_service() -> TokenService {
        TokenService::new(
            &Secret::new(TEST_SECRET),
            Duration::minutes(60),
            Duration::days(7),
        )
        .expect("the test secret is long enough")
    }

    fn alice() -> (Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    #[test]
    fn an_access_token_decodes_to_its_claims() {
        let tokens = token_service();
        let (user, session) = alice();
        let issued = tokens
            .issue_access(user, "alice", Role::Auditor, session)
            .expect("signs");
        assert_eq!(issued.expires_in, 3600);
        let claims = tokens
            .decode_access(&issued.token)
            .expect("a fresh token is valid");
        assert_eq!(claims.sub, user);
        assert_eq!(claims.sid, session);
        assert_eq!(claims.username, "alice");
        assert_eq!(claims.role, Role::Auditor);
        assert_eq!(claims.kind, TokenKind::Access);
        assert_eq!(claims.jti, issued.jti);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn a_refresh_token_carries_the_given_jti_and_lives_seven_days() {
        let tokens = token_service();
        let (user, session) = alice();
        let jti = Uuid::new_v4();
        let issued = tokens
            .issue_refresh(user, "alice", Role::User, session, jti)
            .expect("signs");
        assert_eq!(issued.expires_in, 7 * 24 * 3600);
        let claims = tokens
            .decode_refresh(&issued.token)
            .expect("a fresh token is valid");
        assert_eq!(claims.jti, jti);
        assert_eq!(claims.kind, TokenKind::Refresh);
    }

    #[test]
    fn the_claims_use_the_contract_names() {
        let tokens = token_service();
        let (user, session) = alice();
        let issued = tokens
            .issue_access(user, "alice", Role::Admin, session)
            .expect("signs");
        let payload: Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&issued.token).expect("decodable");
        for claim in [
            "sub", "username", "role", "type", "iat", "exp", "jti", "sid",
        ] {
            assert!(
                payload.get(claim).is_some(),
                "missing claim {claim}: {payload}"
            );
        }
        assert_eq!(payload["type"], "access");
        assert_eq!(payload["role"], "admin");
    }

    #[test]
    fn an_alg_none_token_is_rejected() {
        let tokens = token_service();
        let (user, session) = alice();
        let issued = tokens
            .issue_access(user, "alice", Role::Admin, session)
            .expect("signs");
        let payload = issued.token.split('.').nth(1).expect("a JWT has a payload");
        // base64url of {"alg":"none","typ":"JWT"}, then the genuine claims and no signature.
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(
            tokens.decode_access(&forged),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_signed_with_another_algorithm_is_rejected() {
        let tokens = token_service();
        let (user, session) = alice();
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(
            tokens
                .issue_access(user, "alice", Role::User, session)
                .expect("signs")
                .token,
        )
        .expect("decodable");
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .expect("signs");
        assert!(matches!(
            tokens.decode_access(&hs512),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_signed_with_another_key_is_rejected() {
        let (user, session) = alice();
        let other = TokenService::new(
            &Secret::new("another-secret-that-is-also-long-enough"),
            Duration::minutes(60),
            Duration::days(7),
        )
        .expect("long enough");
        let forged = other
            .issue_access(user, "alice", Role::Admin, session)
            .expect("signs");
        assert!(matches!(
            token_service().decode_access(&forged.token),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn an_expired_token_is_rejected_without_leeway() {
        let tokens = token_service();
        let (user, session) = alice();
        let subject = Subject {
            user_id: user,
            username: "alice",
            role: Role::User,
            session_id: session,
        };
        // Expired five seconds ago: inside jsonwebtoken's default 60 s leeway, outside ours.
        let issued_at = Utc::now() - Duration::minutes(60) - Duration::seconds(5);
        let issued = tokens
            .issue(TokenKind::Access, &subject, Uuid::new_v4(), issued_at)
            .expect("signs");
        assert!(matches!(
            tokens.decode_access(&issued.token),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn a_refresh_token_is_not_an_access_token_and_vice_versa() {
        let tokens = token_service();
        let (user, session) = alice();
        let refresh = tokens
            .issue_refresh(user, "alice", Role::User, session, Uuid::new_v4())
            .expect("signs");
        let access = tokens
            .issue_access(user, "alice", Role::User, session)
            .expect("signs");
        assert!(matches!(
            tokens.decode_access(&refresh.token),
            Err(AuthError::WrongKind {
                expected: TokenKind::Access
            })
        ));
        assert!(matches!(
            tokens.decode_refresh(&access.token),
            Err(AuthError::WrongKind {
                expected: TokenKind::Refresh
            })
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        for garbage in ["", "abc", "a.b.c", "Bearer x.y.z"] {
            assert!(matches!(
                token_service().decode_access(garbage),
                Err(AuthError::Invalid(_))
            ));
        }
    }

    #[test]
    fn a_short_secret_or_a_zero_lifetime_is_refused() {
        let short = TokenService::new(
            &Secret::new("secret"),
            Duration::minutes(1),
            Duration::days(1),
        );
        assert_eq!(short.err(), Some(TokenConfigError::WeakSecret));
        let settings = ApiSettings {
            access_token_minutes: 0,
            ..ApiSettings::default()
        };
        let zero = TokenService::from_settings(&Secret::new(TEST_SECRET), &settings);
        assert_eq!(zero.err(), Some(TokenConfigError::NonPositiveLifetime));
    }

    #[test]
    fn the_lifetimes_come_from_the_settings() {
        let settings = ApiSettings {
            access_token_minutes: 5,
            refresh_token_days: 1,
            ..ApiSettings::default()
        };
        let tokens =
            TokenService::from_settings(&Secret::new(TEST_SECRET), &settings).expect("valid");
        let (user, session) = alice();
        assert_eq!(
            tokens
                .issue_access(user, "a", Role::User, session)
                .expect("signs")
                .expires_in,
            300
        );
        assert_eq!(tokens.refresh_ttl(), Duration::days(1));
    }

    #[test]
    fn a_secret_never_debug_prints() {
        let secret = Secret::new(TEST_SECRET);
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert!(!format!("{:?}", token_service()).contains(TEST_SECRET));
    }

    #[test]
    fn roles_in_tokens_use_the_lowercase_wire_names() {
        let tokens = token_service();
        let (user, session) = alice();
        let issued = tokens
            .issue_access(user, "a", Role::Auditor, session)
            .expect("signs");
        let payload: Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&issued.token).expect("decodable");
        assert_eq!(payload["role"], "auditor");
        assert_eq!(
            tokens.decode_access(&issued.token).expect("valid").role,
            Role::Auditor
        );
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
