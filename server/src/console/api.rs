//! The JSON API (`/api/v1/...`), the live event stream and `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;

use super::history::History;
use super::{
    ApiError, CONSOLE_TERMINAL, Caller, Peer, SESSION_COOKIE, Shared, bearer, cookie,
    session_cookie,
};
use crate::app::{LoginView, StoreView, UpdateView, blocking};
use crate::auth::TOKEN_LIFETIME_SECS;
use crate::error::ServerError;
use crate::live::Counters;
use crate::meta::{Session, UpdateQuery};

/// How often an event stream looks for changes the database alone knows (an admin
/// command's abort, a new update): the live uploads wake it at once.
const EVENT_POLL: Duration = Duration::from_secs(1);
/// Least time between two events of one stream.
const EVENT_SPACING: Duration = Duration::from_millis(500);
/// How often an event stream checks that its session is still valid (an expiry or an
/// admin command's password change ends it; a logout here ends it at once).
const EVENT_REAUTH: Duration = Duration::from_secs(15);
/// How soon a browser reconnects a dropped stream (an idle HTTP/1.1 connection is
/// closed after `serve --idle-timeout`).
const EVENT_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub(super) struct LoginRequest {
    user: String,
    password: String,
    /// Recorded with the session; `console` when absent.
    #[serde(default)]
    terminal: Option<String>,
}

/// `POST /api/v1/login` `{"user","password"}` → `{"token","expires_at"}`; also sets the
/// session cookie.
pub(super) async fn login(
    State(web): State<Shared>,
    Peer(addr): Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(request): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    super::check_origin(&headers, &uri)?;
    let terminal = request.terminal.as_deref().unwrap_or(CONSOLE_TERMINAL);
    let login: LoginView = web
        .app
        .login(&request.user, &request.password, terminal, addr)
        .await?;
    let cookie = session_cookie(&login.token, TOKEN_LIFETIME_SECS, web.options.tls);
    Ok(([(header::SET_COOKIE, cookie)], Json(login)).into_response())
}

/// `POST /api/v1/logout`: ends the session.
pub(super) async fn logout(
    State(web): State<Shared>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    blocking(move || app.logout(&caller.token)).await?;
    let cookie = session_cookie("", 0, web.options.tls);
    Ok(([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response())
}

/// `GET /api/v1/disks`.
pub(super) async fn disks(State(web): State<Shared>, _: Caller) -> Result<Response, ApiError> {
    let app = web.app.clone();
    Ok(Json(blocking(move || app.disks()).await?).into_response())
}

/// `GET /api/v1/disks/{disk}/versions`, oldest first.
pub(super) async fn versions(
    State(web): State<Shared>,
    _: Caller,
    Path(disk): Path<String>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    Ok(Json(blocking(move || app.versions(&disk)).await?).into_response())
}

/// `GET /api/v1/updates?state=&disk=&terminal=&user=&limit=&before=`, with live
/// progress while uploading: the live updates, then ended ones newest first, a page at a
/// time; a full page's `Link: <…>; rel="next"` names the next one.
pub(super) async fn updates(
    State(web): State<Shared>,
    caller: Caller,
    history: Result<Query<History>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(history) = history.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let app = web.app.clone();
    let asked = history.clone();
    let list = blocking(move || {
        let query = asked.query(&app)?;
        app.updates(Some(&caller.session), query)
    })
    .await?;
    let next = history.next(&list);
    let mut response = Json(list).into_response();
    if let Some(link) = next.and_then(|next| {
        HeaderValue::from_str(&format!("</api/v1/updates?{next}>; rel=\"next\"")).ok()
    }) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// `GET /api/v1/updates/{guid}`: one update, for whoever may see it.
pub(super) async fn update(
    State(web): State<Shared>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    let view = blocking(move || app.update_view(&caller.session, &guid)).await?;
    Ok(Json(view).into_response())
}

/// `POST /api/v1/updates/{guid}/abort`: the console's 「更新中断」, for admins: the
/// upload stops and the update is reserved again (the terminal finishes again).
pub(super) async fn abort(
    State(web): State<Shared>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    let view = blocking(move || {
        app.abort_update(&caller.session, &guid)?;
        app.update_view(&caller.session, &guid)
    })
    .await?;
    Ok(Json(view).into_response())
}

/// `POST /api/v1/updates/{guid}/cancel`: the console's 「更新取消」, for admins: the
/// update ends for good (its terminal will not come back).
pub(super) async fn cancel(
    State(web): State<Shared>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    let app = web.app.clone();
    let view = blocking(move || {
        crate::app::admin_only(
            &caller.session,
            "only an admin may cancel another terminal's update from the console",
        )?;
        app.cancel_update(&caller.session, &guid)?;
        app.update_view(&caller.session, &guid)
    })
    .await?;
    Ok(Json(view).into_response())
}

/// `GET /api/v1/store`.
pub(super) async fn store(State(web): State<Shared>, _: Caller) -> Result<Response, ApiError> {
    let app = web.app.clone();
    let view: StoreView = blocking(move || app.store()).await?;
    Ok(Json(view).into_response())
}

/// `GET /api/v1/events`: Server-Sent Events, an `updates` event (the live updates the
/// caller may see, as `/api/v1/updates?state=live`) whenever they change. The stream
/// ends when its session does (a logout at once; an expiry or a password change within
/// `EVENT_REAUTH`).
pub(super) async fn events(
    State(web): State<Shared>,
    caller: Caller,
    Peer(addr): Peer,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = web.event_slots.take(&caller.session.user, addr)?;
    let state = EventState {
        web: web.clone(),
        changes: web.app.live().watch(),
        logouts: web.app.live().watch_logouts(),
        stop: web.stop.clone(),
        last: None,
        session: caller.session,
        token: caller.token,
        checked: tokio::time::Instant::now(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok(event), state))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Event streams open at once: server-wide, per user and per address, so one user (or
/// one address) cannot keep the others out.
const MAX_EVENT_STREAMS: usize = 64;
const USER_EVENT_STREAMS: usize = 8;
const ADDRESS_EVENT_STREAMS: usize = 16;

/// The event streams' places.
#[derive(Debug, Default)]
pub(super) struct EventSlots {
    held: Mutex<SlotCounts>,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, usize>,
}

impl EventSlots {
    /// A place for one more stream of `user` from `addr`, or `Busy`.
    fn take(self: &Arc<Self>, user: &str, addr: Option<IpAddr>) -> Result<EventSlot, ServerError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let busy = |what: &str| Err(ServerError::Busy(format!("{what} watching the updates")));
        if held.total >= MAX_EVENT_STREAMS {
            return busy(&format!("{MAX_EVENT_STREAMS} consoles are"));
        }
        if held.users.get(user).copied().unwrap_or(0) >= USER_EVENT_STREAMS {
            return busy(&format!("{USER_EVENT_STREAMS} consoles of this user are"));
        }
        if let Some(addr) = addr
            && held.addresses.get(&addr).copied().unwrap_or(0) >= ADDRESS_EVENT_STREAMS
        {
            return busy(&format!(
                "{ADDRESS_EVENT_STREAMS} consoles of this address are"
            ));
        }
        held.total += 1;
        *held.users.entry(user.to_owned()).or_default() += 1;
        if let Some(addr) = addr {
            *held.addresses.entry(addr).or_default() += 1;
        }
        Ok(EventSlot {
            slots: self.clone(),
            user: user.to_owned(),
            addr,
        })
    }
}

/// One event stream's place, given back when the stream ends.
#[derive(Debug)]
struct EventSlot {
    slots: Arc<EventSlots>,
    user: String,
    addr: Option<IpAddr>,
}

impl Drop for EventSlot {
    fn drop(&mut self) {
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        release(&mut held.users, &self.user);
        if let Some(addr) = self.addr {
            release(&mut held.addresses, &addr);
        }
    }
}

struct EventState {
    web: Shared,
    changes: tokio::sync::watch::Receiver<u64>,
    logouts: tokio::sync::watch::Receiver<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The last list sent, to send only news.
    last: Option<String>,
    session: Session,
    token: String,
    /// When the session was last found valid.
    checked: tokio::time::Instant,
    _slot: EventSlot,
}

impl EventState {
    /// The next event; `None` when the server stops or the session ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.last.is_some() {
                tokio::time::sleep(EVENT_SPACING).await;
            }
            if *self.stop.borrow() {
                return None;
            }
            if self.checked.elapsed() > EVENT_REAUTH || self.logouts.has_changed().unwrap_or(true) {
                self.logouts.mark_unchanged();
                self.web
                    .app
                    .authenticate(Some(self.token.clone()))
                    .await
                    .ok()?;
                self.checked = tokio::time::Instant::now();
            }
            let (app, session) = (self.web.app.clone(), self.session.clone());
            let list: Vec<UpdateView> =
                blocking(move || app.updates(Some(&session), UpdateQuery::live()))
                    .await
                    .ok()?;
            let json = serde_json::to_string(&list).ok()?;
            if self.last.as_deref() != Some(json.as_str()) {
                let event = Event::default().event("updates");
                let event = if self.last.is_none() {
                    event.retry(EVENT_RETRY)
                } else {
                    event
                };
                self.last = Some(json.clone());
                return Some(event.data(json));
            }
            tokio::select! {
                _ = self.changes.changed() => {}
                _ = self.logouts.changed() => {}
                _ = self.stop.changed() => return None,
                () = tokio::time::sleep(EVENT_POLL) => {}
            }
        }
    }
}

/// Whether `/metrics` answers without a login: with `--public-metrics`, or to a loopback
/// caller that asked for a loopback name (`host`, the Host or `:authority`): a page of
/// another site in a browser on the server itself (DNS rebinding) names that site.
fn metrics_open(public: bool, caller: Option<std::net::IpAddr>, host: Option<&str>) -> bool {
    let loopback_name = host.is_some_and(|host| {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    public || (caller.is_some_and(|a| a.is_loopback()) && loopback_name)
}

/// `GET /metrics` in Prometheus' text format: for loopback callers, logged-in ones, or
/// anyone with `serve --public-metrics`.
pub(super) async fn metrics(
    State(web): State<Shared>,
    Peer(addr): Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if !metrics_open(web.options.public_metrics, addr, host) {
        let token = bearer(&headers).or_else(|| cookie(&headers, SESSION_COOKIE));
        web.app.authenticate(token).await?;
    }
    let app = web.app.clone();
    let store = blocking(move || app.store()).await?;
    let c = &web.app.live().counters;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "hotate_uploads_in_progress",
        "gauge",
        "Upload streams open now.",
        store.uploading_now as u64,
    );
    metric(
        "hotate_updates_live",
        "gauge",
        "Updates reserved or uploading.",
        store.live_updates as u64,
    );
    metric(
        "hotate_bytes_received_total",
        "counter",
        "Chunk bytes received on the wire, before verification.",
        Counters::get(&c.bytes_received),
    );
    metric(
        "hotate_bytes_stored_total",
        "counter",
        "Block content bytes of chunks verified and stored.",
        Counters::get(&c.bytes_stored),
    );
    metric(
        "hotate_chunks_stored_total",
        "counter",
        "Chunks verified and stored.",
        Counters::get(&c.chunks_stored),
    );
    metric(
        "hotate_verification_failures_total",
        "counter",
        "Chunks refused because they failed verification.",
        Counters::get(&c.verification_failures),
    );
    metric(
        "hotate_login_failures_total",
        "counter",
        "Logins refused for a wrong user name or password.",
        Counters::get(&c.login_failures),
    );
    metric(
        "hotate_versions_committed_total",
        "counter",
        "Versions committed by uploads.",
        Counters::get(&c.versions_committed),
    );
    metric(
        "hotate_transfer_servers_alive",
        "gauge",
        "Transfer servers registered in the metadata and heard from (serve --role transfer).",
        store.transfer_servers.iter().filter(|t| t.alive).count() as u64,
    );
    metric(
        "hotate_store_bytes",
        "gauge",
        "Bytes in the chunk store (counted at most once a minute).",
        store.bytes,
    );
    metric(
        "hotate_store_chunks",
        "gauge",
        "Chunks in the chunk store (counted at most once a minute).",
        store.chunks,
    );
    if !store.transfer_servers.is_empty() {
        text.push_str(
            "# HELP hotate_transfer_uploads Upload streams a transfer server carried when last heard from.\n\
             # TYPE hotate_transfer_uploads gauge\n",
        );
        for t in &store.transfer_servers {
            let label = t.url.replace('\\', "\\\\").replace('"', "\\\"");
            text.push_str(&format!(
                "hotate_transfer_uploads{{server=\"{label}\"}} {}\n",
                t.uploads
            ));
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::metrics_open;

    #[test]
    fn metrics_need_a_login_off_loopback_unless_public() {
        let lan = "192.168.10.20".parse().ok();
        let local = Some("127.0.0.1:30806");
        assert!(metrics_open(false, "127.0.0.1".parse().ok(), local));
        assert!(metrics_open(false, "::1".parse().ok(), Some("[::1]:30806")));
        assert!(metrics_open(false, "::1".parse().ok(), Some("localhost")));
        assert!(!metrics_open(false, lan, local));
        assert!(!metrics_open(false, None, local));
        assert!(metrics_open(true, lan, Some("server.example")));
        // A rebinding page on the server itself names its own site.
        let own = "127.0.0.1".parse().ok();
        assert!(!metrics_open(false, own, Some("evil.example:30806")));
        assert!(!metrics_open(false, own, None));
    }
}
