//! The background runtime: the threads that run the projection loops, the policies, the hash
//! chainer and the scheduler at a lower OS priority than the threads that answer requests.
//!
//! That work grows with everyone's writes and nobody waits for it as it happens. On the
//! request runtime it took turns with the requests on the same workers, so one user's stream
//! of writes lengthened every other user's waits. On threads of its own at a lower priority,
//! the kernel runs a request that becomes ready ahead of it; it still gets the CPU the requests
//! leave, and a share of it when there is none left.
//!
//! A connection answers through the I/O driver of the runtime that opened it, so nothing the
//! requests use may be opened here: the background work has a database handle and a command
//! bus of its own (see `server.rs`), and only uses what the request runtime opened.

use std::sync::Once;

use tokio::runtime::{Handle, Runtime};

/// The niceness of the background threads: when both want the CPU, they weigh about a tenth
/// of a request thread (Linux).
pub const BACKGROUND_NICENESS: i32 = 10;

/// The name of the background runtime's threads (at most 15 bytes, the kernel's limit).
pub const BACKGROUND_THREAD_NAME: &str = "sparc-bg";

/// Worker threads: one is enough for loops that mostly wait for the database, and it leaves
/// the cores to the requests.
const WORKERS: usize = 1;

/// A runtime of [`WORKERS`] threads (and its blocking threads) at [`BACKGROUND_NICENESS`].
/// Stopping or dropping it does not wait for its tasks, so it may be done from inside another
/// runtime.
pub struct BackgroundRuntime(Option<Runtime>);

impl BackgroundRuntime {
    /// Starts its threads.
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name(BACKGROUND_THREAD_NAME)
            .on_thread_start(lower_this_thread_s_priority)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Where to spawn background work.
    pub fn handle(&self) -> &Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken when it is dropped"),
        }
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Gives the calling thread [`BACKGROUND_NICENESS`] (on Linux, `setpriority` without a pid
/// sets the calling thread's). A failure only costs the priority; it is logged once.
fn lower_this_thread_s_priority() {
    static WARNED: Once = Once::new();
    if let Err(error) = rustix::process::setpriority_process(None, BACKGROUND_NICENESS) {
        WARNED.call_once(|| {
            tracing::warn!(%error, "background threads run at the requests' priority");
        });
    }
}
