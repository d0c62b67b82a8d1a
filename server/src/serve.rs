//! `hotate-server serve`: the control service and the console on one listener, the
//! transfer service on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hotate_proto::pb::{control_server::ControlServer, transfer_server::TransferServer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::app::{App, HEARTBEAT, blocking};
use crate::console::{self, ConsoleOptions};
use crate::control::{ControlService, Transfers};
use crate::data::{DataDir, Places};
use crate::error::ServerError;
use crate::gate::Authenticated;
use crate::limits::{self, Limits};
use crate::live::Live;
use crate::throttle::LoginThrottle;
use crate::transfer::TransferService;

/// HTTP/2 windows sized for bulk upload, so the link, not flow control, sets the pace:
/// a stream may have a few full blocks in flight before it needs a window update.
/// HTTP/2 streams open at once on one connection (a terminal needs a few; the console a
/// page's worth).
const MAX_STREAMS: u32 = 200;
/// Streams a connection may make the server reset for errors before it is closed.
const MAX_ERROR_RESETS: usize = 1024;
const STREAM_WINDOW: u32 = 32 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// Allocator arenas shared by the server's threads: few, so that buffers freed on one
/// worker thread are reused by the next job on another (measured by
/// `benches/src/bin/attack-bench.rs`: base-block attacks +237 MiB with glibc's default,
/// +101 MiB with two).
const ALLOCATOR_ARENAS: u16 = 2;
/// Largest control message accepted: names, passwords and ids are small.
const CONTROL_MESSAGE: usize = 64 << 10;
/// How long a stop waits for open streams before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which services one `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// The control port (with the console) and the transfer port: a single server.
    All,
    /// The control port and the console; uploads go to registered transfer servers.
    Control,
    /// The transfer port, registered in the metadata with a heartbeat.
    Transfer,
}

/// Settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub role: ServeRole,
    /// The data dir, and the metadata database when it is not the data dir's SQLite.
    pub places: Places,
    pub listen: SocketAddr,
    pub transfer_listen: SocketAddr,
    pub advertise_transfer: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: Limits,
    /// `/metrics` answers callers that are neither on loopback nor logged in.
    pub public_metrics: bool,
}

/// Runs the server until `shutdown` resolves.
///
/// # Errors
/// When the data dir cannot be opened, a port cannot be bound, or TLS files are bad.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    hotate_engine::direct_io::cap_allocator_arenas(ALLOCATOR_ARENAS);
    let role = options.role;
    let advertised = match (role, &options.advertise_transfer) {
        (ServeRole::Transfer, None) => anyhow::bail!(
            "--role transfer needs --advertise-transfer URL: the address terminals reach this \
             transfer server at, which it registers in the metadata"
        ),
        (ServeRole::Transfer, Some(url)) => Some(url.clone()),
        _ => None,
    };
    if role != ServeRole::All && options.places.meta.is_none() {
        tracing::warn!(
            "--role {role:?} without --meta: the servers must share the data dir's SQLite database"
        );
    }
    let data = DataDir::open_at(&options.places).with_context(|| {
        format!(
            "opening data dir {} (metadata: {}, store: {})",
            options.places.data.display(),
            options.places.meta_place(),
            options.places.store_place()
        )
    })?;
    let control_listener = match role {
        ServeRole::Transfer => None,
        _ => Some(bind(options.listen, "control").await?),
    };
    let transfer_listener = match role {
        ServeRole::Control => None,
        _ => Some(bind(options.transfer_listen, "transfer").await?),
    };

    let tls = tls_config(options.tls.as_ref())?;
    let builder = || grpc_server(tls.as_ref());
    let limits = options.limits;
    let app = Arc::new(App::new(
        data,
        Arc::new(Live::default()),
        Arc::new(LoginThrottle::new(limits.login_concurrency)),
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let deadline_rx = stop_rx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut listening = Vec::new();
    let control_server = match control_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            listening.push(format!("control={addr}"));
            let transfers = match &transfer_listener {
                Some(transfer) => Transfers::Own {
                    port: transfer.local_addr()?.port(),
                    advertise: options.advertise_transfer.clone(),
                },
                None => {
                    let app = app.clone();
                    tokio::spawn(every_heartbeat(
                        stop_rx.clone(),
                        "could not read the transfer servers' progress",
                        move || app.mirror_transfers(),
                    ));
                    Transfers::Registered
                }
            };
            let control = Authenticated::new(
                ControlServer::new(ControlService::new(app.clone(), transfers))
                    .max_decoding_message_size(CONTROL_MESSAGE),
                app.clone(),
            );
            // The control port serves gRPC and the console (HTTP/1.1 and HTTP/2), by path.
            let console = console::router(
                app.clone(),
                ConsoleOptions {
                    tls: tls.is_some(),
                    public_metrics: options.public_metrics,
                },
                stop_rx.clone(),
            );
            let routes = Routes::from(
                Routes::new(control)
                    .into_axum_router()
                    .merge(console)
                    .fallback(console::not_found),
            );
            let server = builder()?.accept_http1(true).add_routes(routes);
            let incoming = limits::incoming(listener, limits);
            Some(server.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
        None => None,
    };
    let transfer_server = match transfer_listener {
        Some(listener) => {
            listening.push(format!("transfer={}", listener.local_addr()?));
            let transfer = Authenticated::new(
                TransferServer::new(TransferService::new(Arc::clone(&app), limits))
                    .max_decoding_message_size(hotate_proto::MAX_MESSAGE)
                    .max_encoding_message_size(hotate_proto::MAX_MESSAGE),
                app.clone(),
            );
            let server = builder()?.add_service(transfer);
            let incoming = limits::incoming(listener, limits);
            Some(server.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
        None => None,
    };
    if let Some(url) = &advertised {
        // Registered before the first terminal can be handed to it, then kept alive.
        let (app, url) = (app.clone(), url.clone());
        blocking({
            let (app, url) = (app.clone(), url.clone());
            move || app.transfer_alive(&url)
        })
        .await
        .context("registering this transfer server in the metadata")?;
        tokio::spawn(every_heartbeat(
            stop_rx.clone(),
            "could not tell the metadata this transfer server is alive",
            move || app.transfer_alive(&url),
        ));
        listening.push(format!(
            "advertised={}",
            advertised.as_deref().unwrap_or("")
        ));
    }

    println!("listening {}", listening.join(" "));
    tracing::info!(?role, listening = %listening.join(" "), data = %options.places.data.display(), meta = %options.places.meta_place(), store = %options.places.store_place(), "serving");
    let serving = async {
        let control = async {
            match control_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        let transfer = async {
            match transfer_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        tokio::try_join!(control, transfer)
    };
    // Graceful stop waits for open streams; an upload may run for hours, so after a grace
    // period stop anyway: what it stored is durable and the terminal resumes.
    let deadline = async {
        stopped(deadline_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serving => {
            served.context("serving")?;
        }
        () = deadline => tracing::warn!("streams still open after the grace period; stopping anyway"),
    }
    if let Some(url) = advertised {
        // Terminals are handed to the others at once, not after the heartbeat lapses.
        let gone = blocking(move || app.transfer_gone(&url)).await;
        if let Err(e) = gone {
            tracing::warn!(cause = %e, "could not remove this transfer server from the metadata");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs `work` on the blocking pool every [`HEARTBEAT`] until the stop; a failure is
/// logged as `failed` and the next beat tries again. A control server mirrors the
/// progress the transfer servers report; a transfer server says it is alive.
async fn every_heartbeat(
    mut stop: tokio::sync::watch::Receiver<bool>,
    failed: &'static str,
    work: impl Fn() -> Result<(), ServerError> + Clone + Send + 'static,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = blocking(work.clone()).await {
            tracing::warn!(cause = %e, "{failed}");
        }
    }
}

/// Binds one of the server's ports.
async fn bind(addr: std::net::SocketAddr, port: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {port} port {addr}"))
}

/// The TLS identity of `--tls-cert` and `--tls-key`, if given.
fn tls_config(pair: Option<&(PathBuf, PathBuf)>) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some((cert, key)) = pair else {
        return Ok(None);
    };
    let cert = std::fs::read(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    let key = std::fs::read(key).with_context(|| format!("reading TLS key {}", key.display()))?;
    Ok(Some(
        ServerTlsConfig::new().identity(Identity::from_pem(cert, key)),
    ))
}

/// A gRPC server with the windows and keep-alives an upload over a slow link needs.
fn grpc_server(tls: Option<&ServerTlsConfig>) -> anyhow::Result<Server> {
    let mut builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // hyper's own bounds, which tonic would otherwise lift: streams open at once on
        // one connection, and streams a client may make the server reset.
        .max_concurrent_streams(MAX_STREAMS)
        .http2_max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.clone()).context("configuring TLS")?;
    }
    Ok(builder)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
