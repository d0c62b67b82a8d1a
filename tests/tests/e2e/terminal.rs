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
