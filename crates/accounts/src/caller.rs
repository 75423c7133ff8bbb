//! Who is calling: an access token checked together with its session ([`authenticate`]), for
//! every door in (the API's extractors, the WebSocket gateway) alike.

use sparc_domain::user::Role;
use uuid::Uuid;

use crate::sessions::SessionDirectory;
use crate::tokens::{AuthError, Claims, TokenService};

/// An authenticated caller: the claims of a valid access token whose session is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The `sub` claim.
    pub user_id: Uuid,
    /// The `username` claim.
    pub username: String,
    /// The `role` claim.
    pub role: Role,
    /// The `sid` claim.
    pub session_id: Uuid,
}

/// Checks an access token and then its session.
///
/// # Errors
/// [`AuthError::Unavailable`] if the directory could not be asked; any other [`AuthError`]
/// means the token does not authenticate anyone.
pub async fn authenticate(
    tokens: &TokenService,
    sessions: &dyn SessionDirectory,
    token: &str,
) -> Result<Caller, AuthError> {
    let claims = tokens.decode_access(token)?;
    authenticate_claims(sessions, claims).await
}

/// [`authenticate`] for claims already checked by [`TokenService::decode_access`]: the session
/// must be live.
///
/// # Errors
/// [`AuthError::SessionInactive`] for a dead session, [`AuthError::Unavailable`] if the
/// directory could not be asked.
pub async fn authenticate_claims(
    sessions: &dyn SessionDirectory,
    claims: Claims,
) -> Result<Caller, AuthError> {
    match sessions.is_active(claims.sub, claims.sid).await {
        Ok(true) => Ok(Caller {
            user_id: claims.sub,
            username: claims.username,
            role: claims.role,
            session_id: claims.sid,
        }),
        Ok(false) => Err(AuthError::SessionInactive),
        Err(cause) => Err(AuthError::Unavailable(cause)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Duration;
    use futures::future::BoxFuture;

    use super::*;
    use crate::sessions::BoxError;
    use crate::tokens::Secret;

    /// Live sessions as a set; `None` is a directory that cannot be reached.
    struct FakeSessions(Option<HashSet<(Uuid, Uuid)>>);

    impl SessionDirectory for FakeSessions {
        fn is_active(&self, user: Uuid, session: Uuid) -> BoxFuture<'_, Result<bool, BoxError>> {
            let answer = match &self.0 {
                Some(live) => Ok(live.contains(&(user, session))),
                None => Err("session store unreachable".into()),
            };
            Box::pin(async move { answer })
        }
    }

    fn alices_token() -> (TokenService, String, (Uuid, Uuid)) {
        let tokens = TokenService::new(
            &Secret::new("a-test-secret-that-is-long-enough-for-hs256"),
            Duration::minutes(60),
            Duration::days(7),
        )
        .expect("the test secret is long enough");
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = tokens
            .issue_access(user, "alice", Role::User, session)
            .expect("signs")
            .token;
        (tokens, token, (user, session))
    }

    #[tokio::test]
    async fn a_valid_token_with_a_live_session_is_its_caller() {
        let (tokens, token, (user, session)) = alices_token();
        let live = FakeSessions(Some(HashSet::from([(user, session)])));
        let caller = authenticate(&tokens, &live, &token).await.expect("live");
        assert_eq!(
            caller,
            Caller {
                user_id: user,
                username: "alice".into(),
                role: Role::User,
                session_id: session,
            }
        );
    }

    #[tokio::test]
    async fn a_dead_session_is_refused_and_an_unreachable_directory_is_no_refusal() {
        let (tokens, token, _) = alices_token();
        let dead = FakeSessions(Some(HashSet::new()));
        assert!(matches!(
            authenticate(&tokens, &dead, &token).await,
            Err(AuthError::SessionInactive)
        ));
        assert!(matches!(
            authenticate(&tokens, &FakeSessions(None), &token).await,
            Err(AuthError::Unavailable(_))
        ));
        assert!(matches!(
            authenticate(&tokens, &dead, "nope").await,
            Err(AuthError::Invalid(_))
        ));
    }
}
