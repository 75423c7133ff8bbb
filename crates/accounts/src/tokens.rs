//! JWTs: signing and checking them ([`TokenService`]), their claims and the signing [`Secret`].
//!
//! Tokens are HS256 JWTs with the claims `sub` (user id), `username`, `role`, `type`
//! (`access`|`refresh`), `iat`, `exp`, `jti` and `sid` (session id). Decoding accepts only HS256
//! with our key, no leeway on `exp`, and only the expected `type`, so `alg: none`, other
//! algorithms, forged, expired and swapped tokens are all refused. A token that checks out is not
//! enough: its session must still be live and its user active, which
//! [`crate::caller::authenticate`] asks the [`crate::sessions::SessionDirectory`].

use std::fmt;
use std::sync::Once;

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sparc_domain::user::Role;
use uuid::Uuid;

use crate::sessions::BoxError;

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

/// Why a token does not authenticate anyone, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
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
    /// The session directory could not be asked; not the caller's fault, so no reason to log
    /// them out.
    #[error("could not check the session: {0}")]
    Unavailable(BoxError),
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

/// How long tokens live, as configured (`SPARC_ACCESS_TOKEN_MINUTES`, `SPARC_REFRESH_TOKEN_DAYS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetimes {
    /// Lifetime of access tokens, in minutes.
    pub access_token_minutes: i64,
    /// Lifetime of refresh tokens (and of an unused session), in days.
    pub refresh_token_days: i64,
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

    /// A service with the configured `lifetimes`, in whole minutes and days.
    ///
    /// # Errors
    /// As [`TokenService::new`]; a lifetime too long for a [`Duration`] is refused too.
    pub fn from_lifetimes(
        secret: &Secret,
        lifetimes: TokenLifetimes,
    ) -> Result<Self, TokenConfigError> {
        let access = Duration::try_minutes(lifetimes.access_token_minutes)
            .ok_or(TokenConfigError::NonPositiveLifetime)?;
        let refresh = Duration::try_days(lifetimes.refresh_token_days)
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
    /// session; [`crate::caller::authenticate`] does.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use crate::testing::{TEST_SECRET, token_service};

    fn alice() -> (Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    /// An access token of a new session of alice's, as `role`.
    fn access_token_as(tokens: &TokenService, role: Role) -> String {
        let (user, session) = alice();
        tokens
            .issue_access(user, "alice", role, session)
            .expect("signs")
            .token
    }

    /// The claims of `token` as JSON, unchecked.
    fn payload_of(token: &str) -> Value {
        jsonwebtoken::dangerous::insecure_decode_claims(token).expect("decodable")
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
        let payload = payload_of(&access_token_as(&token_service(), Role::Admin));
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
        let token = access_token_as(&tokens, Role::Admin);
        let payload = token.split('.').nth(1).expect("a JWT has a payload");
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
        let lifetimes = TokenLifetimes {
            access_token_minutes: 0,
            refresh_token_days: 7,
        };
        let zero = TokenService::from_lifetimes(&Secret::new(TEST_SECRET), lifetimes);
        assert_eq!(zero.err(), Some(TokenConfigError::NonPositiveLifetime));
    }

    #[test]
    fn the_lifetimes_come_in_minutes_and_days() {
        let lifetimes = TokenLifetimes {
            access_token_minutes: 5,
            refresh_token_days: 1,
        };
        let tokens =
            TokenService::from_lifetimes(&Secret::new(TEST_SECRET), lifetimes).expect("valid");
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
        let token = access_token_as(&tokens, Role::Auditor);
        assert_eq!(payload_of(&token)["role"], "auditor");
        assert_eq!(
            tokens.decode_access(&token).expect("valid").role,
            Role::Auditor
        );
    }
}
