//! The console and its JSON API on the control port, against the real server: the API's
//! contract and its guards (login, roles, CSRF, other origins), live progress over
//! Server-Sent Events, `/metrics`, and a real headless Chromium that watches an upload
//! and aborts it.

use std::process::Child;

use hotate_tests::harness::admin_json;
use hotate_tests::http::{self, Events, Reply};
use hotate_tests::webdriver::Browser;
use serde_json::{Value, json};

use super::*;

/// Logs in through the API; the token.
fn login(addr: &str, user: &str, password: &str) -> String {
    let reply = http::json(
        addr,
        "POST",
        "/api/v1/login",
        &[],
        &json!({"user": user, "password": password}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert!(body["expires_at"].as_i64().expect("expires_at") > 0);
    body["token"].as_str().expect("token").to_owned()
}

fn get(addr: &str, path: &str, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    http::request(addr, "GET", path, &[("Authorization", &bearer)], None)
}

/// Fails unless the finish stopped because an admin aborted it; its output.
fn assert_aborted(finish: Child) -> String {
    let started = Instant::now();
    let out = finish.wait_with_output().expect("finish output");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the client kept going"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("An administrator interrupted the upload"),
        "{}",
        text(&out)
    );
    text(&out)
}

#[test]
fn the_api_keeps_its_contract_and_its_guards() {
    let s = setup(8 << 20, 71);
    let addr = s.server.control.clone();

    // Nothing without a login: 401 with a JSON error, not a page.
    for path in ["/api/v1/disks", "/api/v1/updates", "/api/v1/events"] {
        let reply = http::request(&addr, "GET", path, &[], None);
        assert_eq!(reply.status, 401, "{path}");
        assert!(reply.json()["error"].as_str().is_some(), "{path}");
    }
    let forged = get(&addr, "/api/v1/disks", "not-a-token");
    assert_eq!(forged.status, 401);
    let wrong = http::json(
        &addr,
        "POST",
        "/api/v1/login",
        &[],
        &json!({"user": USER, "password": "wrong"}),
    );
    assert_eq!(wrong.status, 401);
    // A page sends the browser to the login page instead.
    let page = http::request(&addr, "GET", "/disks", &[], None);
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/login?next=/disks"));

    let token = login(&addr, USER, PASSWORD);
    // The same shapes as the admin commands' --json.
    let disks = get(&addr, "/api/v1/disks", &token).json();
    let listed = admin_json(&s.site.data, &["disk", "list"]);
    for key in [
        "id",
        "name",
        "size",
        "block_size",
        "latest_version",
        "stored_bytes",
    ] {
        assert_eq!(disks[0][key], listed[0][key], "{key}");
    }
    assert_eq!(disks[0]["name"], "win10");
    let versions = get(&addr, "/api/v1/disks/win10/versions", &token).json();
    assert_eq!(
        versions,
        admin_json(&s.site.data, &["disk", "versions", "win10"])
    );
    assert_eq!(versions[0]["id"], s.site.first_version.as_str());
    assert_eq!(
        get(&addr, "/api/v1/disks/nope/versions", &token).status,
        404
    );
    // An unknown API call answers in the API's error shape, in both languages.
    let unknown = get(&addr, "/api/v1/no-such-call", &token);
    assert_eq!(unknown.status, 404);
    let unknown = unknown.json();
    assert_eq!(unknown["error"], "no such API call: /api/v1/no-such-call");
    assert_eq!(unknown["messages"]["ja"], "見つかりません。", "{unknown}");

    s.start_update();
    let updates = get(&addr, "/api/v1/updates", &token).json();
    let update = &updates[0];
    assert_eq!(update["terminal"], "PC-001");
    assert_eq!(update["user"], USER);
    assert_eq!(update["state"], "reserved");
    assert_eq!(update["disk_id"], s.site.disk_id.as_str());
    let guid = update["data_write_guid"].as_str().expect("guid").to_owned();
    assert_eq!(updates, admin_json(&s.site.data, &["update", "list"]));

    // Metrics answer loopback callers without a login.
    let metrics = http::request(&addr, "GET", "/metrics", &[], None);
    assert_eq!(metrics.status, 200);
    // A page of another site, rebound to this machine, names that site: a login is needed.
    let rebound = http::request(&addr, "GET", "/metrics", &[("Host", "evil.example")], None);
    assert_eq!(rebound.status, 401, "{}", rebound.text());
    for name in [
        "hotate_uploads_in_progress 0",
        "hotate_updates_live 1",
        "hotate_login_failures_total 1",
        "hotate_verification_failures_total 0",
        "hotate_store_bytes ",
    ] {
        assert!(
            metrics.text().contains(name),
            "{name} in\n{}",
            metrics.text()
        );
    }

    // An operator may read but not abort.
    admin_ok(&s.site.data, &["user", "add", "op", "--role", "operator"]);
    let operator = login(&addr, "op", PASSWORD);
    let abort_path = format!("/api/v1/updates/{guid}/abort");
    let bearer = |t: &str| format!("Bearer {t}");
    let refused = http::request(
        &addr,
        "POST",
        &abort_path,
        &[("Authorization", &bearer(&operator))],
        None,
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    // Errors carry the server's account for scripts and the console's words for people.
    let messages = |reply: &http::Reply| reply.json()["messages"].clone();
    let refused_says = messages(&refused);
    assert_eq!(refused_says["en"], "Only an admin may do this.");
    assert_eq!(refused_says["ja"], "この操作は管理者のみ行えます。");
    // A refusal the terminal meets too reads the same in both: one table of wordings.
    let wrong = http::json(
        &addr,
        "POST",
        "/api/v1/login",
        &[],
        &json!({"user": "op", "password": "not-the-password"}),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(
        messages(&wrong)["ja"],
        "ログインできません: ユーザー名またはパスワードが正しくありません。"
    );
    let terminal_wrong = s
        .terminal
        .client(&["--lang", "ja", "update", "finish"])
        .env("HOTATE_PASSWORD", "not-the-password")
        .output()
        .expect("run hotate-client");
    assert!(
        text(&terminal_wrong).contains(messages(&wrong)["ja"].as_str().expect("ja")),
        "{}",
        text(&terminal_wrong)
    );
    let refused_cancel = http::request(
        &addr,
        "POST",
        &format!("/api/v1/updates/{guid}/cancel"),
        &[("Authorization", &bearer(&operator))],
        None,
    );
    assert_eq!(refused_cancel.status, 403, "{}", refused_cancel.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .expect("error")
            .contains("admin")
    );

    // With the session cookie, a state change needs the page's CSRF token, and a
    // request from another site is refused whatever it carries.
    let cookie = format!("hotate_session={token}");
    let page = http::request(&addr, "GET", "/", &[("Cookie", &cookie)], None);
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains(&guid) && html.contains("PC-001"), "{html}");
    let csrf = csrf_token(&html);
    let no_csrf = http::request(&addr, "POST", &abort_path, &[("Cookie", &cookie)], None);
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text());
    assert_eq!(
        messages(&no_csrf)["ja"],
        "ページが古くなっています。再読み込みしてから再度お試しください。"
    );
    let elsewhere = http::request(
        &addr,
        "POST",
        &abort_path,
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Origin", "http://evil.example"),
        ],
        None,
    );
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.text());
    assert_eq!(
        messages(&elsewhere)["ja"],
        "http://evil.example のページからはこのサーバーを変更できません。"
    );
    assert_eq!(
        s.site.updates()[0]["state"],
        "reserved",
        "nothing changed yet"
    );
    // Logging out needs the page's token too: another site's form cannot log the user
    // out (nor clear the cookie).
    let form = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    for body in [&b"csrf=forged"[..], b""] {
        let forged = http::request(&addr, "POST", "/logout", &form, Some(body));
        assert_eq!(forged.status, 403, "{}", forged.text());
        assert!(forged.header("set-cookie").is_none(), "the cookie stays");
    }
    assert_eq!(
        http::request(&addr, "GET", "/", &[("Cookie", &cookie)], None).status,
        200
    );
    // After a login the console goes back only to a path of this site.
    for next in [
        "%2F%09%2Fevil.example",
        "%2F%0Aevil",
        "%2F%2Fevil.example",
        "%2F%5Cevil",
    ] {
        let body = format!("user={USER}&password={PASSWORD}&next={next}");
        let form = [("Content-Type", "application/x-www-form-urlencoded")];
        let login = http::request(&addr, "POST", "/login", &form, Some(body.as_bytes()));
        assert_eq!(login.status, 303, "{next}: {}", login.text());
        assert_eq!(login.header("location"), Some("/"), "{next}");
    }

    // The page's abort, as its script sends it.
    let abort_from_page = || {
        http::request(
            &addr,
            "POST",
            &abort_path,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
            None,
        )
    };
    // An abort of an update that is not uploading keeps it reserved, as often as asked.
    let aborted = abort_from_page();
    assert_eq!(aborted.status, 200, "{}", aborted.text());
    assert_eq!(aborted.json()["state"], "reserved");
    assert_eq!(abort_from_page().status, 200);
    assert_eq!(s.site.updates()[0]["state"], "reserved");
    // The cancel (「更新取消」) ends it; after that there is nothing to abort or cancel.
    let cancel_path = format!("/api/v1/updates/{guid}/cancel");
    let cancel_from_page = || {
        http::request(
            &addr,
            "POST",
            &cancel_path,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
            None,
        )
    };
    let cancelled = cancel_from_page();
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["state"], "cancelled");
    let again = abort_from_page();
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(
        messages(&again)["en"],
        "This update has already ended (Cancelled): there is nothing to abort or cancel."
    );
    assert_eq!(
        messages(&again)["ja"],
        "この更新はすでに「キャンセル済み」です。更新中断・更新取消するものはありません。"
    );
    let finish = s.terminal.run(&["update", "finish"]);
    assert_eq!(finish.status.code(), Some(1), "{}", text(&finish));

    // The other pages, in the caller's language.
    let page = |path: &str, lang: &str| {
        let reply = http::request(
            &addr,
            "GET",
            path,
            &[("Cookie", &cookie), ("Accept-Language", lang)],
            None,
        );
        assert_eq!(reply.status, 200, "{path}");
        reply.text()
    };
    let disks = page("/disks", "en-US,en;q=0.9");
    assert!(
        disks.contains("win10") && disks.contains("Latest version"),
        "{disks}"
    );
    let versions = page(&format!("/disks/{}", s.site.disk_id), "ja,en;q=0.5");
    assert!(
        versions.contains(&s.site.first_version) && versions.contains("コメント"),
        "{versions}"
    );
    // An error page speaks the caller's language too.
    let missing = http::request(
        &addr,
        "GET",
        "/disks/no-such-disk",
        &[("Cookie", &cookie), ("Accept-Language", "ja")],
        None,
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(
        missing
            .text()
            .contains("ManageServer にディスク no-such-disk がありません。"),
        "{}",
        missing.text()
    );
    admin_ok(&s.site.data, &["store", "verify"]);
    let store = get(&addr, "/api/v1/store", &token).json();
    assert!(store["chunks"].as_u64().expect("chunks") > 0);
    assert!(
        store["last_verify"]["outcome"]
            .as_str()
            .expect("last verify")
            .starts_with("all well"),
        "{store}"
    );
    assert!(store["last_gc"].is_null());
    let store_page = page("/store", "ja");
    let checked = store["last_verify"]["found"]["chunks_checked"]
        .as_u64()
        .expect("figures");
    assert!(
        store_page.contains("最後の検証")
            && store_page.contains(&format!("異常なし: {checked} チャンクを検証しました")),
        "{store_page}"
    );
    assert!(
        !store_page.contains("all well"),
        "no English on the Japanese page"
    );
    admin_ok(&s.site.data, &["store", "gc"]);
    let store = get(&addr, "/api/v1/store", &token).json();
    assert_eq!(store["last_gc"]["found"]["kind"], "gc", "{store}");
    let store_page = page("/store", "ja");
    assert!(store_page.contains("チャンクを削除し"), "{store_page}");
    assert!(page("/store", "en").contains("chunks deleted"));

    // Logging out ends the token.
    let out = http::request(
        &addr,
        "POST",
        "/api/v1/logout",
        &[("Authorization", &bearer(&token))],
        None,
    );
    assert_eq!(out.status, 204);
    assert_eq!(get(&addr, "/api/v1/disks", &token).status, 401);
}

#[test]
fn events_carry_live_progress_and_an_abort_stops_the_upload() {
    let s = setup_changing(48 << 20, 60, 72);
    let addr = s.server.control.clone();
    let token = login(&addr, USER, PASSWORD);
    s.start_update();
    let finish = finish_in_background(&s.terminal, &s.site, "2m");

    let bearer = format!("Bearer {token}");
    let mut events = Events::open(&addr, "/api/v1/events", &[("Authorization", &bearer)]);
    let stored_now = |events: &mut Events| -> (u64, Value) {
        loop {
            let list: Value = serde_json::from_str(&events.next("updates")).expect("json");
            let update = list[0].clone();
            if update["uploading_now"] == true {
                return (
                    update["bytes_stored"].as_u64().expect("bytes_stored"),
                    update,
                );
            }
        }
    };
    let (first, update) = stored_now(&mut events);
    assert_eq!(update["state"], "uploading");
    assert!(update["bytes_needed"].as_u64().expect("bytes_needed") >= first);
    let deadline = Instant::now() + Duration::from_secs(20);
    let later = loop {
        let (stored, update) = stored_now(&mut events);
        if stored > first {
            assert!(update["rate"].as_u64().is_some());
            break stored;
        }
        assert!(Instant::now() < deadline, "progress did not advance");
    };
    assert!(later > first);
    // The terminal's own account of the whole job: a total that holds still and a share
    // that only grows, as its progress line shows them.
    let mut job = Vec::new();
    while job.len() < 3 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "no job figures: {job:?}"
        );
        let (_, update) = stored_now(&mut events);
        if let (Some(percent), Some(total)) =
            (update["percent"].as_u64(), update["bytes_total"].as_u64())
        {
            job.push((percent, total));
        }
    }
    assert!(
        job.windows(2).all(|w| w[0].1 == w[1].1 && w[0].0 <= w[1].0),
        "{job:?}"
    );
    let metrics = http::request(&addr, "GET", "/metrics", &[], None).text();
    assert!(
        metrics.contains("hotate_uploads_in_progress 1"),
        "{metrics}"
    );

    let guid = update["data_write_guid"].as_str().expect("guid");
    let aborted = http::request(
        &addr,
        "POST",
        &format!("/api/v1/updates/{guid}/abort"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(aborted.status, 200, "{}", aborted.text());
    let said = assert_aborted(finish);
    // The same total as the terminal's lines: `N% complete... (X MB / Y MB)`.
    let total_mb = (job[0].1 + 500_000) / 1_000_000;
    assert!(
        said.contains(&format!(" MB / {total_mb} MB)")),
        "the console's total {} against:\n{said}",
        job[0].1
    );
    // The stream says so too.
    loop {
        let list: Value = serde_json::from_str(&events.next("updates")).expect("json");
        if list[0]["state"] == "reserved" && list[0]["uploading_now"] == false {
            break;
        }
    }
}

/// Whether the browser tests can run here (else `hotate_tests::needs` says what is
/// missing, and fails under CI).
fn browser_available() -> bool {
    let found = hotate_tests::has_command("chromedriver") && hotate_tests::has_command("chromium");
    hotate_tests::needs(
        "the console's browser tests",
        "chromium and chromedriver (Debian chromium, chromium-driver)",
        found,
    )
}

/// Where the browser test leaves its screenshots.
fn screenshot_dir() -> std::path::PathBuf {
    let dir = hotate_tests::harness::bin("hotate-server")
        .parent()
        .expect("target dir")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
fn a_browser_watches_an_upload_advance_and_aborts_it() {
    if !browser_available() {
        return;
    }
    let s = setup_changing(48 << 20, 60, 73);
    let base = s.server.url();
    s.start_update();
    // About 20 s at 1 MB/s: the page's steps before the abort fit on a loaded machine.
    let finish = finish_in_background(&s.terminal, &s.site, "1m");

    let browser = Browser::start();
    browser.goto(&format!("{base}/"));
    // Sent to the login page, then back.
    browser.wait_for(Duration::from_secs(10), "the login form", || {
        browser.text("#login").filter(|t| t == "Log in")
    });
    browser.type_into("#user", USER);
    browser.type_into("#password", PASSWORD);
    browser.click("#login");
    let row = "#updates tbody tr[data-state=\"uploading\"]";
    browser.wait_for(Duration::from_secs(10), "the upload's row", || {
        browser
            .text(&format!("{row} .state"))
            .filter(|t| t == "Uploading")
    });
    // A mark that a reload would wipe.
    browser.execute("window.hotateMark = 1; return null;");
    let amount = |browser: &Browser| browser.text(&format!("{row} .amount")).unwrap_or_default();
    let first = browser.wait_for(Duration::from_secs(10), "progress", || {
        Some(amount(&browser)).filter(|a| !a.is_empty())
    });
    browser.wait_for(Duration::from_secs(20), "progress to advance", || {
        Some(amount(&browser)).filter(|a| *a != first)
    });
    assert_eq!(
        browser.execute("return window.hotateMark;"),
        json!(1),
        "the page reloaded"
    );
    std::fs::write(
        screenshot_dir().join("console-en.png"),
        browser.screenshot(),
    )
    .expect("save");

    // The same page in Japanese, in the seed's words.
    browser.click("header .lang a");
    browser.wait_for(Duration::from_secs(10), "the Japanese page", || {
        browser
            .text(&format!("{row} .state"))
            .filter(|t| t == "アップロード中")
    });
    assert_eq!(browser.text("h1").as_deref(), Some("更新状況"));
    assert_eq!(
        browser.text(&format!("{row} button.abort")).as_deref(),
        Some("更新中断")
    );
    assert_eq!(
        browser.text(&format!("{row} button.cancel")).as_deref(),
        Some("更新取消")
    );
    std::fs::write(
        screenshot_dir().join("console-ja.png"),
        browser.screenshot(),
    )
    .expect("save");
    browser.click("header .lang a");
    browser.wait_for(Duration::from_secs(10), "the English page", || {
        browser.text("h1").filter(|t| t == "Updates")
    });

    // Abort asks first; "Back" changes nothing.
    browser.click(&format!("{row} button.abort"));
    let question = browser.text("#abort-question").unwrap_or_default();
    assert!(
        question.contains("win10") && question.contains("PC-001"),
        "{question}"
    );
    browser.click("#abort-cancel");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.site.updates()[0]["state"], "uploading");
    browser.click(&format!("{row} button.abort"));
    browser.click("#abort-confirm");
    browser.wait_for(Duration::from_secs(10), "the reserved state", || {
        browser
            .text("#updates tbody tr[data-state=\"reserved\"] .state")
            .filter(|t| t == "Updating on the terminal")
    });
    assert_eq!(
        browser.text("#message").as_deref(),
        Some("The upload was aborted: the terminal can run `update finish` again.")
    );
    assert_aborted(finish);
    assert_eq!(s.site.updates()[0]["state"], "reserved");
    // The history keeps who aborted the upload.
    assert_eq!(
        browser
            .text("#updates tbody tr[data-state=\"reserved\"] .stopped-by")
            .as_deref(),
        Some(format!("(upload aborted by {USER})").as_str())
    );
    // The manual's next step: the terminal finishes again and the version is whole.
    let again = s.terminal.run(&["update", "finish"]);
    assert_ok(&again);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
    browser.wait_for(Duration::from_secs(10), "the committed state", || {
        browser
            .text("#updates tbody tr[data-state=\"committed\"] .state")
            .filter(|t| t == "Committed")
    });
    // The row tells what the new version stored, as the versions page does.
    let stored = browser.text("#updates tbody tr[data-state=\"committed\"] .stored");
    assert!(
        stored
            .as_deref()
            .is_some_and(|t| t.ends_with("B") && t.len() > 2),
        "the committed row's stored bytes: {stored:?}"
    );

    // 「更新取消」 of a terminal that will not come back: asked first, then the update ends.
    let versions = admin_json(&s.site.data, &["disk", "versions", "win10"]);
    let latest = versions
        .as_array()
        .and_then(|v| v.last())
        .expect("versions")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.terminal.write_config(&s.site.disk_id, &latest, "restore");
    s.start_update();
    let reserved = "#updates tbody tr[data-state=\"reserved\"]";
    browser.wait_for(Duration::from_secs(10), "the new update's row", || {
        browser.text(&format!("{reserved} .terminal"))
    });
    browser.click(&format!("{reserved} button.cancel"));
    let question = browser.text("#cancel-question").unwrap_or_default();
    assert!(question.contains("PC-001"), "{question}");
    browser.click("#cancel-confirm");
    browser.wait_for(Duration::from_secs(10), "the cancelled state", || {
        browser
            .text("#updates tbody tr[data-state=\"cancelled\"] .state")
            .filter(|t| t == "Cancelled")
    });
    assert_eq!(
        browser.text("#message").as_deref(),
        Some("The update was cancelled.")
    );
    assert_eq!(
        s.site.updates().last().expect("update")["state"],
        "cancelled"
    );

    // The disk's page: sizes in binary units, times in the reader's clock with the exact
    // UTC time on hover, in Japanese order on the Japanese page.
    browser.goto(&format!("{base}/disks/win10"));
    let first_time = || {
        let shown = browser.execute(
            "const t = document.querySelector('#versions time'); \
             return t ? [t.textContent, t.title, t.dateTime] : null;",
        );
        let shown: Vec<String> = serde_json::from_value(shown).unwrap_or_default();
        (shown.len() == 3).then_some(shown)
    };
    let en = browser.wait_for(Duration::from_secs(10), "a version's time", first_time);
    assert!(en[2].ends_with('Z') && en[1] == en[2], "{en:?}");
    let year = &en[2][..4];
    assert!(!en[0].contains('T') && en[0].contains(year), "{en:?}");
    let sizes = browser.text("main p.facts").unwrap_or_default();
    assert!(sizes.contains("MiB"), "{sizes}");
    browser.click("header .lang a");
    let ja = browser.wait_for(Duration::from_secs(10), "the Japanese time", || {
        first_time().filter(|t| t[0].starts_with(year) && t[0] != en[0])
    });
    assert!(ja[0].contains('/') && ja[1] == en[1], "{ja:?}");
    browser.click("header .lang a");
}

/// A JSON call with a bearer token.
fn call(addr: &str, method: &str, path: &str, token: &str, body: &Value) -> Reply {
    let bearer = format!("Bearer {token}");
    http::json(addr, method, path, &[("Authorization", &bearer)], body)
}

fn delete(addr: &str, path: &str, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    http::request(addr, "DELETE", path, &[("Authorization", &bearer)], None)
}

/// What a refusal says to people, in both languages.
fn said(reply: &Reply) -> (String, String) {
    let body = reply.json();
    let word = |lang: &str| {
        body["messages"][lang]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (word("en"), word("ja"))
}

#[test]
fn the_console_manages_versions_users_and_terminals() {
    let s = setup(8 << 20, 74);
    let addr = s.server.control.clone();
    s.start_update();
    assert_ok(&s.terminal.run(&["update", "finish"]));
    let admin = login(&addr, USER, PASSWORD);
    let first = s.site.first_version.clone();
    let versions = get(&addr, "/api/v1/disks/win10/versions", &admin).json();
    let latest = versions[1]["id"].as_str().expect("id").to_owned();

    // Users: the password's minimum and a taken name, said in both languages.
    let short = call(
        &addr,
        "POST",
        "/api/v1/users",
        &admin,
        &json!({"name": "op", "password": "1234567"}),
    );
    assert_eq!(short.status, 400);
    assert_eq!(
        said(&short),
        (
            "A password needs at least 8 characters.".into(),
            "パスワードは 8 文字以上にしてください。".into()
        )
    );
    let added = call(
        &addr,
        "POST",
        "/api/v1/users",
        &admin,
        &json!({"name": "op", "password": "operator-pass"}),
    );
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.json()["role"], "operator", "operators unless asked");
    let again = call(
        &addr,
        "POST",
        "/api/v1/users",
        &admin,
        &json!({"name": "op", "password": "operator-pass"}),
    );
    assert_eq!(again.status, 409);
    assert_eq!(said(&again).0, "User op already exists.");

    // An operator reads and downloads, but manages nothing.
    let op = login(&addr, "op", "operator-pass");
    let version_path = format!("/api/v1/disks/win10/versions/{first}");
    for refused in [
        get(&addr, "/api/v1/users", &op),
        call(&addr, "PATCH", &version_path, &op, &json!({"comment": "x"})),
        delete(&addr, &version_path, &op),
        call(
            &addr,
            "PATCH",
            "/api/v1/users/op",
            &op,
            &json!({"role": "admin"}),
        ),
        delete(&addr, &format!("/api/v1/users/{USER}"), &op),
    ] {
        assert_eq!(refused.status, 403, "{}", refused.text());
        assert_eq!(said(&refused).0, "Only an admin may do this.");
    }
    assert_eq!(
        get(&addr, "/api/v1/terminals", &op).json(),
        json!([]),
        "only its own"
    );

    // An admin never demotes nor deletes their own account here.
    let own = call(
        &addr,
        "PATCH",
        &format!("/api/v1/users/{USER}"),
        &admin,
        &json!({"role": "operator"}),
    );
    assert_eq!(own.status, 409);
    assert!(said(&own).1.contains("自分自身"), "{:?}", said(&own));
    assert_eq!(
        delete(&addr, &format!("/api/v1/users/{USER}"), &admin).status,
        409
    );
    // A role change holds at once for the user's session.
    let promoted = call(
        &addr,
        "PATCH",
        "/api/v1/users/op",
        &admin,
        &json!({"role": "admin"}),
    );
    assert_eq!(promoted.json()["role"], "admin");
    assert_eq!(get(&addr, "/api/v1/users", &op).status, 200);
    call(
        &addr,
        "PATCH",
        "/api/v1/users/op",
        &admin,
        &json!({"role": "operator"}),
    );
    assert_eq!(get(&addr, "/api/v1/users", &op).status, 403);
    // A new password ends the user's sessions.
    let reset = call(
        &addr,
        "PATCH",
        "/api/v1/users/op",
        &admin,
        &json!({"password": "another-pass"}),
    );
    assert_eq!(reset.status, 200);
    assert_eq!(get(&addr, "/api/v1/disks", &op).status, 401);
    let op = login(&addr, "op", "another-pass");

    // A version's comment, as the admin commands see it too; a forged line is refused.
    let edited = call(
        &addr,
        "PATCH",
        &version_path,
        &admin,
        &json!({"comment": "教室の基本イメージ"}),
    );
    assert_eq!(edited.status, 200, "{}", edited.text());
    assert_eq!(edited.json()["comment"], "教室の基本イメージ");
    let listed = admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(listed[0]["comment"], "教室の基本イメージ");
    let forged = call(
        &addr,
        "PATCH",
        &version_path,
        &admin,
        &json!({"comment": "a\nforged line"}),
    );
    assert_eq!(forged.status, 400);

    // Downloads: raw whole and by range (resumable); qcow2, VHDX and VHD read back by
    // qemu-img.
    let base = std::fs::read(&s.pair.base).expect("base");
    let updated = std::fs::read(&s.pair.updated).expect("updated");
    let whole = get(&addr, &format!("{version_path}/image"), &op);
    assert_eq!(whole.status, 200);
    assert!(whole.body == base, "the raw download is the version");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert!(
        whole
            .header("content-disposition")
            .unwrap_or_default()
            .contains(&format!("win10-{first}.img")),
        "{:?}",
        whole.header("content-disposition")
    );
    let etag = whole.header("etag").expect("etag").to_owned();
    let bearer = format!("Bearer {op}");
    let ranged = |range: &str, if_range: &str| {
        let latest_path = format!("/api/v1/disks/win10/versions/{latest}/image?format=raw");
        let mut headers = vec![("Authorization", bearer.as_str()), ("Range", range)];
        if !if_range.is_empty() {
            headers.push(("If-Range", if_range));
        }
        http::request(&addr, "GET", &latest_path, &headers, None)
    };
    let latest_etag = get(
        &addr,
        &format!("/api/v1/disks/win10/versions/{latest}/image"),
        &op,
    )
    .header("etag")
    .expect("etag")
    .to_owned();
    assert_ne!(latest_etag, etag, "each version its own");
    let part = ranged("bytes=1000000-2999999", &latest_etag);
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000000-2999999/{}", updated.len()).as_str())
    );
    assert!(
        part.body == updated[1_000_000..3_000_000],
        "the range's bytes"
    );
    let tail = ranged("bytes=-4096", "");
    assert!(tail.body == updated[updated.len() - 4096..]);
    let stale = ranged("bytes=0-9", &etag);
    assert_eq!(
        stale.status, 200,
        "another version's tag gets the whole image"
    );
    assert_eq!(stale.body.len(), updated.len());
    assert_eq!(ranged(&format!("bytes={}-", updated.len()), "").status, 416);
    for format in ["qcow2", "vhdx", "vhd"] {
        let image = get(
            &addr,
            &format!("/api/v1/disks/win10/versions/{latest}/image?format={format}"),
            &op,
        );
        assert_eq!(image.status, 200, "{format}");
        let file = s.dir.path().join(format!("download.{format}"));
        std::fs::write(&file, &image.body).expect("save");
        let raw = s.dir.path().join(format!("download-{format}.img"));
        let fmt = if format == "vhd" { "vpc" } else { format };
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(&file)
            .arg(&raw)
            .output()
            .expect("qemu-img");
        assert!(out.status.success(), "{}", text(&out));
        let read = std::fs::read(&raw).expect("raw");
        assert!(
            read[..updated.len()] == updated[..],
            "{format} holds the version"
        );
    }
    let left: Vec<_> = std::fs::read_dir(s.site.data.join("downloads"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "written images go with their download: {left:?}"
    );

    // On the cookie's strength, each new call needs the page's CSRF token and this site.
    let cookie = format!("hotate_session={admin}");
    let html = http::request(&addr, "GET", "/disks/win10", &[("Cookie", &cookie)], None).text();
    let csrf = csrf_token(&html);
    let by_cookie = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("Cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        http::request(
            &addr,
            method,
            path,
            &headers,
            Some(br#"{"comment":"forged","role":"admin"}"#),
        )
    };
    for (method, path) in [
        ("DELETE", version_path.as_str()),
        ("PATCH", version_path.as_str()),
        ("PATCH", "/api/v1/users/op"),
        ("DELETE", "/api/v1/users/op"),
    ] {
        assert_eq!(
            by_cookie(method, path, &[]).status,
            403,
            "{method} {path} without the token"
        );
        let elsewhere = by_cookie(
            method,
            path,
            &[("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")],
        );
        assert_eq!(elsewhere.status, 403, "{method} {path} from another site");
    }
    assert_eq!(by_cookie("POST", "/api/v1/users", &[]).status, 403);
    assert_eq!(
        admin_json(&s.site.data, &["disk", "versions", "win10"])[0]["comment"],
        "教室の基本イメージ",
        "nothing changed"
    );
    let with_token = by_cookie("PATCH", &version_path, &[("X-CSRF-Token", &csrf)]);
    assert_eq!(with_token.status, 200, "{}", with_token.text());
    assert_eq!(with_token.json()["comment"], "forged");

    // Deleting versions follows `version delete`: never the latest.
    let refused = delete(
        &addr,
        &format!("/api/v1/disks/win10/versions/{latest}"),
        &admin,
    );
    assert_eq!(refused.status, 409);
    assert!(
        said(&refused).0.contains("latest version"),
        "{:?}",
        said(&refused)
    );
    assert!(
        said(&refused).1.contains("最新バージョン"),
        "{:?}",
        said(&refused)
    );
    assert_eq!(delete(&addr, &version_path, &admin).status, 204);
    let ids: Vec<Value> = get(&addr, "/api/v1/disks/win10/versions", &admin)
        .json()
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, [json!(latest)]);

    // Terminals, and who ended an update.
    let terminals = get(&addr, "/api/v1/terminals", &admin).json();
    assert_eq!(terminals[0]["terminal"], "PC-001");
    assert_eq!(terminals[0]["state"], "committed");
    let committed = get(&addr, "/api/v1/updates?state=committed", &admin).json();
    let new_version: Vec<Value> = get(&addr, "/api/v1/disks/win10/versions", &admin)
        .json()
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["id"] == committed[0]["new_version"])
        .cloned()
        .collect();
    assert!(new_version[0]["bytes_stored"].as_u64() > Some(0));
    assert_eq!(
        committed[0]["version_bytes_stored"], new_version[0]["bytes_stored"],
        "a committed update tells what its version stored"
    );
    s.terminal.write_config(&s.site.disk_id, &latest, "restore");
    s.start_update();
    let live = get(&addr, "/api/v1/updates?state=live", &admin).json();
    let guid = live[0]["data_write_guid"]
        .as_str()
        .expect("guid")
        .to_owned();
    let cancel = call(
        &addr,
        "POST",
        &format!("/api/v1/updates/{guid}/cancel"),
        &admin,
        &json!({}),
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    let cancelled = get(&addr, "/api/v1/updates?state=cancelled", &admin).json();
    assert_eq!(cancelled[0]["stopped_by"], USER);
    assert_eq!(
        get(&addr, "/api/v1/terminals", &admin).json()[0]["state"],
        "cancelled"
    );

    // A deleted user's sessions end.
    assert_eq!(delete(&addr, "/api/v1/users/op", &admin).status, 204);
    assert_eq!(get(&addr, "/api/v1/disks", &op).status, 401);
    let users: Vec<Value> = get(&addr, "/api/v1/users", &admin)
        .json()
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["name"].clone())
        .collect();
    assert_eq!(users, [json!(USER)]);
}

/// The CSRF token a page carries in its `<meta name="csrf">`.
fn csrf_token(html: &str) -> String {
    html.split("<meta name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf meta")
        .to_owned()
}

/// Fails when the page scrolls sideways; the name of the page for the message.
fn assert_fits(browser: &Browser, page: &str) {
    let sizes =
        browser.execute("return [document.documentElement.scrollWidth, window.innerWidth];");
    let (scroll, inner) = (
        sizes[0].as_u64().unwrap_or(0),
        sizes[1].as_u64().unwrap_or(0),
    );
    let widest = browser.execute(
        "const rows = document.querySelectorAll('table tr');
         const row = rows.length > 1 ? rows[1] : rows[0];
         return row ? [...row.children].map(c => Math.round(c.getBoundingClientRect().width)) : [];",
    );
    assert!(
        scroll <= inner && inner > 0,
        "{page} scrolls sideways: {scroll} px in a {inner} px window (cells {widest})"
    );
}

/// Logs the browser in (from any page) as `user`.
fn browser_login(browser: &Browser, base: &str, user: &str, password: &str) {
    browser.goto(&format!("{base}/login"));
    browser.wait_for(Duration::from_secs(10), "the login form", || {
        browser.text("#login")
    });
    browser.type_into("#user", user);
    browser.type_into("#password", password);
    browser.click("#login");
    browser.wait_for(Duration::from_secs(10), "the updates page", || {
        browser.text("#updates thead")
    });
}

/// Sets a form field's value in the page.
fn set_value(browser: &Browser, css: &str, value: &str) {
    let (css, value) = (json!(css), json!(value));
    browser.execute(&format!(
        "document.querySelector({css}).value = {value}; return null;"
    ));
}

/// Waits for the message a form's reload says.
fn wait_said(browser: &Browser, text: &str) {
    browser.wait_for(Duration::from_secs(10), text, || {
        browser.text("#message").filter(|t| t == text)
    });
}

#[test]
fn a_browser_manages_the_console_and_every_page_fits_both_widths() {
    if !browser_available() {
        return;
    }
    // Two versions, a cancelled update and a live one, two users.
    let s = setup(8 << 20, 75);
    let base = s.server.url();
    s.start_update();
    assert_ok(
        &s.terminal
            .run(&["update", "finish", "--comment", "Office 2024 を導入"]),
    );
    let versions = admin_json(&s.site.data, &["disk", "versions", "win10"]);
    let (first, latest) = (
        s.site.first_version.clone(),
        versions[1]["id"].as_str().expect("id").to_owned(),
    );
    s.terminal.write_config(&s.site.disk_id, &latest, "restore");
    s.start_update();
    assert_ok(&s.terminal.run(&["update", "cancel"]));
    s.terminal.write_config(&s.site.disk_id, &latest, "restore");
    s.start_update();
    hotate_tests::harness::admin_ok(&s.site.data, &["user", "add", "op", "--role", "operator"]);

    let browser = Browser::start();
    browser_login(&browser, &base, USER, PASSWORD);

    // Every page fits 1280 px and 390 px without sideways scrolling, in both languages;
    // at 1280 px a live update's actions are in view.
    let pages = [
        ("updates", "/"),
        ("disks", "/disks"),
        ("versions", "/disks/win10"),
        ("terminals", "/terminals"),
        ("users", "/users"),
        ("store", "/store"),
    ];
    for lang in ["en", "ja"] {
        browser.goto(&format!("{base}/lang/{lang}"));
        for width in [1280, 390] {
            browser.set_size(width, 900);
            for (name, path) in pages {
                browser.goto(&format!("{base}{path}"));
                browser.wait_for(Duration::from_secs(10), "the page", || {
                    browser
                        .execute("return document.documentElement.lang;")
                        .as_str()
                        .filter(|l| *l == lang)
                        .map(str::to_owned)
                });
                std::fs::write(
                    screenshot_dir().join(format!("console-{name}-{lang}-{width}.png")),
                    browser.screenshot(),
                )
                .expect("save");
                let inner = browser.execute("return window.innerWidth;");
                assert!(inner.as_u64().unwrap_or(0) <= u64::from(width), "{inner}");
                assert_fits(&browser, &format!("{path} ({lang}, {width} px)"));
                // Each navigation link stays on one line (no one-character columns).
                let broken = browser.execute(
                    "return [...document.querySelectorAll('header nav a')]
                       .filter(a => a.getClientRects().length !== 1
                                 || a.getBoundingClientRect().height > 2 * parseFloat(getComputedStyle(a).fontSize))
                       .map(a => a.textContent);",
                );
                assert_eq!(broken, json!([]), "{path} ({lang}, {width} px)");
                if name == "updates" && width == 1280 {
                    let outside = browser.execute(
                        "return [...document.querySelectorAll('#updates button:not([hidden])')]
                           .filter(b => b.getBoundingClientRect().right > window.innerWidth)
                           .map(b => b.textContent);",
                    );
                    assert_eq!(outside, json!([]), "actions out of view ({lang})");
                    // The dialog does not push the page sideways either.
                    browser.click("#updates tr[data-state=\"reserved\"] button.abort");
                    assert_fits(&browser, &format!("the abort dialog ({lang})"));
                    browser.click("#abort-cancel");
                }
            }
        }
    }
    browser.set_size(1280, 900);
    browser.goto(&format!("{base}/lang/en"));

    // The history: filtered by state, with who cancelled the update.
    browser.goto(&format!("{base}/"));
    browser.execute(
        "document.querySelector('#filter select[name=state]').value = 'cancelled'; return null;",
    );
    browser.click("#filter button");
    browser.wait_for(Duration::from_secs(10), "the filtered page", || {
        browser
            .execute("return location.search;")
            .as_str()
            .filter(|q| q.contains("state=cancelled"))
            .map(str::to_owned)
    });
    let states = browser.execute(
        "return [...document.querySelectorAll('#updates tbody tr')].map(r => r.dataset.state);",
    );
    assert_eq!(states, json!(["cancelled"]));
    assert_eq!(
        browser.text("#updates tbody tr .stopped-by").as_deref(),
        Some(format!("(by {USER})").as_str())
    );
    let disk_link = browser
        .execute("return document.querySelector('#updates tbody a.disk').getAttribute('href');");
    assert_eq!(disk_link, json!(format!("/disks/{}", s.site.disk_id)));

    // A version's comment, edited on its page.
    browser.goto(&format!("{base}/disks/win10"));
    let row = |id: &str| format!("#versions tr[data-version=\"{id}\"]");
    browser.click(&format!("{} details.edit summary", row(&first)));
    set_value(
        &browser,
        &format!("{} textarea", row(&first)),
        "教室の基本イメージ",
    );
    browser.click(&format!("{} form.comment button", row(&first)));
    wait_said(&browser, "The comment was saved.");
    assert_eq!(
        browser
            .text(&format!("{} .comment .text", row(&first)))
            .as_deref(),
        Some("教室の基本イメージ")
    );
    // The latest links to its parent, offers every format, and cannot be deleted.
    let parent = browser.execute(&format!(
        "return document.querySelector('{} a[href=\"#v-{first}\"]') !== null;",
        row(&latest)
    ));
    assert_eq!(parent, json!(true));
    let formats = browser.execute(&format!(
        "return [...document.querySelectorAll('{} .downloads a')].map(a => a.textContent);",
        row(&latest)
    ));
    assert_eq!(formats, json!(["raw", "qcow2", "vhdx", "vhd"]));
    assert_eq!(browser.text(&format!("{} form.delete", row(&latest))), None);
    // Deleting asks first; "Back" keeps the version.
    browser.click(&format!("{} form.delete button", row(&first)));
    let question = browser.text("#confirm-question").unwrap_or_default();
    assert!(
        question.contains(&first) && question.contains("win10"),
        "{question}"
    );
    browser.click("#confirm-back");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        admin_json(&s.site.data, &["disk", "versions", "win10"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    browser.click(&format!("{} form.delete button", row(&first)));
    browser.click("#confirm-yes");
    wait_said(&browser, "The version was deleted.");
    assert_eq!(browser.text(&row(&first)), None);
    assert_eq!(
        admin_json(&s.site.data, &["disk", "versions", "win10"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Users: added, promoted and deleted on the page; a taken name is refused in the
    // page's language.
    browser.goto(&format!("{base}/users"));
    set_value(&browser, "form.add-user input[name=name]", "op2");
    set_value(
        &browser,
        "form.add-user input[name=password]",
        "operator-pass",
    );
    browser.click("form.add-user button");
    wait_said(&browser, "The user was added.");
    let user_row = "#users tr[data-user=\"op2\"]";
    browser.execute(&format!(
        "document.querySelector('{user_row} form.role select').value = 'admin'; return null;"
    ));
    browser.click(&format!("{user_row} form.role button"));
    wait_said(&browser, "The user was changed.");
    let users = admin_json(&s.site.data, &["user", "list"]);
    let op2 = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "op2"))
        .cloned();
    assert_eq!(op2.map(|u| u["role"].clone()), Some(json!("admin")));
    // A password reset on the page: the new one logs in.
    browser.click(&format!("{user_row} details.edit summary"));
    set_value(
        &browser,
        &format!("{user_row} form.password input"),
        "reset-by-page",
    );
    browser.execute("document.getElementById('message').textContent = ''; return null;");
    browser.click(&format!("{user_row} form.password button"));
    wait_said(&browser, "The user was changed.");
    login(&s.server.control, "op2", "reset-by-page");
    assert_eq!(
        browser.text(&format!("#users tr[data-user=\"{USER}\"] form.delete")),
        None,
        "not yourself"
    );
    browser.click(&format!("{user_row} form.delete button"));
    assert!(
        browser
            .text("#confirm-question")
            .unwrap_or_default()
            .contains("op2")
    );
    browser.click("#confirm-yes");
    wait_said(&browser, "The user was deleted.");
    assert_eq!(browser.text(user_row), None);
    browser.goto(&format!("{base}/lang/ja"));
    browser.goto(&format!("{base}/users"));
    set_value(&browser, "form.add-user input[name=name]", "op");
    set_value(
        &browser,
        "form.add-user input[name=password]",
        "operator-pass",
    );
    browser.click("form.add-user button");
    browser.wait_for(Duration::from_secs(10), "the refusal", || {
        browser
            .text("#message.error")
            .filter(|t| t == "ユーザー op はすでに存在します。")
    });

    // The terminals page names the terminal's latest update.
    browser.goto(&format!("{base}/terminals"));
    let terminal = browser.text("#terminals tbody tr").unwrap_or_default();
    assert!(
        terminal.contains("PC-001") && terminal.contains("端末側で更新中"),
        "{terminal}"
    );

    // An operator sees neither the users nor the admins' actions.
    browser.goto(&format!("{base}/lang/en"));
    browser.execute("document.querySelector('header form.inline button').click(); return null;");
    browser.wait_for(Duration::from_secs(10), "the login page", || {
        browser.text("#login")
    });
    browser_login(&browser, &base, "op", PASSWORD);
    assert_eq!(browser.text("header nav a[href=\"/users\"]"), None);
    browser.goto(&format!("{base}/users"));
    assert_eq!(
        browser.text("main .error").as_deref(),
        Some("Only an admin may do this.")
    );
    browser.goto(&format!("{base}/disks/win10"));
    assert_eq!(browser.text("#versions form"), None, "no edit, no delete");
    assert!(
        browser.text("#versions .downloads a").is_some(),
        "downloads stay"
    );
}
