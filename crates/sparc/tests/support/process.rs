//! The real `sparc` binary as a process: started on a free port, waited for until it answers,
//! and killed when dropped (so a failed assertion leaves nothing running).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sparc` process and its base URL.
pub struct Process {
    /// The process, for a test that kills it itself.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// Starts `sparc <subcommand>` with `env` on a free port and waits until `ready_path` answers
/// 2xx.
pub async fn start(subcommand: &str, env: &[(&str, &str)], ready_path: &str) -> Process {
    start_on(free_port(), subcommand, env, ready_path).await
}

/// [`start`] on `port` (to restart a process where its clients knew it).
pub async fn start_on(
    port: u16,
    subcommand: &str,
    env: &[(&str, &str)],
    ready_path: &str,
) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_sparc"))
        .arg(subcommand)
        .envs(env.iter().copied())
        .env("SPARC_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sparc binary should start");
    let process = Process {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("{}{ready_path}", process.base)).await
            && response.status().is_success()
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sparc {subcommand} did not become ready");
}
