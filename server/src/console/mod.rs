//! The management console and its JSON API, served on the control port beside gRPC:
//! pages in [`pages`], the API, live events and `/metrics` in [`api`].
//!
//! Callers authenticate with the session cookie the login sets (HttpOnly,
//! SameSite=Strict, Secure under TLS) or `Authorization: Bearer TOKEN`. A request that
//! changes state on a cookie's strength must also carry the session's CSRF token, and a
//! request whose `Origin` is another site is refused.

mod api;
mod download;
mod history;
mod manage;
mod pages;
mod words;

use crate::text::{MAX_ERROR, bounded};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::{HeaderMap, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use tokio::sync::watch;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::app::App;
use crate::error::ServerError;
use crate::gate::bearer;
use crate::meta::Session;

pub use words::Lang;

/// The session cookie.
const SESSION_COOKIE: &str = "hotate_session";
/// The language cookie.
const LANG_COOKIE: &str = "hotate_lang";
/// The header that carries the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";
/// Largest request body: logins and forms are small.
const MAX_BODY: usize = 64 << 10;
/// The terminal name of sessions opened in the console.
const CONSOLE_TERMINAL: &str = "console";

/// How the console is served.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleOptions {
    /// The control port speaks TLS: cookies are `Secure`.
    pub tls: bool,
    /// `/metrics` answers anyone; otherwise only loopback callers or logged-in ones.
    pub public_metrics: bool,
}

/// What every handler shares.
#[derive(Debug)]
struct Web {
    app: Arc<App>,
    options: ConsoleOptions,
    /// Ends event streams when the server stops.
    stop: watch::Receiver<bool>,
    event_slots: Arc<api::EventSlots>,
    downloads: download::Downloads,
}

type Shared = Arc<Web>;

/// The console's routes, to merge with the gRPC routes of the control port (whose
/// unknown paths [`not_found`] answers).
pub fn router(app: Arc<App>, options: ConsoleOptions, stop: watch::Receiver<bool>) -> Router {
    let web = Arc::new(Web {
        downloads: download::Downloads::new(app.data().root()),
        app,
        options,
        stop,
        event_slots: Arc::default(),
    });
    Router::new()
        .route("/", get(pages::updates))
        .route("/disks", get(pages::disks))
        .route("/disks/{disk}", get(pages::disk))
        .route("/terminals", get(pages::terminals))
        .route("/users", get(pages::users))
        .route("/store", get(pages::store))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/lang/{code}", get(pages::set_lang))
        .route("/assets/console.js", get(pages::script))
        .route("/assets/console.css", get(pages::style))
        .route("/api/v1/login", post(api::login))
        .route("/api/v1/logout", post(api::logout))
        .route("/api/v1/disks", get(api::disks))
        .route("/api/v1/disks/{disk}/versions", get(api::versions))
        .route(
            "/api/v1/disks/{disk}/versions/{version}",
            patch(manage::edit_version).delete(manage::delete_version),
        )
        .route(
            "/api/v1/disks/{disk}/versions/{version}/image",
            get(download::image),
        )
        .route("/api/v1/terminals", get(manage::terminals))
        .route("/api/v1/users", get(manage::users).post(manage::add_user))
        .route(
            "/api/v1/users/{name}",
            patch(manage::edit_user).delete(manage::delete_user),
        )
        .route("/api/v1/updates", get(api::updates))
        .route("/api/v1/updates/{guid}", get(api::update))
        .route("/api/v1/updates/{guid}/abort", post(api::abort))
        .route("/api/v1/updates/{guid}/cancel", post(api::cancel))
        .route("/api/v1/store", get(api::store))
        .route("/api/v1/events", get(api::events))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(web)
}

/// An unknown path: `UNIMPLEMENTED` for gRPC callers, 404 for the others.
pub async fn not_found(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("no such service").into_http();
    }
    // An API path answers as every API error does, for scripts and the console alike.
    if uri.path().starts_with("/api/") {
        let json = serde_json::json!({
            "error": format!("no such API call: {}", bounded(uri.path(), 256)),
            "messages": { "en": words::EN.not_found, "ja": words::JA.not_found },
        });
        return (StatusCode::NOT_FOUND, axum::Json(json)).into_response();
    }
    let text = format!("{} / {}", words::EN.not_found, words::JA.not_found);
    (StatusCode::NOT_FOUND, text).into_response()
}

/// An API error: its HTTP status and `{"error": MESSAGE, "messages": {"en": …, "ja": …}}`
/// (`error` as the server states it, for scripts; `messages` for people, in the
/// console's words).
#[derive(Debug)]
struct ApiError(ServerError);

impl From<ServerError> for ApiError {
    fn from(err: ServerError) -> Self {
        Self(err)
    }
}

/// What went wrong, in `lang`: what only a console user meets in the console's words,
/// every other refusal from the one table the terminal reads too
/// ([`hotate_proto::Refusal`]).
fn error_text(lang: Lang, err: &ServerError) -> String {
    use crate::meta::MetaError;
    let w = lang.words();
    match err {
        ServerError::Unauthenticated => w.session_expired.into(),
        ServerError::Forbidden(_) => w.admins_only.into(),
        ServerError::ShortPassword { min, .. } => {
            w.short_password.replace("{min}", &min.to_string())
        }
        ServerError::OwnAccount => w.own_account.into(),
        ServerError::Meta(MetaError::VersionIsLatest(version)) => {
            w.version_latest.replace("{version}", version)
        }
        ServerError::Meta(MetaError::VersionIsBase { version, terminal }) => w
            .version_base
            .replace("{version}", version)
            .replace("{terminal}", terminal),
        ServerError::Meta(MetaError::UserExists(user)) => w.user_exists.replace("{user}", user),
        ServerError::Meta(MetaError::UnknownUser(_)) => w.unknown_user.into(),
        ServerError::NoCsrfToken => w.stale_page.into(),
        ServerError::CrossSite(origin) => w.cross_site.replace("{origin}", origin),
        ServerError::Meta(MetaError::UnknownUpdate(_)) => w.unknown_update.into(),
        ServerError::Meta(
            MetaError::UpdateNotLive { state, .. } | MetaError::UpdateEnded(state),
        ) => w
            .update_ended
            .replace("{state}", w.state(state.as_str(), false)),
        other => other.refusal().words(lang.language()),
    }
}

/// The HTTP status of an error.
fn http_status(err: &ServerError) -> StatusCode {
    match err.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists | tonic::Code::Aborted | tonic::Code::FailedPrecondition => {
            StatusCode::CONFLICT
        }
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = http_status(&self.0);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(cause = %self.0, "console request failed");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({
                "error": bounded(&self.0.to_string(), MAX_ERROR),
                "messages": {
                    "en": bounded(&error_text(Lang::En, &self.0), MAX_ERROR),
                    "ja": bounded(&error_text(Lang::Ja, &self.0), MAX_ERROR),
                },
            })),
        )
            .into_response();
        if let ServerError::LoginLocked { secs } = self.0 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

/// A logged-in caller, by bearer token or session cookie.
#[derive(Debug, Clone)]
struct Caller {
    session: Session,
    token: String,
    /// Authenticated by the cookie a browser sends by itself: state changes need the
    /// CSRF token too.
    by_cookie: bool,
}

impl Caller {
    /// The CSRF token of this session: derived from the session's token, so it needs no
    /// storage and another site cannot know it.
    fn csrf(&self) -> String {
        csrf_of(&self.token)
    }
}

fn csrf_of(token: &str) -> String {
    hotate_engine::Hash::of(format!("hotate-csrf\0{token}").as_bytes()).to_string()
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, web: &Shared) -> Result<Self, ApiError> {
        let (token, by_cookie) = match bearer(&parts.headers) {
            Some(token) => (token, false),
            None => (
                cookie(&parts.headers, SESSION_COOKIE).ok_or(ServerError::Unauthenticated)?,
                true,
            ),
        };
        let session = web.app.authenticate(Some(token.clone())).await?;
        let caller = Self {
            session,
            token,
            by_cookie,
        };
        if changes_state(&parts.method) {
            check_origin(&parts.headers, &parts.uri)?;
            if caller.by_cookie {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if sent != caller.csrf() {
                    return Err(ServerError::NoCsrfToken.into());
                }
            }
        }
        Ok(caller)
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a request sent from a page of another site: its `Origin` names another host
/// than the one asked for (`Host`, or over HTTP/2 the request's `:authority`, `uri`).
fn check_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> Result<(), ServerError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(ServerError::CrossSite(origin.to_owned()))
    }
}

/// A cookie's value.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for the session (an empty token ends it).
fn session_cookie(token: &str, max_age: i64, tls: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The caller's address, as the connection says.
fn peer(parts: &Parts) -> Option<SocketAddr> {
    let ext = &parts.extensions;
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// The language of a request: its cookie, else `Accept-Language`.
fn lang_of(headers: &HeaderMap) -> Lang {
    cookie(headers, LANG_COOKIE)
        .and_then(|code| Lang::parse(&code))
        .unwrap_or_else(|| {
            Lang::from_accept(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
            )
        })
}

/// The request's language, as an extractor.
#[derive(Debug, Clone, Copy)]
struct Language(Lang);

impl<S: Send + Sync> FromRequestParts<S> for Language {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(lang_of(&parts.headers)))
    }
}

/// The caller's address, as an extractor.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(peer(parts).map(|a| a.ip())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; hotate_session=abc; hotate_lang=ja".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(lang_of(&headers), Lang::Ja);
        let path: axum::http::Uri = "/api/v1/login".parse().unwrap();
        headers.insert(header::HOST, "server:30806".parse().unwrap());
        assert!(check_origin(&headers, &path).is_ok());
        headers.insert(header::ORIGIN, "https://server:30806".parse().unwrap());
        assert!(check_origin(&headers, &path).is_ok());
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_origin(&headers, &path).is_err());
        // HTTP/2: no Host, the authority is the request's.
        headers.remove(header::HOST);
        let h2: axum::http::Uri = "https://server:30806/api/v1/login".parse().unwrap();
        assert!(check_origin(&headers, &h2).is_err());
        assert!(
            check_origin(&headers, &path).is_err(),
            "nothing to compare with"
        );
        headers.insert(header::ORIGIN, "https://server:30806".parse().unwrap());
        assert!(check_origin(&headers, &h2).is_ok());
        assert_ne!(csrf_of("abc"), csrf_of("abd"));
        assert!(session_cookie("t", 60, true).contains("HttpOnly; SameSite=Strict; Secure"));
    }
}
