//! A Memory MCP server of a test's own: the real npm `@modelcontextprotocol/server-memory`
//! (installed by `npm ci --prefix tools/memory-server`, as `.ci/run` does), or a fake that
//! hangs or answers malformed JSON-RPC. The service starts it through a wrapper script, so a
//! test can kill it (`kill -9`) and keep it down (the wrapper then exits at once, as a server
//! that cannot start) until it lets it up again.
//!
//! Without node or the installed package the tests that need it print `skipping: …` and pass,
//! unless `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The installed package's entry point.
fn package_entry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../tools/memory-server/node_modules/@modelcontextprotocol/server-memory/dist/index.js",
    )
}

/// How the fake misbehaves (see [`MemoryServer::fake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Answers `initialize`, then never answers a call.
    Hang,
    /// Answers calls with a line that is not JSON.
    Garbage,
    /// Answers calls with a JSON-RPC result that is no tool result.
    Shape,
    /// Answers calls with a tool result whose text is not JSON.
    Text,
}

impl Misbehaviour {
    fn mode(self) -> &'static str {
        match self {
            Misbehaviour::Hang => "hang",
            Misbehaviour::Garbage => "garbage",
            Misbehaviour::Shape => "shape",
            Misbehaviour::Text => "text",
        }
    }
}

/// A JSON-RPC peer that speaks just enough MCP to be connected to, then misbehaves as `MODE`
/// says.
const FAKE: &str = r#"import rl from 'node:readline';
const out = o => process.stdout.write(JSON.stringify(o) + '\n');
rl.createInterface({ input: process.stdin }).on('line', l => {
  const m = JSON.parse(l); if (m.id === undefined) return;
  if (m.method === 'initialize') return out({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: '2025-11-25', capabilities: { tools: {} }, serverInfo: { name: 'fake', version: '0' } } });
  const mode = process.env.MODE;
  if (mode === 'hang') return;
  if (mode === 'garbage') return process.stdout.write('{not json\n');
  if (mode === 'shape') return out({ jsonrpc: '2.0', id: m.id, result: { bogus: true } });
  out({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: 'not json' }] } });
});
"#;

/// A server with the seed's flat tools, `memory_store {key, value, metadata}` and
/// `vector_search {query, limit}` (hits `{key, score}`: the share of the query's words in the
/// value), speaking just enough MCP; for the tool mapping given as configuration.
const SEED_STYLE: &str = r#"import rl from 'node:readline';
const out = o => process.stdout.write(JSON.stringify(o) + '\n');
const stored = new Map();
const answer = (id, value) => out({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: JSON.stringify(value) }], structuredContent: value } });
rl.createInterface({ input: process.stdin }).on('line', l => {
  const m = JSON.parse(l); if (m.id === undefined) return;
  if (m.method === 'initialize') return out({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: '2025-11-25', capabilities: { tools: {} }, serverInfo: { name: 'seed', version: '0' } } });
  if (m.method !== 'tools/call') return out({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: 'no such method' } });
  const { name, arguments: a } = m.params;
  if (name === 'memory_store') { stored.set(a.key, a.value); return answer(m.id, { success: true, key: a.key }); }
  if (name === 'vector_search') {
    const words = a.query.toLowerCase().split(/\W+/).filter(w => w);
    const results = [...stored].map(([key, value]) => ({ key, score: words.filter(w => value.toLowerCase().includes(w)).length / words.length }))
      .filter(r => r.score > 0).sort((x, y) => y.score - x.score).slice(0, a.limit);
    return answer(m.id, { results });
  }
  out({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: 'unknown tool ' + name }], isError: true } });
});
"#;

/// A server's directory: its wrapper script, its data file, its pid and its `down` flag.
#[derive(Debug)]
pub struct MemoryServer {
    dir: PathBuf,
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether node and the package are there; if not, says so (or fails in CI).
fn installed() -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if node && package_entry().exists() {
        return true;
    }
    let missing = "node and @modelcontextprotocol/server-memory in tools/memory-server \
                   (npm ci --prefix tools/memory-server)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the memory tests need {missing} in CI (CI=true)");
    }
    eprintln!("skipping: the memory tests need {missing}");
    false
}

impl MemoryServer {
    /// The real npm server, or `None` (after saying so) when it is not installed.
    pub fn real() -> Option<Self> {
        if !installed() {
            return None;
        }
        let server = Self::in_new_dir();
        let entry = package_entry();
        server.write_wrapper(&format!(
            "MEMORY_FILE_PATH='{}' exec node '{}'",
            server.data_file().display(),
            entry.display()
        ));
        Some(server)
    }

    /// A fake that misbehaves as `how` says, or `None` when node is not installed.
    pub fn fake(how: Misbehaviour) -> Option<Self> {
        if !installed() {
            return None;
        }
        let server = Self::in_new_dir();
        let script = server.dir.join("fake.mjs");
        std::fs::write(&script, FAKE).expect("the fake server's script should be written");
        server.write_wrapper(&format!(
            "MODE={} exec node '{}'",
            how.mode(),
            script.display()
        ));
        Some(server)
    }

    /// A server with the seed's `memory_store` and `vector_search` tools, or `None` when node
    /// is not installed.
    pub fn seed_style() -> Option<Self> {
        if !installed() {
            return None;
        }
        let server = Self::in_new_dir();
        let script = server.dir.join("seed.mjs");
        std::fs::write(&script, SEED_STYLE)
            .expect("the seed-style server's script should be written");
        server.write_wrapper(&format!("exec node '{}'", script.display()));
        Some(server)
    }

    fn in_new_dir() -> Self {
        let dir = std::env::temp_dir().join(format!("sparc-memory-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("the server's directory should be created");
        Self { dir }
    }

    fn write_wrapper(&self, exec: &str) {
        let script = format!(
            "#!/bin/sh\n[ -e '{down}' ] && exit 1\necho $$ > '{pid}'\n{exec}\n",
            down = self.dir.join("down").display(),
            pid = self.dir.join("pid").display(),
        );
        std::fs::write(self.dir.join("run.sh"), script).expect("the wrapper should be written");
    }

    /// `SPARC_MEMORY_MCP_COMMAND` for this server.
    pub fn command(&self) -> String {
        format!("sh '{}'", self.dir.join("run.sh").display())
    }

    /// The server's JSONL knowledge graph.
    pub fn data_file(&self) -> PathBuf {
        self.dir.join("memory.jsonl")
    }

    /// Kills the running server process, if any (`kill -9`).
    pub fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }

    /// Kills the server and keeps it from starting again.
    pub fn take_down(&self) {
        std::fs::write(self.dir.join("down"), "").expect("the down flag should be written");
        self.kill();
    }

    /// Lets the server start again (the service's supervisor starts it).
    pub fn let_up(&self) {
        let _ = std::fs::remove_file(self.dir.join("down"));
    }

    /// The names of the entities in the server's file, in the order it holds them.
    pub fn entity_names(&self) -> Vec<String> {
        std::fs::read_to_string(self.data_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|item| item["type"] == "entity")
            .filter_map(|item| item["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Adds an entity to the server's file while the server is down (as a push whose
    /// acknowledgement was lost would have left it).
    pub fn add_entity_offline(&self, name: &str, entity_type: &str) {
        use std::io::Write as _;
        let line = serde_json::json!({"type": "entity", "name": name, "entityType": entity_type, "observations": []});
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_file())
            .expect("the server's file should open");
        let existing = std::fs::metadata(self.data_file()).map_or(0, |m| m.len());
        let separator = if existing > 0 { "\n" } else { "" };
        write!(file, "{separator}{line}").expect("the entity should be written");
    }
}

/// A Memory MCP server over streamable HTTP (`tools/memory-server/http-server.mjs`: the
/// knowledge-graph tools through the SDK's HTTP transport), killed when dropped.
#[derive(Debug)]
pub struct HttpMemoryServer {
    child: std::process::Child,
    /// `SPARC_MEMORY_MCP_URL` for it.
    pub url: String,
}

impl Drop for HttpMemoryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpMemoryServer {
    /// Starts it on a free port, or `None` (after saying so) when node or the package is
    /// missing.
    pub fn start() -> Option<Self> {
        use std::io::BufRead as _;
        if !installed() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/memory-server/http-server.mjs");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node should start the HTTP memory server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("its stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the HTTP memory server should say it listens");
        assert_eq!(line.trim(), "listening");
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        })
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
