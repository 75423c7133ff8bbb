//! The sparc binary's library: everything that knows every concrete type.
//!
//! - [`audit`]: `sparc audit export`, the log as JSON lines.
//! - [`background`]: the runtime whose threads run the projection loops, the policies, the
//!   chainer and the scheduler at a lower OS priority than the requests.
//! - [`cli`]: the subcommands (`serve`, `migrate`, `user create`, `audit verify`, `worker`) and
//!   `main`.
//! - [`config`]: the typed settings tree (defaults, then an optional TOML file, then `SPARC_…`
//!   variables), with secrets that never print.
//! - [`http`]: the HTTP server, with its bounds on header read time and open connections.
//! - [`jobs`]: runs reach agents through NATS JetStream: the dispatch policy and the queue.
//! - [`keys`]: where the JWT signing key comes from (generated once beside an embedded database).
//! - [`projections`]: `sparc projections list|rebuild`.
//! - [`realtime`]: the change bus, the outbox relay and the WebSocket gateway (`sparc gateway`).
//! - [`scheduler`]: fires due task slots exactly once, however many schedulers run, and ends
//!   runs past their deadline.
//! - [`server`]: the composition root: database, projections, policies, the hash chainer, the
//!   HTTP router, and graceful shutdown. Tests start it on port 0 through the same path as `main`.
//! - [`telemetry`]: tracing, pretty in a terminal and JSON when configured.
//! - [`worker`]: `sparc worker`, the built-in agent that runs skills as local commands.

pub mod audit;
pub mod background;
pub mod cli;
pub mod config;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod projections;
pub mod realtime;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod worker;
