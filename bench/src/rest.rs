//! A few calls of the sparc REST API for the load generators: JSON POSTs, registering and
//! logging in users, and a signed-in user's task calls ([`Session`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::workload::params;

/// The password every benchmark user gets (it meets the registration policy).
pub const PASSWORD: &str = "L0adGen-Passw0rd!";

/// POSTs `body` as JSON (with a bearer token when given) and returns the JSON answer; a non-2xx
/// status is an error carrying the status and body.
pub async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

/// Logs `username` in on the service at `api` and returns the access token.
pub async fn login(
    client: &reqwest::Client,
    api: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let body = post(
        client,
        format!("{api}/api/v1/auth/login"),
        None,
        json!({"username": username, "password": password}),
    )
    .await
    .with_context(|| format!("logging in {username}"))?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access token")
}

/// Registers `username` (password [`PASSWORD`], an e-mail under `load.test`) and logs it in:
/// the access token.
pub async fn register_and_login(
    client: &reqwest::Client,
    api: &str,
    username: &str,
) -> anyhow::Result<String> {
    post(
        client,
        format!("{api}/api/v1/auth/register"),
        None,
        json!({"username": username, "email": format!("{username}@load.test"), "password": PASSWORD}),
    )
    .await
    .with_context(|| format!("registering {username}"))?;
    login(client, api, username, PASSWORD).await
}

/// An HTTP/1.1 client keeping up to `connections` idle keep-alive connections (no gzip,
/// `TCP_NODELAY`, a 30 s timeout per request).
pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The schedule of the tasks the read benchmarks create: once a year, so that none of them is
/// due while a benchmark runs. Tens of thousands of tasks due at one moment make the scheduler
/// fire them all, a minute or more of work that a benchmark of something else would measure
/// by chance (a weekday schedule every quarter of an hour did, in working hours).
pub const QUIET_SCHEDULE: &str = "0 3 1 1 *";

/// A signed-in user's calls on one instance, shared by the calls of a phase.
pub struct Session {
    /// The user's own connections.
    pub client: reqwest::Client,
    /// Base URL of the `sparc serve` the calls go to.
    pub api: String,
    /// The access token.
    pub token: String,
}

impl Session {
    /// `POST /api/v1/tasks`: the `n`th task ([`params`]), on [`QUIET_SCHEDULE`] in
    /// Europe/Paris.
    pub async fn create_task(&self, n: u64) -> Result<(), String> {
        let response = self
            .client
            .post(format!("{}/api/v1/tasks", self.api))
            .bearer_auth(&self.token)
            .json(&json!({
                "skill_name": "code-review",
                "schedule_cron": QUIET_SCHEDULE,
                "timezone": "Europe/Paris",
                "params": params(n),
            }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        expect(response, StatusCode::CREATED).await
    }

    /// `GET /api/v1/tasks?{query}`, the body read whole.
    pub async fn list_tasks(&self, query: &str) -> Result<(), String> {
        let response = self
            .client
            .get(format!("{}/api/v1/tasks?{query}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        expect(response, StatusCode::OK).await
    }

    /// The `total` of the user's task list.
    pub async fn task_total(&self) -> anyhow::Result<u64> {
        let page: Value = self
            .client
            .get(format!("{}/api/v1/tasks?limit=1", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        page["total"]
            .as_u64()
            .context("a task list without `total`")
    }
}

/// Creates `count` tasks as `session` over `connections` concurrent connections (tasks
/// numbered from `first`).
pub async fn create_tasks(
    session: &Arc<Session>,
    first: u64,
    count: u64,
    connections: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut creators = Vec::new();
    for _ in 0..connections {
        let (session, next) = (session.clone(), next.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), String>(());
                }
                session.create_task(first + n).await?;
            }
        }));
    }
    for creator in creators {
        creator.await?.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Reads the whole body (as a client must) and checks the status.
pub async fn expect(response: reqwest::Response, status: StatusCode) -> Result<(), String> {
    let actual = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if actual == status {
        Ok(())
    } else {
        Err(format!("{actual}: {}", String::from_utf8_lossy(&body)))
    }
}
