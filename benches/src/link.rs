//! A link emulator for the benches: a TCP relay in front of a server port that passes
//! each direction at a rate cap and after a one-way delay, like a WAN link with a router
//! queue, and counts the bytes it delivers (with a trace of the upload per 10 ms, to see
//! where a transfer leaves the link idle). No external tools, no root.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};

/// Trace resolution.
pub const TRACE_STEP: Duration = Duration::from_millis(10);

/// What the link does to each direction.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// Megabits per second each way; `None` for no cap.
    pub mbit: Option<f64>,
    /// One-way delay (half the round-trip time).
    pub one_way: Duration,
}

impl LinkSpec {
    fn bytes_per_sec(self) -> Option<f64> {
        self.mbit.map(|m| m * 1e6 / 8.0)
    }

    /// Bytes the router queue holds beyond those in flight: 100 ms at the rate.
    fn queue_bytes(self) -> usize {
        let rate = self.bytes_per_sec().unwrap_or(1e9);
        let in_flight = rate * self.one_way.as_secs_f64();
        (in_flight + rate * 0.1) as usize + (256 << 10)
    }

    /// Says the link's settings, e.g. "100 Mbit/s, 80 ms RTT".
    pub fn describe(self) -> String {
        let rate = self
            .mbit
            .map_or_else(|| "uncapped".to_owned(), |m| format!("{m} Mbit/s"));
        format!("{rate}, {} ms RTT", self.one_way.as_millis() * 2)
    }
}

/// Bytes delivered through every relay of one emulated link.
#[derive(Debug)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
    /// Since when, and the upload bytes delivered per [`TRACE_STEP`] since then.
    trace: Mutex<(Instant, Vec<u64>)>,
}

impl Counters {
    fn new() -> Self {
        Self {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            trace: Mutex::new((Instant::now(), Vec::new())),
        }
    }

    /// Starts counting and tracing from zero, now.
    pub fn reset(&self) {
        self.up.store(0, Ordering::Relaxed);
        self.down.store(0, Ordering::Relaxed);
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), Vec::new());
    }

    fn delivered_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
        let mut guard = self.trace.lock().unwrap_or_else(|e| e.into_inner());
        let (started, trace) = &mut *guard;
        let slot = (started.elapsed().as_millis() / TRACE_STEP.as_millis()) as usize;
        if trace.len() <= slot {
            trace.resize(slot + 1, 0);
        }
        trace[slot] += n as u64;
    }

    /// The upload since [`Counters::reset`], per [`TRACE_STEP`].
    pub fn upload_trace(&self) -> Vec<u64> {
        self.trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

/// What an upload trace shows: the time before the first byte arrived, and the steps
/// without a byte between the first and the last (the link idle mid-stream).
pub fn trace_summary(trace: &[u64]) -> (Duration, Duration) {
    let first = trace.iter().position(|&b| b > 0).unwrap_or(trace.len());
    let last = trace.iter().rposition(|&b| b > 0).map_or(first, |i| i + 1);
    let idle = trace[first..last].iter().filter(|&&b| b == 0).count();
    (TRACE_STEP * first as u32, TRACE_STEP * idle as u32)
}

/// Starts a relay on loopback in front of `upstream`, counting into `counters` (share
/// one between the relays of one link); returns its address.
pub async fn relay(upstream: SocketAddr, spec: LinkSpec, counters: Arc<Counters>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the link relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let up = counters.clone();
            tokio::spawn(direction(in_read, out_write, spec, move |n| {
                up.delivered_up(n);
            }));
            let down = counters.clone();
            tokio::spawn(direction(out_read, in_write, spec, move |n| {
                down.down.fetch_add(n as u64, Ordering::Relaxed);
            }));
        }
    });
    addr
}

/// Starts a link in front of every address in `upstreams`, sharing one set of counters.
pub fn link(
    runtime: &tokio::runtime::Runtime,
    upstreams: &[SocketAddr],
    spec: LinkSpec,
) -> (Vec<SocketAddr>, Arc<Counters>) {
    let counters = Arc::new(Counters::new());
    let relays = upstreams
        .iter()
        .map(|&upstream| runtime.block_on(relay(upstream, spec, counters.clone())))
        .collect();
    (relays, counters)
}

/// One direction: bytes enter the link as fast as its rate lets them (after those
/// queued before), arrive `one_way` later, and wait in a bounded router queue.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    spec: LinkSpec,
    delivered: impl Fn(usize) + Send + 'static,
) {
    let queue = Arc::new(Semaphore::new(spec.queue_bytes()));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let released = queue.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
            delivered(bytes.len());
            released.add_permits(bytes.len());
        }
        let _ = to.shutdown().await;
    });
    let mut link_free = Instant::now();
    loop {
        let mut buf = vec![0u8; 16 << 10];
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.truncate(n);
        let Ok(permit) = queue.acquire_many(n as u32).await else {
            break;
        };
        permit.forget();
        let now = Instant::now();
        let sent = match spec.bytes_per_sec() {
            Some(rate) => {
                link_free = link_free.max(now) + Duration::from_secs_f64(n as f64 / rate);
                link_free
            }
            None => now,
        };
        if tx.send((sent + spec.one_way, buf)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
