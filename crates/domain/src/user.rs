//! The User aggregate: an account with a role and its login sessions. It decides registration,
//! profile and password changes, role and activation changes, and the session life cycle with
//! refresh-token rotation: each refresh replaces the session's current refresh token id, and
//! presenting a rotated (older) id is treated as theft, revoking the whole session.
//!
//! Passwords arrive here already hashed (argon2id, by the API): the domain never sees a secret.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Email, Timestamp, Username, text_enum};
use crate::{DomainError, ErrorKind};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Reads and writes everything, manages users and projections.
    Admin,
    /// Reads everything, writes nothing.
    Auditor,
    /// A service account of an agent: writes the agent registry and activity.
    Agent,
    /// Owns tasks and projects.
    #[default]
    User,
}

text_enum!(Role {
    Admin => "admin",
    Auditor => "auditor",
    Agent => "agent",
    User => "user",
});

impl Role {
    /// Admins and auditors read every user's resources.
    pub fn can_read_all(self) -> bool {
        matches!(self, Role::Admin | Role::Auditor)
    }

    /// Only admins change other users' resources.
    pub fn can_write_all(self) -> bool {
        self == Role::Admin
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// The user logged out or revoked it.
    Logout,
    /// A rotated refresh token was presented again.
    RefreshTokenReuse,
    /// The password changed.
    PasswordChanged,
    /// The account was deactivated.
    Deactivated,
    /// The role changed: tokens carry the role, so those issued before must stop working.
    RoleChanged,
    /// A login found the user at their cap of live sessions: the oldest ended to make room.
    SessionLimit,
}

/// A login session, identified in tokens by `sid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The id of the refresh token that may be used next.
    pub refresh_jti: Uuid,
    /// Start.
    pub created_at: Timestamp,
    /// When the current refresh token expires.
    pub expires_at: Timestamp,
    /// Last login or refresh.
    pub last_used_at: Timestamp,
    /// Client address at login.
    pub ip_address: Option<String>,
    /// Client user agent at login.
    pub user_agent: Option<String>,
}

/// Profile fields a user may change; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProfileChanges {
    /// Display name (≤100).
    pub full_name: Option<String>,
    /// About (≤500).
    pub bio: Option<String>,
    /// Picture address (≤500).
    pub avatar_url: Option<String>,
}

/// What can be asked of a user.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Create the account (its username and email reserved by the caller).
    Register {
        /// Its id.
        user_id: Uuid,
        /// Login name.
        username: Username,
        /// E-mail.
        email: Email,
        /// argon2id hash.
        password_hash: String,
        /// Role.
        role: Role,
        /// Display name.
        full_name: Option<String>,
        /// Decision time.
        at: Timestamp,
    },
    /// Change profile fields.
    UpdateProfile {
        /// The changes.
        changes: ProfileChanges,
        /// Decision time.
        at: Timestamp,
    },
    /// Replace the password hash and end every session but `keep_session`.
    ChangePassword {
        /// New argon2id hash.
        password_hash: String,
        /// The session that asked, which stays.
        keep_session: Option<Uuid>,
        /// Decision time.
        at: Timestamp,
    },
    /// Change the role (admins only; checked by the caller) and end every session, since each
    /// of its tokens names the old role.
    ChangeRole {
        /// New role.
        role: Role,
        /// Decision time.
        at: Timestamp,
    },
    /// Activate or deactivate the account; deactivation ends every session.
    SetActive {
        /// Active or not.
        active: bool,
        /// Decision time.
        at: Timestamp,
    },
    /// Start a session at login (the caller verified the password). When the user would hold
    /// more than `max_sessions` live sessions, the oldest end first (reason
    /// [`RevocationReason::SessionLimit`]): the cap travels with the command, so the decision
    /// is recorded in the log and every instance and every rebuild agree on it.
    StartSession {
        /// Session id.
        session_id: Uuid,
        /// Its first refresh token id.
        refresh_jti: Uuid,
        /// Refresh expiry.
        expires_at: Timestamp,
        /// Client address.
        ip_address: Option<String>,
        /// Client user agent.
        user_agent: Option<String>,
        /// Live sessions the user may hold, this one included; `0`: no cap.
        max_sessions: usize,
        /// Decision time.
        at: Timestamp,
    },
    /// Rotate the session's refresh token.
    RefreshSession {
        /// Session id.
        session_id: Uuid,
        /// The refresh token id presented.
        presented_jti: Uuid,
        /// The id of the token issued now.
        new_jti: Uuid,
        /// Its expiry.
        expires_at: Timestamp,
        /// Decision time.
        at: Timestamp,
    },
    /// End one session.
    RevokeSession {
        /// Session id.
        session_id: Uuid,
        /// Decision time.
        at: Timestamp,
    },
    /// End every session (logout everywhere).
    RevokeAllSessions {
        /// Decision time.
        at: Timestamp,
    },
}

impl UserCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "Register",
            Self::UpdateProfile { .. } => "UpdateProfile",
            Self::ChangePassword { .. } => "ChangePassword",
            Self::ChangeRole { .. } => "ChangeRole",
            Self::SetActive { .. } => "SetActive",
            Self::StartSession { .. } => "StartSession",
            Self::RefreshSession { .. } => "RefreshSession",
            Self::RevokeSession { .. } => "RevokeSession",
            Self::RevokeAllSessions { .. } => "RevokeAllSessions",
        }
    }
}

/// What happened to a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// Account created.
    UserRegistered {
        /// Its id.
        user_id: Uuid,
        /// Login name.
        username: Username,
        /// E-mail.
        email: Email,
        /// argon2id hash (redacted from every audit output).
        password_hash: String,
        /// Role.
        role: Role,
        /// Display name.
        full_name: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Profile changed.
    ProfileUpdated {
        /// The changes.
        changes: ProfileChanges,
        /// When.
        at: Timestamp,
    },
    /// Password changed.
    PasswordChanged {
        /// New argon2id hash.
        password_hash: String,
        /// When.
        at: Timestamp,
    },
    /// Role changed.
    RoleChanged {
        /// New role.
        role: Role,
        /// When.
        at: Timestamp,
    },
    /// Activated or deactivated.
    ActivationChanged {
        /// Active or not.
        active: bool,
        /// When.
        at: Timestamp,
    },
    /// Logged in.
    SessionStarted {
        /// Session id.
        session_id: Uuid,
        /// First refresh token id.
        refresh_jti: Uuid,
        /// Refresh expiry.
        expires_at: Timestamp,
        /// Client address.
        ip_address: Option<String>,
        /// Client user agent.
        user_agent: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Refresh token rotated.
    SessionRefreshed {
        /// Session id.
        session_id: Uuid,
        /// New refresh token id.
        refresh_jti: Uuid,
        /// New expiry.
        expires_at: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// Session ended.
    SessionRevoked {
        /// Session id.
        session_id: Uuid,
        /// Why.
        reason: RevocationReason,
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::ProfileUpdated { .. } => "ProfileUpdated",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::RoleChanged { .. } => "RoleChanged",
            UserEvent::ActivationChanged { .. } => "ActivationChanged",
            UserEvent::SessionStarted { .. } => "SessionStarted",
            UserEvent::SessionRefreshed { .. } => "SessionRefreshed",
            UserEvent::SessionRevoked { .. } => "SessionRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a user command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    /// Register on an existing id.
    #[error("user already exists")]
    AlreadyExists,
    /// Unknown user.
    #[error("User not found")]
    NotFound,
    /// Login to an inactive account.
    #[error("User account is inactive")]
    Inactive,
    /// A refresh or revoke of an unknown, ended or expired session.
    #[error("Session not found")]
    SessionNotFound,
}

impl DomainError for UserError {
    fn kind(&self) -> ErrorKind {
        match self {
            UserError::NotFound | UserError::SessionNotFound => ErrorKind::NotFound,
            UserError::AlreadyExists | UserError::Inactive => ErrorKind::Conflict,
        }
    }
}

/// The user's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: Uuid,
    /// Whether it was registered.
    pub exists: bool,
    /// Login name.
    pub username: Option<Username>,
    /// E-mail.
    pub email: Option<Email>,
    /// argon2id hash.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Whether it may log in.
    pub is_active: bool,
    /// Display name.
    pub full_name: Option<String>,
    /// About.
    pub bio: Option<String>,
    /// Picture.
    pub avatar_url: Option<String>,
    /// Registration time.
    pub created_at: Option<Timestamp>,
    /// Last login.
    pub last_login: Option<Timestamp>,
    /// Live sessions by id (expired ones are dropped at the next login).
    pub sessions: BTreeMap<Uuid, Session>,
}

impl User {
    /// Whether `session_id` is live at `now`.
    pub fn session_is_live(&self, session_id: Uuid, now: Timestamp) -> bool {
        self.is_active
            && self
                .sessions
                .get(&session_id)
                .is_some_and(|s| s.expires_at > now)
    }

    fn live_session(&self, session_id: Uuid, at: Timestamp) -> Result<&Session, UserError> {
        self.sessions
            .get(&session_id)
            .filter(|s| s.expires_at > at)
            .ok_or(UserError::SessionNotFound)
    }

    fn revoke_all(
        &self,
        except: Option<Uuid>,
        reason: RevocationReason,
        at: Timestamp,
    ) -> Vec<UserEvent> {
        self.sessions
            .keys()
            .filter(|id| Some(**id) != except)
            .map(|&session_id| UserEvent::SessionRevoked {
                session_id,
                reason,
                at,
            })
            .collect()
    }

    /// The live sessions to end so that one more leaves at most `max_sessions` (`0`: none),
    /// oldest first: by start time, then by id (UUIDv7, so in start order too).
    fn make_room(&self, max_sessions: usize, at: Timestamp) -> Vec<UserEvent> {
        if max_sessions == 0 {
            return Vec::new();
        }
        let mut live: Vec<(&Uuid, &Session)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at > at)
            .collect();
        let excess = (live.len() + 1).saturating_sub(max_sessions);
        live.sort_by_key(|(id, s)| (s.created_at, **id));
        live.into_iter()
            .take(excess)
            .map(|(&session_id, _)| UserEvent::SessionRevoked {
                session_id,
                reason: RevocationReason::SessionLimit,
                at,
            })
            .collect()
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        if !self.exists && !matches!(command, UserCommand::Register { .. }) {
            return Err(UserError::NotFound);
        }
        Ok(match command {
            UserCommand::Register {
                user_id,
                username,
                email,
                password_hash,
                role,
                full_name,
                at,
            } => {
                if self.exists {
                    return Err(UserError::AlreadyExists);
                }
                vec![UserEvent::UserRegistered {
                    user_id,
                    username,
                    email,
                    password_hash,
                    role,
                    full_name,
                    at,
                }]
            }
            UserCommand::UpdateProfile { changes, at } => {
                vec![UserEvent::ProfileUpdated { changes, at }]
            }
            UserCommand::ChangePassword {
                password_hash,
                keep_session,
                at,
            } => {
                let mut events = vec![UserEvent::PasswordChanged { password_hash, at }];
                events.extend(self.revoke_all(keep_session, RevocationReason::PasswordChanged, at));
                events
            }
            UserCommand::ChangeRole { role, at } => {
                if role == self.role {
                    return Ok(vec![]);
                }
                let mut events = vec![UserEvent::RoleChanged { role, at }];
                events.extend(self.revoke_all(None, RevocationReason::RoleChanged, at));
                events
            }
            UserCommand::SetActive { active, at } => {
                if active == self.is_active {
                    return Ok(vec![]);
                }
                let mut events = vec![UserEvent::ActivationChanged { active, at }];
                if !active {
                    events.extend(self.revoke_all(None, RevocationReason::Deactivated, at));
                }
                events
            }
            UserCommand::StartSession {
                session_id,
                refresh_jti,
                expires_at,
                ip_address,
                user_agent,
                max_sessions,
                at,
            } => {
                if !self.is_active {
                    return Err(UserError::Inactive);
                }
                // Room first, so the stream never shows more live sessions than the cap.
                let mut events = self.make_room(max_sessions, at);
                events.push(UserEvent::SessionStarted {
                    session_id,
                    refresh_jti,
                    expires_at,
                    ip_address,
                    user_agent,
                    at,
                });
                events
            }
            UserCommand::RefreshSession {
                session_id,
                presented_jti,
                new_jti,
                expires_at,
                at,
            } => {
                if !self.is_active {
                    return Err(UserError::Inactive);
                }
                let session = self.live_session(session_id, at)?;
                if session.refresh_jti == presented_jti {
                    vec![UserEvent::SessionRefreshed {
                        session_id,
                        refresh_jti: new_jti,
                        expires_at,
                        at,
                    }]
                } else {
                    // A token that was already rotated: someone else may hold the newest one, so
                    // the whole session ends. The caller sees the session gone and answers 401.
                    vec![UserEvent::SessionRevoked {
                        session_id,
                        reason: RevocationReason::RefreshTokenReuse,
                        at,
                    }]
                }
            }
            UserCommand::RevokeSession { session_id, at } => {
                self.sessions
                    .get(&session_id)
                    .ok_or(UserError::SessionNotFound)?;
                vec![UserEvent::SessionRevoked {
                    session_id,
                    reason: RevocationReason::Logout,
                    at,
                }]
            }
            UserCommand::RevokeAllSessions { at } => {
                self.revoke_all(None, RevocationReason::Logout, at)
            }
        })
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                user_id,
                username,
                email,
                password_hash,
                role,
                full_name,
                at,
            } => {
                *self = User {
                    id: user_id,
                    exists: true,
                    username: Some(username),
                    email: Some(email),
                    password_hash,
                    role,
                    is_active: true,
                    full_name,
                    created_at: Some(at),
                    ..User::default()
                };
            }
            UserEvent::ProfileUpdated { changes, .. } => {
                if let Some(full_name) = changes.full_name {
                    self.full_name = Some(full_name);
                }
                if let Some(bio) = changes.bio {
                    self.bio = Some(bio);
                }
                if let Some(avatar_url) = changes.avatar_url {
                    self.avatar_url = Some(avatar_url);
                }
            }
            UserEvent::PasswordChanged { password_hash, .. } => self.password_hash = password_hash,
            UserEvent::RoleChanged { role, .. } => self.role = role,
            UserEvent::ActivationChanged { active, .. } => self.is_active = active,
            UserEvent::SessionStarted {
                session_id,
                refresh_jti,
                expires_at,
                ip_address,
                user_agent,
                at,
            } => {
                self.sessions.retain(|_, s| s.expires_at > at);
                self.sessions.insert(
                    session_id,
                    Session {
                        refresh_jti,
                        created_at: at,
                        expires_at,
                        last_used_at: at,
                        ip_address,
                        user_agent,
                    },
                );
                self.last_login = Some(at);
            }
            UserEvent::SessionRefreshed {
                session_id,
                refresh_jti,
                expires_at,
                at,
            } => {
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.refresh_jti = refresh_jti;
                    session.expires_at = expires_at;
                    session.last_used_at = at;
                }
            }
            UserEvent::SessionRevoked { session_id, .. } => {
                self.sessions.remove(&session_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t(m: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::minutes(m)
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: Uuid::from_u128(1),
            username: Username::parse("alice").unwrap(),
            email: Email::parse("alice@example.com").unwrap(),
            password_hash: "$argon2id$fake".into(),
            role: Role::User,
            full_name: None,
            at: t(0),
        }
    }

    fn session(id: u128, jti: u128) -> UserEvent {
        UserEvent::SessionStarted {
            session_id: Uuid::from_u128(id),
            refresh_jti: Uuid::from_u128(jti),
            expires_at: t(60 * 24 * 7),
            ip_address: None,
            user_agent: None,
            at: t(1),
        }
    }

    fn refresh(presented: u128, new: u128) -> UserCommand {
        UserCommand::RefreshSession {
            session_id: Uuid::from_u128(10),
            presented_jti: Uuid::from_u128(presented),
            new_jti: Uuid::from_u128(new),
            expires_at: t(60 * 24 * 8),
            at: t(5),
        }
    }

    #[test]
    fn refreshing_with_the_current_token_rotates_it() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session(10, 100)])
            .when(refresh(100, 101))
            .then_expect_events(vec![UserEvent::SessionRefreshed {
                session_id: Uuid::from_u128(10),
                refresh_jti: Uuid::from_u128(101),
                expires_at: t(60 * 24 * 8),
                at: t(5),
            }]);
    }

    #[test]
    fn presenting_a_rotated_refresh_token_revokes_the_session() {
        TestFramework::<User>::with(())
            .given(vec![
                registered(),
                session(10, 100),
                UserEvent::SessionRefreshed {
                    session_id: Uuid::from_u128(10),
                    refresh_jti: Uuid::from_u128(101),
                    expires_at: t(60 * 24 * 8),
                    at: t(2),
                },
            ])
            .when(refresh(100, 102))
            .then_expect_events(vec![UserEvent::SessionRevoked {
                session_id: Uuid::from_u128(10),
                reason: RevocationReason::RefreshTokenReuse,
                at: t(5),
            }]);
    }

    #[test]
    fn a_revoked_session_cannot_be_refreshed() {
        TestFramework::<User>::with(())
            .given(vec![
                registered(),
                session(10, 100),
                UserEvent::SessionRevoked {
                    session_id: Uuid::from_u128(10),
                    reason: RevocationReason::Logout,
                    at: t(2),
                },
            ])
            .when(refresh(100, 101))
            .then_expect_error(UserError::SessionNotFound);
    }

    #[test]
    fn changing_the_password_revokes_every_other_session() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session(10, 100), session(11, 110)])
            .when(UserCommand::ChangePassword {
                password_hash: "$argon2id$new".into(),
                keep_session: Some(Uuid::from_u128(10)),
                at: t(5),
            })
            .then_expect_events(vec![
                UserEvent::PasswordChanged {
                    password_hash: "$argon2id$new".into(),
                    at: t(5),
                },
                UserEvent::SessionRevoked {
                    session_id: Uuid::from_u128(11),
                    reason: RevocationReason::PasswordChanged,
                    at: t(5),
                },
            ]);
    }

    #[test]
    fn an_inactive_user_cannot_log_in() {
        TestFramework::<User>::with(())
            .given(vec![
                registered(),
                UserEvent::ActivationChanged {
                    active: false,
                    at: t(1),
                },
            ])
            .when(UserCommand::StartSession {
                session_id: Uuid::from_u128(10),
                refresh_jti: Uuid::from_u128(100),
                expires_at: t(100),
                ip_address: None,
                user_agent: None,
                max_sessions: 20,
                at: t(2),
            })
            .then_expect_error(UserError::Inactive);
    }

    #[test]
    fn deactivating_ends_every_session() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session(10, 100)])
            .when(UserCommand::SetActive {
                active: false,
                at: t(3),
            })
            .then_expect_events(vec![
                UserEvent::ActivationChanged {
                    active: false,
                    at: t(3),
                },
                UserEvent::SessionRevoked {
                    session_id: Uuid::from_u128(10),
                    reason: RevocationReason::Deactivated,
                    at: t(3),
                },
            ]);
    }

    #[test]
    fn a_role_change_ends_every_session() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session(10, 100)])
            .when(UserCommand::ChangeRole {
                role: Role::Auditor,
                at: t(3),
            })
            .then_expect_events(vec![
                UserEvent::RoleChanged {
                    role: Role::Auditor,
                    at: t(3),
                },
                UserEvent::SessionRevoked {
                    session_id: Uuid::from_u128(10),
                    reason: RevocationReason::RoleChanged,
                    at: t(3),
                },
            ]);
    }

    #[test]
    fn changing_to_the_same_role_records_nothing() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session(10, 100)])
            .when(UserCommand::ChangeRole {
                role: Role::User,
                at: t(3),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn registering_twice_is_refused() {
        TestFramework::<User>::with(())
            .given(vec![registered()])
            .when(UserCommand::Register {
                user_id: Uuid::from_u128(1),
                username: Username::parse("alice").unwrap(),
                email: Email::parse("alice@example.com").unwrap(),
                password_hash: "x".into(),
                role: Role::User,
                full_name: None,
                at: t(0),
            })
            .then_expect_error(UserError::AlreadyExists);
    }

    fn session_at(id: u128, minute: i64) -> UserEvent {
        UserEvent::SessionStarted {
            session_id: Uuid::from_u128(id),
            refresh_jti: Uuid::from_u128(id * 10),
            expires_at: t(60),
            ip_address: None,
            user_agent: None,
            at: t(minute),
        }
    }

    fn login(id: u128, max_sessions: usize, minute: i64) -> UserCommand {
        UserCommand::StartSession {
            session_id: Uuid::from_u128(id),
            refresh_jti: Uuid::from_u128(id * 10),
            expires_at: t(120),
            ip_address: None,
            user_agent: None,
            max_sessions,
            at: t(minute),
        }
    }

    fn started(id: u128, minute: i64) -> UserEvent {
        UserEvent::SessionStarted {
            session_id: Uuid::from_u128(id),
            refresh_jti: Uuid::from_u128(id * 10),
            expires_at: t(120),
            ip_address: None,
            user_agent: None,
            at: t(minute),
        }
    }

    fn ended_by_limit(id: u128, minute: i64) -> UserEvent {
        UserEvent::SessionRevoked {
            session_id: Uuid::from_u128(id),
            reason: RevocationReason::SessionLimit,
            at: t(minute),
        }
    }

    #[test]
    fn a_login_under_the_cap_ends_no_session() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session_at(10, 1), session_at(11, 2)])
            .when(login(12, 3, 5))
            .then_expect_events(vec![started(12, 5)]);
    }

    #[test]
    fn a_login_at_the_cap_ends_the_oldest_session_first() {
        // Session 11 is the oldest although its id sorts after 10's.
        TestFramework::<User>::with(())
            .given(vec![
                registered(),
                session_at(11, 1),
                session_at(10, 2),
                session_at(12, 3),
            ])
            .when(login(13, 3, 5))
            .then_expect_events(vec![ended_by_limit(11, 5), started(13, 5)]);
    }

    #[test]
    fn a_lowered_cap_ends_every_session_beyond_it_at_the_next_login() {
        TestFramework::<User>::with(())
            .given(vec![
                registered(),
                session_at(10, 1),
                session_at(11, 2),
                session_at(12, 3),
            ])
            .when(login(13, 2, 5))
            .then_expect_events(vec![
                ended_by_limit(10, 5),
                ended_by_limit(11, 5),
                started(13, 5),
            ]);
    }

    #[test]
    fn expired_sessions_take_no_place_under_the_cap() {
        // Both expire at t(60); the login at t(61) finds none live.
        TestFramework::<User>::with(())
            .given(vec![registered(), session_at(10, 1), session_at(11, 2)])
            .when(login(12, 1, 61))
            .then_expect_events(vec![started(12, 61)]);
    }

    #[test]
    fn a_cap_of_zero_ends_nothing() {
        TestFramework::<User>::with(())
            .given(vec![registered(), session_at(10, 1), session_at(11, 2)])
            .when(login(12, 0, 5))
            .then_expect_events(vec![started(12, 5)]);
    }

    #[test]
    fn a_session_ended_by_the_cap_is_no_longer_live() {
        let mut user = User::default();
        for event in [
            registered(),
            session_at(10, 1),
            ended_by_limit(10, 5),
            started(11, 5),
        ] {
            user.apply(event);
        }
        assert!(!user.session_is_live(Uuid::from_u128(10), t(6)));
        assert!(user.session_is_live(Uuid::from_u128(11), t(6)));
        assert_eq!(
            serde_json::to_value(RevocationReason::SessionLimit).unwrap(),
            "session_limit"
        );
    }
}
