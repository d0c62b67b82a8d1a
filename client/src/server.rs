//! The connection to the Manage Server: channels (TLS for https), login, and the
//! translation of server statuses into the user's language.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hotate_proto::Refusal;
use hotate_proto::pb::{self, control_client::ControlClient, transfer_client::TransferClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::error::{Failed, Unreachable, UsageError};
use crate::i18n::Lang;
use crate::inputs::Credentials;

/// HTTP/2 windows large enough that a fast link is not throttled by flow control.
const STREAM_WINDOW: u32 = 32 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// How long a connection may take, TCP, TLS and the HTTP/2 handshake together: a
/// server that takes the connection and never answers is given up on, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the login may wait for its answer (password hashing and beginning the
/// upload take well under a second): HTTP/2 opens without hearing from the server,
/// so a server that never answers is found out here.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens a channel to `url`, trusting `ca` in addition to the system roots for https.
/// Plain `http://` is refused unless the host is this machine or `insecure` is set: the
/// password would cross the network in clear.
///
/// # Errors
/// When the URL is malformed or refused, the CA file unreadable, or the server
/// unreachable (saying so when it expects TLS).
pub async fn channel(
    url: &str,
    ca: Option<&Path>,
    insecure: bool,
    lang: Lang,
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| UsageError(lang.url_malformed(url, &e.to_string())))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| {
                UsageError(lang.ca_unreadable(&ca.display().to_string(), &e.to_string()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(host) = endpoint.uri().host() {
            tls = tls.domain_name(host.trim_start_matches('[').trim_end_matches(']'));
        }
        endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
    } else if !is_loopback(endpoint.uri()) {
        if !insecure {
            return Err(UsageError(lang.plain_http_refused(url)).into());
        }
        tracing::warn!(%url, "plain http to another host (--insecure): the password and data are not encrypted");
    }
    let uri = endpoint.uri().clone();
    let Ok(connected) = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await else {
        return Err(Unreachable(lang.unreachable(url, &lang.connection_timed_out())).into());
    };
    match connected {
        Ok(channel) => Ok(channel),
        Err(e) => {
            if url.starts_with("http://")
                && let Some(told) = told_apart(&uri, url, lang).await
            {
                return Err(told.into());
            }
            let cause = connect_cause(&e, &uri, lang).await;
            Err(Unreachable(lang.unreachable(url, &cause)).into())
        }
    }
}

/// Why a connection failed, in the user's words where the failure's type tells: a name
/// not found (asked again here), a refused or timed-out connection, an unreachable
/// network, a TLS handshake that failed; else the transport's own account.
async fn connect_cause(
    err: &tonic::transport::Error,
    uri: &tonic::transport::Uri,
    lang: Lang,
) -> String {
    if let Some(host) = uri.host() {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(hotate_proto::CONTROL_PORT);
        if host.parse::<std::net::IpAddr>().is_err()
            && tokio::net::lookup_host((host, port)).await.is_err()
        {
            return lang.name_not_found(host);
        }
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::ConnectionRefused => return lang.connection_refused(),
                ErrorKind::TimedOut => return lang.connection_timed_out(),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    return lang.host_unreachable();
                }
                // What the TLS layer refused (an untrusted certificate, a wrong name).
                ErrorKind::InvalidData => return lang.tls_failed(&io.to_string()),
                _ => {}
            }
        }
        source = cause.source();
    }
    std::error::Error::source(err).map_or_else(|| err.to_string(), |s| s.to_string())
}

/// Whether the URL's host is this machine, judged from the parsed host (so that
/// `http://localhost@other-host/` is not).
fn is_loopback(uri: &tonic::transport::Uri) -> bool {
    match uri.host() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Whether a status comes from the connection rather than from the server's answer:
/// every answer of Hotate's server carries its refusal code ([`Refusal`]); a status
/// without one that tonic made from a broken connection has a source, or the codes it
/// gives lost, reset and malformed HTTP/2 streams.
pub fn is_transport_failure(status: &Status) -> bool {
    Refusal::read(status.metadata()).is_none()
        && (std::error::Error::source(status).is_some()
            || matches!(
                status.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
            ))
}

/// What answers at `uri` when plain HTTP/2 fails there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// A TLS alert or handshake: it expects https://.
    Tls,
    /// An HTTP/1 reply: a web server, not a Hotate server.
    Http1,
    Unknown,
}

/// Why plain HTTP/2 to `url` failed, when what answers there tells: it expects TLS, or
/// it is a web server rather than a Manage Server.
async fn told_apart(uri: &tonic::transport::Uri, url: &str, lang: Lang) -> Option<Unreachable> {
    match probe_peer(uri).await {
        Peer::Tls => Some(Unreachable(lang.expects_tls(url))),
        Peer::Http1 => Some(Unreachable(lang.not_hotate(url))),
        Peer::Unknown => None,
    }
}

/// Sends the HTTP/2 preface to the server at `uri` and tells what answers.
async fn probe_peer(uri: &tonic::transport::Uri) -> Peer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Peer::Unknown;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await.ok()?;
        Some(match head {
            // A TLS record: content type alert (21) or handshake (22), major version 3.
            [21 | 22, 3, ..] => Peer::Tls,
            _ if head.starts_with(b"HTTP/1.") => Peer::Http1,
            _ => Peer::Unknown,
        })
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(Peer::Unknown)
}

/// `host:port` of a URL, for messages.
pub fn host_port(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// Who logs in, as which terminal, and the update whose upload to begin with it (empty:
/// none).
#[derive(Debug)]
pub struct Login<'a> {
    pub credentials: &'a Credentials,
    pub terminal: &'a str,
    pub begin_update: &'a str,
}

/// A logged-in connection to the control service.
#[derive(Debug, Clone)]
pub struct Session {
    pub url: String,
    pub control: ControlClient<Channel>,
    pub token: String,
    pub lang: Lang,
    /// Plain http to another host was allowed with `--insecure`.
    pub insecure: bool,
}

impl Session {
    /// Connects and logs in; with the upload the login began, if it asked to begin one.
    ///
    /// # Errors
    /// When the server is unreachable or refuses the login.
    pub async fn login(
        url: &str,
        ca: Option<&Path>,
        insecure: bool,
        login: &Login<'_>,
        lang: Lang,
    ) -> anyhow::Result<(Self, Option<pb::BeginUploadReply>)> {
        let credentials = login.credentials;
        let channel = channel(url, ca, insecure, lang).await?;
        let mut control = ControlClient::new(channel);
        let answer = tokio::time::timeout(
            LOGIN_TIMEOUT,
            control.login(pb::LoginRequest {
                user: credentials.user.clone(),
                password: credentials.password.clone(),
                terminal: login.terminal.to_owned(),
                begin_update: login.begin_update.to_owned(),
            }),
        )
        .await
        .map_err(|_| Unreachable(lang.unreachable(url, &lang.connection_timed_out())))?;
        let reply = match answer {
            Ok(reply) => reply,
            // Plain HTTP/2 to a TLS port fails only at the first call.
            Err(status) if url.starts_with("http://") && is_transport_failure(&status) => {
                let uri: Option<tonic::transport::Uri> = url.parse().ok();
                if let Some(uri) = uri
                    && let Some(told) = told_apart(&uri, url, lang).await
                {
                    return Err(told.into());
                }
                return Err(explain(&status, lang, url));
            }
            Err(status) => return Err(explain(&status, lang, url)),
        };
        let reply = reply.into_inner();
        let session = Self {
            url: url.to_owned(),
            control,
            token: reply.token,
            lang,
            insecure,
        };
        Ok((session, reply.begun))
    }

    /// A request carrying the bearer token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request
                .metadata_mut()
                .insert(hotate_proto::AUTHORIZATION, value);
        }
        request
    }

    /// A transfer client for `url`, with message limits sized to the largest block.
    ///
    /// # Errors
    /// When the transfer endpoint is unreachable.
    pub async fn transfer(
        &self,
        url: &str,
        ca: Option<&Path>,
    ) -> anyhow::Result<TransferClient<Channel>> {
        transfer_client(url, ca, self.insecure, self.lang).await
    }
}

/// A transfer client for `url`, with message limits sized to the largest block; it
/// needs no login, so it can connect while the login goes on.
///
/// # Errors
/// When the transfer endpoint is unreachable.
pub async fn transfer_client(
    url: &str,
    ca: Option<&Path>,
    insecure: bool,
    lang: Lang,
) -> anyhow::Result<TransferClient<Channel>> {
    Ok(TransferClient::new(channel(url, ca, insecure, lang).await?)
        .max_decoding_message_size(hotate_proto::MAX_MESSAGE)
        .max_encoding_message_size(hotate_proto::MAX_MESSAGE))
}

/// A server status as a message in the user's language: the refusal the server named
/// from the wire's typed table, worded here; a connection failure says how to reach the
/// server.
pub fn explain(status: &Status, lang: Lang, url: &str) -> anyhow::Error {
    if status.code() == Code::Unavailable {
        return Unreachable(lang.unreachable(url, status.message())).into();
    }
    let message = match Refusal::read(status.metadata()) {
        Some(refusal) => refusal.words(lang.language()),
        // A server before the typed table: its own account.
        None => status.message().to_owned(),
    };
    Failed(message).into()
}
