//! What the terminal is refused, and how it is told (English and Japanese): an old
//! booted version, a wrong password, a second terminal, a missing image; and cancel.

use super::*;

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

    let other = s.site.terminal(s.dir.path(), "PC-002", &s.pair.updated);
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

/// A log that goes to a file or a pipe (a service's journal) is plain text: no colour
/// codes, which the terminal would read but a file keeps as noise.
#[test]
fn logs_into_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(hotate_tests::harness::bin("hotate-server"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["user", "add", "teacher"])
        .env("HOTATE_PASSWORD", PASSWORD)
        .env("HOTATE_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run hotate-server");
    assert_ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("user added"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
}

/// A password too short to resist guessing is refused, with the minimum said; nothing
/// is added.
#[test]
fn a_short_password_is_refused_with_the_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let add = |password: &str| {
        std::process::Command::new(hotate_tests::harness::bin("hotate-server"))
            .arg("--data")
            .arg(&data)
            .args(["user", "add", "teacher"])
            .env("HOTATE_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server")
    };
    let short = add("abc");
    assert!(!short.status.success());
    assert!(
        text(&short).contains("a password needs at least 8 characters; this one has 3"),
        "{}",
        text(&short)
    );
    assert!(!admin_ok(&data, &["user", "list"]).contains("teacher"));
    assert_ok(&add("eight-ch"));
    assert!(admin_ok(&data, &["user", "list"]).contains("teacher"));
}

/// `--help` shows what each command takes: `--json` only where it changes the output,
/// and the formats `disk import` reads.
#[test]
fn the_admin_commands_help_shows_what_each_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = |args: &[&str]| {
        let out = hotate_tests::harness::admin(dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let serve = help(&["serve", "--help"]);
    assert!(!serve.contains("--json"), "{serve}");
    assert!(serve.contains("--public-metrics"), "{serve}");
    assert!(help(&["disk", "list", "--help"]).contains("--json"));
    let import = help(&["disk", "import", "--help"]);
    assert!(
        import.contains("qcow2") && import.contains("VHDX"),
        "{import}"
    );
}

/// The admin commands speak Japanese under a Japanese locale or `--lang ja`: their
/// reports, and their refusals in the words the terminal reads too.
#[test]
fn the_admin_commands_speak_japanese_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let admin = |lang: &str, args: &[&str]| {
        let out = std::process::Command::new(hotate_tests::harness::bin("hotate-server"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("HOTATE_PASSWORD", PASSWORD)
            .env("LANG", lang)
            .env_remove("LC_ALL")
            .output()
            .expect("run hotate-server");
        (out.status.code(), text(&out))
    };
    let (code, said) = admin("ja_JP.UTF-8", &["disk", "list"]);
    assert_eq!(code, Some(1));
    assert!(
        said.contains("Hotate のデータディレクトリがありません"),
        "{said}"
    );
    let (code, said) = admin("ja_JP.UTF-8", &["user", "add", "chief"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("ユーザー chief を追加しました (管理者)。"),
        "{said}"
    );
    let (_, said) = admin("C", &["--lang", "ja", "disk", "versions", "nope"]);
    assert!(
        said.contains("エラー: ManageServer にディスク nope がありません。"),
        "{said}"
    );
    assert!(
        said.contains("unknown disk nope"),
        "the English account stays for logs: {said}"
    );
    let (_, said) = admin("ja_JP.UTF-8", &["--lang", "en", "disk", "versions", "nope"]);
    assert!(said.starts_with("error: unknown disk nope"), "{said}");

    // Help and usage errors in Japanese, English under another locale.
    for args in [
        &["--help"][..],
        &["disk", "import", "--help"],
        &["version", "delete", "--help"],
        &["serve", "--help"],
    ] {
        let (code, help) = admin("ja_JP.UTF-8", args);
        assert_eq!(code, Some(0), "{args:?}: {help}");
        assert!(
            help.contains("使い方") && help.contains("ヘルプを表示します"),
            "{args:?}: {help}"
        );
        for english in ["Usage:", "Options:", "Commands:", "Print help", "Disk name"] {
            assert!(!help.contains(english), "{args:?} says {english:?}: {help}");
        }
    }
    let (_, help) = admin("C", &["--lang", "ja", "disk", "export", "--help"]);
    assert!(help.contains("書き出すイメージファイル"), "{help}");
    let (code, said) = admin("ja_JP.UTF-8", &["disk", "imprt"]);
    assert_eq!(code, Some(2));
    assert!(said.contains("エラー: 不明なコマンド imprt"), "{said}");
    let (code, said) = admin("C", &["disk", "imprt"]);
    assert_eq!(code, Some(2));
    assert!(said.contains("unrecognized subcommand 'imprt'"), "{said}");

    // The admin's own refusals in their words, not a generic "rejected".
    let (code, said) = admin("ja_JP.UTF-8", &["user", "add", "chief"]);
    assert_eq!(code, Some(1));
    assert!(
        said.contains("エラー: ユーザー chief はすでに存在します。"),
        "{said}"
    );
    let image = dir.path().join("small.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).expect("write image");
    let image = image.to_str().expect("utf-8 path");
    let (code, said) = admin("ja_JP.UTF-8", &["disk", "import", "win10", image]);
    assert_eq!(code, Some(0), "{said}");
    let (_, listing) = admin("C", &["--json", "disk", "versions", "win10"]);
    let versions: serde_json::Value = serde_json::from_str(&listing).expect("json listing");
    let latest = versions[0]["id"].as_str().expect("a version id").to_owned();
    let (code, said) = admin("ja_JP.UTF-8", &["version", "delete", "win10", &latest]);
    assert_eq!(code, Some(1));
    assert!(
        said.contains(&format!(
            "エラー: バージョン {latest} はディスクの最新バージョンで、端末が起動に使用しています。新しいバージョンができてから削除してください。"
        )),
        "{said}"
    );
    assert!(!said.contains("不正"), "no generic refusal: {said}");
}
