//! The connection to the Memory MCP server, over the real protocol (`rmcp`): a child process
//! started from a command line and spoken to over stdio, or a server reached over streamable
//! HTTP. A supervisor task keeps it up: when the process exits (or the connection closes) it
//! starts it again, waiting longer after each failed start (0.2 s doubling to 5 s); calls made
//! meanwhile fail at once as unavailable, which is what opens the breaker.

use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mapping::{CallError, ToolCaller};

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A command line (run by `sh -c`) that starts the server; spoken to over its stdio.
    Command(String),
    /// The URL of a streamable-HTTP server (`http://`).
    Url(String),
}

/// The first wait before starting the server again, and the longest.
const RESTART_FIRST: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// How long the `initialize` handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the server, whichever process currently serves it.
#[derive(Clone, Default)]
pub struct McpClient {
    peer: Arc<RwLock<Option<Peer<RoleClient>>>>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("connected", &self.connected())
            .finish()
    }
}

impl McpClient {
    /// Starts the supervisor, which connects (and reconnects) to `endpoint` until `shutdown`.
    pub fn start(endpoint: Endpoint, shutdown: watch::Receiver<bool>) -> (Self, JoinHandle<()>) {
        let client = Self::default();
        let supervisor = tokio::spawn(supervise(endpoint, client.clone(), shutdown));
        (client, supervisor)
    }

    /// Whether a server is connected now.
    pub fn connected(&self) -> bool {
        self.current()
            .is_some_and(|peer| !peer.is_transport_closed())
    }

    fn current(&self) -> Option<Peer<RoleClient>> {
        self.peer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, peer: Option<Peer<RoleClient>>) {
        *self.peer.write().unwrap_or_else(|e| e.into_inner()) = peer;
    }
}

impl ToolCaller for McpClient {
    async fn call(&self, tool: &str, arguments: Value) -> Result<Value, CallError> {
        let peer = self
            .current()
            .ok_or_else(|| CallError::Unavailable("not connected".to_owned()))?;
        let Value::Object(arguments) = arguments else {
            return Err(CallError::Malformed(
                "tool arguments must be an object".to_owned(),
            ));
        };
        let result = peer
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        tool_output(result)
    }
}

/// A tool's output as JSON: a tool error is the server's refusal; an answer with neither
/// structured content nor JSON text is malformed.
fn tool_output(result: CallToolResult) -> Result<Value, CallError> {
    let text = result
        .content
        .iter()
        .find_map(|block| block.as_text().map(|t| t.text.clone()));
    if result.is_error == Some(true) {
        return Err(CallError::Tool(
            text.unwrap_or_else(|| "tool failed".to_owned()),
        ));
    }
    if let Some(structured) = result.structured_content {
        return Ok(structured);
    }
    let text = text.ok_or_else(|| CallError::Malformed("an empty result".to_owned()))?;
    serde_json::from_str(&text).map_err(|_| {
        CallError::Malformed(format!(
            "not JSON: {}",
            text.chars().take(80).collect::<String>()
        ))
    })
}

/// Connects, serves until the server goes away, and starts again with back-off, until
/// `shutdown`.
async fn supervise(endpoint: Endpoint, client: McpClient, mut shutdown: watch::Receiver<bool>) {
    let mut wait = RESTART_FIRST;
    while !*shutdown.borrow() {
        match connect(&endpoint).await {
            Ok(running) => {
                tracing::info!(endpoint = ?endpoint, "memory MCP server connected");
                client.set(Some(running.peer().clone()));
                wait = RESTART_FIRST;
                let cancel = running.cancellation_token();
                let waiting = running.waiting();
                tokio::pin!(waiting);
                let stopping = tokio::select! {
                    _ = &mut waiting => false,
                    _ = shutdown.wait_for(|stop| *stop) => true,
                };
                client.set(None);
                if stopping {
                    // Closes the connection; a child process is killed with it.
                    cancel.cancel();
                    let _ = waiting.await;
                    return;
                }
                tracing::warn!("memory MCP server went away; starting it again");
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "memory MCP server unavailable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

async fn connect(endpoint: &Endpoint) -> Result<RunningService<RoleClient, ()>, String> {
    let handshake = async {
        match endpoint {
            Endpoint::Command(line) => {
                let mut command = tokio::process::Command::new("sh");
                command.arg("-c").arg(line);
                let (transport, _) = TokioChildProcess::builder(command)
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("could not start `{line}`: {e}"))?;
                ().serve(transport).await.map_err(|e| e.to_string())
            }
            Endpoint::Url(url) => {
                let transport = StreamableHttpClientTransport::from_uri(url.as_str());
                ().serve(transport).await.map_err(|e| e.to_string())
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "the initialize handshake timed out".to_owned())?
}
