//! What tests that sign and check tokens share: a known secret and the service built on it
//! (one-hour access tokens, seven-day refresh tokens).

use chrono::Duration;

use crate::tokens::{Secret, TokenService};

/// The signing secret of [`token_service`].
pub const TEST_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Tokens signed with [`TEST_SECRET`].
pub fn token_service() -> TokenService {
    TokenService::new(
        &Secret::new(TEST_SECRET),
        Duration::minutes(60),
        Duration::days(7),
    )
    .expect("the test secret is long enough")
}
