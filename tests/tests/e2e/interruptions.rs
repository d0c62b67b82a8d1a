//! Interruptions lose nothing: a killed finish, a server restart, an admin's abort or
//! cancel, Ctrl-C on the terminal, SIGTERM on the server.

use super::*;

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

/// An install that repeats files, interrupted after its first part: the resumed finish
/// copies the pages the first session sent instead of sending them again, so the two
/// sessions together send what one uninterrupted upload sends.
#[test]
fn a_resumed_finish_copies_the_pages_an_earlier_session_sent() {
    let fs = images::FileSystem::Ext4;
    let tools = fs.tools().iter().all(|tool| has_command(tool));
    let test = "a_resumed_finish_copies_the_pages_an_earlier_session_sent";
    if !hotate_tests::needs(test, &fs.tools().join(" and "), tools) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::fs_pair(fs, images::Repeats::Runtimes, dir.path(), 128 << 20, 40, 5)
        .expect("the install pair");
    let site = Site::new(dir.path(), "lab", &pair.base, 1 << 20);
    let server = Server::start(&site.data);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    let bench = terminal.run(&["bench", "--json", "--link-seconds", "1"]);
    assert_ok(&bench);
    let bench: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json");
    let one_upload = bench["bytes_to_send"].as_u64().expect("bytes_to_send");

    // Interrupted once about a third of the upload is stored.
    let mut slow = finish_in_background(&terminal, &site, "2m");
    let first = wait_for_received(&site, one_upload / 3, Duration::from_secs(60));
    slow.kill().expect("kill");
    let _ = slow.wait();
    assert!(
        first < one_upload * 2 / 3,
        "{first} of {one_upload} before the kill"
    );
    let resumed = terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("Resuming"));
    let total = site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("bytes_received");
    eprintln!("one upload {one_upload} bytes; {first} before the kill, {total} in all");
    // What was on the wire at the kill may travel again (without copies from the first
    // session's chunks, the repeats after the kill do: 1.11x).
    assert!(
        total <= one_upload + one_upload / 40,
        "{total} bytes received for an upload of {one_upload}"
    );
    let exported = site.export("lab", None, &dir.path().join("latest.img"));
    same_file(&exported, &pair.updated);
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
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
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
