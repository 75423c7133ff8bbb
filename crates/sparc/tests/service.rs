//! The service as an operator sees it: readiness follows the database (503 while it is
//! unreachable, 200 again when it returns), and SIGTERM stops the process gracefully.
//!
//! The outage test runs its own PostgreSQL cluster (initdb in a temporary directory, its own
//! port) and stops only that one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::{Process, free_port};

const SECRET: &str = "service-test-signing-key-0123456789abcdef";

fn pg_bin(tool: &str) -> Option<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(Result::ok)
        .map(|v| v.path().join("bin").join(tool))
        .find(|p| p.exists())
}

/// Runs a PostgreSQL tool as the `postgres` user (the server refuses to run as root).
fn as_postgres(tool: &Path, args: &[&str]) -> bool {
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    };
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A throwaway PostgreSQL cluster, stopped and removed on drop.
struct OwnCluster {
    dir: PathBuf,
    port: u16,
}

impl OwnCluster {
    fn start() -> Option<OwnCluster> {
        let initdb = pg_bin("initdb")?;
        pg_bin("pg_ctl")?;
        let dir = std::env::temp_dir().join(format!("sparc-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).ok()?;
        if running_as_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .ok()?;
        }
        let data = dir.join("data");
        if !as_postgres(
            &initdb,
            &[
                "-D",
                data.to_str()?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        ) {
            return None;
        }
        let cluster = OwnCluster {
            dir,
            port: free_port(),
        };
        cluster.pg_ctl_start().then_some(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl_start(&self) -> bool {
        let Some(pg_ctl) = pg_bin("pg_ctl") else {
            return false;
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        as_postgres(
            &pg_ctl,
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-w",
                "-l",
                &format!("{}/log", self.dir.display()),
                "start",
            ],
        )
    }

    fn stop(&self) -> bool {
        pg_bin("pg_ctl").is_some_and(|pg_ctl| {
            as_postgres(
                &pg_ctl,
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            )
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// `sparc serve` on `database_url`, once its readiness answers 200.
async fn start(database_url: &str) -> Process {
    let env = [
        ("DATABASE_URL", database_url),
        ("SPARC_JWT_SECRET", SECRET),
        ("RUST_LOG", "error"),
    ];
    crate::support::process::start("serve", &env, "/api/v1/readiness").await
}

async fn readiness(base: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let response = client
        .get(format!("{base}/api/v1/readiness"))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

async fn wait_for_readiness(base: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = readiness(base).await;
        if got == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {got:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_503_while_the_database_is_unreachable_and_200_when_it_returns() {
    let Some(cluster) = OwnCluster::start() else {
        sparc_store::testing::service_missing(
            "a PostgreSQL cluster of the test's own (initdb, pg_ctl)",
        );
        return;
    };
    let service = start(&cluster.url()).await;

    assert!(cluster.stop(), "our own cluster should stop");
    wait_for_readiness(&service.base, 503).await;
    let liveness = reqwest::get(format!("{}/api/v1/liveness", service.base))
        .await
        .expect("liveness answers");
    assert_eq!(
        liveness.status(),
        200,
        "the process stays alive while the database is down"
    );

    assert!(cluster.pg_ctl_start(), "our own cluster should start again");
    wait_for_readiness(&service.base, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_gracefully() {
    let file = sparc_store::testing::SqliteTestFile::new();
    let mut service = start(&file.url()).await;
    let term = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = service.child.try_wait().expect("the process can be polled") {
            assert!(
                status.success(),
                "a graceful stop exits with status 0, got {status}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
