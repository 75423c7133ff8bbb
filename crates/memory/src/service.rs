//! The port the API uses: store, search and a task's entries through the Memory MCP server
//! behind the breaker, each answering [`Unavailable`] when the caller must use the fallback (the
//! `memories` read model) instead, and the health and counters the endpoints report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::breaker::{Breaker, BreakerCounts, BreakerState, Refusal, StateChange, Thresholds};
use crate::client::{Endpoint, McpClient};
use crate::mapping::{CallError, Hit, Record, ToolMapping};

/// How the service reaches the Memory MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// The server; `None`: memory runs on the fallback alone.
    pub endpoint: Option<Endpoint>,
    /// How operations map onto its tools.
    pub mapping: ToolMapping,
    /// When the breaker opens and closes.
    pub thresholds: Thresholds,
    /// How long a store may take (1 s).
    pub store_timeout: Duration,
    /// How long a search (or a task's listing) may take (2 s).
    pub search_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            mapping: ToolMapping::KnowledgeGraph,
            thresholds: Thresholds::default(),
            store_timeout: Duration::from_secs(1),
            search_timeout: Duration::from_secs(2),
        }
    }
}

/// Why an operation must be answered from the fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// No server is configured.
    #[error("the Memory MCP server is not configured")]
    Disabled,
    /// The breaker is open.
    #[error("the Memory MCP server is unavailable (circuit breaker open)")]
    BreakerOpen,
    /// The server did not answer in time.
    #[error("the Memory MCP server did not answer within {0:?}")]
    TimedOut(Duration),
    /// The call failed.
    #[error("{0}")]
    Failed(CallError),
}

impl From<Refusal<CallError>> for Unavailable {
    fn from(refusal: Refusal<CallError>) -> Self {
        match refusal {
            Refusal::Rejected => Unavailable::BreakerOpen,
            Refusal::TimedOut(after) => Unavailable::TimedOut(after),
            Refusal::Failed(error) => Unavailable::Failed(error),
        }
    }
}

/// The operations counted for `/memory/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Operations asked of the service (syncs not included).
    pub total_requests: u64,
    /// Those whose call to the server failed (refusals by the breaker not included).
    pub failed_requests: u64,
    /// Those answered from the fallback instead.
    pub fallback_requests: u64,
}

/// What the health endpoints show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryHealth {
    /// Whether a server is configured.
    pub enabled: bool,
    /// Whether it is connected now.
    pub connected: bool,
    /// The breaker's state.
    pub state: BreakerState,
    /// The breaker's counters.
    pub breaker: BreakerCounts,
    /// The operations.
    pub requests: RequestCounts,
    /// When the server was last called.
    pub last_check: Option<DateTime<Utc>>,
}

impl MemoryHealth {
    /// `/api/v1/health`'s `memory_mcp`: `disabled`, `available` (closed and connected),
    /// `unavailable` (open) or `degraded` (probing, or not connected).
    pub fn status(&self) -> &'static str {
        match (self.enabled, self.state, self.connected) {
            (false, _, _) => "disabled",
            (true, BreakerState::Open, _) => "unavailable",
            (true, BreakerState::Closed, true) => "available",
            _ => "degraded",
        }
    }

    /// Whether calls can be expected to reach the server.
    pub fn mcp_available(&self) -> bool {
        self.enabled && self.connected && self.state != BreakerState::Open
    }
}

struct Server {
    client: McpClient,
    /// Held by each store: a server may keep no lock of its own (server-memory reads its file
    /// whole and writes it back, so two stores at once could lose one). Waiting for it counts
    /// toward the store's timeout.
    writes: tokio::sync::Mutex<()>,
    mapping: ToolMapping,
    breaker: Breaker,
    store_timeout: Duration,
    search_timeout: Duration,
}

/// The Memory MCP port.
pub struct MemoryService {
    server: Option<Server>,
    total: AtomicU64,
    failed: AtomicU64,
    fallback: AtomicU64,
}

impl std::fmt::Debug for MemoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryService")
            .field("health", &self.health())
            .finish()
    }
}

impl MemoryService {
    /// Memory on the fallback alone.
    pub fn disabled() -> Self {
        Self {
            server: None,
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
        }
    }

    /// The service for `config`; with an endpoint, also the supervisor task that keeps the
    /// connection up until `shutdown`.
    pub fn start(
        config: MemoryConfig,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, Option<JoinHandle<()>>) {
        let Some(endpoint) = config.endpoint else {
            return (Arc::new(Self::disabled()), None);
        };
        let (client, supervisor) = McpClient::start(endpoint, shutdown);
        let service = Self {
            server: Some(Server {
                client,
                writes: tokio::sync::Mutex::new(()),
                mapping: config.mapping,
                breaker: Breaker::new(config.thresholds),
                store_timeout: config.store_timeout,
                search_timeout: config.search_timeout,
            }),
            ..Self::disabled()
        };
        (Arc::new(service), Some(supervisor))
    }

    /// Whether a server is configured.
    pub fn enabled(&self) -> bool {
        self.server.is_some()
    }

    /// Hands a new entry to the server.
    pub async fn store(&self, record: &Record) -> Result<(), Unavailable> {
        self.counted(self.push(record).await)
    }

    /// Hands an entry stored earlier to the server (the sync policy; not counted as a request).
    pub async fn push(&self, record: &Record) -> Result<(), Unavailable> {
        let server = self.server.as_ref().ok_or(Unavailable::Disabled)?;
        let store = async {
            let _turn = server.writes.lock().await;
            server.mapping.store(&server.client, record).await
        };
        server
            .breaker
            .call(
                server.store_timeout,
                CallError::counts_against_the_server,
                store,
            )
            .await
            .map_err(Unavailable::from)
    }

    /// The server's hits for `query`, best first.
    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, Unavailable> {
        let result = match self.server.as_ref() {
            None => Err(Unavailable::Disabled),
            Some(server) => server
                .breaker
                .call(
                    server.search_timeout,
                    CallError::counts_against_the_server,
                    server.mapping.search(&server.client, query, limit),
                )
                .await
                .map_err(Unavailable::from),
        };
        self.counted(result)
    }

    /// The ids of a task's entries the server holds (`Disabled` when the mapping cannot ask).
    pub async fn task_entries(&self, task_id: Uuid) -> Result<Vec<Uuid>, Unavailable> {
        let result = match self.server.as_ref() {
            None => Err(Unavailable::Disabled),
            Some(server) => server
                .breaker
                .call(
                    server.search_timeout,
                    CallError::counts_against_the_server,
                    server.mapping.task_entries(&server.client, task_id),
                )
                .await
                .map_err(Unavailable::from)
                .and_then(|ids| ids.ok_or(Unavailable::Disabled)),
        };
        self.counted(result)
    }

    fn counted<T>(&self, result: Result<T, Unavailable>) -> Result<T, Unavailable> {
        self.total.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(_) => {}
            Err(Unavailable::Disabled | Unavailable::BreakerOpen) => {
                self.fallback.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.fallback.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Whether the breaker refuses calls now (the sync policy waits instead of asking).
    pub fn refuses_now(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|server| server.breaker.refuses_now())
    }

    /// The changes of the breaker's state (none ever when disabled).
    pub fn state_changes(&self) -> Option<broadcast::Receiver<StateChange>> {
        self.server.as_ref().map(|server| server.breaker.changes())
    }

    /// State and counters.
    pub fn health(&self) -> MemoryHealth {
        let requests = RequestCounts {
            total_requests: self.total.load(Ordering::Relaxed),
            failed_requests: self.failed.load(Ordering::Relaxed),
            fallback_requests: self.fallback.load(Ordering::Relaxed),
        };
        match &self.server {
            None => MemoryHealth {
                enabled: false,
                connected: false,
                state: BreakerState::Closed,
                breaker: BreakerCounts::default(),
                requests,
                last_check: None,
            },
            Some(server) => MemoryHealth {
                enabled: true,
                connected: server.client.connected(),
                state: server.breaker.state(),
                breaker: server.breaker.counts(),
                requests,
                last_check: server.breaker.last_call(),
            },
        }
    }
}
