//! End to end: the real `hotate-server` and `hotate-client` on loopback, temporary dirs,
//! and every new version exported and compared byte for byte.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::{Frame, Hash};
use hotate_tests::harness::{PASSWORD, Server, Site, Terminal, USER, admin, admin_ok, text};
use hotate_tests::images::{self, ImagePair};

#[path = "e2e/bench.rs"]
mod bench;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/durability.rs"]
mod durability;
#[path = "e2e/formats.rs"]
mod formats;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/soak.rs"]
mod soak;
#[path = "e2e/store.rs"]
mod store;
#[path = "e2e/terminal.rs"]
mod terminal;

const BLOCK: u32 = 64 << 10;

struct Setup {
    dir: tempfile::TempDir,
    pair: ImagePair,
    site: Site,
    server: Server,
    terminal: Terminal,
}

impl Setup {
    /// `update start` on the terminal, which then knows the server's URL.
    fn start_update(&self) {
        assert_ok(
            &self
                .terminal
                .run(&["--url", &self.server.url(), "update", "start"]),
        );
    }
}

/// A site with a synthetic disk of `size` bytes, a server and terminal PC-001 booted from
/// its first version, whose differential disk is the updated image.
fn setup(size: u64, seed: u64) -> Setup {
    setup_changing(size, 20, seed)
}

fn setup_changing(size: u64, change_percent: u32, seed: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), size, change_percent, seed);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let server = Server::start(&site.data);
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        &site.disk_id,
        &site.first_version,
        &pair.updated,
    );
    Setup {
        dir,
        pair,
        site,
        server,
        terminal,
    }
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}:\n{}",
        out.status.code(),
        text(out)
    );
}

fn new_version(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("New version: "))
        .unwrap_or_else(|| panic!("no version in:\n{stdout}"))
        .to_owned()
}

/// Bytes the client reported sending ("sent X MB" in the summary), in bytes.
fn reported_sent(out: &std::process::Output) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let after = stdout.split(", sent ").nth(1).expect("summary line");
    after
        .split(' ')
        .next()
        .expect("number")
        .parse::<f64>()
        .expect("float")
        * 1e6
}

/// Bytes the blocks of `updated` that the server lacks would take sent whole, each
/// compressed on its own as the client does.
fn whole_chunk_bytes(base: &Path, updated: &Path, block: usize) -> usize {
    let base = std::fs::read(base).expect("base");
    let updated = std::fs::read(updated).expect("updated");
    let held: std::collections::HashSet<_> = base.chunks(block).map(Hash::of).collect();
    let mut sent = std::collections::HashSet::new();
    updated
        .chunks(block)
        .filter(|b| b.iter().any(|&x| x != 0))
        .filter(|b| !held.contains(&Hash::of(b)) && sent.insert(Hash::of(b)))
        .map(|b| {
            Frame::encode(bytes::Bytes::copy_from_slice(b), DEFAULT_ZSTD_LEVEL)
                .payload
                .len()
        })
        .sum()
}

/// Exports the latest version of disk `win10` and compares it with `image`.
fn assert_latest_is(site: &Site, scratch: &Path, image: &Path) {
    let exported = site.export("win10", None, &scratch.join("latest.img"));
    same_file(&exported, image);
}

fn same_file(a: &[u8], b: &Path) {
    let b = std::fs::read(b).expect("read image");
    assert!(
        a == b.as_slice(),
        "exported image differs from the updated image"
    );
}

#[test]
fn the_whole_flow_start_finish_export() {
    let s = setup(8 << 20, 1);
    let url = s.server.url();
    let start = s.terminal.run(&["--url", &url, "update", "start"]);
    assert_ok(&start);
    let out = String::from_utf8_lossy(&start.stdout);
    assert!(out.contains("Connected to the Manage Server."));
    assert!(out.ends_with("Update started.\n"), "{out}");
    assert_eq!(s.terminal.write_cache(), "non-restore");

    let show = s.terminal.run(&["update", "show"]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains(&s.site.disk_id));
    assert!(shown.contains("Write cache before:   restore"));

    // The URL is cached: finish needs no --url.
    let finish = s
        .terminal
        .run(&["update", "finish", "--comment", "Office 2024 を導入"]);
    assert_ok(&finish);
    let out = String::from_utf8_lossy(&finish.stdout);
    let transfer = &s.server.transfer;
    assert!(
        out.contains(&format!("Establishing session with {transfer}...")),
        "{out}"
    );
    assert!(out.contains(&format!("Session established with {transfer}.")));
    assert!(out.contains("100% complete... (8 MB / 8 MB)"), "{out}");
    assert!(out.contains("Update finished."));
    let version = new_version(&finish);
    assert_eq!(s.terminal.write_cache(), "restore");
    assert!(!s.terminal.state.join("update.toml").exists());
    let none = s.terminal.run(&["update", "show"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("No update in progress"));

    let exported = s
        .site
        .export("win10", Some(&version), &s.dir.path().join("v2.img"));
    same_file(&exported, &s.pair.updated);
    let first = s.site.export(
        "win10",
        Some(&s.site.first_version),
        &s.dir.path().join("v1.img"),
    );
    same_file(&first, &s.pair.base);
    let versions = hotate_tests::harness::admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(versions[1]["comment"], "Office 2024 を導入");
    assert_eq!(versions[1]["terminal"], "PC-001");
    assert_eq!(versions[1]["parent"], s.site.first_version.as_str());
}

#[test]
fn the_default_comment_and_a_non_restore_terminal_stay_non_restore() {
    let s = setup(2 << 20, 2);
    s.terminal
        .write_config(&s.site.disk_id, &s.site.first_version, "non-restore");
    s.start_update();
    assert_ok(&s.terminal.run(&["update", "finish"]));
    assert_eq!(
        s.terminal.write_cache(),
        "non-restore",
        "back to the mode before start"
    );
    let versions = hotate_tests::harness::admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(versions[1]["comment"], "Updated on terminal PC-001.");
}

#[test]
fn an_old_booted_version_is_refused_with_both_ids_in_english_and_japanese() {
    let s = setup(2 << 20, 3);
    let url = s.server.url();
    assert_ok(&s.terminal.run(&["--url", &url, "update", "start"]));
    let finish = s.terminal.run(&["update", "finish"]);
    assert_ok(&finish);
    let latest = new_version(&finish);

    // The terminal still boots the first version.
    let refused = s.terminal.run(&["update", "start"]);
    assert_eq!(refused.status.code(), Some(1));
    let expected = format!(
        "Cannot start the update: the terminal did not boot the latest version (latest={latest}, booted={})",
        s.site.first_version
    );
    assert!(text(&refused).contains(&expected), "{}", text(&refused));
    let ja = s.terminal.run(&["--lang", "ja", "update", "start"]);
    let expected = format!(
        "最新のバージョンで起動していないため、更新開始できません。(最新={latest}, 起動={})",
        s.site.first_version
    );
    assert!(text(&ja).contains(&expected), "{}", text(&ja));
    assert_eq!(
        s.terminal.write_cache(),
        "restore",
        "a refused start changes nothing"
    );
    assert!(!s.terminal.state.join("update.toml").exists());
}

#[test]
fn japanese_messages_follow_the_manual() {
    let s = setup(2 << 20, 4);
    let start = s
        .terminal
        .client(&["--url", &s.server.url(), "update", "start"])
        .env("LANG", "ja_JP.UTF-8")
        .output()
        .expect("run");
    assert_ok(&start);
    assert_eq!(
        String::from_utf8_lossy(&start.stdout),
        "ManageServer に接続しました。\n復元を無効に変更します。\n更新を開始しました。\n"
    );
    let show = s.terminal.run(&["--lang", "ja", "update", "show"]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.starts_with("端末側で更新中です。\n  ディスク ID:    "),
        "{shown}"
    );
    assert!(shown.contains("更新前の復元状態: 復元あり"));
    let finish = s.terminal.run(&["--lang", "ja", "update", "finish"]);
    assert_ok(&finish);
    let out = String::from_utf8_lossy(&finish.stdout);
    assert!(
        out.contains(&format!(
            "{} に対してセッションを確立します...",
            s.server.transfer
        )),
        "{out}"
    );
    assert!(out.contains("% 完了... ("));
    assert!(out.contains("Write Cache を復元モードに戻しました。"));
    assert!(out.contains("端末側の更新状態を解除しました。"));
    assert!(out.contains("更新完了しました。"));
    let versions = hotate_tests::harness::admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(versions[1]["comment"], "端末 PC-001 で更新しました。");
}

#[test]
fn wrong_password_unreachable_server_and_missing_inputs() {
    let s = setup(2 << 20, 5);
    let url = s.server.url();
    let wrong = s
        .terminal
        .client(&["--url", &url, "update", "start"])
        .env("HOTATE_PASSWORD", "nope")
        .output()
        .expect("run");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong).contains("wrong user name or password"),
        "{}",
        text(&wrong)
    );
    assert_eq!(s.terminal.write_cache(), "restore");

    let dead = s
        .terminal
        .run(&["--url", "http://127.0.0.1:9", "update", "start"]);
    assert_eq!(dead.status.code(), Some(1));
    assert!(
        text(&dead).contains("Cannot connect to the Manage Server at http://127.0.0.1:9"),
        "{}",
        text(&dead)
    );

    // No terminal to ask: each missing value names its flag or variable, at once.
    let _ = s.terminal.run(&["update", "clear-url"]);
    let started = Instant::now();
    let no_url = s.terminal.run(&["update", "start"]);
    assert_eq!(no_url.status.code(), Some(2));
    assert!(
        text(&no_url).contains("--url URL or set HOTATE_URL"),
        "{}",
        text(&no_url)
    );
    let no_user = s
        .terminal
        .client(&["--url", &url, "update", "start"])
        .env_remove("HOTATE_USER")
        .output()
        .expect("run");
    assert_eq!(no_user.status.code(), Some(2));
    assert!(text(&no_user).contains("HOTATE_USER"));
    let no_password = s
        .terminal
        .client(&["--url", &url, "update", "start"])
        .env_remove("HOTATE_PASSWORD")
        .output()
        .expect("run");
    assert_eq!(no_password.status.code(), Some(2));
    assert!(text(&no_password).contains("HOTATE_PASSWORD"));
    assert!(started.elapsed() < Duration::from_secs(20), "never a hang");

    // The password from stdin works.
    let mut child = s
        .terminal
        .client(&["--url", &url, "--password-stdin", "update", "start"])
        .env_remove("HOTATE_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"PasSw0rd\n")
        .expect("write");
    assert_ok(&child.wait_with_output().expect("wait"));
}

#[test]
fn start_twice_another_terminal_and_cancel() {
    let s = setup(2 << 20, 6);
    let url = s.server.url();
    assert_ok(&s.terminal.run(&["--url", &url, "update", "start"]));
    let twice = s.terminal.run(&["update", "start"]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        text(&twice).contains("already in progress"),
        "{}",
        text(&twice)
    );

    let other = Terminal::new(
        s.dir.path(),
        "PC-002",
        &s.site.disk_id,
        &s.site.first_version,
        &s.pair.updated,
    );
    let busy = other.run(&["--url", &url, "update", "start"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy).contains("terminal PC-001 is already updating this disk"),
        "{}",
        text(&busy)
    );
    assert_eq!(other.write_cache(), "restore");

    let cancel = s.terminal.run(&["update", "cancel"]);
    assert_ok(&cancel);
    assert!(String::from_utf8_lossy(&cancel.stdout).ends_with("Update cancelled.\n"));
    assert_eq!(s.terminal.write_cache(), "restore");
    assert!(!s.terminal.state.join("update.toml").exists());
    assert_eq!(s.site.updates()[0]["state"], "cancelled");

    // The disk is free for the other terminal now.
    assert_ok(&other.run(&["update", "start"]));
    assert_ok(&other.run(&["update", "finish"]));
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

#[test]
fn cancel_with_the_server_down_restores_the_terminal_anyway() {
    let s = setup(2 << 20, 7);
    s.start_update();
    s.server.stop();
    let cancel = s.terminal.run(&["update", "cancel"]);
    assert_ok(&cancel);
    assert!(
        text(&cancel).contains("Warning: the server could not release the reservation"),
        "{}",
        text(&cancel)
    );
    assert_eq!(s.terminal.write_cache(), "restore");
    assert!(!s.terminal.state.join("update.toml").exists());
}

#[test]
fn a_missing_or_short_image_is_refused_and_nothing_is_lost() {
    let s = setup(2 << 20, 8);
    s.start_update();
    let saved = std::fs::read(&s.pair.updated).expect("read");
    std::fs::rename(&s.pair.updated, s.dir.path().join("moved.img")).expect("move");
    let missing = s.terminal.run(&["update", "finish"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("does not exist"),
        "{}",
        text(&missing)
    );

    std::fs::write(&s.pair.updated, &saved[..saved.len() - 4096]).expect("short");
    let short = s.terminal.run(&["update", "finish"]);
    assert_eq!(short.status.code(), Some(2));
    assert!(text(&short).contains("(truncated?)"), "{}", text(&short));
    let short_ja = s.terminal.run(&["--lang", "ja", "update", "finish"]);
    assert_eq!(short_ja.status.code(), Some(2));
    assert!(
        text(&short_ja).contains("(途中で切れていませんか?)"),
        "{}",
        text(&short_ja)
    );

    // The update is still in progress; with the image back, finish works.
    assert_eq!(s.terminal.write_cache(), "non-restore");
    std::fs::write(&s.pair.updated, &saved).expect("restore image");
    let finish = s.terminal.run(&["update", "finish"]);
    assert_ok(&finish);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

/// Waits until the server has counted at least `bytes` received for the live update.
fn wait_for_received(site: &Site, bytes: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        // The live update (several may have started within the same second).
        let updates = site.updates();
        let live = updates
            .iter()
            .find(|u| u["state"] == "uploading" || u["state"] == "reserved")
            .or(updates.last());
        let received = live.and_then(|u| u["bytes_received"].as_u64()).unwrap_or(0);
        if received >= bytes || Instant::now() > deadline {
            return received;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `update finish` paced at `rate` and returns once the server has stored part of
/// the upload, the client still running.
fn finish_in_background(terminal: &Terminal, site: &Site, rate: &str) -> std::process::Child {
    let mut child = terminal
        .client(&["update", "finish", "--limit-rate", rate])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The server counts stored bytes every 16 chunks.
    let received = wait_for_received(site, 1, Duration::from_secs(30));
    if child.try_wait().expect("poll").is_some() {
        let out = child.wait_with_output().expect("output");
        panic!(
            "the client ended before it could be interrupted:\n{}",
            text(&out)
        );
    }
    assert!(received > 0, "nothing was stored while the client ran");
    child
}

#[test]
fn a_killed_finish_resumes_and_sends_only_what_remained() {
    // Random content: what is sent is what changed, so the arithmetic is exact.
    let s = setup_changing(24 << 20, 50, 9);
    s.start_update();
    let mut slow = finish_in_background(&s.terminal, &s.site, "1m");
    let before = wait_for_received(&s.site, 1, Duration::ZERO);
    slow.kill().expect("kill");
    let _ = slow.wait();
    std::thread::sleep(Duration::from_millis(300));
    let stored_first = s.site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("bytes");
    assert!(stored_first >= before && stored_first > 0);

    let resumed = s.terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    let out = String::from_utf8_lossy(&resumed.stdout);
    assert!(out.contains("Resuming: the server already holds"), "{out}");
    let total = s.site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("bytes");
    let remained = total - stored_first;
    let sent_second = reported_sent(&resumed);
    // Within the summary's rounding, plus the few chunks that were on the wire at the kill.
    let slack = 8.0 * f64::from(BLOCK) + 0.05e6;
    assert!(
        sent_second <= remained as f64 + slack,
        "sent {sent_second} of {remained} remaining"
    );
    assert!(
        sent_second < total as f64,
        "the second run did not start over"
    );
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

#[test]
fn a_server_restart_during_the_upload_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 24 << 20, 50, 10);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    // Fixed ports, so the client's cached URL still works after the restart.
    let probe = Server::start(&site.data);
    let (control, transfer) = (probe.control.clone(), probe.transfer.clone());
    probe.stop();
    let args = [
        "--listen",
        control.as_str(),
        "--transfer-listen",
        transfer.as_str(),
    ];
    let server = Server::start_with(&site.data, &args);
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        &site.disk_id,
        &site.first_version,
        &pair.updated,
    );
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    let slow = finish_in_background(&terminal, &site, "1m");
    drop(server); // killed, mid-upload
    let failed = slow.wait_with_output().expect("wait");
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("The connection to the Manage Server was lost")
            && text(&failed).contains("Run `hotate-client update finish` again to resume"),
        "{}",
        text(&failed)
    );
    assert_eq!(
        terminal.write_cache(),
        "non-restore",
        "nothing is undone by a failure"
    );

    let server = Server::start_with(&site.data, &args);
    let resumed = terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("Resuming"));
    assert_latest_is(&site, dir.path(), &pair.updated);
    server.stop();
}

/// The manual's recovery path: an administrator's 「更新中断」 during a rate-limited
/// finish stops it within seconds, the client says so and what to do, the update is back
/// to `reserved`, and the terminal's next `update finish` uploads and commits.
#[test]
fn an_aborted_upload_is_reserved_again_and_the_next_finish_commits() {
    let s = setup(8 << 20, 11);
    s.start_update();
    let finish = finish_in_background(&s.terminal, &s.site, "256k");
    let aborted_at = Instant::now();
    let said = admin_ok(&s.site.data, &["update", "abort", "win10"]);
    assert!(said.contains("update finish"), "{said}");
    let out = finish.wait_with_output().expect("finish");
    assert!(
        aborted_at.elapsed() < Duration::from_secs(10),
        "the upload went on after the abort"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("An administrator interrupted the upload")
            && text(&out).contains("update finish` again"),
        "{}",
        text(&out)
    );
    assert_eq!(s.site.updates()[0]["state"], "reserved");
    assert_eq!(
        s.terminal.write_cache(),
        "non-restore",
        "the install is kept"
    );

    let again = s.terminal.run(&["update", "finish"]);
    assert_ok(&again);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
    assert_eq!(s.terminal.write_cache(), "restore");
}

/// An administrator's 「更新取消」 (`update cancel DISK`) ends the update for good: the
/// terminal's finish says so and what to do, and its cancel still restores it.
#[test]
fn an_admin_cancel_ends_the_update_and_the_terminal_still_restores() {
    let s = setup(4 << 20, 13);
    s.start_update();
    let said = admin_ok(&s.site.data, &["update", "cancel", "win10"]);
    assert!(said.contains("Cancelled update"), "{said}");
    assert_eq!(s.site.updates()[0]["state"], "cancelled");
    let finish = s.terminal.run(&["update", "finish"]);
    assert_eq!(finish.status.code(), Some(1), "{}", text(&finish));
    assert!(
        text(&finish).contains("cancelled on the server")
            && text(&finish).contains("update cancel"),
        "{}",
        text(&finish)
    );
    let ja = s.terminal.run(&["--lang", "ja", "update", "finish"]);
    assert!(text(&ja).contains("更新取消"), "{}", text(&ja));
    assert_ok(&s.terminal.run(&["update", "cancel"]));
    assert_eq!(s.terminal.write_cache(), "restore");
    let show = s.terminal.run(&["update", "show"]);
    assert!(
        text(&show).contains("No update in progress"),
        "{}",
        text(&show)
    );
}

#[test]
fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 4 << 20, 20, 12);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let certs = dir.path().join("certs");
    admin_ok(
        &site.data,
        &[
            "cert",
            "generate",
            "--out",
            certs.to_str().expect("path"),
            "--host",
            "localhost",
            "127.0.0.1",
        ],
    );
    let cert = certs.join("cert.pem");
    let key = certs.join("key.pem");
    // The key is the owner's alone, the data dir and metadata too; a pair is not
    // overwritten without --force.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&site.data), 0o700);
        assert_eq!(mode(&site.data.join("meta.sqlite")), 0o600);
        let first_key = std::fs::read(&key).expect("key");
        let again = admin(
            &site.data,
            &[
                "cert",
                "generate",
                "--out",
                certs.to_str().expect("path"),
                "--host",
                "localhost",
            ],
        );
        assert!(!again.status.success());
        assert!(text(&again).contains("--force"), "{}", text(&again));
        assert_eq!(
            std::fs::read(&key).expect("key"),
            first_key,
            "the key was kept"
        );
    }
    let server = Server::start_with(
        &site.data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--transfer-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
    );
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        &site.disk_id,
        &site.first_version,
        &pair.updated,
    );
    let url = format!("https://{}", server.control);
    // Without the CA the certificate is not trusted.
    let untrusted = terminal.run(&["--url", &url, "update", "start"]);
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains("the TLS handshake failed")
            && text(&untrusted).contains("`--ca FILE`"),
        "{}",
        text(&untrusted)
    );
    let untrusted = terminal.run(&["--lang", "ja", "--url", &url, "update", "start"]);
    assert!(
        text(&untrusted).contains("TLS の確認に失敗しました"),
        "{}",
        text(&untrusted)
    );
    let ca = cert.to_str().expect("path");
    assert_ok(&terminal.run(&["--url", &url, "--ca", ca, "update", "start"]));
    let finish = terminal.run(&["--ca", ca, "update", "finish"]);
    assert_ok(&finish);
    assert_latest_is(&site, dir.path(), &pair.updated);
    // The console shares the port and its TLS (HTTP/2 by ALPN); its cookie is Secure.
    let found = hotate_tests::has_command("curl");
    if !hotate_tests::needs("the TLS test", "curl, as an HTTP/2 client", found) {
        return;
    }
    let login = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--cacert",
            ca,
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-d",
            &format!(r#"{{"user":"{USER}","password":"{PASSWORD}"}}"#),
        ])
        .arg(format!("{url}/api/v1/login"))
        .output()
        .expect("run curl");
    let reply = String::from_utf8_lossy(&login.stdout);
    assert!(reply.starts_with("HTTP/2 200"), "{reply}");
    assert!(
        reply.contains("HttpOnly; SameSite=Strict; Secure"),
        "{reply}"
    );
}

#[test]
fn a_real_filesystem_update_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::pair(dir.path(), 64 << 20, 10, 13);
    let site = Site::new(dir.path(), "ubuntu", &pair.base, 1 << 20);
    let server = Server::start(&site.data);
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        &site.disk_id,
        &site.first_version,
        &pair.updated,
    );
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    let finish = terminal.run(&["update", "finish"]);
    assert_ok(&finish);
    let exported = site.export("ubuntu", None, &dir.path().join("latest.img"));
    same_file(&exported, &pair.updated);
    // Only the changes travel: far less than the image, and a changed block only as the
    // pages that differ from the block it replaces.
    assert!(
        reported_sent(&finish) < 0.5 * (64 << 20) as f64,
        "{} ({})",
        text(&finish),
        pair.kind
    );
    let whole = whole_chunk_bytes(&pair.base, &pair.updated, 1 << 20);
    assert!(
        reported_sent(&finish) < 0.8 * whole as f64,
        "{} vs {whole} bytes as whole chunks ({})",
        text(&finish),
        pair.kind
    );
    // Admin output still works on the data dir.
    assert!(admin(&site.data, &["disk", "list"]).status.success());
}

#[test]
fn ctrl_c_stops_a_finish_cleanly_and_says_how_to_resume() {
    let s = setup_changing(24 << 20, 50, 14);
    s.start_update();
    let slow = finish_in_background(&s.terminal, &s.site, "1m");
    let status = std::process::Command::new("kill")
        .args(["-INT", &slow.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = slow.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("Upload interrupted. Run `hotate-client update finish` again to resume"),
        "{}",
        text(&out)
    );
    assert_eq!(s.terminal.write_cache(), "non-restore");
    let resumed = s.terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("Resuming"));
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

#[test]
fn sigterm_stops_the_server_even_during_an_upload() {
    let s = setup_changing(24 << 20, 50, 15);
    s.start_update();
    let slow = finish_in_background(&s.terminal, &s.site, "256k");
    let pid = s.server.pid();
    let server_control = s.server.control.clone();
    let started = Instant::now();
    s.server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the server did not stop on SIGTERM"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // The upload outlasts the grace period: the client is told, and resumes later.
    let out = slow.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Run `hotate-client update finish` again to resume"),
        "{}",
        text(&out)
    );
    let server = Server::start_with(
        &s.site.data,
        &[
            "--listen",
            &server_control,
            "--transfer-listen",
            "127.0.0.1:0",
        ],
    );
    let resumed = s.terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
    server.stop();
}

/// Runs the client in a pseudo-terminal, answering `prompts` in order; `None` (said) on
/// a machine without python3, which drives the terminal.
fn in_pty(
    terminal: &Terminal,
    prompts: &[(&str, &str)],
    args: &[&str],
) -> Option<std::process::Output> {
    let found = hotate_tests::has_command("python3");
    if !hotate_tests::needs(
        "a terminal test",
        "python3, to drive a pseudo-terminal",
        found,
    ) {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pty/answer.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script);
    for (prompt, answer) in prompts {
        cmd.args([prompt, answer]);
    }
    cmd.arg("--")
        .arg(hotate_tests::harness::bin("hotate-client"))
        .arg("--state-dir")
        .arg(&terminal.state)
        .args(args)
        .env_remove("HOTATE_USER")
        .env_remove("HOTATE_PASSWORD")
        .env_remove("HOTATE_URL")
        .env("LANG", "C");
    Some(cmd.output().expect("run python3 answer.py"))
}

#[test]
fn prompts_are_answered_on_a_terminal_and_the_password_is_hidden() {
    let s = setup(2 << 20, 16);
    let url = s.server.url();
    let Some(start) = in_pty(
        &s.terminal,
        &[
            ("Server URL: ", &url),
            ("User name: ", "coadmin"),
            ("Password: ", "PasSw0rd"),
        ],
        &["update", "start"],
    ) else {
        return;
    };
    let transcript = String::from_utf8_lossy(&start.stdout);
    assert!(start.status.success(), "{transcript}");
    assert!(
        transcript.contains("Enter the Manage Server URL (e.g. https://192.168.10.11:30806/).")
    );
    assert!(transcript.contains("Update started."), "{transcript}");
    assert!(
        !transcript.contains("PasSw0rd"),
        "the password was echoed:\n{transcript}"
    );
    assert!(
        transcript.contains("Password: ********\r\n"),
        "one `*` per character typed:\n{transcript:?}"
    );

    // The URL is cached now: finish asks only for the login and the comment.
    let Some(finish) = in_pty(
        &s.terminal,
        &[
            ("User name: ", "coadmin"),
            ("Password: ", "PasSw0rd"),
            ("Version comment", "Installed a typed comment"),
        ],
        &["update", "finish"],
    ) else {
        return;
    };
    let transcript = String::from_utf8_lossy(&finish.stdout);
    assert!(finish.status.success(), "{transcript}");
    assert!(
        !transcript.contains("Server URL: "),
        "asked for a cached URL:\n{transcript}"
    );
    assert!(transcript.contains("Update finished."));
    let versions = hotate_tests::harness::admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(versions[1]["comment"], "Installed a typed comment");
}

#[test]
fn a_finish_reaches_the_transfer_service_whatever_start_recorded() {
    let s = setup(4 << 20, 31);
    s.start_update();
    let record = s.terminal.state.join("update.toml");
    let kept = s.terminal.state.join("base.manifest");
    let recorded = std::fs::read_to_string(&record).expect("update.toml");
    let line = format!("transfer_url = \"http://{}\"", s.server.transfer);
    assert!(recorded.contains(&line), "{recorded}");
    let finish = || {
        s.terminal
            .client(&["update", "finish"])
            .env("HOTATE_LOG", "hotate_client=debug")
            .output()
            .expect("finish")
    };
    // Start kept the base manifest: the image is read while logging in, the transfer
    // connection opens meanwhile, and the login begins the upload.
    let manifest =
        hotate_engine::Manifest::decode(&std::fs::read(&kept).expect("base.manifest kept"))
            .expect("a manifest");
    let root = format!("base_root = \"{}\"", manifest.root());
    assert!(recorded.contains(&root), "{recorded}");
    let first = finish();
    assert_ok(&first);
    for said in [
        "kept at `update start`",
        "opened while logging in",
        "began with the login",
    ] {
        assert!(text(&first).contains(said), "{said}: {}", text(&first));
    }
    assert!(!kept.exists(), "cleared with the update");

    let start_again = || {
        let updates = s.site.updates();
        let booted = updates
            .last()
            .and_then(|u| u["new_version"].as_str())
            .expect("the last version");
        s.terminal.write_config(&s.site.disk_id, booted, "restore");
        s.start_update();
        assert!(kept.exists());
        std::fs::read_to_string(&record).expect("update.toml")
    };
    // A record naming a dead endpoint, then one naming none (written by an older
    // client): the finish asks the server and goes on.
    for replace in ["transfer_url = \"http://127.0.0.1:1\"", ""] {
        let recorded = start_again();
        let old = recorded
            .lines()
            .find(|l| l.starts_with("transfer_url"))
            .expect("transfer_url")
            .to_owned();
        std::fs::write(&record, recorded.replace(&old, replace)).expect("rewrite");
        let finish = finish();
        assert_ok(&finish);
        assert!(
            !text(&finish).contains("opened while logging in"),
            "{}",
            text(&finish)
        );
    }

    // No manifest kept: it is fetched while the upload begins.
    start_again();
    std::fs::remove_file(&kept).expect("remove base.manifest");
    let fetched = finish();
    assert_ok(&fetched);
    assert!(
        text(&fetched).contains("fetched while the upload began"),
        "{}",
        text(&fetched)
    );

    // A kept manifest that is whole but not the server's (its root recorded with it)
    // is refused and discarded, losing nothing; the next finish fetches the real one.
    let recorded = start_again();
    let mut wrong =
        hotate_engine::Manifest::decode(&std::fs::read(&kept).expect("kept")).expect("a manifest");
    let real_root = wrong.root();
    wrong
        .set(0, hotate_engine::Entry::Chunk(Hash::of(b"not the base")))
        .expect("block 0");
    std::fs::write(&kept, wrong.encode()).expect("write base.manifest");
    let recorded = recorded.replace(&real_root.to_string(), &wrong.root().to_string());
    std::fs::write(&record, recorded).expect("rewrite");
    for lang in ["en", "ja"] {
        let refused = s.terminal.run(&["--lang", lang, "update", "finish"]);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let expected = if lang == "en" {
            "does not match the server's. It has been discarded; run `update finish` again."
        } else {
            "サーバーのものと一致しません。破棄しました。"
        };
        assert!(text(&refused).contains(expected), "{}", text(&refused));
        assert!(!kept.exists(), "discarded");
        assert_eq!(s.terminal.write_cache(), "non-restore", "still updating");
        std::fs::write(&kept, wrong.encode()).expect("write base.manifest");
    }
    std::fs::remove_file(&kept).expect("remove base.manifest");
    assert_ok(&finish());
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

#[test]
fn on_a_terminal_every_message_after_the_bar_starts_its_own_line() {
    let s = setup_changing(16 << 20, 40, 47);
    s.start_update();
    let Some(finish) = in_pty(
        &s.terminal,
        &[("User name: ", "coadmin"), ("Password: ", "PasSw0rd")],
        &["update", "finish", "--limit-rate", "2m", "--comment", "bar"],
    ) else {
        return;
    };
    let transcript = String::from_utf8_lossy(&finish.stdout);
    assert!(finish.status.success(), "{transcript}");
    let done = transcript
        .find("100% complete...")
        .unwrap_or_else(|| panic!("the bar reached 100%:\n{transcript:?}"));
    assert!(
        !transcript[done + "100% complete".len()..].contains("% complete"),
        "a bar drawn after 100%:\n{transcript:?}"
    );
    for said in [
        "Setting the write cache back to restore mode...",
        "Update finished.",
        "New version: ",
    ] {
        let line = transcript
            .split('\n')
            .find(|line| line.contains(said))
            .unwrap_or_else(|| panic!("{said}:\n{transcript:?}"));
        assert!(
            line.starts_with(said),
            "{said:?} shares its line with the bar: {line:?}"
        );
    }
}
