//! Settings: one typed tree loaded from defaults, then an optional TOML file (`--config` or
//! `SPARC_CONFIG`), then environment variables (`SPARC_…`, plus the conventional
//! `DATABASE_URL` and `NATS_URL`). Secrets are [`Secret`]s, which never print.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
pub use sparc_accounts::tokens::Secret;
use sparc_api::settings::ApiSettings;

/// The default embedded database: a SQLite file created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/sparc.db";

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable (the default in a terminal).
    #[default]
    Pretty,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Everything `sparc` can be configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    /// Address the HTTP server listens on (`SPARC_LISTEN`).
    pub listen: SocketAddr,
    /// The database (`DATABASE_URL`): `sqlite://path` (embedded) or `postgres://…`.
    pub database_url: Secret,
    /// The NATS server (`NATS_URL`); unset means the in-process bus.
    pub nats_url: Option<String>,
    /// The NATS names' prefix (`SPARC_NATS_NAMESPACE`, default `sparc`: stream `SPARC_CHANGES`,
    /// subjects `sparc.changes.…`); deployments sharing one NATS server need their own.
    pub nats_namespace: String,
    /// The JWT signing key (`SPARC_JWT_SECRET`). Required with Postgres; with SQLite a key is
    /// generated once and kept beside the database file.
    pub jwt_secret: Option<Secret>,
    /// Run pending migrations when the service starts (`SPARC_MIGRATE_ON_START`).
    pub migrate_on_start: bool,
    /// Connections in the PostgreSQL pool (`SPARC_DATABASE_POOL_SIZE`, default 16); SQLite
    /// keeps its own.
    pub database_pool_size: u32,
    /// Log format (`SPARC_LOG_FORMAT`: `pretty` or `json`).
    pub log_format: LogFormat,
    /// A name for this deployment, shown by the detailed health check (`SPARC_ENVIRONMENT`).
    pub environment: String,
    /// How often the WebSocket gateway pings its clients, in seconds
    /// (`SPARC_WEBSOCKET_PING_SECONDS`, default 30, at least 1). A client silent for twice that
    /// is closed, and on every ping the gateway closes the connections whose login session has
    /// ended (logout, password or role change, deactivation).
    pub websocket_ping_seconds: u64,
    /// WebSocket connections one user may hold on one process (`SPARC_WEBSOCKET_CONNECTIONS_PER_USER`,
    /// or the contract's `SPARC_WS_CONNECTIONS_PER_USER`; default 50, `0`: no cap); an upgrade
    /// beyond is refused with 429.
    pub websocket_connections_per_user: usize,
    /// WebSocket connections one process holds at most (`SPARC_WEBSOCKET_MAX_CONNECTIONS`,
    /// default 10,000, `0`: no cap); an upgrade beyond is refused with 429.
    pub websocket_max_connections: usize,
    /// The most bytes of changed resources a reconnecting WebSocket client is replayed
    /// (`SPARC_WEBSOCKET_REPLAY_MAX_BYTES`, default 16 MiB); beyond, it gets `resync_required`.
    pub websocket_replay_max_bytes: i64,
    /// Open HTTP connections at most, WebSockets included (`SPARC_MAX_CONNECTIONS`, default
    /// 15,000, below the 20,000 open files a process may have; `0`: no cap); a connection beyond
    /// is answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from its connection or
    /// its previous answer, before the connection is closed (`SPARC_HEADER_READ_TIMEOUT_SECONDS`,
    /// default 10, at least 1).
    pub header_read_timeout_seconds: u64,
    /// How long an event may wait for a consumer of the log (read model, policy, hash chainer)
    /// before the consumer is reported `stalled` (`SPARC_PROJECTION_STALL_SECONDS`, default 30).
    pub projection_stall_seconds: u64,
    /// HTTP settings: rate limits, token lifetimes, HSTS (`SPARC_RATE_LIMIT_PER_MINUTE`, …).
    #[serde(flatten)]
    pub api: ApiSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: Secret::new(DEFAULT_DATABASE_URL),
            nats_url: None,
            nats_namespace: sparc_bus::Subjects::DEFAULT_NAMESPACE.to_owned(),
            jwt_secret: None,
            migrate_on_start: true,
            database_pool_size: sparc_store::db::POSTGRES_POOL_SIZE,
            log_format: LogFormat::default(),
            environment: "development".to_owned(),
            websocket_ping_seconds: 30,
            websocket_connections_per_user: 50,
            websocket_max_connections: 10_000,
            websocket_replay_max_bytes: 16 * 1024 * 1024,
            max_connections: 15_000,
            header_read_timeout_seconds: 10,
            projection_stall_seconds: 30,
            api: ApiSettings::default(),
        }
    }
}

impl Settings {
    /// Opens the configured database with the configured pool size (migrations not applied).
    pub async fn connect_database(&self) -> anyhow::Result<sparc_store::Database> {
        use anyhow::Context as _;
        sparc_store::Database::connect_with_pool_size(
            self.database_url.expose(),
            self.database_pool_size,
        )
        .await
        .context("could not open the database")
    }

    /// Loads the settings: defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("SPARC_")
                    .ignore(&["CONFIG", "PASSWORD"])
                    .map(|key| {
                        // The contract's name for it (keys compare without case).
                        if key == "ws_connections_per_user" {
                            "websocket_connections_per_user".into()
                        } else {
                            key.into()
                        }
                    }),
            )
            .merge(Env::raw().only(&["DATABASE_URL", "NATS_URL"]))
            .extract()
            .map_err(Box::new)
    }

    /// The WebSocket gateway's heartbeat and limits.
    pub fn gateway(&self) -> sparc_gateway::GatewayConfig {
        let ping = std::time::Duration::from_secs(self.websocket_ping_seconds.max(1));
        sparc_gateway::GatewayConfig {
            ping_interval: ping,
            silence_timeout: ping * 2,
            connections_per_user: self.websocket_connections_per_user,
            max_connections: self.websocket_max_connections,
            replay_max_bytes: self.websocket_replay_max_bytes,
            ..sparc_gateway::GatewayConfig::default()
        }
    }

    /// The HTTP server's bounds on connections.
    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs(
                self.header_read_timeout_seconds.max(1),
            ),
        }
    }

    /// [`projection_stall_seconds`](Self::projection_stall_seconds) as a duration (at least 1 s).
    pub fn projection_stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.projection_stall_seconds.max(1))
    }

    /// Whether the database is the embedded SQLite file.
    pub fn is_embedded(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let settings = Settings {
            jwt_secret: Some(Secret::new("hunter2")),
            database_url: Secret::new("postgres://user:pw@db/sparc"),
            ..Settings::default()
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("pw@db"));
    }

    #[test]
    fn defaults_are_the_embedded_mode_on_localhost_8080() {
        let settings = Settings::default();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert!(settings.is_embedded());
        assert!(settings.nats_url.is_none());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` closure returns its own large error
    fn a_toml_file_and_the_environment_override_defaults_in_that_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sparc.toml", "listen = \"127.0.0.1:9000\"\nenvironment = \"staging\"\nrate_limit_per_minute = 7\n")?;
            jail.set_env("SPARC_ENVIRONMENT", "production");
            jail.set_env("DATABASE_URL", "postgres://localhost/sparc");
            let settings =
                Settings::load(Some(Path::new("sparc.toml"))).expect("settings should load");
            assert_eq!(settings.listen.to_string(), "127.0.0.1:9000");
            assert_eq!(settings.environment, "production");
            assert_eq!(settings.api.rate_limit_per_minute, 7);
            assert!(!settings.is_embedded());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` closure returns its own large error
    fn the_connection_caps_come_from_the_environment_under_either_name() {
        figment::Jail::expect_with(|jail| {
            let defaults = Settings::load(None).expect("settings should load");
            assert_eq!(defaults.websocket_connections_per_user, 50);
            assert_eq!(defaults.websocket_max_connections, 10_000);
            assert_eq!(defaults.websocket_replay_max_bytes, 16 * 1024 * 1024);
            assert_eq!(defaults.max_connections, 15_000);
            assert_eq!(defaults.header_read_timeout_seconds, 10);
            jail.set_env("SPARC_WS_CONNECTIONS_PER_USER", "3");
            jail.set_env("SPARC_WEBSOCKET_MAX_CONNECTIONS", "0");
            jail.set_env("SPARC_MAX_CONNECTIONS", "100");
            jail.set_env("SPARC_HEADER_READ_TIMEOUT_SECONDS", "2");
            let settings = Settings::load(None).expect("settings should load");
            assert_eq!(settings.gateway().connections_per_user, 3);
            assert_eq!(settings.gateway().max_connections, 0);
            assert_eq!(
                settings.http_limits(),
                crate::http::Limits {
                    max_connections: 100,
                    header_read_timeout: std::time::Duration::from_secs(2),
                }
            );
            jail.clear_env();
            jail.set_env("SPARC_WEBSOCKET_CONNECTIONS_PER_USER", "4");
            let settings = Settings::load(None).expect("settings should load");
            assert_eq!(settings.websocket_connections_per_user, 4);
            Ok(())
        });
    }
}
