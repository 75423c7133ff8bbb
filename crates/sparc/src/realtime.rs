//! Real time: the change bus, the outbox relay and the WebSocket gateway, wired together.
//!
//! `sparc serve` runs the relay and mounts the gateway on its own listener ([`start`]);
//! `sparc gateway` runs only a gateway ([`run_gateway`]), any number of them behind a load
//! balancer, sharing nothing but NATS and reading the database only to replay. The gateway
//! checks tokens as the API does, through the accounts crate's token service and session
//! directory ([`AccountTokens`]).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use axum::Router;
use chrono::DateTime;
use sparc_accounts::caller::authenticate;
use sparc_accounts::sessions::{ReadModelSessions, SessionDirectory};
use sparc_accounts::tokens::{AuthError, TokenService};
use sparc_api::{App, RuntimeProbe};
use sparc_bus::{ChangeBus, InProcessBus, NatsBus, Relay, Subjects};
use sparc_gateway::{
    AdminNotices, AuthFailure, Authenticator, Gateway, GatewayConfig, GatewayCounters, Viewer,
};
use sparc_memory::StateChange;
use sparc_store::outbox::CommittedBatch;
use sparc_store::{Database, Generations, Planning};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::Settings;
use crate::keys;
use crate::server::shutdown_signal;

/// The `application_name` of the relay's PostgreSQL connections (see [`Database::dedicated`]).
pub const RELAY_APPLICATION_NAME: &str = "sparc relay";

/// The bus of this deployment: NATS JetStream when `NATS_URL` is set, else in process.
pub async fn bus(settings: &Settings) -> anyhow::Result<Arc<dyn ChangeBus>> {
    Ok(match &settings.nats_url {
        Some(url) => Arc::new(
            NatsBus::connect(url, Subjects::new(settings.nats_namespace.clone()))
                .await
                .context("could not set up the NATS client")?,
        ),
        None => Arc::new(InProcessBus::new()),
    })
}

/// How the relay hears of the read models' committed changes.
pub struct RelayNews {
    /// The batches the read-model loop commits while it runs in this instance.
    pub committed: broadcast::Receiver<CommittedBatch>,
    /// The change notices this instance hears, from whichever instance runs the loop.
    pub generations: Generations,
    /// Whether the read-model loop runs in this instance now.
    pub loop_runs_here: watch::Receiver<bool>,
}

/// Starts the relay and a gateway for `app`'s users; returns the gateway's routes and the
/// background tasks.
pub async fn start(
    db: &Database,
    bus: Arc<dyn ChangeBus>,
    app: Arc<App>,
    news: RelayNews,
    config: GatewayConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    // A pool of its own, planned once like the projection loops': it runs the same few
    // statements at every batch.
    let relay = Relay::new(
        db.dedicated(RELAY_APPLICATION_NAME, 2, Planning::Once),
        bus.clone(),
    )
    .with_feed(news.committed)
    .with_change_notices(news.generations, news.loop_runs_here);
    let (gateway, mut tasks) = Gateway::start(
        db,
        bus.clone(),
        Arc::new(AccountTokens {
            tokens: app.tokens.clone(),
            sessions: app.sessions.clone(),
        }),
        config,
        shutdown.clone(),
    )
    .await
    .context("could not start the WebSocket gateway")?;
    // Set once here, right after both exist; a second set cannot happen.
    let _ = app.runtime.set(Arc::new(Runtime {
        bus,
        gateway: gateway.counters(),
    }));
    if let Some(changes) = app.memory.state_changes() {
        tasks.push(tokio::spawn(tell_admins_of_breaker_changes(
            changes,
            gateway.admin_notices(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(relay.run(shutdown)));
    Ok((gateway.router(), tasks))
}

/// Sends each change of the Memory MCP circuit breaker's state to the admins connected here, as
/// a `memory_circuit_breaker` frame `{from, to, at}`.
async fn tell_admins_of_breaker_changes(
    mut changes: broadcast::Receiver<StateChange>,
    notices: AdminNotices,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => notices.send(
                    "memory_circuit_breaker",
                    serde_json::json!({
                        "from": change.from.as_str(),
                        "to": change.to.as_str(),
                        "at": change.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    }),
                ),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// `sparc gateway`: serves `/ws` and `/ws/health` on `settings.listen` until ctrl-c or SIGTERM.
pub async fn run_gateway(settings: Settings) -> anyhow::Result<()> {
    if settings.nats_url.is_none() {
        bail!(
            "sparc gateway needs NATS_URL (with the in-process bus the gateway runs inside sparc serve)"
        );
    }
    let key = keys::signing_key(&settings)?;
    let db = settings.connect_database().await?;
    if db.pending_migrations().await? {
        bail!("the database has pending migrations: run `sparc migrate` first");
    }
    // The gateway checks tokens exactly as the API does. No projection runs here, so every
    // session check reads the `users` read model.
    let tokens = Arc::new(TokenService::from_lifetimes(
        &key,
        settings.api.token_lifetimes(),
    )?);
    let sessions = Arc::new(ReadModelSessions::new(db.clone(), None));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (gateway, tasks) = Gateway::start(
        &db,
        bus(&settings).await?,
        Arc::new(AccountTokens {
            tokens: tokens.clone(),
            sessions,
        }),
        settings.gateway(),
        shutdown_rx,
    )
    .await
    .context("could not start the WebSocket gateway")?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("could not listen on {}", settings.listen))?;
    tracing::info!(addr = %settings.listen, "gateway listening");
    // The same middleware as `sparc serve` puts around `/ws`: rate limits, request ids, headers.
    let router = sparc_api::middleware::apply(gateway.router(), &settings.api, tokens);
    crate::http::serve(listener, router, settings.http_limits(), shutdown_signal()).await;
    tracing::info!("shutting down");
    let _ = shutdown.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// The gateway's [`Authenticator`]: the access-token and session checks of the API.
pub struct AccountTokens {
    /// Checks the tokens.
    pub tokens: Arc<TokenService>,
    /// Says whether their sessions are live.
    pub sessions: Arc<dyn SessionDirectory>,
}

#[async_trait]
impl Authenticator for AccountTokens {
    async fn authenticate(&self, token: &str) -> Result<Viewer, AuthFailure> {
        let user = authenticate(&self.tokens, self.sessions.as_ref(), token)
            .await
            .map_err(|error| match error {
                AuthError::Unavailable(cause) => {
                    tracing::warn!(error = %cause, "could not check a WebSocket token");
                    AuthFailure::Unavailable
                }
                _ => AuthFailure::Rejected,
            })?;
        let expires_at = self
            .tokens
            .decode_access(token)
            .ok()
            .and_then(|claims| DateTime::from_timestamp(claims.exp, 0))
            .ok_or(AuthFailure::Rejected)?;
        Ok(Viewer {
            user_id: user.user_id,
            session_id: user.session_id,
            sees_everything: user.role.can_read_all(),
            admin: user.role == sparc_domain::user::Role::Admin,
            expires_at,
        })
    }

    async fn ended(
        &self,
        sessions: Vec<(Uuid, Uuid)>,
    ) -> Result<HashSet<(Uuid, Uuid)>, AuthFailure> {
        self.sessions.ended(sessions).await.map_err(|error| {
            tracing::warn!(%error, "could not check WebSocket sessions");
            AuthFailure::Unavailable
        })
    }
}

/// The health endpoints' view of this process's bus and gateway.
struct Runtime {
    bus: Arc<dyn ChangeBus>,
    gateway: GatewayCounters,
}

impl RuntimeProbe for Runtime {
    fn bus(&self) -> &'static str {
        self.bus.status().as_str()
    }

    fn websocket_connections(&self) -> u64 {
        self.gateway.connections() as u64
    }

    fn websocket_messages(&self) -> (u64, u64) {
        self.gateway.messages()
    }
}

#[cfg(test)]
mod tests {
    use sparc_bus::ChangeKind;
    use sparc_projections::catalog::READ_MODELS;

    #[test]
    fn the_read_models_that_publish_are_the_ones_the_relay_waits_for() {
        let published: Vec<&str> = READ_MODELS
            .iter()
            .filter(|model| model.published)
            .map(|model| model.name)
            .collect();
        let relayed: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.read_model()).collect();
        assert_eq!(published, relayed);
    }
}
