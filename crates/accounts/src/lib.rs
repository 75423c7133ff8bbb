//! `sparc-accounts`: accounts, sessions, tokens and passwords, for every way in (the REST API,
//! the WebSocket gateway, `sparc user create`), without HTTP.
//!
//! Module map:
//!
//! - [`tokens`]: JWTs ([`tokens::TokenService`]), their claims and the signing
//!   [`tokens::Secret`], which never prints.
//! - [`sessions`]: the [`sessions::SessionDirectory`] port that says whether a session is still
//!   live, and [`sessions::ReadModelSessions`], its implementation over the `users` read model.
//! - [`caller`]: [`caller::authenticate`], an access token and its session checked together,
//!   giving the [`caller::Caller`].
//! - [`password`]: argon2id hashing off the async runtime, and the password policy.
//! - [`registration`]: account creation, shared by `POST /auth/register` and `sparc user create`.
//! - [`login_guard`]: failed logins back off per account.
//! - `testing` (feature `testing`): the token service the tests of this crate and the API sign
//!   with.

pub mod caller;
pub mod login_guard;
pub mod password;
pub mod registration;
pub mod sessions;
pub mod tokens;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
