//! The built-in worker, shown on the real binaries: `sparc serve` on PostgreSQL and `sparc
//! worker` processes. A task's run reaches a worker, runs its command and comes back with its
//! output; a worker killed mid-run leaves the run to time out, never `running`; two workers
//! never run the same job.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparc_store::testing::postgres_test_database;

use crate::support::process::Process;

const SECRET: &str = "worker-test-signing-key-0123456789abcdef";
const PASSWORD: &str = "W0rkerPassw0rd";

/// A service on a fresh database with a user `runner` of role `agent`, and a user `owner`'s
/// token.
async fn service() -> Option<(Process, String)> {
    let pg = postgres_test_database().await?;
    let url = pg.url.clone();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SPARC_JWT_SECRET", SECRET),
        ("SPARC_RATE_LIMIT_PER_MINUTE", "0"),
        ("SPARC_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
        ("RUST_LOG", "warn"),
    ];
    let service = crate::support::process::start("serve", &env, "/api/v1/readiness").await;
    let created = Command::new(env!("CARGO_BIN_EXE_sparc"))
        .args(["user", "create", "--username", "runner", "--email"])
        .arg("runner@example.com")
        .args(["--role", "agent"])
        .env("DATABASE_URL", &url)
        .env("SPARC_PASSWORD", PASSWORD)
        .env("SPARC_JWT_SECRET", SECRET)
        .output()
        .expect("sparc user create");
    assert!(created.status.success(), "{created:?}");
    let client = reqwest::Client::new();
    let registered = client
        .post(format!("{}/api/v1/auth/register", service.base))
        .json(&json!({"username": "owner", "email": "owner@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), 201);
    let token = login(&service.base, "owner").await;
    // The worker's login reads the users read model, which follows the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_login(&service.base, "runner").await.is_none() {
        assert!(Instant::now() < deadline, "the agent user cannot log in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some((service, token))
}

async fn try_login(base: &str, username: &str) -> Option<String> {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["access_token"].as_str().map(str::to_owned)
}

async fn login(base: &str, username: &str) -> String {
    try_login(base, username).await.expect("a login")
}

/// A running `sparc worker`, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a worker named `name` against `base` with `skills` (TOML of `[skills.…]` tables).
fn worker(dir: &Path, base: &str, name: &str, concurrency: u32, skills: &str) -> Worker {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "api_url = \"{base}\"\nusername = \"runner\"\nname = \"{name}\"\n\
             concurrency = {concurrency}\npoll_wait_seconds = 5\n{skills}"
        ),
    )
    .expect("a config file");
    Worker(
        Command::new(env!("CARGO_BIN_EXE_sparc"))
            .args(["worker", "--config"])
            .arg(&config)
            .env("SPARC_WORKER_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sparc worker starts"),
    )
}

/// Creates a task of `skill` and runs it now; (task id, execution id).
async fn run(base: &str, token: &str, skill: &str, timeout_seconds: u32) -> (String, String) {
    let client = reqwest::Client::new();
    let task: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(token)
        .json(&json!({"skill_name": skill, "schedule_cron": "0 9 1 1 *",
                      "timeout_seconds": timeout_seconds, "params": {"who": "world"}}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("a task");
    let task_id = task["id"].as_str().expect("a task id").to_owned();
    let execution: Value = client
        .post(format!("{base}/api/v1/tasks/{task_id}/run"))
        .bearer_auth(token)
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("an execution");
    let id = execution["id"]
        .as_str()
        .expect("an execution id")
        .to_owned();
    (task_id, id)
}

/// Waits up to `limit` for the execution to satisfy `done`; its last reading.
async fn execution_until(
    base: &str,
    token: &str,
    (task_id, id): &(String, String),
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let list: Value = reqwest::Client::new()
            .get(format!("{base}/api/v1/tasks/{task_id}/executions"))
            .bearer_auth(token)
            .send()
            .await
            .expect("executions")
            .json()
            .await
            .expect("a list");
        let execution = list["executions"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["id"] == id.as_str()).cloned())
            .unwrap_or(Value::Null);
        if done(&execution) || Instant::now() >= deadline {
            return execution;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reaches_the_worker_and_comes_back_with_its_output() {
    let Some((service, token)) = service().await else {
        return;
    };
    let dir = tempdir();
    let _worker = worker(
        dir.path(),
        &service.base,
        "echoer",
        1,
        "[skills.greet]\ncommand = [\"printenv\", \"SPARC_PARAM_WHO\"]\n",
    );
    let run = run(&service.base, &token, "greet", 60).await;
    let finished = execution_until(&service.base, &token, &run, Duration::from_secs(20), |e| {
        e["status"] != "running"
    })
    .await;
    assert_eq!(finished["status"], "success", "{finished}");
    assert_eq!(finished["output_text"], "world\n", "{finished}");
    assert!(finished["agent_id"].is_string(), "{finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_the_run_to_time_out() {
    let Some((service, token)) = service().await else {
        return;
    };
    let dir = tempdir();
    let mut sleeper = worker(
        dir.path(),
        &service.base,
        "sleeper",
        1,
        "[skills.nap]\ncommand = [\"sleep\", \"30\"]\n",
    );
    let run = run(&service.base, &token, "nap", 3).await;
    let claimed = execution_until(&service.base, &token, &run, Duration::from_secs(20), |e| {
        e["agent_id"].is_string()
    })
    .await;
    assert!(
        claimed["agent_id"].is_string(),
        "the worker took the run: {claimed}"
    );
    sleeper.0.kill().expect("SIGKILL is delivered");
    let _ = sleeper.0.wait();
    let ended = execution_until(&service.base, &token, &run, Duration::from_secs(20), |e| {
        e["status"] != "running"
    })
    .await;
    assert_eq!(ended["status"], "timeout", "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_the_same_job() {
    let Some((service, token)) = service().await else {
        return;
    };
    let dir = tempdir();
    let record = dir.path().join("ran.txt");
    let skills = format!(
        "[skills.record]\ncommand = [\"sh\", \"-c\", \"echo $SPARC_EXECUTION_ID >> {}\"]\n",
        record.display()
    );
    let _first = worker(dir.path(), &service.base, "first", 4, &skills);
    let _second = worker(dir.path(), &service.base, "second", 4, &skills);
    let mut runs = Vec::new();
    for _ in 0..16 {
        runs.push(run(&service.base, &token, "record", 60).await);
    }
    for run in &runs {
        let finished = execution_until(&service.base, &token, run, Duration::from_secs(30), |e| {
            e["status"] != "running"
        })
        .await;
        assert_eq!(finished["status"], "success", "{finished}");
    }
    let ran = std::fs::read_to_string(&record).expect("the record");
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<&str> = runs.iter().map(|(_, id)| id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(lines, expected, "each run ran exactly once");
}

/// A temporary directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("sparc-worker-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    TempDir(dir)
}
