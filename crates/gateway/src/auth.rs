//! Who is connected: the [`Authenticator`] port through which the gateway checks access tokens.
//!
//! The gateway does not know how tokens are signed or where sessions live; the composition root
//! implements this port with the token service and session directory of `sparc-accounts`, the
//! ones the REST API checks, so a token is accepted on the WebSocket exactly when it would be
//! accepted over HTTP.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sparc_bus::Visibility;
use uuid::Uuid;

/// An authenticated WebSocket user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The user.
    pub user_id: Uuid,
    /// The login session the token belongs to; the connection closes when it ends.
    pub session_id: Uuid,
    /// Admins and auditors see every change; other users their own and the shared ones.
    pub sees_everything: bool,
    /// Admins also get the service's operational notices (the Memory MCP circuit breaker's
    /// changes of state).
    pub admin: bool,
    /// When the token stops being valid; the connection is closed then unless the client sent a
    /// fresh one.
    pub expires_at: DateTime<Utc>,
}

impl Viewer {
    /// Which changes this viewer may see.
    pub fn visibility(&self) -> Visibility {
        if self.sees_everything {
            Visibility::Everything
        } else {
            Visibility::User(self.user_id)
        }
    }
}

/// Why a token does not let anyone in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Missing, malformed, expired, forged, or its session has ended.
    #[error("authentication failed")]
    Rejected,
    /// The session directory could not be asked; the client should retry.
    #[error("authentication is unavailable")]
    Unavailable,
}

/// Checks access tokens.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The viewer `token` authenticates.
    ///
    /// # Errors
    /// [`AuthFailure::Rejected`] for a token that does not check out,
    /// [`AuthFailure::Unavailable`] when that cannot be decided now.
    async fn authenticate(&self, token: &str) -> Result<Viewer, AuthFailure>;

    /// Which of `sessions` (user and session ids of open connections) have ended since their
    /// token was checked: logged out, revoked, ended by a password or role change or a
    /// deactivation.
    ///
    /// # Errors
    /// [`AuthFailure::Unavailable`] when that cannot be decided now.
    async fn ended(
        &self,
        sessions: Vec<(Uuid, Uuid)>,
    ) -> Result<HashSet<(Uuid, Uuid)>, AuthFailure>;
}
