//! The client on a pseudo-terminal: prompts answered, the password shown as `*`, the
//! progress bar and the lines after it.

use super::*;

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
