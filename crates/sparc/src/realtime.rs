//! Real time: the change bus, the outbox relay and the WebSocket gateway, wired together.
//!
//! `sparc serve` runs the relay and mounts the gateway on its own listener ([`start`]);
//! `sparc gateway` runs only a gateway ([`run_gateway`]), any number of them behind a load
//! balancer, sharing nothing but NATS and reading the database only to replay. The gateway
//! checks tokens through the API's own token service and session directory ([`ApiTokens`]).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use axum::Router;
use chrono::{DateTime, Utc};
use sparc_api::error::ApiError;
use sparc_api::{App, RuntimeProbe, ServiceInfo};
use sparc_bus::{ChangeBus, InProcessBus, NatsBus, Relay, Subjects};
use sparc_gateway::{
    AdminNotices, AuthFailure, Authenticator, Gateway, GatewayConfig, GatewayCounters, Viewer,
};
use sparc_memory::StateChange;
use sparc_projections::ProjectionRunner;
use sparc_store::outbox::CommittedBatch;
use sparc_store::{CommandBus, Database, Generations};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::Settings;
use crate::keys;
use crate::server::shutdown_signal;

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

/// Starts the relay (fed by `committed`, the read models' committed batches) and a gateway for
/// `app`'s users; returns the gateway's routes and the background tasks.
pub async fn start(
    db: &Database,
    bus: Arc<dyn ChangeBus>,
    app: Arc<App>,
    committed: broadcast::Receiver<CommittedBatch>,
    config: GatewayConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let relay = Relay::new(db.clone(), bus.clone()).with_feed(committed);
    let (gateway, mut tasks) = Gateway::start(
        db,
        bus.clone(),
        Arc::new(ApiTokens(app.clone())),
        config,
        shutdown.clone(),
    )
    .await
    .context("could not start the WebSocket gateway")?;
    // Set once here, right after both exist; a second set cannot happen. The probe must not
    // hold the gateway itself: it holds `app` (for tokens), and `app` would then never drop.
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
    let info = ServiceInfo {
        environment: settings.environment.clone(),
        bus: "connected",
        started_at: Utc::now(),
        stall_after: settings.projection_stall_after(),
    };
    // The gateway checks tokens exactly as the API does, through an `App` that serves no routes.
    let app = Arc::new(App::new(
        db.clone(),
        Arc::new(CommandBus::new(&db)),
        ProjectionRunner::new(db.clone(), Vec::new(), Vec::new()).handle(),
        &key,
        settings.api.clone(),
        info,
        Generations::default(),
    )?);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (gateway, tasks) = Gateway::start(
        &db,
        bus(&settings).await?,
        Arc::new(ApiTokens(app.clone())),
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
    let router = sparc_api::middleware::apply(gateway.router(), &settings.api, app.tokens.clone());
    crate::http::serve(listener, router, settings.http_limits(), shutdown_signal()).await;
    tracing::info!("shutting down");
    let _ = shutdown.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// The gateway's [`Authenticator`]: the API's access-token and session checks.
pub struct ApiTokens(pub Arc<App>);

#[async_trait]
impl Authenticator for ApiTokens {
    async fn authenticate(&self, token: &str) -> Result<Viewer, AuthFailure> {
        let app = &self.0;
        let user = sparc_api::auth::authenticate(&app.tokens, app.sessions.as_ref(), token)
            .await
            .map_err(|error| match error {
                ApiError::Unauthorized(_) => AuthFailure::Rejected,
                other => {
                    tracing::warn!(error = %other, "could not check a WebSocket token");
                    AuthFailure::Unavailable
                }
            })?;
        let expires_at = app
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
        self.0.sessions.ended(sessions).await.map_err(|error| {
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
