//! HTTP traffic metrics for `GET /metrics`: a request counter and a latency histogram per
//! method, route and status, rendered in the Prometheus text format by [`HttpMetrics::render`].
//!
//! The route label is the matched route template (`/api/v1/tasks/{id}`), never the raw path, so
//! ids cannot blow up the number of series; requests that match no route count as `unmatched`,
//! and methods outside the usual set as `other`. One registry per router (not a process global),
//! so several services in one process (tests) keep separate counts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `(method, route, status)`.
type SeriesKey = (&'static str, String, u16);

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum_seconds: f64,
    /// Per bucket, the requests at or under its bound (not cumulative; rendering sums them).
    buckets: [u64; BUCKETS.len()],
}

/// The HTTP series of one router.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<SeriesKey, Series>>,
}

impl HttpMetrics {
    fn observe(&self, method: &'static str, route: String, status: u16, seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series.entry((method, route, status)).or_default();
        entry.count += 1;
        entry.sum_seconds += seconds;
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            entry.buckets[bucket] += 1;
        }
    }

    /// Appends `sparc_http_requests_total` and `sparc_http_request_duration_seconds` in the
    /// Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let series = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let labels = |(method, route, status): &SeriesKey| {
            format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape_label(route)
            )
        };
        let _ = writeln!(
            out,
            "# HELP sparc_http_requests_total HTTP requests answered, by method, route and status.\n\
             # TYPE sparc_http_requests_total counter"
        );
        for (key, s) in &series {
            let _ = writeln!(
                out,
                "sparc_http_requests_total{{{}}} {}",
                labels(key),
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP sparc_http_request_duration_seconds Time to answer HTTP requests, by method, route and status.\n\
             # TYPE sparc_http_request_duration_seconds histogram"
        );
        for (key, s) in &series {
            let labels = labels(key);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(s.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "sparc_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "sparc_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 sparc_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 sparc_http_request_duration_seconds_count{{{labels}}} {}",
                s.count, s.sum_seconds, s.count
            );
        }
    }
}

/// Escapes a Prometheus label value (`\`, `"` and newlines).
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        let mut out = String::new();
        metrics.render(&mut out);
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
