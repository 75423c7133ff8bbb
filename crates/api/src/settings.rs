//! The API's tunables: rate limits, token lifetimes, the transport-security switches and the
//! limits of free-form JSON in requests.
//!
//! `ApiSettings` deserializes with every field optional (missing fields take the defaults), so the
//! binary can layer defaults, a TOML file and `SPARC_…` environment variables over it
//! (`SPARC_RATE_LIMIT_PER_MINUTE`, `SPARC_AUTH_RATE_LIMIT_PER_MINUTE`,
//! `SPARC_ACTIVITY_RATE_LIMIT_PER_MINUTE`, `SPARC_AGENT_CREATE_RATE_LIMIT_PER_MINUTE`,
//! `SPARC_ACCESS_TOKEN_MINUTES`, `SPARC_REFRESH_TOKEN_DAYS`, `SPARC_HSTS`,
//! `SPARC_MAX_IN_FLIGHT_PER_CLIENT`, `SPARC_CORS_ORIGINS`, `SPARC_TRUST_FORWARDED_FOR`, `SPARC_MAX_JSON_DEPTH`, `SPARC_MAX_JSON_BYTES`, `SPARC_REQUEST_TIMEOUT_SECONDS`,
//! and the per-user caps `SPARC_MAX_SESSIONS_PER_USER`, `SPARC_MAX_TASKS_PER_USER`,
//! `SPARC_MAX_PROJECTS_PER_USER`, `SPARC_MAX_AGENTS_PER_USER`,
//! `SPARC_MIN_SCHEDULE_INTERVAL_SECONDS`), and the Memory MCP server with its circuit breaker
//! (`SPARC_MEMORY_MCP_COMMAND`, `SPARC_MEMORY_MCP_URL`, `SPARC_MEMORY_MCP_TOOLS`,
//! `SPARC_MEMORY_BREAKER_FAILURES`, `SPARC_MEMORY_BREAKER_OPEN_SECONDS`,
//! `SPARC_MEMORY_BREAKER_HALF_OPEN_SUCCESSES`, `SPARC_MEMORY_STORE_TIMEOUT_MS`,
//! `SPARC_MEMORY_SEARCH_TIMEOUT_MS`), and the cost of new password hashes
//! (`SPARC_PASSWORD_HASH_MEMORY_KIB`, `SPARC_PASSWORD_HASH_PASSES`). The JWT secret is not here: it is a
//! [`sparc_accounts::tokens::Secret`] handed to [`sparc_accounts::tokens::TokenService::new`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sparc_accounts::password::HashCost;
use sparc_accounts::tokens::TokenLifetimes;
use sparc_memory::mapping::MappingError;
use sparc_memory::{Endpoint, MemoryConfig, Thresholds, ToolMapping};

use crate::middleware::{CorsOrigins, TrustedProxies};

/// Settings of the HTTP layer. A rate limit of `0` turns that class of limit off.
///
/// Unknown fields are ignored (not refused) so the struct can be read from a flat `SPARC_…`
/// environment or flattened into the binary's settings tree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiSettings {
    /// Requests per minute for everything not covered below, per user (or per IP when anonymous).
    pub rate_limit_per_minute: u32,
    /// Requests per minute to `/api/v1/auth/*`, per client IP.
    pub auth_rate_limit_per_minute: u32,
    /// `POST /api/v1/agents/activity` per minute, per user (or IP).
    pub activity_rate_limit_per_minute: u32,
    /// `POST /api/v1/agents` per minute, per user (or IP).
    pub agent_create_rate_limit_per_minute: u32,
    /// Requests one client (a user, or an IP when anonymous) may have in progress at once
    /// (`SPARC_MAX_IN_FLIGHT_PER_CLIENT`, default 64; `0`: no cap); one more is refused with
    /// 429 at once, before any work, so a client that never waits for its answers cannot
    /// fill the queues the others need.
    pub max_in_flight_per_client: u32,
    /// Lifetime of access tokens, in minutes; must be positive.
    pub access_token_minutes: i64,
    /// Lifetime of refresh tokens (and so of sessions), in days; must be positive.
    pub refresh_token_days: i64,
    /// Send `Strict-Transport-Security` (only behind TLS).
    pub hsts: bool,
    /// The origins whose pages may call the API and open WebSockets (`SPARC_CORS_ORIGINS`,
    /// comma-separated; none by default: same-origin pages only; `*`: any): see
    /// [`CorsOrigins`].
    pub cors_origins: CorsOrigins,
    /// The proxies whose `X-Forwarded-For` entries are believed (`false`, `true` for the socket
    /// peer, or a list of networks): see [`TrustedProxies`].
    pub trust_forwarded_for: TrustedProxies,
    /// Nested objects and arrays a free-form JSON field (a task's `params`) may have; at most
    /// [`crate::extract::JsonLimits::DEPTH_CEILING`] (more is taken as that).
    pub max_json_depth: usize,
    /// Bytes a free-form JSON field may take as compact JSON.
    pub max_json_bytes: usize,
    /// Every request's deadline, in seconds (`SPARC_REQUEST_TIMEOUT_SECONDS`, default 10): a
    /// command still queued when it passes is refused with 503 and `Retry-After`, unattempted.
    pub request_timeout_seconds: u64,
    /// Live login sessions one user may hold (`SPARC_MAX_SESSIONS_PER_USER`, default 20; `0`:
    /// no cap); a login beyond ends the oldest.
    pub max_sessions_per_user: usize,
    /// Live (not deleted) tasks one user may own (`SPARC_MAX_TASKS_PER_USER`, default 1,000;
    /// `0`: no cap); a create beyond is refused with 409.
    pub max_tasks_per_user: usize,
    /// Live (not deleted) projects one user may own (`SPARC_MAX_PROJECTS_PER_USER`, default
    /// 100; `0`: no cap); a create beyond is refused with 409.
    pub max_projects_per_user: usize,
    /// Registered agents one user may have registered (`SPARC_MAX_AGENTS_PER_USER`, default
    /// 100; `0`: no cap); a registration beyond is refused with 409.
    pub max_agents_per_user: usize,
    /// The shortest gap a task's schedule may leave between two runs, in seconds
    /// (`SPARC_MIN_SCHEDULE_INTERVAL_SECONDS`, default 60, which every 5-field cron expression
    /// meets); a schedule firing more often is refused with 422.
    pub min_schedule_interval_seconds: u64,
    /// Failed logins of one account allowed in a row before each further one closes its logins
    /// for twice as long (`SPARC_LOGIN_FAILURES_BEFORE_BACKOFF`, default 5; 0 turns it off).
    pub login_failures_before_backoff: u32,
    /// A command line (run by `sh -c`) that starts the Memory MCP server, spoken to over stdio
    /// (`SPARC_MEMORY_MCP_COMMAND`).
    pub memory_mcp_command: Option<String>,
    /// The Memory MCP server's streamable-HTTP URL, `http://` (`SPARC_MEMORY_MCP_URL`); used
    /// when no command is set. With neither, memory runs on its fallback alone.
    pub memory_mcp_url: Option<String>,
    /// How store, search and a task's entries map onto the server's tools
    /// (`SPARC_MEMORY_MCP_TOOLS`): `knowledge-graph` (default) or a JSON tool set, see
    /// `sparc_memory::mapping`.
    pub memory_mcp_tools: Option<String>,
    /// Consecutive failed calls that open the breaker (`SPARC_MEMORY_BREAKER_FAILURES`, 3).
    pub memory_breaker_failures: u32,
    /// How long the breaker stays open before probing (`SPARC_MEMORY_BREAKER_OPEN_SECONDS`, 60).
    pub memory_breaker_open_seconds: u64,
    /// Successful half-open calls that close the breaker
    /// (`SPARC_MEMORY_BREAKER_HALF_OPEN_SUCCESSES`, 2).
    pub memory_breaker_half_open_successes: u32,
    /// How long a store may take before it counts as failed (`SPARC_MEMORY_STORE_TIMEOUT_MS`,
    /// 1000).
    pub memory_store_timeout_ms: u64,
    /// How long a search may take (`SPARC_MEMORY_SEARCH_TIMEOUT_MS`, 2000).
    pub memory_search_timeout_ms: u64,
    /// Memory of each new password hash, in KiB (`SPARC_PASSWORD_HASH_MEMORY_KIB`, default
    /// 19456: OWASP's minimum for argon2id). Lower it only for tests.
    pub password_hash_memory_kib: u32,
    /// Passes of each new password hash (`SPARC_PASSWORD_HASH_PASSES`, default 2).
    pub password_hash_passes: u32,
}

impl ApiSettings {
    /// [`request_timeout_seconds`](Self::request_timeout_seconds) as a duration (at least 1 s).
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_timeout_seconds.max(1))
    }

    /// How long new tokens live.
    pub fn token_lifetimes(&self) -> TokenLifetimes {
        TokenLifetimes {
            access_token_minutes: self.access_token_minutes,
            refresh_token_days: self.refresh_token_days,
        }
    }

    /// The cost of new password hashes.
    pub fn password_hash_cost(&self) -> HashCost {
        HashCost {
            memory_kib: self.password_hash_memory_kib,
            passes: self.password_hash_passes,
        }
    }

    /// The Memory MCP configuration these settings describe.
    ///
    /// # Errors
    /// `SPARC_MEMORY_MCP_TOOLS` is neither `knowledge-graph` nor a tool set.
    pub fn memory(&self) -> Result<MemoryConfig, MappingError> {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let endpoint = set(&self.memory_mcp_command)
            .map(Endpoint::Command)
            .or_else(|| set(&self.memory_mcp_url).map(Endpoint::Url));
        Ok(MemoryConfig {
            endpoint,
            mapping: ToolMapping::parse(self.memory_mcp_tools.as_deref())?,
            thresholds: Thresholds {
                failures_to_open: self.memory_breaker_failures.max(1),
                open_for: Duration::from_secs(self.memory_breaker_open_seconds),
                successes_to_close: self.memory_breaker_half_open_successes.max(1),
            },
            store_timeout: Duration::from_millis(self.memory_store_timeout_ms.max(1)),
            search_timeout: Duration::from_millis(self.memory_search_timeout_ms.max(1)),
        })
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: 100,
            auth_rate_limit_per_minute: 50,
            activity_rate_limit_per_minute: 1000,
            agent_create_rate_limit_per_minute: 60,
            max_in_flight_per_client: 64,
            access_token_minutes: 60,
            refresh_token_days: 7,
            hsts: false,
            cors_origins: CorsOrigins::None,
            trust_forwarded_for: TrustedProxies::None,
            max_json_depth: 32,
            max_json_bytes: 64 * 1024,
            request_timeout_seconds: 10,
            max_sessions_per_user: 20,
            max_tasks_per_user: 1000,
            max_projects_per_user: 100,
            max_agents_per_user: 100,
            min_schedule_interval_seconds: 60,
            login_failures_before_backoff: 5,
            memory_mcp_command: None,
            memory_mcp_url: None,
            memory_mcp_tools: None,
            memory_breaker_failures: 3,
            memory_breaker_open_seconds: 60,
            memory_breaker_half_open_successes: 2,
            memory_store_timeout_ms: 1000,
            memory_search_timeout_ms: 2000,
            password_hash_memory_kib: HashCost::OWASP.memory_kib,
            password_hash_passes: HashCost::OWASP.passes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let settings = ApiSettings::default();
        assert_eq!(settings.rate_limit_per_minute, 100);
        assert_eq!(settings.auth_rate_limit_per_minute, 50);
        assert_eq!(settings.activity_rate_limit_per_minute, 1000);
        assert_eq!(settings.agent_create_rate_limit_per_minute, 60);
        assert_eq!(settings.max_in_flight_per_client, 64);
        assert_eq!(settings.access_token_minutes, 60);
        assert_eq!(settings.refresh_token_days, 7);
        assert!(!settings.hsts);
        assert_eq!(settings.cors_origins, CorsOrigins::None);
        assert_eq!(settings.trust_forwarded_for, TrustedProxies::None);
        assert_eq!(settings.max_json_depth, 32);
        assert_eq!(settings.max_json_bytes, 65_536);
        assert_eq!(settings.max_sessions_per_user, 20);
        assert_eq!(settings.max_tasks_per_user, 1000);
        assert_eq!(settings.max_projects_per_user, 100);
        assert_eq!(settings.max_agents_per_user, 100);
        assert_eq!(settings.min_schedule_interval_seconds, 60);
        let memory = settings
            .memory()
            .expect("the default memory settings are valid");
        assert_eq!(memory.endpoint, None);
        assert_eq!(memory.thresholds, Thresholds::default());
        assert_eq!(memory.store_timeout, Duration::from_secs(1));
        assert_eq!(memory.search_timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_memory_command_wins_over_a_url() {
        let settings = ApiSettings {
            memory_mcp_command: Some("mcp-server-memory".into()),
            memory_mcp_url: Some("http://127.0.0.1:9000/mcp".into()),
            ..ApiSettings::default()
        };
        assert_eq!(
            settings.memory().unwrap().endpoint,
            Some(Endpoint::Command("mcp-server-memory".into()))
        );
    }

    #[test]
    fn a_partial_document_keeps_the_defaults_for_missing_fields() {
        let settings: ApiSettings =
            serde_json::from_str(r#"{"rate_limit_per_minute": 0, "hsts": true}"#)
                .expect("a partial document should deserialize");
        assert_eq!(settings.rate_limit_per_minute, 0);
        assert!(settings.hsts);
        assert_eq!(settings.auth_rate_limit_per_minute, 50);
    }
}
