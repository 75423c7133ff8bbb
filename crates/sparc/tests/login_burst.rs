//! A burst of logins beyond what the cores can hash, on both backends, at a deployment's hash
//! cost. Password hashing is gated per process: the burst makes the other tests' registrations
//! wait (the test support retries one refused).

use crate::support::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::json;

async fn with_one_second_deadlines(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |settings| {
        settings.api.request_timeout_seconds = 1;
        // The burst is about the hashing gate, not the cap on one client's requests.
        settings.api.max_in_flight_per_client = 0;
        // Hashes as costly as a deployment's, which the cores cannot keep up with.
        let cost = sparc_accounts::password::HashCost::OWASP;
        settings.api.password_hash_memory_kib = cost.memory_kib;
        settings.api.password_hash_passes = cost.passes;
    })
    .await
}

/// A burst of logins far beyond what the cores can hash: the excess is refused at once or at
/// its deadline with 503 and `Retry-After`, the rest are answered, and nothing fails otherwise.
async fn a_burst_of_logins_is_shed_not_queued_without_end(app: TestApp) {
    let user = app.user("crowd").await;
    let logins = (0..200).map(|_| {
        let app = &app;
        let body = json!({"username": user.username, "password": user.password});
        async move {
            let answer = app
                .call(
                    reqwest::Method::POST,
                    "/api/v1/auth/login",
                    None,
                    Some(body),
                )
                .await;
            (
                answer.status,
                answer.header("retry-after").map(str::to_owned),
            )
        }
    });
    let answers = futures::future::join_all(logins).await;
    let shed = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(shed > 0, "a burst beyond the cores is shed: {answers:?}");
    for (status, retry_after) in &answers {
        match *status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(retry_after.as_deref(), Some("1")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed < answers.len(), "some logins are answered");
}

/// Both backends one after the other: two bursts at once would shed each other's setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_is_shed_with_503() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        if let Some(app) = with_one_second_deadlines(backend).await {
            a_burst_of_logins_is_shed_not_queued_without_end(app).await;
        }
    }
}
