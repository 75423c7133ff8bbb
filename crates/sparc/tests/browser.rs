//! A dashboard in a real browser: headless Chromium, driven over WebDriver (`chromedriver`), loads
//! a page from an origin in `SPARC_CORS_ORIGINS` that uses the TypeScript client
//! (`clients/typescript`) to sign in, create and list tasks, receive a change over the
//! WebSocket and refresh its token; the same page from an origin not in the list is refused by
//! the browser. Needs `chromium` and `chromium-driver` (Debian) and npm; skipped with a message
//! when they are missing, unless `CI=true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Backend, TestApp};
use axum::Router;
use axum::http::header;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The page: the client as an ES module, and `window.run`, which the test calls.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>sparc browser test</title>
<script type="module">
import { SparcClient, SparcSocket } from "/client.js";

window.run = async (api, username, password) => {
  const out = {};
  try {
    const client = new SparcClient({ baseUrl: api });
    await client.login(username, password);
    out.signedIn = true;
    const task = await client.call("post", "/api/v1/tasks", {
      body: { skill_name: "browser", schedule_cron: "*/5 * * * *" },
    });
    out.created = task.id;
    const list = await client.call("get", "/api/v1/tasks", { query: { limit: 10 } });
    out.listed = list.tasks.map((t) => t.id);

    let acknowledged;
    const ack = new Promise((resolve) => (acknowledged = resolve));
    let changed;
    const change = new Promise((resolve) => (changed = resolve));
    const socket = new SparcSocket(client, {
      onFrame: (frame) => {
        if (frame.type === "ack") acknowledged();
        if (frame.type === "task_updated" && frame.payload.task.schedule_cron === "*/7 * * * *") {
          changed(frame.event_id);
        }
      },
    });
    await socket.open();
    await ack;
    await client.call("patch", "/api/v1/tasks/{id}", {
      path: { id: task.id },
      body: { schedule_cron: "*/7 * * * *" },
    });
    out.changeEventId = await Promise.race([
      change,
      new Promise((_, fail) => setTimeout(() => fail(new Error("no task_updated frame")), 10000)),
    ]);
    socket.close();

    const before = await client.accessToken();
    const refreshed = await client.refresh();
    out.refreshed = refreshed.accessToken !== before;
    const me = await client.call("get", "/api/v1/auth/me", {});
    out.me = me.username;
  } catch (error) {
    out.failure = String(error);
  }
  return out;
};
</script>
"#;

/// The built client (`clients/typescript/dist/index.js`), built first when missing.
async fn client_module() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    let built = dir.join("dist/index.js");
    if !built.exists() {
        for args in [
            &["ci", "--no-audit", "--no-fund"][..],
            &["run", "build"][..],
        ] {
            let status = Command::new("npm")
                .args(args)
                .current_dir(&dir)
                .status()
                .await;
            if !status.is_ok_and(|s| s.success()) {
                return None;
            }
        }
    }
    tokio::fs::read_to_string(built).await.ok()
}

/// Serves the page and the client from a listener of its own: one origin.
async fn serve_page(client: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let router = Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], PAGE) }),
        )
        .route(
            "/client.js",
            get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], client) }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A chromedriver of this test's own, killed when dropped.
struct Driver {
    _process: Child,
    url: String,
    http: reqwest::Client,
}

impl Driver {
    async fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let driver = Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .is_ok()
            {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let answer: Value = self
            .http
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        assert!(answer["value"]["error"].is_null(), "{path}: {answer}");
        answer["value"].clone()
    }

    /// Opens `page` in a new headless browser and runs `window.run(...args)` there.
    async fn run_page(&self, page: &str, args: Value) -> Value {
        let session = self
            .command(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage"],
                    },
                }}}),
            )
            .await;
        let id = session["sessionId"].as_str().expect("a session").to_owned();
        let post = |path: String, body: Value| async move {
            self.command(reqwest::Method::POST, &path, body).await
        };
        post(format!("/session/{id}/timeouts"), json!({"script": 30_000})).await;
        post(format!("/session/{id}/url"), json!({"url": page})).await;
        let result = post(
            format!("/session/{id}/execute/async"),
            json!({
                "script": "const done = arguments[arguments.length - 1]; \
                           window.run(...arguments[0]).then(done);",
                "args": [args],
            }),
        )
        .await;
        self.command(
            reqwest::Method::DELETE,
            &format!("/session/{id}"),
            json!({}),
        )
        .await;
        result
    }
}

/// Skips (or fails in CI) when `what` is missing.
fn missing(what: &str) {
    assert!(
        std::env::var("CI").is_err(),
        "{what} is missing, and CI=true: install it (.ci/run does)"
    );
    eprintln!("skipped: {what} is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_on_a_listed_origin_works_and_another_origin_is_refused() {
    if !PathBuf::from(CHROMIUM).exists() || !PathBuf::from(CHROMEDRIVER).exists() {
        return missing("chromium or chromedriver");
    }
    let Some(client) = client_module().await else {
        return missing("the built TypeScript client (npm)");
    };
    let listed = serve_page(client.clone()).await;
    let elsewhere = serve_page(client).await;
    let origin = format!("http://{listed}");
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.api.cors_origins =
            sparc_api::middleware::CorsOrigins::parse([origin.as_str()]).expect("an origin");
    })
    .await
    else {
        return;
    };
    let user = app.user("browser").await;
    let Some(driver) = Driver::start().await else {
        return missing("a working chromedriver");
    };
    let args = json!([app.base, user.username, user.password]);

    let worked = driver.run_page(&format!("{origin}/"), args.clone()).await;
    assert_eq!(worked["failure"], Value::Null, "{worked}");
    assert_eq!(worked["signedIn"], true);
    let created = worked["created"].as_str().expect("a task id");
    assert!(
        worked["listed"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == created)),
        "{worked}"
    );
    assert!(worked["changeEventId"].is_string(), "{worked}");
    assert_eq!(worked["refreshed"], true, "{worked}");
    assert_eq!(worked["me"], user.username.as_str());

    let refused = driver.run_page(&format!("http://{elsewhere}/"), args).await;
    assert_eq!(refused["signedIn"], Value::Null, "{refused}");
    assert!(
        refused["failure"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "the browser keeps the answer from a page of another origin: {refused}"
    );
}
