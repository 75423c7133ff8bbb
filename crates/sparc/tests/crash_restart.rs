//! Crash safety, shown on the real binary: `sparc serve` takes a stream of writes and is killed
//! with SIGKILL at random moments, several times, then restarted. Afterwards every write that got
//! a 2xx is in the log, every read model equals a rebuild from the log, and the hash chain
//! verifies.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use sparc_projections::catalog::READ_MODELS;
use sparc_projections::rebuild::differences;
use sparc_store::testing::{SqliteTestFile, postgres_test_database};
use sparc_store::{Database, LogReader};

use crate::support::process::Process;

const SECRET: &str = "crash-test-signing-key-0123456789abcdef";
const PASSWORD: &str = "Crash3dButFine";

/// `sparc serve` on `database_url`, rate limits off, once it is ready.
async fn start(database_url: &str) -> Process {
    let env = [
        ("DATABASE_URL", database_url),
        ("SPARC_JWT_SECRET", SECRET),
        ("SPARC_RATE_LIMIT_PER_MINUTE", "0"),
        ("SPARC_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
        ("RUST_LOG", "warn"),
    ];
    crate::support::process::start("serve", &env, "/api/v1/readiness").await
}

/// What the clients were told was stored: (aggregate type, id, version).
type Acknowledged = Arc<Mutex<Vec<(&'static str, String, i64)>>>;

async fn write_until_stopped(
    base: String,
    token: String,
    acknowledged: Acknowledged,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let mut last_task: Option<String> = None;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let (kind, request) = match (n % 3, &last_task) {
            (0, Some(task)) => (
                "Task",
                client
                    .put(format!("{base}/api/v1/tasks/{task}"))
                    .json(&json!({"params": {"n": n}})),
            ),
            (1, _) => (
                "Project",
                client
                    .post(format!("{base}/api/v1/projects"))
                    .json(&json!({"name": format!("p{n}")})),
            ),
            _ => (
                "Task",
                client
                    .post(format!("{base}/api/v1/tasks"))
                    .json(&json!({"skill_name": "lint", "schedule_cron": "*/5 * * * *"})),
            ),
        };
        let Ok(response) = request.bearer_auth(&token).send().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if !response.status().is_success() {
            continue;
        }
        let Ok(body) = response.json::<Value>().await else {
            continue;
        };
        let (Some(id), Some(version)) = (body["id"].as_str(), body["version"].as_i64()) else {
            continue;
        };
        if kind == "Task" {
            last_task = Some(id.to_owned());
        }
        acknowledged
            .lock()
            .expect("lock")
            .push((kind, id.to_owned(), version));
    }
}

async fn login(base: &str) -> String {
    let client = reqwest::Client::new();
    let registered = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": "crash", "email": "crash@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), 201);
    let body: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "crash", "password": PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("a login body");
    body["access_token"].as_str().expect("a token").to_owned()
}

async fn crash_repeatedly_then_check(db: Database, database_url: String) {
    let mut service = start(&database_url).await;
    let token = login(&service.base).await;
    let acknowledged: Acknowledged = Arc::default();
    for _round in 0..3 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(write_until_stopped(
                    service.base.clone(),
                    token.clone(),
                    acknowledged.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let pause = rand::thread_rng().gen_range(300..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        service.child.kill().expect("SIGKILL should be delivered");
        service
            .child
            .wait()
            .expect("the killed process should be reaped");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("a writer task");
        }
        service = start(&database_url).await;
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 20,
        "the writers should have been acknowledged many times, got {}",
        acknowledged.len()
    );

    // Every acknowledged write is in the log.
    let reader = LogReader::new(&db);
    for (kind, id, version) in &acknowledged {
        let events = reader
            .aggregate_events(kind, id, version - 1, 1)
            .await
            .expect("the log should be readable");
        assert_eq!(
            events.len(),
            1,
            "{kind} {id} version {version} was acknowledged but is not in the log"
        );
    }

    // The restarted service catches up; then each read model equals a rebuild from the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let statuses =
            sparc_projections::status::statuses(&db, sparc_projections::status::STALLED_AFTER)
                .await
                .expect("statuses");
        if statuses.iter().all(|s| s.lag_events == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for model in READ_MODELS {
        let differing = differences(&db, model).await.expect("a comparison");
        assert!(
            differing.is_empty(),
            "{} differs from a rebuild for ids {differing:?}",
            model.name
        );
    }

    // The chain verifies once the chainer has caught up.
    let output = Command::new(env!("CARGO_BIN_EXE_sparc"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", &database_url)
        .output()
        .expect("audit verify should run");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert!(
        output.status.success() && report["ok"] == true,
        "audit verify failed: {report}"
    );
    assert!(report["events_checked"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_service_at_random_moments_loses_no_acknowledged_write_on_postgres() {
    let Some(pg) = postgres_test_database().await else {
        return;
    };
    crash_repeatedly_then_check(pg.database.clone(), pg.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_service_at_random_moments_loses_no_acknowledged_write_on_sqlite() {
    let file = SqliteTestFile::new();
    let url = file.url();
    let db = Database::connect(&url).await.expect("sqlite opens");
    db.migrate().await.expect("migrations");
    crash_repeatedly_then_check(db, url).await;
}
