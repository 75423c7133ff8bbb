//! The HTTP server of `sparc serve` and `sparc gateway`: HTTP/1.1 (with upgrades, for `/ws`)
//! over hyper, with the two bounds `axum::serve` cannot set.
//!
//! - **Header read time** (`SPARC_HEADER_READ_TIMEOUT_SECONDS`): a connection that has not sent
//!   a whole request head within it, counted from its opening or from its previous answer, is
//!   closed. So a client trickling its headers (or saying nothing, or idling on keep-alive) holds
//!   a socket that long at most.
//! - **Concurrent connections** (`SPARC_MAX_CONNECTIONS`): every accepted socket holds a place
//!   until it closes, an upgraded WebSocket's too. Over the cap, a connection is still accepted
//!   and its request answered 503 in the contract's shape, through the whole middleware stack
//!   (request id, security headers; see [`sparc_api::middleware::over_capacity`]), then closed;
//!   such connections have a small budget of their own, and while that too is spent the server
//!   accepts nothing and lets the kernel's backlog wait. Open sockets thus stay below the cap plus
//!   that budget, under the process's open-file limit, whatever clients do.
//!
//! Shutdown is graceful as with `axum::serve`: no more accepts, requests in progress are
//! answered, then [`serve`] returns; upgraded connections are the gateway's to close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sparc_api::middleware::over_capacity::OverCapacity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

/// Connections accepted over the cap only to be told so, at once. Each is held for one
/// request at most (within the header read time), so a few hundred answer a burst while
/// bounding what refusing costs.
const REFUSALS: usize = 256;

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most, upgraded ones included; `0`: no cap.
    pub max_connections: usize,
    /// How long a connection may take to send a request head.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then waits for the
/// requests in progress.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let places = Arc::new(Semaphore::new(match limits.max_connections {
        0 => Semaphore::MAX_PERMITS,
        cap => cap,
    }));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let over_capacity = OverCapacity {
        max_connections: limits.max_connections,
    };
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a receiver; all are gone once the last one ends.
    let (finished, running) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        // A place (or a refusal's) is taken before accepting: sockets never outnumber them.
        let (place, over) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            place = places.clone().acquire_owned() => (place.expect("never closed"), false),
            spare = refusals.clone().acquire_owned() => (spare.expect("never closed"), true),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        // A place may have been freed while this waited with a refusal's.
        let freed = over.then(|| places.clone().try_acquire_owned().ok());
        let (place, over) = match freed.flatten() {
            Some(freed) => (freed, false),
            None => (place, over),
        };
        // Answers and frames are written whole: Nagle's algorithm would hold a frame that
        // follows another until the client's delayed ACK, tens of milliseconds.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        let refused = over.then_some(over_capacity);
        if over {
            tracing::debug!(%peer, "connection over the cap: answered 503");
        }
        let io = Held {
            stream,
            _place: place,
        };
        tokio::spawn(serve_connection(
            io,
            peer,
            refused,
            router.clone(),
            limits.header_read_timeout,
            stopping.clone(),
            running.clone(),
        ));
    }
    let _ = stop.send(true);
    drop(running);
    finished.closed().await;
}

/// A socket with its place (under the cap, or one of the [`REFUSALS`]), freed when the socket
/// is dropped: when hyper is done with it, or, after an upgrade, when the WebSocket ends.
struct Held {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves one connection until it closes, or until it is idle after `stopping` turns true.
/// `refused` marks every request of a connection over the cap (then there is no keep-alive).
async fn serve_connection(
    io: Held,
    peer: SocketAddr,
    refused: Option<OverCapacity>,
    router: Router,
    header_read_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    _running: watch::Receiver<()>,
) {
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` would give: the client IP middleware reads it.
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(refused) = refused {
            request.extensions_mut().insert(refused);
        }
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(refused.is_none());
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut told_to_stop = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended");
                }
                break;
            }
            _ = stopping.wait_for(|stop| *stop), if !told_to_stop => {
                told_to_stop = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// An accept that failed: a client that gave up is nothing; anything else (out of file
/// descriptors, most likely) is waited out rather than retried in a busy loop.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "could not accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
