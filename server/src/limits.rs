//! Server-wide limits on connections: how many may be open at once (in all, and from one
//! address), how soon a new one must speak, and how long one may stay silent. Clients send HTTP/2 pings every 30 s
//! (and answer the server's), so a live connection is never silent for long; one that
//! never sends its preface, or stops mid-way, is closed.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client sends before it is past the handshake: the HTTP/2 preface (24) and a
/// SETTINGS frame header (9); any TLS ClientHello is longer.
const HANDSHAKE_BYTES: usize = 33;

/// Limits and timeouts of `serve`, with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once per port; more are closed as they arrive.
    pub max_connections: usize,
    /// Of those, from one address: one client cannot take every place. A PC room behind
    /// one NAT address shares it, so the default is generous (half of the ports').
    pub max_connections_per_address: usize,
    /// Upload streams at once; more are refused with RESOURCE_EXHAUSTED (clients retry).
    pub max_uploads: usize,
    /// How long a new connection may take to send its first byte, and an upload stream
    /// its `open` message.
    pub handshake_timeout: Duration,
    /// How long a connection may send nothing at all.
    pub idle_timeout: Duration,
    /// Password checks (argon2) at once.
    pub login_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 512,
            max_uploads: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            login_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The accepted connections of `listener`, each guarded by `limits`; connections beyond
/// the cap, in all or from their address, are closed at once.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let open = Arc::new(Open::default());
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |accepted| {
        let open = open.clone();
        async move {
            let stream = match accepted {
                Ok(stream) => stream,
                // A failed accept (e.g. out of file descriptors) must not stop the server.
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return None;
                }
            };
            let peer = stream.peer_addr().ok()?.ip();
            let Some(slot) = Open::take(&open, peer, &limits) else {
                tracing::warn!(%peer, limit = limits.max_connections, per_address = limits.max_connections_per_address, "connection refused: too many open");
                return None;
            };
            let _ = stream.set_nodelay(true);
            Some(Ok(Guarded {
                io: stream,
                silence: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                idle_timeout: limits.idle_timeout,
                received: 0,
                slot,
            }))
        }
    })
}

/// The connections open on one port: in all, and by address.
#[derive(Debug, Default)]
struct Open {
    total: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Open {
    /// A place for a connection from `peer`, if both caps allow one.
    fn take(open: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut by_address = open.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let mine = by_address.entry(peer).or_insert(0);
        if *mine >= limits.max_connections_per_address.max(1)
            || open.total.load(Ordering::Acquire) >= limits.max_connections
        {
            if *mine == 0 {
                by_address.remove(&peer);
            }
            return None;
        }
        *mine += 1;
        open.total.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            open: open.clone(),
            peer,
        })
    }
}

/// Frees a place under the caps when the connection goes.
#[derive(Debug)]
struct Slot {
    open: Arc<Open>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_address = self
            .open
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = by_address.get_mut(&self.peer) {
            *mine -= 1;
            if *mine == 0 {
                by_address.remove(&self.peer);
            }
        }
        self.open.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that fails its reads once it has been silent too long.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    /// Fires when the peer has been silent too long (first the handshake deadline).
    silence: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Bytes read so far, up to `HANDSHAKE_BYTES`.
    received: usize,
    #[allow(dead_code)]
    slot: Slot,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // The handshake deadline holds until a whole preface has arrived, so
                // that a trickle of a few bytes does not keep a connection open.
                self.received = (self.received + buf.filled().len() - before).min(HANDSHAKE_BYTES);
                if self.received >= HANDSHAKE_BYTES {
                    let deadline = Instant::now() + self.idle_timeout;
                    self.silence.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.silence.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer was silent too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
