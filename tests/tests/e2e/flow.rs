//! The whole flow with the real binaries: start, finish, export byte for byte; a real
//! file system; the finish reaching the transfer service whatever start recorded.

use super::*;

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
fn a_real_filesystem_update_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::pair(dir.path(), 64 << 20, 10, 13);
    let site = Site::new(dir.path(), "ubuntu", &pair.base, 1 << 20);
    let server = Server::start(&site.data);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
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
    // Listings for people name the disk and give sizes in binary units; updates name
    // their disk; --json keeps the exact values.
    let listed = admin_ok(&site.data, &["disk", "list"]);
    assert!(
        listed.starts_with("ubuntu  64.0 MiB  blocks of 1.0 MiB  latest "),
        "{listed}"
    );
    assert!(!listed.contains(&(64u64 << 20).to_string()), "{listed}");
    let updates = admin_ok(&site.data, &["update", "list"]);
    assert!(updates.contains("disk=ubuntu "), "{updates}");
    assert!(
        updates.contains(" user=")
            && updates.contains(" started=20")
            && updates.contains(" received="),
        "{updates}"
    );
    let json = admin_ok(&site.data, &["--json", "disk", "list"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json[0]["size"], 64u64 << 20);
}

#[test]
fn an_install_that_repeats_files_sends_their_pages_once() {
    repeated_files_travel_once(
        images::FileSystem::Ext4,
        "an_install_that_repeats_files_sends_their_pages_once",
    );
}

#[test]
fn an_ntfs_install_that_repeats_files_sends_their_pages_once() {
    repeated_files_travel_once(
        images::FileSystem::Ntfs,
        "an_ntfs_install_that_repeats_files_sends_their_pages_once",
    );
}

/// An install on `fs` that copies runtimes into program folders: the finish sends the
/// repeated pages as references, the bench predicts it, and the export is byte for byte.
fn repeated_files_travel_once(fs: images::FileSystem, test: &str) {
    let tools = fs.tools().iter().all(|tool| has_command(tool));
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
    // The dry run counts copies as the finish makes them: to the byte.
    let bench = terminal.run(&["bench", "--json", "--link-seconds", "1"]);
    assert_ok(&bench);
    let predicted: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json");
    let predicted = predicted["bytes_to_send"].as_u64().expect("bytes_to_send");
    let finish = terminal.run(&["update", "finish"]);
    assert_ok(&finish);
    let received = site.updates().last().expect("the update")["bytes_received"]
        .as_u64()
        .expect("bytes_received");
    assert_eq!(received, predicted, "the bench's prediction");
    let exported = site.export("lab", None, &dir.path().join("latest.img"));
    same_file(&exported, &pair.updated);
    // Sending every changed page, each block's compressed alone, is what an upload
    // without copies sends; the repeats (a third of the pages) travel as references.
    let changed = ChangedPages::of(&pair.base, &pair.updated, 1 << 20);
    let per_block = changed.per_block(1 << 20) as f64;
    let sent = reported_sent(&finish);
    eprintln!(
        "{:.1} MB of changed pages, {:.0}% repeated; {:.1} MB compressed per block; sent {:.1} MB",
        changed.pages.len() as f64 / 1e6,
        changed.repeated as f64 * 100.0 / changed.pages.len() as f64,
        per_block / 1e6,
        sent / 1e6
    );
    assert!(
        changed.repeated * 5 > changed.pages.len() as u64,
        "the pair repeats pages"
    );
    assert!(
        sent < 0.85 * per_block,
        "sent {sent} bytes for {per_block} of changed pages compressed per block"
    );
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

/// An import's first version records who ran it: the system account of the command; the
/// log of each change names who made it.
#[test]
fn an_import_is_attributed_to_who_ran_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 4 << 20, 10, 31);
    let data = dir.path().join("data");
    let as_teacher = |args: &[&str]| {
        let out = std::process::Command::new(hotate_tests::harness::bin("hotate-server"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("USER", "teacher")
            .env("HOTATE_PASSWORD", "a long enough password")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server");
        assert_ok(&out);
        text(&out)
    };
    as_teacher(&["disk", "import", "lab", pair.base.to_str().expect("path")]);
    let versions = admin_ok(&data, &["--json", "disk", "versions", "lab"]);
    let versions: serde_json::Value = serde_json::from_str(&versions).expect("json");
    assert_eq!(versions[0]["user"], "teacher", "{versions}");
    for (args, logged) in [
        (
            &["user", "add", "op", "--role", "operator"][..],
            "user added",
        ),
        (&["user", "passwd", "op"], "password changed"),
        (&["user", "delete", "op"], "user deleted"),
    ] {
        let said = as_teacher(args);
        let line = said.lines().find(|l| l.contains(logged));
        assert!(
            line.is_some_and(|l| l.contains("by=teacher")),
            "{args:?} logs who: {said}"
        );
    }
}
