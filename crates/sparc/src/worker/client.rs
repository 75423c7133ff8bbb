//! The worker's side of the REST API: logging in and keeping the tokens fresh, registering
//! the agent, polling for jobs and reporting runs. [`ApiClient::new`] takes only the base URL
//! and the credentials, so tests can point it at any server.
//!
//! Tokens: the access token is renewed through `/auth/refresh` once three quarters of its
//! life have passed, keeping the rotated refresh token; a refresh or any call answered 401
//! leads to a fresh login. One lock covers renewal, because presenting a rotated refresh token
//! twice would revoke the whole session.

use std::time::Duration;

use rand::Rng as _;
use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Secret;

/// How long a call other than a poll may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What a poll may take beyond its long-poll wait.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// The longest `detail` kept from an error answer.
const MAX_DETAIL_CHARS: usize = 300;
/// The longest access token life taken as given (a day); tokens are renewed at the latest then.
const MAX_TOKEN_LIFE_SECONDS: u64 = 24 * 60 * 60;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: the connection failed or timed out, or the answer was not what the API
    /// sends.
    #[error("could not reach the API")]
    Transport(#[from] reqwest::Error),
    /// The API answered with an error status.
    #[error("the API answered {status}: {detail}")]
    Status {
        status: StatusCode,
        /// The answer's `detail`, or the start of its body.
        detail: String,
        /// The answer's `Retry-After`, in seconds.
        retry_after: Option<Duration>,
    },
}

impl CallError {
    /// Whether trying again later may succeed: no answer, or the service overloaded or
    /// failing (408, 429, 5xx). Anything else is a refusal that will not change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Transport(error) => !error.is_decode() && !error.is_builder(),
            CallError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
        }
    }

    /// How long the service asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Status { retry_after, .. } => *retry_after,
            CallError::Transport(_) => None,
        }
    }

    /// The status the API answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport(_) => None,
        }
    }
}

/// Delays between attempts: exponential from 250 ms, capped at 10 s, with jitter so that many
/// workers do not retry in step; a `Retry-After` (up to a minute) is waited at least.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);
    const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let full = Self::FIRST
            .saturating_mul(1 << self.failures.min(10))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        // Half fixed, half random: never much shorter than the exponential step.
        let half = full / 2;
        let delay = half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
        retry_after.map_or(delay, |asked| delay.max(asked.min(Self::MAX_RETRY_AFTER)))
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A job the API handed to this agent; it is already claimed for it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub execution_id: Uuid,
    pub task_id: Uuid,
    pub skill_name: String,
    #[serde(default)]
    pub params: Value,
    /// The task's own limit on the run.
    pub timeout_seconds: u64,
    /// Which attempt at the run this is (1 for the first).
    pub attempt: u32,
}

#[derive(Debug, Deserialize)]
struct JobList {
    jobs: Vec<Job>,
}

/// A run's end, as `POST /agents/activity` takes it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub agent_id: Uuid,
    pub task_id: Uuid,
    pub execution_id: Uuid,
    pub status: &'static str,
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The agent's entry in the registry, as this worker wants it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEntry {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    pub capabilities: Vec<String>,
}

/// How registration went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A new entry was made.
    Created,
    /// The entry under this id existed (an earlier run of this worker) and was updated.
    Resumed,
    /// The registry refused a new entry and holds none under this id: the name belongs to
    /// another agent, or the id to a deregistered one, or the quota is reached. `detail` is
    /// the API's reason.
    Refused { detail: String },
}

#[derive(Debug, Deserialize)]
struct TokenPair {
    access_token: Secret,
    refresh_token: Secret,
    expires_in: u64,
}

/// The tokens of the current login, and when to renew them.
struct Session {
    access: Secret,
    refresh: Secret,
    renew_at: Instant,
}

impl From<TokenPair> for Session {
    fn from(pair: TokenPair) -> Self {
        // Bounded, so that no answer can make the deadline overflow.
        let life = Duration::from_secs(pair.expires_in.min(MAX_TOKEN_LIFE_SECONDS));
        Self {
            renew_at: Instant::now() + life * 3 / 4,
            access: pair.access_token,
            refresh: pair.refresh_token,
        }
    }
}

/// A logged-in client of the API. Shared by the poll loop and the running jobs.
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: Secret,
    session: Mutex<Option<Session>>,
}

impl ApiClient {
    /// A client of the API at `base_url` (`http://host:port`, no trailing `/`) that logs in
    /// as `username` on its first call.
    pub fn new(
        base_url: impl Into<String>,
        username: impl Into<String>,
        password: Secret,
    ) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("sparc-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.into(),
            username: username.into(),
            password,
            session: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base_url)
    }

    /// Logs in now: the first call would anyway, but this way wrong credentials show at
    /// start.
    pub async fn login(&self) -> Result<(), CallError> {
        let mut session = self.session.lock().await;
        *session = Some(self.new_session().await?);
        Ok(())
    }

    async fn new_session(&self) -> Result<Session, CallError> {
        let response = self
            .http
            .post(self.url("/auth/login"))
            .timeout(CALL_TIMEOUT)
            .json(&json!({"username": self.username, "password": self.password.expose()}))
            .send()
            .await?;
        let pair: TokenPair = checked(response).await?.json().await?;
        tracing::debug!(username = %self.username, "logged in");
        Ok(pair.into())
    }

    /// A current access token: the session's, renewed first when due, or a new login's.
    async fn access_token(&self) -> Result<Secret, CallError> {
        let mut session = self.session.lock().await;
        let renewed = match session.as_ref() {
            Some(current) if Instant::now() < current.renew_at => {
                return Ok(current.access.clone());
            }
            Some(current) => match self.refreshed(&current.refresh).await {
                Err(error) if error.status() == Some(StatusCode::UNAUTHORIZED) => {
                    tracing::info!("refresh refused; logging in again");
                    self.new_session().await?
                }
                other => other?,
            },
            None => self.new_session().await?,
        };
        let access = renewed.access.clone();
        *session = Some(renewed);
        Ok(access)
    }

    async fn refreshed(&self, refresh: &Secret) -> Result<Session, CallError> {
        let response = self
            .http
            .post(self.url("/auth/refresh"))
            .timeout(CALL_TIMEOUT)
            .json(&json!({"refresh_token": refresh.expose()}))
            .send()
            .await?;
        let pair: TokenPair = checked(response).await?.json().await?;
        Ok(pair.into())
    }

    /// Forgets the session if `used` is still its access token, so the next call logs in.
    async fn forget(&self, used: &Secret) {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|s| s.access == *used) {
            *session = None;
        }
    }

    /// Sends an authorized request; on 401 logs in again and sends it once more.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let mut retried = false;
        loop {
            let token = self.access_token().await?;
            let mut request = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(token.expose())
                .timeout(timeout);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                tracing::info!(path, "token refused; logging in again");
                self.forget(&token).await;
                retried = true;
                continue;
            }
            return checked(response).await;
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        Ok(self.call(method, path, body, timeout).await?.json().await?)
    }

    /// Puts `agent` in the registry as `idle`: updates the entry under its id if there is
    /// one (this worker ran before), else registers it. Looking first matters: the API
    /// answers a registration under an existing id with 409, so a restart would otherwise
    /// always take the longer way.
    pub async fn register(&self, agent: &AgentEntry) -> Result<Registration, CallError> {
        if self.update_entry(agent).await? {
            return Ok(Registration::Resumed);
        }
        let mut entry = serde_json::to_value(agent).expect("an agent entry is JSON");
        entry["status"] = json!("idle");
        match self
            .call(Method::POST, "/agents", Some(&entry), CALL_TIMEOUT)
            .await
        {
            Ok(_) => Ok(Registration::Created),
            // Someone registered this id in between (another copy of this worker)?
            Err(CallError::Status {
                status: StatusCode::CONFLICT,
                detail,
                ..
            }) => Ok(if self.update_entry(agent).await? {
                Registration::Resumed
            } else {
                Registration::Refused { detail }
            }),
            Err(error) => Err(error),
        }
    }

    /// Updates the entry under `agent.id`; `false` if there is none.
    async fn update_entry(&self, agent: &AgentEntry) -> Result<bool, CallError> {
        let path = format!("/agents/{}", agent.id);
        match self.call(Method::GET, &path, None, CALL_TIMEOUT).await {
            Ok(_) => {}
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => return Ok(false),
            Err(error) => return Err(error),
        }
        let changes = json!({
            "name": agent.name,
            "type": agent.agent_type,
            "capabilities": agent.capabilities,
            "status": "idle",
        });
        self.call(Method::PUT, &path, Some(&changes), CALL_TIMEOUT)
            .await?;
        Ok(true)
    }

    /// Sets the agent's status (`offline` when the worker stops).
    pub async fn set_status(&self, agent_id: Uuid, status: &str) -> Result<(), CallError> {
        self.call(
            Method::PUT,
            &format!("/agents/{agent_id}"),
            Some(&json!({ "status": status })),
            CALL_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Waits up to `wait` for jobs for `agent_id` and claims at most `limit` (1..=50).
    pub async fn poll(
        &self,
        agent_id: Uuid,
        wait: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, CallError> {
        let path = format!(
            "/agents/{agent_id}/jobs?wait={}&limit={limit}",
            wait.as_secs()
        );
        let list: JobList = self
            .call_json(Method::GET, &path, None, wait + POLL_SLACK)
            .await?;
        Ok(list.jobs)
    }

    /// Reports how a run ended.
    pub async fn report(&self, report: &Report) -> Result<(), CallError> {
        let body = serde_json::to_value(report).expect("a report is JSON");
        self.call(Method::POST, "/agents/activity", Some(&body), CALL_TIMEOUT)
            .await?;
        Ok(())
    }
}

/// `response` if its status is a success, else its status, `detail` and `Retry-After` as a
/// [`CallError::Status`].
async fn checked(response: Response) -> Result<Response, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let detail = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(answer)) => match answer.get("detail") {
            Some(Value::String(detail)) => detail.clone(),
            Some(other) => other.to_string(),
            None => body,
        },
        _ => body,
    };
    Err(CallError::Status {
        status,
        detail: detail.chars().take(MAX_DETAIL_CHARS).collect(),
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use axum::Router;
    use axum::extract::{Json, Path, State};
    use axum::http::HeaderMap;
    use axum::response::{IntoResponse as _, Response as AxumResponse};
    use axum::routing::{get, post};

    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay(None);
        assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
        let later: Vec<Duration> = (0..20).map(|_| backoff.next_delay(None)).collect();
        assert!(later.iter().all(|d| *d <= Backoff::MAX));
        assert!(later[15..].iter().all(|d| *d >= Backoff::MAX / 2));
        backoff.reset();
        assert!(backoff.next_delay(None) <= Duration::from_millis(250));
    }

    #[test]
    fn backoff_waits_at_least_what_retry_after_asks_up_to_a_minute() {
        let mut backoff = Backoff::default();
        let asked = backoff.next_delay(Some(Duration::from_secs(7)));
        assert_eq!(asked, Duration::from_secs(7));
        let capped = backoff.next_delay(Some(Duration::from_secs(3600)));
        assert_eq!(capped, Duration::from_secs(60));
    }

    #[test]
    fn only_overload_and_server_failures_are_transient() {
        let answered = |status| CallError::Status {
            status,
            detail: String::new(),
            retry_after: None,
        };
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
        ] {
            assert!(answered(status).is_transient(), "{status}");
        }
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
            StatusCode::UNPROCESSABLE_ENTITY,
        ] {
            assert!(!answered(status).is_transient(), "{status}");
        }
    }

    /// A stand-in for the API's auth and agent endpoints, keeping what it was sent.
    #[derive(Default)]
    struct Fake {
        expires_in: u64,
        /// Answer polls 503 with `Retry-After: 5`.
        overloaded: bool,
        issued: u32,
        logins: u32,
        access: Option<String>,
        refresh: Option<String>,
        presented_refresh_tokens: Vec<String>,
        agents: Vec<Uuid>,
        names_of_others: Vec<String>,
        updates: Vec<Value>,
    }

    type Shared = Arc<StdMutex<Fake>>;

    impl Fake {
        fn new_pair(&mut self) -> Value {
            self.issued += 1;
            let access = format!("a{}", self.issued);
            let refresh = format!("r{}", self.issued);
            self.access = Some(access.clone());
            self.refresh = Some(refresh.clone());
            json!({"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                   "expires_in": self.expires_in})
        }

        fn check(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
            let bearer = headers
                .get(reqwest::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match (bearer, self.access.as_deref()) {
                (Some(sent), Some(valid)) if sent == valid => Ok(()),
                _ => Err(StatusCode::UNAUTHORIZED),
            }
        }
    }

    async fn login(State(fake): State<Shared>) -> Json<Value> {
        let mut fake = fake.lock().unwrap();
        fake.logins += 1;
        Json(fake.new_pair())
    }

    async fn refresh(
        State(fake): State<Shared>,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, StatusCode> {
        let mut fake = fake.lock().unwrap();
        let presented = body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        fake.presented_refresh_tokens.push(presented.clone());
        if fake.refresh.as_deref() != Some(presented.as_str()) {
            return Err(StatusCode::UNAUTHORIZED);
        }
        Ok(Json(fake.new_pair()))
    }

    async fn get_agent(
        State(fake): State<Shared>,
        headers: HeaderMap,
        Path(id): Path<Uuid>,
    ) -> Result<Json<Value>, StatusCode> {
        let fake = fake.lock().unwrap();
        fake.check(&headers)?;
        if fake.agents.contains(&id) {
            Ok(Json(json!({ "id": id })))
        } else {
            Err(StatusCode::NOT_FOUND)
        }
    }

    async fn put_agent(
        State(fake): State<Shared>,
        headers: HeaderMap,
        Path(id): Path<Uuid>,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, StatusCode> {
        let mut fake = fake.lock().unwrap();
        fake.check(&headers)?;
        if !fake.agents.contains(&id) {
            return Err(StatusCode::NOT_FOUND);
        }
        fake.updates.push(body);
        Ok(Json(json!({ "id": id })))
    }

    async fn post_agent(
        State(fake): State<Shared>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> AxumResponse {
        let mut fake = fake.lock().unwrap();
        if let Err(status) = fake.check(&headers) {
            return status.into_response();
        }
        let id: Uuid = serde_json::from_value(body["id"].clone()).unwrap();
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        if fake.agents.contains(&id) || fake.names_of_others.contains(&name) {
            let detail = json!({"detail": "Agent name already exists"});
            return (StatusCode::CONFLICT, Json(detail)).into_response();
        }
        fake.agents.push(id);
        (StatusCode::CREATED, Json(body)).into_response()
    }

    async fn jobs(State(fake): State<Shared>, headers: HeaderMap) -> AxumResponse {
        let fake = fake.lock().unwrap();
        if let Err(status) = fake.check(&headers) {
            return status.into_response();
        }
        if fake.overloaded {
            let busy = [(reqwest::header::RETRY_AFTER, "5")];
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                busy,
                Json(json!({"detail": "busy"})),
            )
                .into_response();
        }
        Json(json!({"jobs": []})).into_response()
    }

    /// Serves `fake` on a free port; the client for it, and the fake to look into.
    async fn serve(fake: Fake) -> (ApiClient, Shared) {
        let shared = Arc::new(StdMutex::new(fake));
        let router = Router::new()
            .route("/api/v1/auth/login", post(login))
            .route("/api/v1/auth/refresh", post(refresh))
            .route("/api/v1/agents", post(post_agent))
            .route("/api/v1/agents/{id}", get(get_agent).put(put_agent))
            .route("/api/v1/agents/{id}/jobs", get(jobs))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port should be bound");
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = ApiClient::new(url, "worker-1", Secret::new("pw")).unwrap();
        (client, shared)
    }

    fn hour_long_tokens() -> Fake {
        Fake {
            expires_in: 3600,
            ..Fake::default()
        }
    }

    fn entry() -> AgentEntry {
        AgentEntry {
            id: Uuid::from_u128(1),
            name: "worker-1".to_owned(),
            agent_type: "custom".to_owned(),
            capabilities: vec!["echo".to_owned()],
        }
    }

    #[tokio::test]
    async fn a_refused_token_leads_to_a_new_login_and_the_call_is_sent_again() {
        let (client, fake) = serve(hour_long_tokens()).await;
        client
            .poll(Uuid::from_u128(1), Duration::ZERO, 1)
            .await
            .unwrap();
        // The session ends on the server (a logout elsewhere, a role change).
        fake.lock().unwrap().access = None;
        let jobs = client.poll(Uuid::from_u128(1), Duration::ZERO, 1).await;
        assert!(
            jobs.expect("the poll should succeed after a new login")
                .is_empty()
        );
        assert_eq!(fake.lock().unwrap().logins, 2);
    }

    #[tokio::test]
    async fn tokens_are_refreshed_before_they_expire_with_the_rotated_refresh_token() {
        let (client, fake) = serve(Fake {
            expires_in: 1,
            ..Fake::default()
        })
        .await;
        for _ in 0..3 {
            client
                .poll(Uuid::from_u128(1), Duration::ZERO, 1)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let fake = fake.lock().unwrap();
        assert_eq!(fake.logins, 1);
        assert_eq!(fake.presented_refresh_tokens, ["r1", "r2"]);
    }

    #[tokio::test]
    async fn a_worker_registers_once_and_takes_its_entry_over_after_a_restart() {
        let (client, fake) = serve(hour_long_tokens()).await;
        assert_eq!(
            client.register(&entry()).await.unwrap(),
            Registration::Created
        );
        assert!(fake.lock().unwrap().updates.is_empty());
        assert_eq!(
            client.register(&entry()).await.unwrap(),
            Registration::Resumed
        );
        assert_eq!(
            fake.lock().unwrap().updates,
            [
                json!({"name": "worker-1", "type": "custom", "capabilities": ["echo"],
                    "status": "idle"})
            ]
        );
    }

    #[tokio::test]
    async fn registration_is_refused_when_another_agent_has_the_name() {
        let (client, _fake) = serve(Fake {
            names_of_others: vec!["worker-1".to_owned()],
            ..hour_long_tokens()
        })
        .await;
        assert_eq!(
            client.register(&entry()).await.unwrap(),
            Registration::Refused {
                detail: "Agent name already exists".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn an_overloaded_answer_is_transient_and_carries_its_retry_after() {
        let (client, _fake) = serve(Fake {
            overloaded: true,
            ..hour_long_tokens()
        })
        .await;
        let error = client
            .poll(Uuid::from_u128(1), Duration::ZERO, 1)
            .await
            .expect_err("an overloaded API should refuse the poll");
        assert!(error.is_transient());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));
        assert!(error.to_string().contains("busy"), "{error}");
    }
}
