//! The console's pages: server-rendered HTML in the caller's language, with one small
//! script (embedded, like the style sheet) that follows the live updates.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::text::binary_size;
use crate::upkeep::{OutcomeWords, UpkeepOutcome};

use super::history::History;
use super::words::{Lang, Words};
use super::{
    ApiError, CONSOLE_TERMINAL, Caller, LANG_COOKIE, Language, Peer, Shared, session_cookie,
};
use crate::app::{UpdateView, blocking};
use crate::auth::TOKEN_LIFETIME_SECS;
use crate::error::ServerError;
use crate::meta::Role;

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as people read them (decimal units, like the client's progress).
pub fn bytes_text(bytes: u64) -> String {
    crate::text::decimal_size(bytes)
}

/// A time (RFC 3339, UTC) as the page writes it; the script shows it in the reader's
/// local time, with this exact time on hover.
fn time_html(at: &str) -> String {
    format!("<time datetime=\"{at}\">{at}</time>", at = esc(at))
}

/// A page's frame: head, navigation, and `body`.
fn layout(lang: Lang, caller: Option<&Caller>, active: &str, title: &str, body: &str) -> Response {
    let w = lang.words();
    let mut nav = String::new();
    if let Some(caller) = caller {
        let admin = caller.session.role == Role::Admin;
        let links = [
            ("/", "updates", w.updates, true),
            ("/disks", "disks", w.disks, true),
            ("/terminals", "terminals", w.terminals, true),
            ("/users", "users", w.users, admin),
            ("/store", "store", w.store, true),
        ];
        for (href, key, label, _) in links.into_iter().filter(|link| link.3) {
            let current = if key == active {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
        }
        let _ = write!(
            nav,
            "<span class=\"who\">{} ({})</span>\
             <form method=\"post\" action=\"/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">{}</button></form>",
            esc(&caller.session.user),
            caller.session.role.as_str(),
            caller.csrf(),
            w.logout
        );
    }
    let other = match lang {
        Lang::En => "<a href=\"/lang/ja\" lang=\"ja\">日本語</a>",
        Lang::Ja => "<a href=\"/lang/en\" lang=\"en\">English</a>",
    };
    let csrf = caller.map(Caller::csrf).unwrap_or_default();
    let role = caller.map_or("", |c| c.session.role.as_str());
    let words = serde_json::to_string(w).unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{csrf}\"><meta name=\"role\" content=\"{role}\">\
         <title>{title} - {console}</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script type=\"application/json\" id=\"words\">{words}</script>\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><header><strong>{console}</strong><nav>{nav}</nav><span class=\"lang\">{other}</span></header>\
         <main><h1>{title}</h1>\
         <p id=\"message\" class=\"notice\" role=\"status\" hidden></p>{body}{confirm}</main></body></html>",
        code = lang.code(),
        console = w.console,
        title = esc(title),
        words = words.replace("</", "<\\/"),
        confirm = if caller.is_some() {
            confirm_dialog(w)
        } else {
            String::new()
        },
    );
    page(html)
}

/// The dialog a form with `data-confirm` asks in before it calls the API.
fn confirm_dialog(w: &Words) -> String {
    format!(
        "<dialog id=\"confirm-dialog\"><form method=\"dialog\">\
         <p id=\"confirm-question\"></p>\
         <button value=\"back\" id=\"confirm-back\">{}</button> \
         <button value=\"yes\" id=\"confirm-yes\" class=\"danger\">{}</button></form></dialog>",
        w.back, w.confirm
    )
}

/// A form that calls the API (`method url`) with its fields as JSON, asking `confirm`
/// first when given, and saying `done` once the page has reloaded.
fn api_form(call: &str, confirm: Option<&str>, done: &str, class: &str, inner: &str) -> String {
    let confirm = confirm
        .map(|q| format!(" data-confirm=\"{}\"", esc(q)))
        .unwrap_or_default();
    format!(
        "<form class=\"{class}\" data-call=\"{}\"{confirm} data-done=\"{}\">{inner}</form>",
        esc(call),
        esc(done)
    )
}

/// A path segment of a URL.
fn seg(text: &str) -> String {
    url_escape(text).replace('/', "%2F")
}

/// An HTML response with the console's security headers.
fn page(html: String) -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

/// A page's logged-in caller; anyone else is sent to the login page, and back after.
pub(super) struct Viewer(Caller);

impl axum::extract::FromRequestParts<Shared> for Viewer {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Shared,
    ) -> Result<Self, Redirect> {
        match Caller::from_request_parts(parts, web).await {
            Ok(caller) => Ok(Self(caller)),
            Err(_) => Err(Redirect::to(&format!(
                "/login?next={}",
                url_escape(parts.uri.path())
            ))),
        }
    }
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error shown as a page.
fn error_page(lang: Lang, caller: &Caller, err: &ServerError) -> Response {
    let mut response = layout(
        lang,
        Some(caller),
        "",
        lang.words().console,
        &format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            esc(&super::error_text(lang, err))
        ),
    );
    *response.status_mut() = super::http_status(err);
    response
}

/// `GET /`: the updates, live, then the history a page at a time, filtered by state,
/// disk, terminal and user.
pub(super) async fn updates(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
    history: Result<Query<History>, QueryRejection>,
) -> Response {
    let history = match history {
        Ok(Query(history)) => history,
        Err(e) => return error_page(lang, &caller, &ServerError::BadRequest(e.body_text())),
    };
    let (app, session, asked) = (web.app.clone(), caller.session.clone(), history.clone());
    let found = blocking(move || {
        let query = asked.query(&app)?;
        let disks = app.data().meta().disks()?;
        Ok((app.updates(Some(&session), query)?, disks))
    })
    .await;
    let (list, disks) = match found {
        Ok(found) => found,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let admin = caller.session.role == Role::Admin;
    // Live updates first, then a page of ended ones, newest first.
    let rows: String = list.iter().map(|u| update_row(w, u, admin)).collect();
    let mut pages = Vec::new();
    if history.before.is_some() {
        let newest = History {
            before: None,
            ..history.clone()
        };
        let query = serde_urlencoded::to_string(&newest).unwrap_or_default();
        pages.push(format!("<a href=\"/?{}\">{}</a>", esc(&query), w.newest));
    }
    if let Some(next) = history.next(&list) {
        pages.push(format!(
            "<a href=\"/?{}\" rel=\"next\">{}</a>",
            esc(&next),
            w.older
        ));
    }
    let pages = if pages.is_empty() {
        String::new()
    } else {
        format!("<nav class=\"pages\">{}</nav>", pages.join(" "))
    };
    // A filtered or older page shows only what it lists: live events update its rows
    // but add none.
    let filtered = history.before.is_some()
        || !(history.state.is_empty()
            && history.disk.is_empty()
            && history.terminal.is_empty()
            && history.user.is_empty());
    let body = format!(
        "<p id=\"live-status\" class=\"notice\" hidden>{lost}</p>{filter}\
         <table id=\"updates\" class=\"cards\"{filtered}><thead><tr><th>{disk}</th><th>{terminal}</th><th>{user}</th>\
         <th>{state}</th><th>{progress}</th><th>{versions}</th><th>{started}</th><th>{ended}</th>\
         <th>{sent}</th><th>{stored}</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <p id=\"no-updates\"{empty}>{none}</p>{pages}\
         <template id=\"update-row\">{template}</template>\
         <dialog id=\"abort-dialog\"><form method=\"dialog\">\
         <p id=\"abort-question\"></p><p>{note}</p>\
         <button value=\"cancel\" id=\"abort-cancel\">{back}</button> \
         <button value=\"abort\" id=\"abort-confirm\" class=\"danger\">{abort}</button></form></dialog>\
         <dialog id=\"cancel-dialog\"><form method=\"dialog\">\
         <p id=\"cancel-question\"></p><p>{cancel_note}</p>\
         <button value=\"back\" id=\"cancel-back\">{back}</button> \
         <button value=\"cancel\" id=\"cancel-confirm\" class=\"danger\">{cancel}</button></form></dialog>",
        lost = w.live_link_lost,
        filter = filter_form(w, &history, &disks),
        filtered = if filtered { " data-filtered" } else { "" },
        disk = w.disk,
        terminal = w.terminal,
        user = w.user,
        state = w.state,
        progress = w.progress,
        versions = w.versions,
        started = w.started,
        ended = w.ended,
        sent = w.sent,
        stored = w.stored_bytes,
        empty = if list.is_empty() { "" } else { " hidden" },
        none = w.no_updates,
        template = update_row(w, &UpdateView::default(), admin),
        note = w.abort_note,
        back = w.back,
        abort = w.abort,
        cancel_note = w.cancel_note,
        cancel = w.cancel,
    );
    layout(lang, Some(&caller), "updates", w.updates, &body)
}

/// The history's filters: a form that reloads the page with them.
fn filter_form(w: &Words, history: &History, disks: &[crate::meta::DiskRow]) -> String {
    let option = |value: &str, label: &str, current: &str| {
        let selected = if value == current { " selected" } else { "" };
        format!(
            "<option value=\"{}\"{selected}>{}</option>",
            esc(value),
            esc(label)
        )
    };
    let states: String = [
        ("", w.any),
        ("live", w.live),
        ("ended", w.ended_updates),
        ("committed", w.committed),
        ("cancelled", w.cancelled),
        ("aborted", w.aborted),
    ]
    .iter()
    .map(|(value, label)| option(value, label, &history.state))
    .collect();
    let disk_options: String = std::iter::once(option("", w.any, &history.disk))
        .chain(
            disks
                .iter()
                .map(|d| option(&d.name, &d.name, &history.disk)),
        )
        .collect();
    format!(
        "<form id=\"filter\" class=\"filter\" method=\"get\" action=\"/\">\
         <label>{state} <select name=\"state\">{states}</select></label>\
         <label>{disk} <select name=\"disk\">{disk_options}</select></label>\
         <label>{terminal} <input name=\"terminal\" value=\"{terminal_value}\" size=\"10\"></label>\
         <label>{user} <input name=\"user\" value=\"{user_value}\" size=\"10\"></label>\
         <button type=\"submit\">{filter}</button></form>",
        state = w.state,
        disk = w.disk,
        terminal = w.terminal,
        user = w.user,
        terminal_value = esc(&history.terminal),
        user_value = esc(&history.user),
        filter = w.filter,
    )
}

/// One row of the updates table; the script fills the same cells live.
fn update_row(w: &Words, u: &UpdateView, admin: bool) -> String {
    let live = matches!(u.state, "reserved" | "uploading");
    // The terminal's own figures when it sends them; else what the server was asked.
    let (done, total, percent) = match (u.percent, u.bytes_total, u.bytes_stored, u.bytes_needed) {
        (Some(percent), Some(total), ..) => (Some(total * percent / 100), total, percent),
        (_, _, Some(stored), Some(needed)) => (
            Some(stored),
            needed,
            (stored * 100).checked_div(needed).unwrap_or(0),
        ),
        _ => (None, 0, 0),
    };
    let progress = done
        .map(|done| format!("{} {} {}", bytes_text(done), w.of, bytes_text(total)))
        .unwrap_or_default();
    let rate = u
        .rate
        .map(|r| format!("{}/s", bytes_text(r)))
        .unwrap_or_default();
    let eta = u.eta_secs.map(|s| duration_text(w, s)).unwrap_or_default();
    let button = if admin {
        let hidden = if live { "" } else { " hidden" };
        format!(
            "<button class=\"abort danger\"{hidden}>{}</button> \
             <button class=\"cancel danger\"{hidden}>{}</button>",
            w.abort, w.cancel
        )
    } else {
        String::new()
    };
    let time = |at: &str| {
        if at.is_empty() {
            String::new()
        } else {
            time_html(at)
        }
    };
    format!(
        "<tr data-guid=\"{guid}\" data-state=\"{state}\">\
         <td data-label=\"{disk_label}\"><a class=\"disk\" href=\"/disks/{disk_id}\">{disk}</a></td>\
         <td class=\"terminal\" data-label=\"{terminal_label}\">{terminal}</td>\
         <td class=\"user\" data-label=\"{user_label}\">{user}</td>\
         <td data-label=\"{state_label}\"><span class=\"state\"{carrier}>{state_text}</span> \
         <span class=\"stopped-by\">{stopped_by}</span></td>\
         <td class=\"progress\" data-label=\"{progress_label}\"><progress max=\"100\" value=\"{percent}\"{bar}></progress> \
         <span class=\"amount\">{progress}</span> <span class=\"rate\">{rate}</span> <span class=\"eta\">{eta}</span></td>\
         <td data-label=\"{versions_label}\"><span class=\"base\">{base}</span> → <span class=\"new\">{new}</span></td>\
         <td class=\"started\" data-label=\"{started_label}\">{started}</td>\
         <td class=\"ended\" data-label=\"{ended_label}\">{ended}</td>\
         <td class=\"received\" data-label=\"{sent_label}\">{received}</td>\
         <td class=\"stored\" data-label=\"{stored_label}\">{stored}</td>\
         <td class=\"actions\">{button}</td></tr>",
        guid = esc(&u.data_write_guid),
        state = u.state,
        disk_id = seg(&u.disk_id),
        disk = esc(&u.disk_name),
        terminal = esc(&u.terminal),
        user = esc(&u.user),
        state_text = w.state(u.state, u.uploading_now),
        stopped_by = stopped_by_text(w, u),
        carrier = u
            .transfer_server
            .as_deref()
            .map(|t| format!(" title=\"{}: {}\"", w.transfer_server, esc(t)))
            .unwrap_or_default(),
        bar = if u.uploading_now { "" } else { " hidden" },
        base = esc(&u.base_version),
        new = esc(u.new_version.as_deref().unwrap_or_default()),
        started = time(&u.started_at),
        ended = if live {
            String::new()
        } else {
            time(&u.changed_at)
        },
        received = if u.bytes_received > 0 {
            bytes_text(u.bytes_received)
        } else {
            String::new()
        },
        disk_label = w.disk,
        terminal_label = w.terminal,
        user_label = w.user,
        state_label = w.state,
        progress_label = w.progress,
        versions_label = w.versions,
        started_label = w.started,
        ended_label = w.ended,
        sent_label = w.sent,
        stored_label = w.stored_bytes,
        stored = u.version_bytes_stored.map(bytes_text).unwrap_or_default(),
    )
}

/// Who stopped an update: `(by NAME)` once cancelled or aborted; for one that went on
/// after an admin aborted its upload, who did.
fn stopped_by_text(w: &Words, u: &UpdateView) -> String {
    match (&u.stopped_by, u.state) {
        (Some(by), "cancelled" | "aborted") => w.stopped_by.replace("{user}", &esc(by)),
        (Some(by), _) => w.upload_aborted_by.replace("{user}", &esc(by)),
        (None, _) => String::new(),
    }
}

/// Seconds as `1 h 2 min`, `3 min 4 s` or `5 s`.
fn duration_text(w: &Words, secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h} {} {m} {}", w.hours, w.minutes)
    } else if m > 0 {
        format!("{m} {} {s} {}", w.minutes, w.seconds)
    } else {
        format!("{s} {}", w.seconds)
    }
}

/// `GET /disks`.
pub(super) async fn disks(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
) -> Response {
    let app = web.app.clone();
    let list = match blocking(move || app.disks()).await {
        Ok(list) => list,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let mut body = format!(
        "<table id=\"disks\" class=\"cards\"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        w.name, w.size, w.block_size, w.latest_version, w.version_count, w.stored_bytes
    );
    for d in &list {
        let _ = write!(
            body,
            "<tr><td data-label=\"{l_name}\"><a href=\"/disks/{id}\">{name}</a></td>\
             <td data-label=\"{l_size}\">{size}</td><td data-label=\"{l_block}\">{block}</td>\
             <td data-label=\"{l_latest}\">{latest}</td><td data-label=\"{l_count}\">{count}</td>\
             <td data-label=\"{l_stored}\">{stored}</td></tr>",
            l_name = w.name,
            l_size = w.size,
            l_block = w.block_size,
            l_latest = w.latest_version,
            l_count = w.version_count,
            l_stored = w.stored_bytes,
            id = seg(&d.id),
            name = esc(&d.name),
            size = binary_size(d.size),
            block = binary_size(u64::from(d.block_size)),
            latest = esc(&d.latest_version),
            count = d.versions,
            stored = bytes_text(d.stored_bytes),
        );
    }
    body.push_str("</tbody></table>");
    if list.is_empty() {
        let _ = write!(body, "<p>{}</p>", esc(w.no_disks));
    }
    layout(lang, Some(&caller), "disks", w.disks, &body)
}

/// `GET /disks/{disk}`: a disk's versions, newest first, with what can be done to each:
/// download it, and for admins edit its comment or delete it.
pub(super) async fn disk(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
    Path(disk): Path<String>,
) -> Response {
    let app = web.app.clone();
    let found = blocking(move || Ok((app.disk(&disk)?, app.versions(&disk)?))).await;
    let (disk, versions) = match found {
        Ok(found) => found,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let admin = caller.session.role == Role::Admin;
    let mut body = format!(
        "<p class=\"facts\">{} {} · {} {}</p><table id=\"versions\" class=\"cards\"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        w.size,
        binary_size(disk.size),
        w.block_size,
        binary_size(u64::from(disk.block_size)),
        w.version,
        w.parent,
        w.comment,
        w.user,
        w.terminal,
        w.created_at,
        w.blocks_changed,
        w.stored_bytes,
        w.download,
    );
    let latest = versions.last().map(|v| v.id.clone()).unwrap_or_default();
    let known: std::collections::HashSet<&str> = versions.iter().map(|v| v.id.as_str()).collect();
    for v in versions.iter().rev() {
        let call = format!("/api/v1/disks/{}/versions/{}", seg(&disk.id), seg(&v.id));
        let parent = match v.parent.as_deref() {
            Some(p) if known.contains(p) => format!("<a href=\"#v-{0}\">{0}</a>", esc(p)),
            Some(p) => esc(p),
            None => "-".into(),
        };
        let mark = if v.id == latest {
            format!(" <span class=\"mark\">{}</span>", w.latest_mark)
        } else {
            String::new()
        };
        let edit = if admin {
            let inner = format!(
                "<textarea name=\"comment\" rows=\"2\" maxlength=\"4096\">{}</textarea>\
                 <button type=\"submit\">{}</button>",
                esc(&v.comment),
                w.save
            );
            format!(
                "<details class=\"edit\"><summary>{}</summary>{}</details>",
                w.edit_comment,
                api_form(
                    &format!("PATCH {call}"),
                    None,
                    w.comment_saved,
                    "comment",
                    &inner
                )
            )
        } else {
            String::new()
        };
        let downloads: String = ["raw", "qcow2", "vhdx", "vhd"]
            .iter()
            .map(|format| format!("<a href=\"{call}/image?format={format}\" download>{format}</a>"))
            .collect::<Vec<_>>()
            .join(" ");
        let delete = if admin && v.id != latest {
            let question = w
                .delete_version_confirm
                .replace("{version}", &v.id)
                .replace("{disk}", &disk.name);
            api_form(
                &format!("DELETE {call}"),
                Some(&question),
                w.version_deleted,
                "delete",
                &format!(
                    "<button type=\"submit\" class=\"danger\">{}</button>",
                    w.delete
                ),
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<tr id=\"v-{id}\" data-version=\"{id}\"><td data-label=\"{l_version}\">{id}{mark}</td>\
             <td data-label=\"{l_parent}\">{parent}</td>\
             <td class=\"comment\" data-label=\"{l_comment}\"><span class=\"text\">{comment}</span>{edit}</td>\
             <td data-label=\"{l_user}\">{user}</td><td data-label=\"{l_terminal}\">{terminal}</td>\
             <td data-label=\"{l_created}\">{created}</td><td data-label=\"{l_blocks}\">{blocks}</td>\
             <td data-label=\"{l_stored}\">{stored}</td>\
             <td class=\"downloads\" data-label=\"{l_download}\">{downloads}</td>\
             <td class=\"actions\">{delete}</td></tr>",
            id = esc(&v.id),
            comment = esc(&v.comment),
            user = esc(&v.user),
            terminal = esc(&v.terminal),
            created = time_html(&v.created_at),
            blocks = v.blocks_changed,
            stored = bytes_text(v.bytes_stored),
            l_version = w.version,
            l_parent = w.parent,
            l_comment = w.comment,
            l_user = w.user,
            l_terminal = w.terminal,
            l_created = w.created_at,
            l_blocks = w.blocks_changed,
            l_stored = w.stored_bytes,
            l_download = w.download,
        );
    }
    let _ = write!(
        body,
        "</tbody></table><p><a href=\"/?disk={}\">{}</a> · <a href=\"/disks\">{}</a></p>",
        url_escape(&disk.name),
        w.updates,
        w.back
    );
    layout(
        lang,
        Some(&caller),
        "disks",
        &format!("{} {}", w.disk, disk.name),
        &body,
    )
}

/// `GET /terminals`: each terminal seen, with its latest update.
pub(super) async fn terminals(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
) -> Response {
    let (app, session) = (web.app.clone(), caller.session.clone());
    let list = match blocking(move || app.terminals(&session)).await {
        Ok(list) => list,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let mut body = format!(
        "<table id=\"terminals\" class=\"cards\"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        w.terminal, w.user, w.disk, w.last_update, w.started, w.ended
    );
    for u in &list {
        let live = matches!(u.state, "reserved" | "uploading");
        let _ = write!(
            body,
            "<tr><td data-label=\"{l_terminal}\"><a href=\"/?terminal={terminal_q}\">{terminal}</a></td>\
             <td data-label=\"{l_user}\">{user}</td>\
             <td data-label=\"{l_disk}\"><a href=\"/disks/{disk_id}\">{disk}</a></td>\
             <td data-label=\"{l_last}\">{state} {stopped_by}</td>\
             <td data-label=\"{l_started}\">{started}</td><td data-label=\"{l_ended}\">{ended}</td></tr>",
            terminal_q = url_escape(&u.terminal),
            terminal = esc(&u.terminal),
            user = esc(&u.user),
            disk_id = seg(&u.disk_id),
            disk = esc(&u.disk_name),
            state = w.state(u.state, u.uploading_now),
            stopped_by = stopped_by_text(w, u),
            started = time_html(&u.started_at),
            ended = if live {
                String::new()
            } else {
                time_html(&u.changed_at)
            },
            l_terminal = w.terminal,
            l_user = w.user,
            l_disk = w.disk,
            l_last = w.last_update,
            l_started = w.started,
            l_ended = w.ended,
        );
    }
    body.push_str("</tbody></table>");
    if list.is_empty() {
        let _ = write!(body, "<p>{}</p>", w.no_terminals);
    }
    layout(lang, Some(&caller), "terminals", w.terminals, &body)
}

/// `GET /users` (admins): the users, their roles, and adding, changing and deleting
/// them with the rules of `hotate-server user`.
pub(super) async fn users(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
) -> Response {
    let (app, session) = (web.app.clone(), caller.session.clone());
    let list = blocking(move || {
        crate::app::admin_only(&session, "only an admin may manage users")?;
        app.users()
    })
    .await;
    let list = match list {
        Ok(list) => list,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let role_select = |current: &str| {
        let option = |value: &str, label: &str| {
            let selected = if value == current { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{label}</option>")
        };
        format!(
            "<select name=\"role\">{}{}</select>",
            option("operator", w.operator_role),
            option("admin", w.admin_role)
        )
    };
    let mut body = format!(
        "<table id=\"users\" class=\"cards\"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        w.name, w.role, w.created_at
    );
    for u in &list {
        let call = format!("/api/v1/users/{}", seg(&u.name));
        let me = u.name == caller.session.user;
        let role = if me {
            format!("{} {}", role_text(w, u.role), w.you)
        } else {
            api_form(
                &format!("PATCH {call}"),
                None,
                w.user_changed,
                "role",
                &format!(
                    "{}<button type=\"submit\">{}</button>",
                    role_select(u.role),
                    w.change_role
                ),
            )
        };
        let password = api_form(
            &format!("PATCH {call}"),
            None,
            w.user_changed,
            "password",
            &format!(
                "<input type=\"password\" name=\"password\" minlength=\"8\" required \
                 autocomplete=\"new-password\" aria-label=\"{label}\" placeholder=\"{label}\">\
                 <button type=\"submit\">{set}</button>",
                label = w.new_password,
                set = w.save
            ),
        );
        let delete = if me {
            String::new()
        } else {
            api_form(
                &format!("DELETE {call}"),
                Some(&w.delete_user_confirm.replace("{user}", &u.name)),
                w.user_deleted,
                "delete",
                &format!(
                    "<button type=\"submit\" class=\"danger\">{}</button>",
                    w.delete
                ),
            )
        };
        let _ = write!(
            body,
            "<tr data-user=\"{name}\"><td data-label=\"{l_name}\">{name}</td>\
             <td data-label=\"{l_role}\">{role}</td>\
             <td data-label=\"{l_created}\">{created}</td>\
             <td class=\"actions\"><details class=\"edit\"><summary>{reset}</summary>{password}</details>{delete}</td></tr>",
            name = esc(&u.name),
            created = time_html(&u.created_at),
            reset = w.reset_password,
            l_name = w.name,
            l_role = w.role,
            l_created = w.created_at,
        );
    }
    body.push_str("</tbody></table>");
    let add = api_form(
        "POST /api/v1/users",
        None,
        w.user_added,
        "add-user",
        &format!(
            "<label>{user} <input name=\"name\" required maxlength=\"128\" autocomplete=\"off\"></label>\
             <label>{password} <input type=\"password\" name=\"password\" minlength=\"8\" required autocomplete=\"new-password\"></label>\
             <label>{role} {select}</label><button type=\"submit\">{add}</button>",
            user = w.user,
            password = w.new_password,
            role = w.role,
            select = role_select("operator"),
            add = w.add_user,
        ),
    );
    let _ = write!(body, "<h2>{}</h2>{add}", w.add_user);
    layout(lang, Some(&caller), "users", w.users, &body)
}

/// A role in words.
fn role_text(w: &Words, role: &str) -> &'static str {
    if role == "admin" {
        w.admin_role
    } else {
        w.operator_role
    }
}

/// `GET /store`.
pub(super) async fn store(
    State(web): State<Shared>,
    Language(lang): Language,
    Viewer(caller): Viewer,
) -> Response {
    let app = web.app.clone();
    let store = match blocking(move || app.store()).await {
        Ok(store) => store,
        Err(e) => return error_page(lang, &caller, &e),
    };
    let w = lang.words();
    let body = format!(
        "<table id=\"store\"><tbody>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         </tbody></table><p>{}</p>",
        w.store_bytes,
        bytes_text(store.bytes),
        w.chunks,
        store.chunks,
        w.disks,
        store.disks,
        w.versions,
        store.versions,
        w.live_updates,
        store.live_updates,
        w.uploading_now,
        store.uploading_now,
        w.last_verify,
        upkeep_text(w, store.last_verify.as_ref()),
        w.last_gc,
        upkeep_text(w, store.last_gc.as_ref()),
        w.counted_ago.replace("{secs}", &store.age_secs.to_string()),
    );
    let body = body + &transfer_table(w, &store.transfer_servers);
    layout(lang, Some(&caller), "store", w.store, &body)
}

/// The transfer servers of a cluster, if any registered.
fn transfer_table(w: &Words, servers: &[crate::app::TransferView]) -> String {
    if servers.is_empty() {
        return String::new();
    }
    let rows: String = servers
        .iter()
        .map(|t| {
            format!(
                "<tr><td data-label=\"{}\">{}</td><td>{}</td><td data-label=\"{}\">{}</td>\
                 <td data-label=\"{}\">{}</td><td data-label=\"{}\">{}</td></tr>",
                w.transfer_server,
                esc(&t.url),
                if t.alive { w.alive } else { w.gone },
                w.last_seen,
                time_html(&t.seen_at),
                w.uploading_now,
                t.uploads,
                w.carried,
                t.carried
            )
        })
        .collect();
    format!(
        "<h2>{}</h2><table id=\"transfers\" class=\"cards\"><thead><tr><th>{}</th><th></th><th>{}</th>\
         <th>{}</th><th>{}</th></tr></thead><tbody>{rows}</tbody></table>",
        w.transfer_servers, w.transfer_server, w.last_seen, w.uploading_now, w.carried
    )
}

fn upkeep_text(w: &Words, run: Option<&crate::app::UpkeepView>) -> String {
    match run {
        Some(run) => {
            let found = run
                .found
                .as_ref()
                .map_or_else(|| run.outcome.clone(), |found| upkeep_words(w, found));
            format!("{} — {}", time_html(&run.at), esc(&found))
        }
        None => esc(w.never_run),
    }
}

/// What a verify or gc found, in the page's words.
fn upkeep_words(w: &Words, found: &UpkeepOutcome) -> String {
    found.say(&OutcomeWords {
        verify_clean: w.verify_clean,
        verify_found: w.verify_found,
        verify_all: w.verify_all,
        gc_done: w.gc_done,
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

/// Only a path on this site: never another origin.
/// A path of this site to go back to, else `/`: it starts with one `/`, and holds no
/// backslash, control character or space (browsers drop tabs and line breaks, so
/// `/\t/evil.example` would become `//evil.example`, another site).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && !next
                    .chars()
                    .any(|c| c == '\\' || c.is_control() || c.is_whitespace()) =>
        {
            next
        }
        _ => "/",
    }
}

/// `GET /login`.
pub(super) async fn login_form(Language(lang): Language, Query(next): Query<Next>) -> Response {
    login_page(lang, safe_next(next.next.as_deref()), None)
}

fn login_page(lang: Lang, next: &str, error: Option<&str>) -> Response {
    let w = lang.words();
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "{error}<form method=\"post\" action=\"/login\" class=\"login\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label>{user} <input name=\"user\" id=\"user\" autocomplete=\"username\" required autofocus></label>\
         <label>{password} <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login\">{login}</button></form>",
        next = esc(next),
        user = w.user,
        password = w.password,
        login = w.login,
    );
    layout(lang, None, "", w.login, &body)
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    user: String,
    password: String,
    next: Option<String>,
}

/// `POST /login`: sets the session cookie and goes on to `next`.
pub(super) async fn login(
    State(web): State<Shared>,
    Language(lang): Language,
    Peer(addr): Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    if let Err(e) = super::check_origin(&headers, &uri) {
        return ApiError(e).into_response();
    }
    match web
        .app
        .login(&form.user, &form.password, CONSOLE_TERMINAL, addr)
        .await
    {
        Ok(login) => {
            let cookie = session_cookie(&login.token, TOKEN_LIFETIME_SECS, web.options.tls);
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(e) => {
            let text = e.refusal().words(lang.language());
            let mut response = login_page(lang, &next, Some(&text));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout` (a form: its CSRF token is a field).
pub(super) async fn logout(
    State(web): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    // Another site's page may not log the user out: the page's token, from this site.
    if let Err(e) = super::check_origin(&headers, &uri) {
        return ApiError(e).into_response();
    }
    let token = super::cookie(&headers, super::SESSION_COOKIE);
    match token {
        Some(token) if form.csrf == super::csrf_of(&token) => {
            let app = web.app.clone();
            let _ = blocking(move || app.logout(&token)).await;
        }
        Some(_) => return ApiError(ServerError::NoCsrfToken).into_response(),
        None => {}
    }
    let cookie = session_cookie("", 0, web.options.tls);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// `GET /lang/{en|ja}`: remembers the language and goes back.
pub(super) async fn set_lang(Path(code): Path<String>, headers: HeaderMap) -> Response {
    let lang = Lang::parse(&code).unwrap_or(Lang::En);
    // Back to the page the link was on, when it is this site's.
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()));
    let back = safe_next(back.as_deref()).to_owned();
    let cookie = format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Strict",
        lang.code()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&back)).into_response()
}

pub(super) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_helpers() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(bytes_text(999), "999 B");
        assert_eq!(bytes_text(1_500_000), "1.5 MB");
        assert_eq!(duration_text(&super::super::words::EN, 3725), "1 h 2 min");
        assert_eq!(duration_text(&super::super::words::JA, 65), "1 分 5 秒");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/disks")), "/disks");
        assert_eq!(url_escape("/disks/a b"), "/disks/a%20b");
    }
}
