//! The client binary's local behaviour, without a server: show, clear-url, bad input.

use std::process::{Command, Output, Stdio};

fn client(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotate-client"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("HOTATE_URL")
        .env_remove("HOTATE_USER")
        .env_remove("HOTATE_PASSWORD")
        .env("LANG", "C")
        .env_remove("LC_ALL")
        .stdin(Stdio::null())
        .output()
        .expect("run hotate-client")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn show_and_clear_url_without_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let out = client(dir.path(), &["update", "show"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        "No update in progress on this terminal."
    );
    let out = client(dir.path(), &["--lang", "ja", "update", "show"]);
    assert_eq!(stdout(&out).trim(), "端末側更新中ではありません");

    std::fs::write(dir.path().join("server-url"), "http://127.0.0.1:9\n").unwrap();
    let out = client(dir.path(), &["update", "clearUrl"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "The cached server URL is cleared.");
    assert!(!dir.path().join("server-url").exists());
    let out = client(dir.path(), &["update", "clear-url"]);
    assert_eq!(stdout(&out).trim(), "No server URL is cached.");
}

#[test]
fn bad_local_input_exits_2_and_missing_start_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    // No terminal.toml.
    let out = client(dir.path(), &["update", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("terminal.toml"));
    let out = client(dir.path(), &["--lang", "ja", "update", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("terminal.toml を読み込めません"),
        "{}",
        stderr(&out)
    );
    // Bad flags.
    assert_eq!(
        client(dir.path(), &["--lang", "fr", "update", "show"])
            .status
            .code(),
        Some(2)
    );
    let out = client(dir.path(), &["update", "finish", "--limit-rate", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    // Finish and cancel without start.
    for cmd in ["finish", "cancel"] {
        let out = client(dir.path(), &["update", cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("run `hotate-client update start` first"),
            "{}",
            stderr(&out)
        );
    }
}
