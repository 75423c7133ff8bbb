//! Per-client rate limits with the contract's route classes and `X-RateLimit-*` headers, and
//! the cap on each client's requests in progress.
//!
//! **In flight** (`SPARC_MAX_IN_FLIGHT_PER_CLIENT`): a client with that many requests in
//! progress (of any limited class; counted as below) is refused with 429 at once, before any
//! work is done. A client that sends without waiting for its answers would otherwise queue
//! thousands of requests, and their reads, in front of everyone else's.
//!
//! **Classes** (each with its own per-minute limit from [`ApiSettings`], `0` = off):
//! `/api/v1/auth/*` per client IP (auth), `POST /api/v1/agents/activity` (activity),
//! `POST /api/v1/agents` (agent creation), everything else (general). Health, liveness,
//! readiness, `/metrics`, `/ws/health` and `/api/openapi.json` are exempt and carry no headers.
//!
//! **Who is counted**: outside the auth class, a caller with a valid access token is counted per
//! user (`sub`, checked with the [`TokenService`]: an HMAC, microseconds, and a forged `sub` cannot
//! pick someone else's bucket), the token of a WebSocket upgrade (`/ws`) taken where the gateway
//! takes it (`?token=` or `Sec-WebSocket-Protocol: bearer, <token>`); everyone else per client IP ([`ClientIp`], so the
//! [`super::client_ip`] middleware must run first). IPv6 clients are counted per /64, the block a
//! single host usually holds, so rotating addresses within it does not reset the count.
//!
//! **Algorithm**: GCRA (the generic cell rate algorithm, a leaky bucket with one timestamp per
//! key) rather than `governor`, because the headers need the remaining quota and reset time that
//! GCRA gives directly, and one `u64` per key keeps memory small. A limit of `n`/min admits a
//! burst of `n`, then one request every `60/n` s. `X-RateLimit-Reset` is the whole seconds until
//! the bucket is full again; `Retry-After` (on 429) the seconds until the next request fits.
//!
//! **Memory**: state lives in 16 mutex-guarded shards per class. A key whose timestamp has passed
//! is indistinguishable from a fresh one, so sweeping it is exact; a shard sweeps when it has
//! doubled since its last sweep (at most once a second), and a shard holding 8192 live keys
//! evicts an arbitrary one before inserting (that client merely gets a fresh bucket). So each
//! class holds at most 131 072 keys (a few MB) however many clients there are.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sparc_accounts::tokens::TokenService;
use uuid::Uuid;

use super::client_ip::ClientIp;
use crate::auth::{VerifiedClaims, bearer_token};
use crate::error::ApiError;
use crate::settings::ApiSettings;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

const NANOS_PER_SEC: u64 = 1_000_000_000;
const WINDOW_NANOS: u64 = 60 * NANOS_PER_SEC;
const SHARDS: usize = 16;
const MAX_KEYS_PER_SHARD: usize = 8192;
const MIN_SWEEP_LEN: usize = 256;
const SWEEP_COOLDOWN_NANOS: u64 = NANOS_PER_SEC;

/// Paths that are never limited: probes and scrapers must not be locked out by traffic.
const EXEMPT_PATHS: &[&str] = &[
    "/api/v1/health",
    "/api/v1/liveness",
    "/api/v1/readiness",
    "/metrics",
    "/ws/health",
    "/api/openapi.json",
];

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteClass {
    Auth,
    Activity,
    AgentCreate,
    General,
}

impl RouteClass {
    /// The class of a request, or `None` if it is exempt.
    fn of(method: &Method, path: &str) -> Option<Self> {
        if EXEMPT_PATHS.contains(&path) || path.starts_with("/api/v1/health/") {
            return None;
        }
        Some(
            if path == "/api/v1/auth" || path.starts_with("/api/v1/auth/") {
                Self::Auth
            } else if method == Method::POST && path == "/api/v1/agents/activity" {
                Self::Activity
            } else if method == Method::POST && path == "/api/v1/agents" {
                Self::AgentCreate
            } else {
                Self::General
            },
        )
    }
}

/// Whether requests of `method` to `path` count against a limit (the exempt routes never
/// answer 429).
pub(crate) fn is_limited(method: &Method, path: &str) -> bool {
    RouteClass::of(method, path).is_some()
}

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    User(Uuid),
    Ip(IpAddr),
}

impl Subject {
    /// IPv4 as is; IPv6 truncated to its /64.
    fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ip(ip),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// The outcome of one check, and what the headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
    /// `Some` when the request is refused.
    retry_after_secs: Option<u64>,
}

impl Decision {
    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(self.reset_secs));
    }
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// One limit (`limit` per minute) over all subjects.
struct Gcra {
    limit: u32,
    /// Nanoseconds between requests at the sustained rate.
    interval: u64,
    /// `limit * interval`: how far ahead of now the theoretical arrival time may run.
    tolerance: u64,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Gcra {
    /// `None` when the limit is off (0).
    fn per_minute(limit: u32) -> Option<Self> {
        let interval = WINDOW_NANOS / u64::from(limit).max(1);
        (limit > 0).then(|| Self {
            limit,
            interval,
            tolerance: interval * u64::from(limit),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(MAX_KEYS_PER_SHARD)))
                .collect(),
            hasher: RandomState::new(),
        })
    }

    /// Counts one request of `subject` at `now` (nanoseconds on the limiter's clock).
    fn check(&self, subject: Subject, now: u64) -> Decision {
        let index = (self.hasher.hash_one(subject) % SHARDS as u64) as usize;
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = shard.tats.get(&subject).map_or(now, |&tat| tat.max(now));
        let next_tat = tat + self.interval;
        if next_tat - now > self.tolerance {
            return Decision {
                limit: self.limit,
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: Some(ceil_secs(next_tat - self.tolerance - now).max(1)),
            };
        }
        shard.store(subject, next_tat, now);
        let remaining = (self.tolerance - (next_tat - now)) / self.interval;
        Decision {
            limit: self.limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_secs: ceil_secs(next_tat - now),
            retry_after_secs: None,
        }
    }
}

/// Theoretical arrival times of one shard's subjects.
struct Shard {
    tats: HashMap<Subject, u64>,
    cap: usize,
    sweep_at: usize,
    next_sweep: u64,
}

impl Shard {
    fn new(cap: usize) -> Self {
        Self {
            tats: HashMap::new(),
            cap,
            sweep_at: MIN_SWEEP_LEN.min(cap),
            next_sweep: 0,
        }
    }

    fn store(&mut self, subject: Subject, tat: u64, now: u64) {
        if let Some(slot) = self.tats.get_mut(&subject) {
            *slot = tat;
            return;
        }
        if self.tats.len() >= self.sweep_at && now >= self.next_sweep {
            // A passed TAT means "fresh bucket", so dropping it changes no answer.
            self.tats.retain(|_, &mut tat| tat > now);
            self.sweep_at = (self.tats.len() * 2).clamp(MIN_SWEEP_LEN.min(self.cap), self.cap);
            self.next_sweep = now + SWEEP_COOLDOWN_NANOS;
        }
        if self.tats.len() >= self.cap
            && let Some(&victim) = self.tats.keys().next()
        {
            self.tats.remove(&victim);
        }
        self.tats.insert(subject, tat);
    }
}

/// The limiter state shared by every request; build one per router with [`RateLimiter::new`].
pub struct RateLimiter {
    auth: Option<Gcra>,
    activity: Option<Gcra>,
    agent_create: Option<Gcra>,
    general: Option<Gcra>,
    in_flight: Option<InFlight>,
    tokens: Arc<TokenService>,
    epoch: Instant,
}

/// Each client's requests in progress, in shards like the limiter's.
struct InFlight {
    limit: u32,
    shards: [Mutex<HashMap<Subject, u32>>; SHARDS],
    hasher: RandomState,
}

impl InFlight {
    fn new(limit: u32) -> Option<Self> {
        (limit > 0).then(|| Self {
            limit,
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, subject: Subject) -> &Mutex<HashMap<Subject, u32>> {
        &self.shards[(self.hasher.hash_one(subject) % SHARDS as u64) as usize]
    }

    /// A place for one more request of `subject`, or `None` when it has all it may.
    fn enter(&self, subject: Subject) -> Option<InProgress<'_>> {
        let mut counts = self
            .shard(subject)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(subject).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(InProgress {
            in_flight: self,
            subject,
        })
    }
}

/// A request in progress; counted out when dropped (its response is on its way, or it was
/// cancelled).
struct InProgress<'a> {
    in_flight: &'a InFlight,
    subject: Subject,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let shard = self.in_flight.shard(self.subject);
        let mut counts = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.subject);
            }
        }
    }
}

impl RateLimiter {
    /// Limits from `settings`; `tokens` identifies authenticated callers.
    pub fn new(settings: &ApiSettings, tokens: Arc<TokenService>) -> Self {
        Self {
            auth: Gcra::per_minute(settings.auth_rate_limit_per_minute),
            activity: Gcra::per_minute(settings.activity_rate_limit_per_minute),
            agent_create: Gcra::per_minute(settings.agent_create_rate_limit_per_minute),
            general: Gcra::per_minute(settings.rate_limit_per_minute),
            in_flight: InFlight::new(settings.max_in_flight_per_client),
            tokens,
            epoch: Instant::now(),
        }
    }

    fn gcra(&self, class: RouteClass) -> Option<&Gcra> {
        match class {
            RouteClass::Auth => self.auth.as_ref(),
            RouteClass::Activity => self.activity.as_ref(),
            RouteClass::AgentCreate => self.agent_create.as_ref(),
            RouteClass::General => self.general.as_ref(),
        }
    }

    /// Whom the request counts against: the user of a valid access token (whose claims are
    /// left in the request for [`crate::auth::AuthUser`], which then need not check the token
    /// again), else the client's address.
    fn subject(&self, class: RouteClass, request: &mut Request) -> Subject {
        if class != RouteClass::Auth
            && let Some(claims) = bearer_token(request.headers())
                .map(Cow::Borrowed)
                .or_else(|| websocket_token(request).map(Cow::Owned))
                .and_then(|t| self.tokens.decode_access(&t).ok())
        {
            let subject = Subject::User(claims.sub);
            request.extensions_mut().insert(VerifiedClaims(claims));
            return subject;
        }
        let ClientIp(ip) = request
            .extensions()
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        Subject::ip(ip)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The token of a WebSocket upgrade, which a browser cannot send in a header of its own:
/// `?token=`, else the second entry of `Sec-WebSocket-Protocol: bearer, <token>`.
fn websocket_token(request: &Request) -> Option<String> {
    if request.uri().path() != "/ws" {
        return None;
    }
    let from_query = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, token)| token.into_owned())
    });
    from_query.or_else(|| {
        let offered = request
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)?
            .to_str()
            .ok()?;
        let (scheme, token) = offered.split_once(',')?;
        let token = token.split(',').next()?.trim();
        (scheme.trim().eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| token.to_owned())
    })
}

/// The middleware; install with `axum::middleware::from_fn_with_state(limiter, rate_limit)`
/// inside the [`super::client_ip`] middleware.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(class) = RouteClass::of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let gcra = limiter.gcra(class);
    if gcra.is_none() && limiter.in_flight.is_none() {
        return next.run(request).await;
    }
    let subject = limiter.subject(class, &mut request);
    let decision = gcra.map(|gcra| gcra.check(subject, limiter.now()));
    let mut response = match decision.and_then(|decision| decision.retry_after_secs) {
        Some(retry_after_secs) => ApiError::TooManyRequests { retry_after_secs }.into_response(),
        None => match limiter
            .in_flight
            .as_ref()
            .map(|in_flight| in_flight.enter(subject))
        {
            Some(None) => ApiError::TooManyInFlight.into_response(),
            Some(Some(_in_progress)) => next.run(request).await,
            None => next.run(request).await,
        },
    };
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::auth::tests::token_service;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::ConnectInfo;
    use axum::http::{StatusCode, header};
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    const SEC: u64 = NANOS_PER_SEC;

    fn ip(last: u8) -> Subject {
        Subject::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    #[test]
    fn a_fresh_bucket_admits_the_full_limit_then_refuses() {
        let gcra = Gcra::per_minute(3).expect("on");
        let remaining: Vec<_> = (0..3).map(|_| gcra.check(ip(1), 0).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = gcra.check(ip(1), 0);
        assert_eq!(
            refused.retry_after_secs,
            Some(20),
            "one slot frees every 60/3 s"
        );
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_secs, 60);
    }

    #[test]
    fn capacity_returns_at_the_sustained_rate() {
        let gcra = Gcra::per_minute(3).expect("on");
        for _ in 0..3 {
            gcra.check(ip(1), 0);
        }
        assert!(gcra.check(ip(1), 19 * SEC).retry_after_secs.is_some());
        let later = gcra.check(ip(1), 20 * SEC);
        assert_eq!((later.retry_after_secs, later.remaining), (None, 0));
        let rested = gcra.check(ip(1), 200 * SEC);
        assert_eq!(rested.remaining, 2, "an idle bucket is full again");
    }

    #[test]
    fn subjects_have_separate_buckets() {
        let gcra = Gcra::per_minute(1).expect("on");
        assert!(gcra.check(ip(1), 0).retry_after_secs.is_none());
        assert!(gcra.check(ip(1), 0).retry_after_secs.is_some());
        assert!(gcra.check(ip(2), 0).retry_after_secs.is_none());
        assert!(
            gcra.check(Subject::User(Uuid::nil()), 0)
                .retry_after_secs
                .is_none()
        );
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        assert!(Gcra::per_minute(0).is_none());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_block() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ipv6");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ipv6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ipv6");
        assert_eq!(Subject::ip(a), Subject::ip(b));
        assert_ne!(Subject::ip(a), Subject::ip(c));
    }

    #[test]
    fn idle_keys_are_swept_and_live_keys_stay_bounded() {
        let mut shard = Shard::new(300);
        for n in 0..300u32 {
            shard.store(Subject::User(Uuid::from_u128(n.into())), SEC, 0);
        }
        assert_eq!(shard.tats.len(), 300);
        // All of those expired at 1 s; a newcomer at 2 s triggers a sweep.
        shard.store(ip(1), 3 * SEC, 2 * SEC);
        assert_eq!(shard.tats.len(), 1);
        // Live keys beyond the cap evict rather than grow.
        for n in 0..1000u32 {
            shard.store(Subject::User(Uuid::from_u128(n.into())), 100 * SEC, 3 * SEC);
        }
        assert!(shard.tats.len() <= 300, "{} keys", shard.tats.len());
    }

    #[test]
    fn routes_fall_into_the_contract_classes() {
        use RouteClass::*;
        let cases = [
            (Method::POST, "/api/v1/auth/login", Some(Auth)),
            (Method::GET, "/api/v1/auth/me", Some(Auth)),
            (Method::POST, "/api/v1/agents/activity", Some(Activity)),
            (Method::POST, "/api/v1/agents", Some(AgentCreate)),
            (Method::GET, "/api/v1/agents", Some(General)),
            (Method::GET, "/api/v1/tasks", Some(General)),
            (Method::GET, "/api/v1/authors", Some(General)),
            (Method::GET, "/api/v1/health", None),
            (Method::GET, "/api/v1/health/detailed", None),
            (Method::GET, "/api/v1/readiness", None),
            (Method::GET, "/api/v1/liveness", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/api/openapi.json", None),
        ];
        for (method, path, class) in cases {
            assert_eq!(RouteClass::of(&method, path), class, "{method} {path}");
        }
    }

    struct Client {
        peer: &'static str,
        bearer: Option<String>,
    }

    fn app(settings: &ApiSettings) -> Router {
        let limiter = Arc::new(RateLimiter::new(settings, Arc::new(token_service())));
        Router::new()
            .route("/api/v1/tasks", get(|| async { "tasks" }))
            .route("/api/v1/auth/login", post(|| async { "login" }))
            .route("/api/v1/agents", post(|| async { "agent" }))
            .route("/api/v1/health", get(|| async { "healthy" }))
            .route("/ws", get(|| async { "upgrade" }))
            .layer(axum::middleware::from_fn_with_state(limiter, rate_limit))
            .layer(axum::middleware::from_fn_with_state(
                super::super::client_ip::TrustedProxies::None,
                super::super::client_ip::client_ip,
            ))
    }

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        client: &Client,
    ) -> axum::response::Response {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(token) = &client.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(Body::empty()).expect("valid");
        let peer: SocketAddr = client.peer.parse().expect("socket address");
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request).await.expect("infallible")
    }

    fn settings(general: u32, auth: u32) -> ApiSettings {
        ApiSettings {
            rate_limit_per_minute: general,
            auth_rate_limit_per_minute: auth,
            ..ApiSettings::default()
        }
    }

    fn anonymous(peer: &'static str) -> Client {
        Client { peer, bearer: None }
    }

    #[tokio::test]
    async fn limited_responses_carry_the_rate_limit_headers() {
        let app = app(&settings(5, 50));
        let response = call(
            &app,
            Method::GET,
            "/api/v1/tasks",
            &anonymous("192.0.2.1:1"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-ratelimit-limit"], "5");
        assert_eq!(response.headers()["x-ratelimit-remaining"], "4");
        assert_eq!(response.headers()["x-ratelimit-reset"], "12");
    }

    #[tokio::test]
    async fn over_the_limit_is_429_with_retry_after_and_our_body() {
        let app = app(&settings(2, 50));
        let client = anonymous("192.0.2.1:1");
        for _ in 0..2 {
            call(&app, Method::GET, "/api/v1/tasks", &client).await;
        }
        let response = call(&app, Method::GET, "/api/v1/tasks", &client).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
        assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body, json!({"detail": "Rate limit exceeded"}));
        let other_ip = call(
            &app,
            Method::GET,
            "/api/v1/tasks",
            &anonymous("192.0.2.2:1"),
        )
        .await;
        assert_eq!(
            other_ip.status(),
            StatusCode::OK,
            "another IP has its own bucket"
        );
    }

    #[tokio::test]
    async fn authenticated_callers_are_counted_per_user_not_per_ip() {
        let app = app(&settings(1, 50));
        let tokens = token_service();
        let token = |user| {
            Some(
                tokens
                    .issue_access(user, "u", Role::User, Uuid::new_v4())
                    .expect("signs")
                    .token,
            )
        };
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let shared_ip = "192.0.2.1:1";
        let alice_client = Client {
            peer: shared_ip,
            bearer: token(alice),
        };
        let bob_client = Client {
            peer: shared_ip,
            bearer: token(bob),
        };
        assert_eq!(
            call(&app, Method::GET, "/api/v1/tasks", &alice_client)
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            call(&app, Method::GET, "/api/v1/tasks", &bob_client)
                .await
                .status(),
            StatusCode::OK
        );
        let again = call(
            &app,
            Method::GET,
            "/api/v1/tasks",
            &Client {
                peer: "192.0.2.9:1",
                bearer: token(alice),
            },
        )
        .await;
        assert_eq!(
            again.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "alice's bucket follows her across IPs"
        );
        let forged = Client {
            peer: shared_ip,
            bearer: Some("not.a.token".into()),
        };
        assert_eq!(
            call(&app, Method::GET, "/api/v1/tasks", &forged)
                .await
                .status(),
            StatusCode::OK,
            "an invalid token counts against the IP"
        );
    }

    #[tokio::test]
    async fn the_claims_the_limiter_checked_reach_the_handler_and_a_bad_token_leaves_none() {
        let limiter = Arc::new(RateLimiter::new(
            &settings(100, 50),
            Arc::new(token_service()),
        ));
        let app = Router::new()
            .route(
                "/api/v1/tasks",
                get(|request: axum::extract::Request| async move {
                    match request.extensions().get::<VerifiedClaims>() {
                        Some(VerifiedClaims(claims)) => claims.sub.to_string(),
                        None => "none".to_owned(),
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limiter, rate_limit))
            .layer(axum::middleware::from_fn_with_state(
                super::super::client_ip::TrustedProxies::None,
                super::super::client_ip::client_ip,
            ));
        let user = Uuid::new_v4();
        let token = token_service()
            .issue_access(user, "u", Role::User, Uuid::new_v4())
            .expect("signs")
            .token;
        let seen = |bearer: Option<String>| {
            let app = app.clone();
            async move {
                let response = call(
                    &app,
                    Method::GET,
                    "/api/v1/tasks",
                    &Client {
                        peer: "192.0.2.1:1",
                        bearer,
                    },
                )
                .await;
                let body = to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("readable");
                String::from_utf8(body.to_vec()).expect("text")
            }
        };
        assert_eq!(seen(Some(token)).await, user.to_string());
        assert_eq!(seen(Some("not.a.token".into())).await, "none");
        assert_eq!(seen(None).await, "none");
    }

    #[tokio::test]
    async fn websocket_upgrades_count_per_user_with_the_token_where_the_gateway_reads_it() {
        let app = app(&settings(1, 50));
        let tokens = token_service();
        let token = |user| {
            tokens
                .issue_access(user, "u", Role::User, Uuid::new_v4())
                .expect("signs")
                .token
        };
        let upgrade = |query: String, protocol: Option<String>, peer: &'static str| {
            let app = app.clone();
            async move {
                let mut request = axum::http::Request::get(format!("/ws{query}"));
                if let Some(protocol) = protocol {
                    request = request.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
                }
                let mut request = request.body(Body::empty()).expect("valid");
                let peer: SocketAddr = peer.parse().expect("socket address");
                request.extensions_mut().insert(ConnectInfo(peer));
                app.oneshot(request).await.expect("infallible").status()
            }
        };
        let alice = token(Uuid::new_v4());
        let bob = token(Uuid::new_v4());
        let shared_ip = "192.0.2.1:1";
        assert_eq!(
            upgrade(format!("?token={alice}"), None, shared_ip).await,
            StatusCode::OK
        );
        assert_eq!(
            upgrade(
                format!("?last_event_id=3&token={alice}"),
                None,
                "192.0.2.9:1"
            )
            .await,
            StatusCode::TOO_MANY_REQUESTS,
            "alice's bucket follows her token"
        );
        assert_eq!(
            upgrade(String::new(), Some(format!("bearer, {bob}")), shared_ip).await,
            StatusCode::OK,
            "bob's token, as a subprotocol, is his own bucket"
        );
        assert_eq!(
            upgrade(String::new(), None, shared_ip).await,
            StatusCode::OK,
            "no token: the IP's bucket"
        );
        assert_eq!(
            upgrade(String::new(), None, shared_ip).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[tokio::test]
    async fn auth_endpoints_have_their_own_per_ip_limit() {
        let app = app(&settings(100, 1));
        let client = anonymous("192.0.2.1:1");
        assert_eq!(
            call(&app, Method::POST, "/api/v1/auth/login", &client)
                .await
                .status(),
            StatusCode::OK
        );
        let second = call(&app, Method::POST, "/api/v1/auth/login", &client).await;
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(second.headers()["x-ratelimit-limit"], "1");
        let tasks = call(&app, Method::GET, "/api/v1/tasks", &client).await;
        assert_eq!(
            tasks.status(),
            StatusCode::OK,
            "the general class is separate"
        );
    }

    #[tokio::test]
    async fn agent_creation_uses_its_own_class() {
        let app = app(&ApiSettings {
            agent_create_rate_limit_per_minute: 7,
            ..settings(100, 50)
        });
        let response = call(
            &app,
            Method::POST,
            "/api/v1/agents",
            &anonymous("192.0.2.1:1"),
        )
        .await;
        assert_eq!(response.headers()["x-ratelimit-limit"], "7");
    }

    #[tokio::test]
    async fn exempt_routes_are_never_limited_and_carry_no_headers() {
        let app = app(&settings(1, 1));
        let client = anonymous("192.0.2.1:1");
        for _ in 0..3 {
            let response = call(&app, Method::GET, "/api/v1/health", &client).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(!response.headers().contains_key("x-ratelimit-limit"));
        }
    }

    #[tokio::test]
    async fn a_limit_of_zero_turns_the_class_off() {
        let app = app(&settings(0, 1));
        let client = anonymous("192.0.2.1:1");
        for _ in 0..5 {
            let response = call(&app, Method::GET, "/api/v1/tasks", &client).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(!response.headers().contains_key("x-ratelimit-limit"));
        }
    }
}
