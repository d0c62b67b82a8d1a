//! The store's promises: every committed version exports, damage is found and healed,
//! gc frees what nothing references and never what something does, and the update's
//! edge cases (cancel after commit, a killed start, deletes) say what happened.

use std::path::PathBuf;
use std::process::Child;

use hotate_engine::ChunkStore;
use hotate_tests::harness::admin_json;

use super::*;

/// Flips one bit in the stored file of a chunk of `image` (block `index`).
fn damage_chunk_of(site: &Site, image: &Path, index: usize) -> Hash {
    let data = std::fs::read(image).expect("image");
    let block = &data[index * BLOCK as usize..(index + 1) * BLOCK as usize];
    assert!(block.iter().any(|&b| b != 0), "block {index} is zero");
    let hash = Hash::of(block);
    let hex = hash.to_string();
    let path = site
        .data
        .join("store/chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    let mut bytes = std::fs::read(&path).expect("chunk file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, bytes).expect("damage");
    hash
}

/// The first block of `image` with content.
fn first_data_block(image: &Path) -> usize {
    let data = std::fs::read(image).expect("image");
    data.chunks(BLOCK as usize)
        .position(|b| b.iter().any(|&x| x != 0))
        .expect("a data block")
}

fn stats(site: &Site) -> serde_json::Value {
    admin_json(&site.data, &["store", "stats"])
}

fn versions(site: &Site, disk: &str) -> Vec<String> {
    admin_json(&site.data, &["disk", "versions", disk])
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect()
}

fn export_is(site: &Site, disk: &str, version: &str, scratch: &Path, image: &Path) {
    let out = scratch.join(format!("export-{disk}-{version}.img"));
    let exported = site.export(disk, Some(version), &out);
    same_file(&exported, image);
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_damaged_chunk_is_not_trusted_by_dedup_and_the_next_import_heals_it() {
    let s = setup(4 << 20, 21);
    let index = first_data_block(&s.pair.base);
    damage_chunk_of(&s.site, &s.pair.base, index);
    // Importing the same content again: the damaged chunk is found, quarantined and
    // stored anew, so both disks export.
    admin_ok(
        &s.site.data,
        &[
            "disk",
            "import",
            "copy",
            s.pair.base.to_str().expect("path"),
            "--block-size",
            &BLOCK.to_string(),
        ],
    );
    export_is(
        &s.site,
        "copy",
        &versions(&s.site, "copy")[0],
        s.dir.path(),
        &s.pair.base,
    );
    export_is(
        &s.site,
        "win10",
        &s.site.first_version,
        s.dir.path(),
        &s.pair.base,
    );
    assert!(admin(&s.site.data, &["store", "verify"]).status.success());
    assert!(
        s.site
            .data
            .join("store/quarantine")
            .read_dir()
            .expect("quarantine")
            .count()
            == 1
    );
}

#[test]
fn store_verify_names_the_broken_versions_and_new_content_heals_them() {
    let s = setup(4 << 20, 22);
    s.start_update();
    let finished = s.terminal.run(&["update", "finish"]);
    assert_ok(&finished);
    let second = new_version(&finished);
    // A block both versions share.
    let base = std::fs::read(&s.pair.base).expect("base");
    let updated = std::fs::read(&s.pair.updated).expect("updated");
    let shared = base
        .chunks(BLOCK as usize)
        .zip(updated.chunks(BLOCK as usize))
        .position(|(a, b)| a == b && a.iter().any(|&x| x != 0))
        .expect("a shared block");
    let hash = damage_chunk_of(&s.site, &s.pair.base, shared);

    let out = admin(&s.site.data, &["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["damaged"][0]["hash"], hash.to_string());
    let broken: Vec<&str> = report["damaged"][0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_str().expect("version"))
        .collect();
    assert!(broken.contains(&s.site.first_version.as_str()) && broken.contains(&second.as_str()));
    assert!(report["chunks_checked"].as_u64().expect("count") > 10);
    // Quarantined: the next run reports it missing.
    let again = admin(&s.site.data, &["--json", "store", "verify"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["missing"][0]["hash"], hash.to_string());

    admin_ok(
        &s.site.data,
        &[
            "disk",
            "import",
            "again",
            s.pair.updated.to_str().expect("path"),
            "--block-size",
            &BLOCK.to_string(),
        ],
    );
    export_is(
        &s.site,
        "win10",
        &s.site.first_version,
        s.dir.path(),
        &s.pair.base,
    );
    export_is(&s.site, "win10", &second, s.dir.path(), &s.pair.updated);
    let healed = admin(&s.site.data, &["store", "verify", "--all"]);
    assert!(healed.status.success(), "{}", text(&healed));
}

/// A finish that committed but died before clearing the terminal's state: the terminal
/// still holds the update, the server the new version (returned).
fn committed_and_not_cleared(seed: u64) -> (Setup, String) {
    let s = setup(4 << 20, seed);
    s.start_update();
    let record = std::fs::read(s.terminal.state.join("update.toml")).expect("record");
    let finished = s.terminal.run(&["update", "finish"]);
    assert_ok(&finished);
    let version = new_version(&finished);
    std::fs::write(s.terminal.state.join("update.toml"), record).expect("restore record");
    s.terminal
        .write_config(&s.site.disk_id, &s.site.first_version, "non-restore");
    (s, version)
}

#[test]
fn cancel_after_the_server_committed_names_the_version_and_restores_the_terminal() {
    let (s, version) = committed_and_not_cleared(23);
    let cancel = s.terminal.run(&["update", "cancel"]);
    assert_eq!(cancel.status.code(), Some(1), "{}", text(&cancel));
    assert!(
        text(&cancel).contains(&format!("already committed it as version {version}")),
        "{}",
        text(&cancel)
    );
    assert!(!text(&cancel).contains("Update cancelled."));
    assert_eq!(s.terminal.write_cache(), "restore");
    let show = s.terminal.run(&["update", "show"]);
    assert!(
        text(&show).contains("No update in progress"),
        "{}",
        text(&show)
    );
}

#[test]
fn a_finish_after_the_server_committed_completes_with_that_version() {
    let (s, version) = committed_and_not_cleared(25);
    // The upload cannot begin again: the finish asks the update's state and completes.
    let again = s.terminal.run(&["update", "finish"]);
    assert_ok(&again);
    assert_eq!(new_version(&again), version);
    assert_eq!(s.terminal.write_cache(), "restore");
    let versions = admin_ok(&s.site.data, &["--json", "disk", "versions", "win10"]);
    let versions: serde_json::Value = serde_json::from_str(&versions).expect("json");
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
}

#[test]
fn a_start_killed_before_it_recorded_the_update_is_taken_back() {
    let s = setup(4 << 20, 24);
    s.start_update();
    // As if killed after the server reserved the disk, before the terminal recorded it.
    std::fs::remove_file(s.terminal.state.join("update.toml")).expect("forget");
    s.terminal
        .write_config(&s.site.disk_id, &s.site.first_version, "restore");

    let again = s.terminal.run(&["update", "start"]);
    assert_ok(&again);
    assert!(
        text(&again).contains("that update is taken back"),
        "{}",
        text(&again)
    );
    assert_eq!(s.site.updates().len(), 1, "no second update was created");
    // Another terminal is still refused.
    let other = s.site.terminal(s.dir.path(), "PC-002", &s.pair.updated);
    let refused = other.run(&["--url", &s.server.url(), "update", "start"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("PC-001"), "{}", text(&refused));
    assert_ok(&s.terminal.run(&["update", "finish"]));
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

#[test]
fn deletes_are_refused_for_what_is_in_use_and_gc_frees_the_rest() {
    let s = setup(4 << 20, 25);
    s.start_update();
    let refused = admin(
        &s.site.data,
        &["version", "delete", "win10", &s.site.first_version],
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("latest"), "{}", text(&refused));
    let refused = admin(&s.site.data, &["disk", "delete", "win10"]);
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    let finished = s.terminal.run(&["update", "finish"]);
    assert_ok(&finished);
    let second = new_version(&finished);
    let before = stats(&s.site);
    admin_ok(
        &s.site.data,
        &["version", "delete", "win10", &s.site.first_version],
    );
    let listed = admin_json(&s.site.data, &["disk", "versions", "win10"]);
    assert_eq!(listed.as_array().expect("array").len(), 1);
    assert_eq!(
        listed[0]["parent"],
        s.site.first_version.as_str(),
        "the parent is still named"
    );
    let gc = admin_json(&s.site.data, &["store", "gc"]);
    assert!(gc["chunks_deleted"].as_u64().expect("n") > 0);
    assert!(stats(&s.site)["bytes"].as_u64() < before["bytes"].as_u64());
    export_is(&s.site, "win10", &second, s.dir.path(), &s.pair.updated);
    let disks = admin_json(&s.site.data, &["disk", "list"]);
    assert!(disks[0]["stored_bytes"].as_u64().expect("stored") > 0);

    // What a commit killed between its manifest and its row leaves behind.
    let manifests = s.site.data.join("manifests").join(&s.site.disk_id);
    std::fs::write(manifests.join("0badc0de.manifest"), b"orphan").expect("orphan");
    std::fs::write(manifests.join("0badc0de.manifest.tmp"), b"half").expect("temp");
    let gc = admin_json(&s.site.data, &["store", "gc"]);
    assert_eq!(gc["manifests_deleted"], 2, "{gc}");
    assert!(manifests.join(format!("{second}.manifest")).exists());
    export_is(&s.site, "win10", &second, s.dir.path(), &s.pair.updated);

    admin_ok(&s.site.data, &["disk", "delete", "win10"]);
    admin_ok(&s.site.data, &["store", "gc"]);
    let empty = stats(&s.site);
    assert_eq!(empty["chunks"], 0, "{empty}");
    assert!(!s.site.data.join("manifests").join(&s.site.disk_id).exists());
}

/// Starts a paced finish, lets it store something, and kills it.
fn interrupted_finish(s: &Setup) {
    let mut child: Child = finish_in_background(&s.terminal, &s.site, "2m");
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn gc_after_a_cancelled_and_an_aborted_upload_returns_the_store_to_its_size() {
    let s = setup_changing(16 << 20, 50, 26);
    let before = stats(&s.site)["bytes"].as_u64().expect("bytes");
    s.start_update();
    interrupted_finish(&s);
    assert_ok(&s.terminal.run(&["update", "cancel"]));
    assert_ok(&s.terminal.run(&["update", "start"]));
    interrupted_finish(&s);
    admin_ok(&s.site.data, &["update", "abort", "win10"]);
    assert_ok(&s.terminal.run(&["update", "cancel"]));

    let grown = stats(&s.site);
    assert!(
        grown["unreferenced_bytes"].as_u64().expect("n") > 0,
        "{grown}"
    );
    let dry = admin_json(&s.site.data, &["store", "gc", "--dry-run"]);
    assert_eq!(dry["chunks_deleted"], grown["unreferenced_chunks"]);
    assert_eq!(
        stats(&s.site)["chunks"],
        grown["chunks"],
        "a dry run deletes nothing"
    );
    admin_ok(&s.site.data, &["store", "gc"]);
    let after = stats(&s.site)["bytes"].as_u64().expect("bytes");
    assert!(
        after.abs_diff(before) * 100 <= before,
        "store {after} bytes after gc, {before} before the uploads"
    );
    export_is(
        &s.site,
        "win10",
        &s.site.first_version,
        s.dir.path(),
        &s.pair.base,
    );
}

#[test]
fn gc_during_an_upload_and_before_its_resume_loses_nothing() {
    let s = setup_changing(24 << 20, 50, 27);
    s.start_update();
    let mut slow = finish_in_background(&s.terminal, &s.site, "2m");
    for _ in 0..3 {
        admin_ok(&s.site.data, &["store", "gc"]);
        std::thread::sleep(Duration::from_millis(150));
    }
    slow.kill().expect("kill");
    let _ = slow.wait();
    std::thread::sleep(Duration::from_millis(300));
    let stored = s.site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("bytes");
    let gc = admin_json(&s.site.data, &["store", "gc"]);
    assert_eq!(
        gc["chunks_deleted"], 0,
        "gc took chunks of a live update: {gc}"
    );

    let resumed = s.terminal.run(&["update", "finish"]);
    assert_ok(&resumed);
    assert!(text(&resumed).contains("Resuming: the server already holds"));
    let total = s.site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("bytes");
    let slack = 8.0 * f64::from(BLOCK) + 0.05e6;
    assert!(
        reported_sent(&resumed) <= (total - stored) as f64 + slack,
        "the resume re-sent chunks gc took"
    );
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
    assert_eq!(
        admin_json(&s.site.data, &["store", "gc", "--dry-run"])["chunks_deleted"],
        0
    );
}

/// A third image: `updated` with every seventh block changed again.
fn third_image(s: &Setup) -> PathBuf {
    let mut data = std::fs::read(&s.pair.updated).expect("updated");
    for (i, block) in data.chunks_mut(BLOCK as usize).enumerate() {
        if i % 7 == 3 {
            block[..8].copy_from_slice(&(i as u64 ^ 0xdead_beef).to_le_bytes());
        }
    }
    let path = s.dir.path().join("third.img");
    std::fs::write(&path, data).expect("write");
    path
}

#[test]
fn gc_killed_at_random_points_leaves_every_version_exportable() {
    let s = setup_changing(24 << 20, 40, 28);
    s.start_update();
    let second = new_version(&s.terminal.run(&["update", "finish"]));
    let third = third_image(&s);
    let t3 = Terminal::new(s.dir.path(), "PC-003", &s.site.disk_id, &second, &third);
    assert_ok(&t3.run(&["--url", &s.server.url(), "update", "start"]));
    let third_version = new_version(&t3.run(&["update", "finish"]));
    // Garbage for gc: the second version's own chunks, and a half-done upload.
    admin_ok(&s.site.data, &["version", "delete", "win10", &second]);
    let t4 = Terminal::new(
        s.dir.path(),
        "PC-004",
        &s.site.disk_id,
        &third_version,
        &s.pair.base,
    );
    assert_ok(&t4.run(&["--url", &s.server.url(), "update", "start"]));

    let mut seed = 0x9e37_79b9_u64;
    for _ in 0..12 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut gc = std::process::Command::new(hotate_tests::harness::bin("hotate-server"))
            .arg("--data")
            .arg(&s.site.data)
            .args(["store", "gc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gc");
        std::thread::sleep(Duration::from_millis((seed >> 33) % 60));
        let _ = gc.kill();
        let _ = gc.wait();
        export_is(
            &s.site,
            "win10",
            &s.site.first_version,
            s.dir.path(),
            &s.pair.base,
        );
        export_is(&s.site, "win10", &third_version, s.dir.path(), &third);
    }
    // The live update still resumes and commits whatever gc did.
    assert_ok(&t4.run(&["update", "finish"]));
    assert_latest_is(&s.site, s.dir.path(), &s.pair.base);
    admin_ok(&s.site.data, &["store", "gc"]);
    assert!(
        admin(&s.site.data, &["store", "verify", "--all"])
            .status
            .success()
    );
    assert_eq!(stats(&s.site)["unreferenced_chunks"], 0);
}

#[test]
fn a_finish_is_told_when_the_update_is_aborted_or_another_finish_takes_over() {
    let s = setup_changing(24 << 20, 50, 29);
    s.start_update();
    // A second finish of the same update takes the upload over.
    let first = finish_in_background(&s.terminal, &s.site, "1m");
    let second = s
        .terminal
        .client(&["update", "finish", "--limit-rate", "1m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second finish");
    let first = first.wait_with_output().expect("first");
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    assert!(
        text(&first).contains("took over the upload"),
        "{}",
        text(&first)
    );
    // The administrator aborts it while the second one uploads.
    std::thread::sleep(Duration::from_millis(500));
    admin_ok(&s.site.data, &["update", "abort", "win10"]);
    let started = Instant::now();
    let second = second.wait_with_output().expect("second");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the client kept going"
    );
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains("An administrator interrupted the upload"),
        "{}",
        text(&second)
    );
    // The update was kept: the next finish uploads and commits it.
    let again = s.terminal.run(&["--lang", "ja", "update", "finish"]);
    assert_ok(&again);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}

/// A patch whose base chunk is damaged is intact itself: verify blames the base, with
/// the versions it breaks through its patches, quarantines only the base, and restoring
/// the base (an import of the first image) heals every version at once.
#[test]
fn a_damaged_base_does_not_condemn_its_patches() {
    let s = setup(4 << 20, 23);
    // The update changes one page of some blocks: they travel and are kept as patches.
    let mut updated = std::fs::read(&s.pair.base).expect("base");
    let block = BLOCK as usize;
    for (i, chunk) in updated.chunks_mut(block).enumerate().step_by(5) {
        if chunk.iter().any(|&b| b != 0) {
            chunk[4096..4096 + 64].fill(i as u8 ^ 0x5a);
        }
    }
    std::fs::write(&s.pair.updated, &updated).expect("updated");
    s.start_update();
    let finished = s.terminal.run(&["update", "finish"]);
    assert_ok(&finished);
    let second = new_version(&finished);
    let store = hotate_engine::FsStore::open(&s.site.data.join("store")).expect("store");
    let mut patches: Vec<(Hash, Hash)> = Vec::new();
    store
        .list(&mut |hash, _| {
            if let Ok(hotate_engine::Layout::Patch { base, .. }) = store.layout(&hash) {
                patches.push((hash, base));
            }
        })
        .expect("list");
    let (patch, base) = *patches.first().expect("the update stored a patch");
    let base_path = store.path_of(&base);
    let mut bytes = std::fs::read(&base_path).expect("base chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&base_path, bytes).expect("damage");

    let out = admin(&s.site.data, &["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let damaged = report["damaged"].as_array().expect("damaged");
    assert_eq!(damaged.len(), 1, "only the base is blamed: {report}");
    assert_eq!(damaged[0]["hash"], base.to_string());
    let on_it: Vec<&str> = damaged[0]["patches"]
        .as_array()
        .expect("patches")
        .iter()
        .map(|p| p.as_str().expect("hash"))
        .collect();
    assert!(on_it.contains(&patch.to_string().as_str()), "{report}");
    let broken: Vec<&str> = damaged[0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_str().expect("version"))
        .collect();
    assert!(
        broken.contains(&second.as_str()),
        "broken through the patch: {report}"
    );
    assert!(store.path_of(&patch).exists(), "the intact patch stays");
    assert!(!base_path.exists(), "the damaged base is quarantined");

    // Restoring the base heals both versions.
    admin_ok(
        &s.site.data,
        &[
            "disk",
            "import",
            "again",
            s.pair.base.to_str().expect("path"),
            "--block-size",
            &BLOCK.to_string(),
        ],
    );
    export_is(
        &s.site,
        "win10",
        &s.site.first_version,
        s.dir.path(),
        &s.pair.base,
    );
    export_is(&s.site, "win10", &second, s.dir.path(), &s.pair.updated);
    let healed = admin(&s.site.data, &["store", "verify", "--all"]);
    assert!(healed.status.success(), "{}", text(&healed));
}
