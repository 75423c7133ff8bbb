//! HTTP traffic metrics for `GET /metrics`: a request counter and a latency histogram per
//! method, route and status, which [`HttpMetrics::register`] adds to the registry a scrape
//! encodes.
//!
//! The route label is the matched route template (`/api/v1/tasks/{id}`), never the raw path, so
//! ids cannot blow up the number of series; requests that match no route count as `unmatched`,
//! and methods outside the usual set as `other`. One set of counters per router (not a process
//! global), so several services in one process (tests) keep separate counts.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The labels of both HTTP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The HTTP series of one router.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    durations: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl HttpMetrics {
    fn observe(&self, method: &'static str, route: String, status: u16, seconds: f64) {
        let labels = HttpLabels {
            method,
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    /// Adds `sparc_http_requests_total` and `sparc_http_request_duration_seconds` to
    /// `registry` (the same series, not copies).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sparc_http_requests",
            "HTTP requests answered, by method, route and status",
            self.requests.clone(),
        );
        registry.register(
            "sparc_http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route and status",
            self.durations.clone(),
        );
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The middleware; install with `axum::middleware::from_fn_with_state(metrics, record)` via
/// `Router::layer`, which runs after routing so the matched route is known.
pub async fn record(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_not_raw_path() {
        let metrics = Arc::new(HttpMetrics::default());
        let app = Router::new()
            .route("/tasks/{id}", get(|| async { "ok" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                record,
            ));
        for uri in ["/tasks/1", "/tasks/2", "/nowhere"] {
            let request = axum::http::Request::get(uri)
                .body(Body::empty())
                .expect("valid");
            app.clone().oneshot(request).await.expect("infallible");
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("a String takes any text");
        assert!(
            out.contains(
                r#"sparc_http_requests_total{method="GET",route="/tasks/{id}",status="200"} 2"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"sparc_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"route="/tasks/{id}",status="200",le="+Inf"} 2"#),
            "{out}"
        );
        assert!(!out.contains("/tasks/1"), "{out}");
    }
}
