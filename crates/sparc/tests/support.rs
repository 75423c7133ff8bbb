//! What the integration tests share. [`TestApp::spawn`] starts the whole service (the same
//! `Server` that `sparc serve` runs) on 127.0.0.1:0 over a fresh Postgres database or a fresh
//! SQLite file, and offers a small HTTP client with helpers to make users of any role;
//! [`process`] starts the real `sparc` binary instead; [`memory_server`] runs the Memory MCP
//! server the memory tests talk to.
//!
//! Postgres is looked for at 127.0.0.1:5432 and NATS at 127.0.0.1:4222; when one is absent the
//! tests that need it fail, unless `SPARC_SKIP_SERVICES=1` says to skip them (see
//! `sparc_store::testing::service_missing`).
//! `TEST_LOG=1` shows the service's logs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc::config::{Secret, Settings};
use sparc::server::Server;
use sparc_domain::user::Role;
use sparc_store::testing::{PostgresTestDatabase, SqliteTestFile, postgres_test_database};
use sparc_store::{CommandBus, Database, EventMetadata};

pub mod memory_server;
pub mod process;

/// Which event store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL at 127.0.0.1:5432.
    Postgres,
    /// An embedded SQLite file.
    Sqlite,
}

/// The settings every test service starts from: on 127.0.0.1:0, a fixed signing key, rate
/// limits off.
fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        database_url: Secret::new(database_url.to_owned()),
        jwt_secret: Some(Secret::new(
            "test-signing-key-that-is-long-enough-0123456789",
        )),
        // Tests run side by side on one PostgreSQL, whose connections are shared by all.
        database_pool_size: 8,
        ..Settings::default()
    };
    settings.api.rate_limit_per_minute = 0;
    settings.api.auth_rate_limit_per_minute = 0;
    settings.api.activity_rate_limit_per_minute = 0;
    settings.api.agent_create_rate_limit_per_minute = 0;
    // Every test signs users up and in: at OWASP's cost, hashing was most of the suite's time.
    settings.api.password_hash_memory_kib = TEST_HASH_COST.memory_kib;
    settings.api.password_hash_passes = TEST_HASH_COST.passes;
    settings
}

/// What hashing a test user's password costs (see [`test_settings`]).
pub const TEST_HASH_COST: sparc_accounts::password::HashCost = sparc_accounts::password::HashCost {
    memory_kib: 64,
    passes: 1,
};

/// A running service and a client for it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The service's database, for direct inspection.
    pub db: Database,
    /// The database URL (for a second process or a restart).
    pub database_url: String,
    client: reqwest::Client,
    server: Option<Server>,
    _sqlite: Option<SqliteTestFile>,
    _postgres: Option<PostgresTestDatabase>,
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user's id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
    /// A live access token.
    pub token: String,
    /// Its refresh token.
    pub refresh_token: String,
}

/// The password every test user gets.
pub const PASSWORD: &str = "Sup3rSecret!";

/// Runs a test body against each backend: `both_backends!(name, |app| async move { … })`
/// defines `name::postgres` and `name::sqlite`; `both_backends!(name, |settings| …, |app| …)`
/// first changes the service's settings.
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        $crate::support::both_backends!($name, |_: &mut sparc::config::Settings| {}, $body);
    };
    ($name:ident, $configure:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::support::TestApp::spawn_with(
                    $crate::support::Backend::Postgres,
                    $configure,
                )
                .await
                {
                    ($body)(app).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = $crate::support::TestApp::spawn_with(
                    $crate::support::Backend::Sqlite,
                    $configure,
                )
                .await
                {
                    ($body)(app).await;
                }
            }
        }
    };
}
pub(crate) use both_backends;

impl TestApp {
    /// Starts the service on `backend` with rate limits off; `None` when Postgres is absent
    /// outside CI.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the service with settings adjusted by `configure`.
    pub async fn spawn_with(
        backend: Backend,
        configure: impl FnOnce(&mut Settings),
    ) -> Option<TestApp> {
        if std::env::var("TEST_LOG").is_ok() {
            sparc::telemetry::init(sparc::config::LogFormat::Pretty);
        }
        let (db, database_url, sqlite, postgres) = match backend {
            Backend::Postgres => {
                let pg = postgres_test_database().await?;
                (pg.database.clone(), pg.url.clone(), None, Some(pg))
            }
            Backend::Sqlite => {
                let file = SqliteTestFile::new();
                let url = file.url();
                let db = Database::connect(&url)
                    .await
                    .expect("the sqlite test database should open");
                db.migrate().await.expect("sqlite migrations should apply");
                (db, url, Some(file), None)
            }
        };
        let mut settings = test_settings(&database_url);
        configure(&mut settings);
        let server = Server::start(settings)
            .await
            .expect("the service should start");
        Some(TestApp {
            base: format!("http://{}", server.addr),
            db,
            database_url,
            client: reqwest::Client::new(),
            server: Some(server),
            _sqlite: sqlite,
            _postgres: postgres,
        })
    }

    /// A second instance of the service on this one's database (a scaled-out deployment): same
    /// signing key, its own projections and caches. The database stays this app's.
    pub async fn spawn_beside(&self) -> TestApp {
        self.spawn_beside_with(|_| {}).await
    }

    /// [`TestApp::spawn_beside`] with the test settings adjusted by `configure`.
    pub async fn spawn_beside_with(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings(&self.database_url);
        configure(&mut settings);
        let server = Server::start(settings)
            .await
            .expect("the second instance should start");
        TestApp {
            base: format!("http://{}", server.addr),
            db: self.db.clone(),
            database_url: self.database_url.clone(),
            client: reqwest::Client::new(),
            server: Some(server),
            _sqlite: None,
            _postgres: None,
        }
    }

    /// Stops the service and starts it again on the same database (a restart), with the test
    /// settings adjusted by `configure`.
    pub async fn restart_with(&mut self, configure: impl FnOnce(&mut Settings)) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let mut settings = test_settings(&self.database_url);
        configure(&mut settings);
        let server = Server::start(settings)
            .await
            .expect("the service should start again");
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    /// Stops the service gracefully.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// A request to `path` (relative to the base), with `token` as bearer if given.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a JSON request and returns the status, headers and JSON body (`Null` if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut builder = self.request(method, path, token);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        send(builder).await
    }

    /// `GET path` with a token.
    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `POST path` with a token and JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// `PUT path` with a token and JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// `DELETE path` with a token.
    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Registers a user through the API and logs in. Refused unattempted under load (503, as
    /// password hashing is shared by every test of the process), it tries again for up to 10 s,
    /// as a client honouring `Retry-After` would.
    pub async fn user(&self, username: &str) -> TestUser {
        let body = json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD});
        let mut registered = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(body.clone()),
            )
            .await;
        for _ in 0..400 {
            if registered.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            registered = self
                .call(
                    Method::POST,
                    "/api/v1/auth/register",
                    None,
                    Some(body.clone()),
                )
                .await;
        }
        assert_eq!(
            registered.status,
            StatusCode::CREATED,
            "registering {username}: {}",
            registered.body
        );
        self.login(username).await
    }

    /// Creates a user of `role` the way `sparc user create` does, then logs in.
    /// Refused unattempted under load (password hashing is shared by every test of the
    /// process), it tries again for up to 10 s, as an operator would.
    pub async fn user_with_role(&self, username: &str, role: Role) -> TestUser {
        let commands = CommandBus::new(&self.db);
        for attempt in 0.. {
            let registered = sparc_accounts::registration::register_user(
                &commands,
                sparc_accounts::registration::Registration {
                    username: username.to_owned(),
                    email: format!("{username}@example.com"),
                    password: PASSWORD.to_owned(),
                    full_name: None,
                    role,
                    hash_cost: TEST_HASH_COST,
                },
                &EventMetadata::new("test", uuid::Uuid::now_v7().to_string()),
            )
            .await;
            match registered {
                Err(sparc_accounts::registration::RegistrationError::Overloaded(_))
                    if attempt < 400 =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                registered => {
                    registered.expect("the user should be created");
                    break;
                }
            }
        }
        // The login reads the users read model, which follows the log.
        for _ in 0..200 {
            let attempt = self.try_login(username).await;
            if attempt.status == StatusCode::OK {
                return Self::signed_in(username, attempt);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{username} could not log in");
    }

    /// Logs a registered user in.
    pub async fn login(&self, username: &str) -> TestUser {
        let mut response = self.try_login(username).await;
        // A 503 commits nothing and asks the client to come back (password hashing is bounded
        // per process, and the tests of one binary share the machine): as a client would.
        for _ in 0..50 {
            if response.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            response = self.try_login(username).await;
        }
        assert_eq!(
            response.status,
            StatusCode::OK,
            "logging in {username}: {}",
            response.body
        );
        Self::signed_in(username, response)
    }

    async fn try_login(&self, username: &str) -> Response {
        self.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": username, "password": PASSWORD})),
        )
        .await
    }

    fn signed_in(username: &str, response: Response) -> TestUser {
        TestUser {
            id: response.body["user"]["id"]
                .as_str()
                .expect("a user id")
                .to_owned(),
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            token: response.body["access_token"]
                .as_str()
                .expect("an access token")
                .to_owned(),
            refresh_token: response.body["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .to_owned(),
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// JSON body, or `Null` when empty or not JSON.
    pub body: Value,
}

/// Sends a request built by the test (raw bodies, extra headers) and reads the answer whole.
pub async fn send(builder: reqwest::RequestBuilder) -> Response {
    read(builder.send().await.expect("the service should answer")).await
}

/// Reads a raw answer whole.
pub async fn read(response: reqwest::Response) -> Response {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    Response {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

impl Response {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// ---------------------------------------------------------------------------------------------
// Real time: WebSocket clients of `/ws`, and a NATS bus of the test's own. Kept apart from the
// HTTP helpers above.
// ---------------------------------------------------------------------------------------------

/// The NATS server the bus tests use.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Settings for the service to use NATS at `url` under a namespace of its own (so tests never
/// share a stream or a de-duplication window), or `None` when NATS is not running and
/// `SPARC_SKIP_SERVICES=1` says to skip (see `sparc_store::testing::service_missing`).
pub async fn nats_namespace(url: &str) -> Option<String> {
    let address = url.trim_start_matches("nats://");
    if tokio::net::TcpStream::connect(address).await.is_err() {
        sparc_store::testing::service_missing(&format!("NATS at {url}"));
        return None;
    }
    Some(format!("t{}", uuid::Uuid::new_v4().simple()))
}

/// Deletes the stream of a test's NATS namespace.
pub async fn delete_nats_stream(url: &str, namespace: &str) {
    let subjects = sparc_bus::Subjects::new(namespace);
    if let Ok(bus) = sparc_bus::NatsBus::connect(url, subjects.clone()).await {
        let _ = bus.jetstream().delete_stream(subjects.stream()).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of `/ws`.
pub struct WsClient {
    socket: Socket,
}

/// How long a test waits for a frame.
const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TestApp {
    /// `ws://127.0.0.1:<port>/ws?<query>`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/ws?{query}", self.base.replacen("http://", "ws://", 1))
    }

    /// Connects with `?token=` (resuming after `last_event_id` if given) and returns the client
    /// and its first frame, the `ack`.
    pub async fn ws(&self, token: &str, last_event_id: Option<&str>) -> (WsClient, Value) {
        let mut query = format!("token={token}");
        if let Some(last) = last_event_id {
            query.push_str(&format!("&last_event_id={last}"));
        }
        let mut client = WsClient::connect(&self.ws_url(&query)).await;
        let ack = client.frame().await;
        assert_eq!(ack["type"], "ack", "the first frame is the ack: {ack}");
        (client, ack)
    }
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        Self::connect_with(url.into_client_request().expect("a valid WebSocket URL")).await
    }

    /// Connects with a prepared request (custom headers).
    pub async fn connect_with(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket upgrade should succeed");
        Self { socket }
    }

    /// A client over a socket upgraded by the caller (who wanted the upgrade's answer too).
    pub fn from_socket(socket: Socket) -> Self {
        Self { socket }
    }

    async fn message(&mut self) -> tokio_tungstenite::tungstenite::Message {
        self.message_within(FRAME_TIMEOUT).await
    }

    async fn message_within(
        &mut self,
        limit: std::time::Duration,
    ) -> tokio_tungstenite::tungstenite::Message {
        use futures::StreamExt as _;
        tokio::time::timeout(limit, self.socket.next())
            .await
            .unwrap_or_else(|_| panic!("a frame should arrive within {limit:?}"))
            .expect("the connection should stay open")
            .expect("the frame should be readable")
    }

    /// The next JSON text frame, whatever its type.
    pub async fn frame(&mut self) -> Value {
        self.frame_within(FRAME_TIMEOUT).await
    }

    /// The next JSON text frame, waiting up to `limit` (for changes held up by an outage).
    pub async fn frame_within(&mut self, limit: std::time::Duration) -> Value {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.message_within(limit).await {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server frames are JSON");
                }
                Message::Close(frame) => panic!("the server closed the connection: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next change frame (heartbeat `ping`s skipped).
    pub async fn change(&mut self) -> Value {
        self.change_within(FRAME_TIMEOUT).await
    }

    /// The next change frame, waiting up to `limit` for each frame.
    pub async fn change_within(&mut self, limit: std::time::Duration) -> Value {
        loop {
            let frame = self.frame_within(limit).await;
            if frame["type"] != "ping" {
                return frame;
            }
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        use futures::SinkExt as _;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("the frame should be sent");
    }

    /// The code and reason the server closes the connection with (frames before it skipped).
    pub async fn closed_with(&mut self) -> (u16, String) {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            if let Message::Close(frame) = self.message().await {
                let frame = frame.expect("the close frame should carry a code");
                return (u16::from(frame.code), frame.reason.to_string());
            }
        }
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

// Assertions and small readers shared by the resource tests.

/// The `id` of a resource in a JSON body.
pub fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an id in {value}"))
        .to_owned()
}

/// The ids of the resources listed under `key`.
pub fn ids(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("a {key} list in {list}"))
        .iter()
        .map(id_of)
        .collect()
}

/// `ids` sorted, for order-insensitive comparisons.
pub fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Asserts a 422 whose `detail` list has an error at `loc`.
#[track_caller]
pub fn assert_422_at(response: &Response, loc: Value) {
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.body
    );
    let errors = response.body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of errors: {}", response.body));
    assert!(
        errors.iter().any(|e| e["loc"] == loc),
        "an error at {loc}: {}",
        response.body
    );
}
