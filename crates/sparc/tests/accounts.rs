//! Accounts managed from the command line while `sparc serve` runs on the same (embedded
//! SQLite) database: `sparc user create`, `set-role`, `deactivate` and `activate`, seen through
//! the running service's login and session checks.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparc_store::testing::SqliteTestFile;

const SECRET: &str = "accounts-test-signing-key-0123456789abcdef";
const PASSWORD: &str = "Sup3rSecret!";

fn sparc(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparc"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("SPARC_JWT_SECRET", SECRET)
        .env("SPARC_PASSWORD", PASSWORD)
        .env("RUST_LOG", "error")
        .output()
        .expect("the sparc binary runs")
}

async fn login(base: &str, username: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .expect("the service answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

async fn me(base: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the service answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// Polls `check` until it holds: the running service learns of the command line's events when
/// its projections next read the log.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn signed_in(base: &str, username: &str) -> String {
    let body = eventually(&format!("{username} signs in"), || async {
        let (status, body) = login(base, username).await;
        (status == 200).then_some(body)
    })
    .await;
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_changes_roles_and_activity_while_the_server_runs() {
    let file = SqliteTestFile::new();
    let url = file.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SPARC_JWT_SECRET", SECRET),
        ("SPARC_RATE_LIMIT_PER_MINUTE", "0"),
        ("SPARC_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
        ("RUST_LOG", "error"),
    ];
    let service = crate::support::process::start("serve", &env, "/api/v1/readiness").await;
    let base = service.base.as_str();

    let created = sparc(
        &url,
        &[
            "user",
            "create",
            "--username",
            "bob",
            "--email",
            "bob@example.com",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let token = signed_in(base, "bob").await;
    assert_eq!(me(base, &token).await.1["role"], "user");

    let promoted = sparc(
        &url,
        &["user", "set-role", "--username", "bob", "--role", "auditor"],
    );
    assert!(promoted.status.success(), "{promoted:?}");
    assert!(String::from_utf8_lossy(&promoted.stdout).contains("role auditor"));
    eventually("the token naming the old role stops working", || async {
        (me(base, &token).await.0 == 401).then_some(Value::Null)
    })
    .await;
    let token = signed_in(base, "bob").await;
    assert_eq!(me(base, &token).await.1["role"], "auditor");

    let deactivated = sparc(&url, &["user", "deactivate", "--username", "bob"]);
    assert!(deactivated.status.success(), "{deactivated:?}");
    let refusal = eventually("bob's login is refused", || async {
        let (status, body) = login(base, "bob").await;
        (status == 401).then_some(body)
    })
    .await;
    assert_eq!(refusal["detail"], "User account is inactive");
    eventually("bob's sessions end", || async {
        (me(base, &token).await.0 == 401).then_some(Value::Null)
    })
    .await;

    let activated = sparc(&url, &["user", "activate", "--username", "bob"]);
    assert!(activated.status.success(), "{activated:?}");
    signed_in(base, "bob").await;

    let unknown = sparc(
        &url,
        &[
            "user",
            "set-role",
            "--username",
            "nobody",
            "--role",
            "admin",
        ],
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no user named 'nobody'"),
        "{unknown:?}"
    );
}
