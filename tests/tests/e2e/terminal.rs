//! What a user of the terminal hits at once: output into a closed pipe, a mistyped
//! server URL.

use std::process::Command;

use super::*;
use hotate_tests::harness::bin;

/// Runs `command` with its stdout a pipe whose reading end is already closed, as in
/// `command | head -1` once `head` has gone; returns its stderr.
fn into_a_closed_pipe(mut command: Command) -> String {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = command
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let s = setup(1 << 20, 40);
    let show = into_a_closed_pipe(s.terminal.client(&["update", "show"]));
    assert!(!show.contains("panicked"), "{show}");
    let mut list = Command::new(bin("hotate-server"));
    list.arg("--data").arg(&s.site.data).args(["disk", "list"]);
    let listed = into_a_closed_pipe(list);
    assert!(!listed.contains("panicked"), "{listed}");
}

#[test]
fn a_mistyped_url_is_not_cached() {
    let s = setup(1 << 20, 41);
    let wrong = s
        .terminal
        .run(&["--url", "http://127.0.0.1:1", "update", "start"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    // Nothing was cached: without a URL the next command asks for one.
    let again = s.terminal.run(&["update", "start"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("URL"), "{}", text(&again));
    // A server that answered is cached.
    s.start_update();
    assert_ok(&s.terminal.run(&["update", "cancel"]));
}

/// `update start` checks the differential disk before it reserves anything: a missing
/// one is a clear error (exit 2), the disk stays free and the write cache unchanged.
#[test]
fn start_refuses_a_missing_image_before_reserving() {
    let s = setup(1 << 20, 42);
    let missing = Terminal {
        image: s.dir.path().join("no-such.img"),
        ..s.terminal.clone()
    };
    missing.write_config(&s.site.disk_id, &s.site.first_version, "restore");
    let out = missing.run(&["--url", &s.server.url(), "update", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no-such.img"), "{}", text(&out));
    assert!(s.site.updates().is_empty(), "nothing reserved");
    assert_eq!(missing.write_cache(), "restore");
}

/// A `disk_id` the server does not know points at `terminal.toml`, not at a server
/// command.
#[test]
fn an_unknown_disk_id_says_to_check_terminal_toml() {
    let s = setup(1 << 20, 43);
    s.terminal.write_config(
        "00000000-0000-4000-8000-000000000000",
        &s.site.first_version,
        "restore",
    );
    let out = s
        .terminal
        .run(&["--url", &s.server.url(), "update", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("terminal.toml") && !text(&out).contains("hotate-server"),
        "{}",
        text(&out)
    );
}

/// A URL that answers HTTP/1 (a web server) says so, not "h2 protocol error".
#[test]
fn a_web_server_at_the_url_is_told_apart() {
    let s = setup(1 << 20, 44);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let out = s.terminal.run(&["--url", &url, "update", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("web server (HTTP/1)") && !text(&out).contains("h2 protocol"),
        "{}",
        text(&out)
    );
}

/// A rate-limited finish with plain output (a log, WinPE's redirected console): a
/// `N% complete... (X MB / Y MB)` line at least every 5 s, its percentage within 15
/// points of the share of the finish's time gone, and nothing after the 100% line.
#[test]
fn plain_progress_follows_the_time_of_a_rate_limited_finish() {
    use std::io::BufRead;
    let s = setup_changing(32 << 20, 25, 45);
    s.start_update();
    let mut finish = s
        .terminal
        .client(&["update", "finish", "--limit-rate", "512k"])
        .env("HOTATE_LOG", "hotate_client::progress=trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("finish");
    let started = Instant::now();
    let stdout = std::io::BufReader::new(finish.stdout.take().expect("stdout"));
    let lines: Vec<(f64, String)> = stdout
        .lines()
        .map(|line| (started.elapsed().as_secs_f64(), line.expect("line")))
        .collect();
    let out = finish.wait_with_output().expect("finish");
    assert!(out.status.success(), "{lines:?}\n{}", text(&out));
    let progress: Vec<(f64, u64, &str)> = lines
        .iter()
        .filter_map(|(at, line)| {
            let pct = line.split_once("% complete... (")?.0.parse().ok()?;
            Some((*at, pct, line.as_str()))
        })
        .collect();
    let (first, end) = (progress[0].0, progress.last().expect("lines").0);
    assert_eq!(progress.last().expect("lines").1, 100, "{lines:?}");
    assert!(end - first > 3.0, "the finish was rate-limited: {lines:?}");
    for pair in progress.windows(2) {
        assert!(pair[1].0 - pair[0].0 <= 5.5, "a line every 5 s: {lines:?}");
    }
    for (at, pct, line) in &progress[..progress.len() - 1] {
        let gone = 100.0 * (at - first) / (end - first);
        if at - first >= 2.0 {
            assert!(
                (*pct as f64 - gone).abs() <= 15.0,
                "{line} at {gone:.0}% of the time: {lines:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let after = lines
        .iter()
        .skip_while(|(_, line)| !line.starts_with("100% complete"))
        .skip(1);
    assert!(
        after.clone().all(|(_, line)| !line.contains("% complete")),
        "nothing drawn after 100%: {lines:?}"
    );
}

/// `update cancel` asks no user and no password (the manual shows none): the secret
/// `update start` kept, owner-only, cancels the update on the server.
#[test]
fn a_terminal_cancels_its_update_without_credentials() {
    let s = setup(1 << 20, 46);
    s.start_update();
    let secret = s.terminal.state.join("cancel.secret");
    let kept = std::fs::read_to_string(&secret).expect("secret kept");
    assert_eq!(kept.trim().len(), 64, "256 bits");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret)
            .expect("secret")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    let out = s
        .terminal
        .client(&["update", "cancel"])
        .env_remove("HOTATE_USER")
        .env_remove("HOTATE_PASSWORD")
        .output()
        .expect("cancel");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.site.updates()[0]["state"], "cancelled");
    assert_eq!(s.terminal.write_cache(), "restore");
    assert!(!secret.exists(), "cleared with the update");
    assert!(!text(&out).contains(&kept), "the secret is never shown");
}

/// Under `--lang ja` the help of every command and an argument error are Japanese.
#[test]
fn japanese_help_and_argument_errors() {
    let s = setup(1 << 20, 47);
    for args in [
        &["--lang", "ja", "--help"][..],
        &["--lang", "ja", "update", "--help"],
        &["--lang=ja", "update", "finish", "--help"],
        &["--lang", "ja", "update", "cancel", "--help"],
        &["--lang", "ja", "bench", "--help"],
    ] {
        let out = s.terminal.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let help = text(&out);
        assert!(
            help.contains("使い方") && help.contains("ヘルプを表示します"),
            "{args:?}: {help}"
        );
        for english in ["Usage:", "Options:", "Commands:", "Print help"] {
            assert!(!help.contains(english), "{args:?} says {english:?}: {help}");
        }
    }
    let wrong = s.terminal.run(&["--lang", "ja", "update", "frobnicate"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        text(&wrong).contains("不明なコマンド frobnicate"),
        "{}",
        text(&wrong)
    );
    let english = s.terminal.run(&["--lang", "en", "--help"]);
    assert!(text(&english).contains("Usage:"), "{}", text(&english));
}

/// A refusal from the server reaches the user in Japanese: the server names it from the
/// wire's typed table, the client words it.
#[test]
fn a_server_refusal_is_worded_in_japanese() {
    let s = setup(1 << 20, 48);
    s.start_update();
    let second = s.site.terminal(s.dir.path(), "PC-002", &s.pair.updated);
    let busy = second.run(&["--lang", "ja", "--url", &s.server.url(), "update", "start"]);
    assert_eq!(busy.status.code(), Some(1), "{}", text(&busy));
    assert!(
        text(&busy).contains("端末 PC-001 がこのディスクを更新中のため"),
        "{}",
        text(&busy)
    );
    let wrong = second
        .client(&["--lang", "ja", "--url", &s.server.url(), "update", "start"])
        .env("HOTATE_PASSWORD", "wrong")
        .output()
        .expect("start");
    assert!(
        text(&wrong).contains("ユーザー名またはパスワードが正しくありません"),
        "{}",
        text(&wrong)
    );
}

/// A connection that fails says why in the user's language: refused, or a name that
/// does not resolve.
#[test]
fn connection_failures_say_why_in_japanese() {
    let s = setup(1 << 20, 49);
    let refused = s.terminal.run(&[
        "--lang",
        "ja",
        "--url",
        "http://127.0.0.1:1",
        "update",
        "start",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("接続が拒否されました"),
        "{}",
        text(&refused)
    );
    let unknown = s.terminal.run(&[
        "--lang",
        "ja",
        "--insecure",
        "--url",
        "http://no-such-host.invalid:30806",
        "update",
        "start",
    ]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("名前 no-such-host.invalid が見つかりません"),
        "{}",
        text(&unknown)
    );
}

/// A server that takes the connection but never answers (a hung machine, a firewall
/// that swallows packets): the client gives up in bounded time and says so.
#[test]
fn a_silent_server_times_out_in_both_languages() {
    let s = setup(1 << 20, 53);
    // Bound and listening but never accepting: the kernel completes the handshake and
    // then nothing is ever said.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let run = |lang: &'static str| {
        let (terminal, url) = (&s.terminal, &url);
        move || {
            let started = std::time::Instant::now();
            let out = terminal.run(&["--lang", lang, "--url", url, "update", "start"]);
            (started.elapsed(), out)
        }
    };
    std::thread::scope(|scope| {
        let en = scope.spawn(run("en"));
        let ja = scope.spawn(run("ja"));
        for (said, waited) in [("no answer in time", en), ("時間内に応答がありません", ja)]
        {
            let (took, out) = waited.join().expect("run");
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains(said), "{said}: {}", text(&out));
            assert!(took < Duration::from_secs(30), "gave up after {took:?}");
        }
    });
}
