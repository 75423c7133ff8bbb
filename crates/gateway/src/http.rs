//! The gateway's routes: the WebSocket upgrade and its health check.
//!
//! The token is checked before the upgrade, but a refusal is still sent *through* the
//! WebSocket (close 1008 `"Authentication failed"`), because a browser cannot read the status
//! of a failed upgrade. The connection caps are checked before the upgrade too (see
//! `admission`), and refuse with an HTTP 429: a client over a cap gets no socket to hold.
//! Buffers are set explicitly: tungstenite's defaults (a 128 KiB read
//! buffer allocated up front, an unbounded write buffer, 64 MiB messages) would cost ~130 KB per
//! idle connection and let one client hold megabytes.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use sparc_bus::BusStatus;

use crate::Shared;
use crate::auth::AuthFailure;
use crate::connection::{self, INTERNAL_ERROR, POLICY};

/// The read buffer: client frames are a few hundred bytes at most.
const READ_BUFFER: usize = 1024;
/// Frames sent together (a change's two frames, the changes queued behind it) are buffered up
/// to this much and written with one system call when the batch is flushed; a batch larger
/// than this is written out as it fills. A connection holds no write buffer until its first
/// frame; after that it keeps the capacity its largest batch needed (tungstenite does not shrink
/// it).
const WRITE_BUFFER: usize = 16 * 1024;
/// The most a blocked socket may buffer: above the largest frame (a task with 1 MiB of
/// params), well below what would let one client hold much memory.
const MAX_WRITE_BUFFER: usize = 2 * 1024 * 1024;
/// The largest client message (an `authenticate` frame is under 1 KiB).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// The subprotocol that carries a token: `Sec-WebSocket-Protocol: bearer, <token>`.
const BEARER: &str = "bearer";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(connect))
        .route("/ws/health", get(health))
        .with_state(shared)
}

/// `?token=…&last_event_id=…`.
#[derive(Debug, Deserialize)]
struct ConnectParams {
    token: Option<String>,
    last_event_id: Option<String>,
}

/// The token of `Sec-WebSocket-Protocol: bearer, <token>`, if offered.
fn bearer_protocol(upgrade: &WebSocketUpgrade) -> Option<String> {
    let mut offered = upgrade.requested_protocols();
    let scheme = offered.next()?.to_str().ok()?;
    if !scheme.eq_ignore_ascii_case(BEARER) {
        return None;
    }
    offered.next()?.to_str().ok().map(str::to_owned)
}

async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<ConnectParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The process cap first: under a flood of upgrades no token is checked in vain.
    let mut pass = match shared.admission.enter() {
        Ok(pass) => pass,
        Err(refusal) => return refusal.into_response(),
    };
    let token = params.token.or_else(|| bearer_protocol(&upgrade));
    let viewer = match token {
        Some(token) => shared.authenticator.authenticate(&token).await,
        None => Err(AuthFailure::Rejected),
    };
    if let Ok(viewer) = &viewer
        && let Err(refusal) = pass.claim(viewer.user_id)
    {
        return refusal.into_response();
    }
    let resume_from = params.last_event_id;
    upgrade
        .protocols([BEARER])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The place is held as long as the connection lives.
            let _pass = pass;
            let (mut tx, rx) = socket.split();
            let (code, reason) = match viewer {
                Ok(viewer) => {
                    return connection::serve(shared, tx, rx, viewer, resume_from).await;
                }
                Err(AuthFailure::Rejected) => (POLICY, "Authentication failed"),
                Err(AuthFailure::Unavailable) => (INTERNAL_ERROR, "Internal error"),
            };
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tx.send(close).await;
        })
}

/// `{status, connections: {local, total}}`: `degraded` while the bus is unreachable.
async fn health(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let status = match shared.bus.status() {
        BusStatus::Disconnected => "degraded",
        BusStatus::Connected | BusStatus::Embedded => "healthy",
    };
    Json(json!({
        "status": status,
        "connections": {
            "local": shared.hub.connections(),
            "total": shared.total_connections(),
        },
    }))
}
