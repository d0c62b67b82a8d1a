//! Durability on a disk that fails: the data dir lives on `hotate-faultdisk` (ext4 over a
//! FUSE file with a volatile write cache), writes fail with EIO and the power is cut, and
//! every version a terminal was told is committed survives and exports byte for byte.

use std::path::PathBuf;
use std::process::{Child, Command};

use super::*;
use hotate_tests::faultdisk::FaultyDisk;
use hotate_tests::harness::{admin_json, bin};
use rand::{Rng, SeedableRng};

/// A site whose data dir is on a faulty disk, and a terminal booted from its first
/// version (its state and images stay on the machine's own disk, as a terminal's would).
struct FaultySite {
    dir: tempfile::TempDir,
    pair: ImagePair,
    disk: FaultyDisk,
    site: Site,
    terminal: Terminal,
}

impl FaultySite {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = images::synthetic_pair(dir.path(), 16 << 20, 20, seed);
        let disk = FaultyDisk::create(dir.path(), 512 << 20);
        let site = Site::new(disk.root(), "win10", &pair.base, BLOCK);
        let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
        Self {
            dir,
            pair,
            disk,
            site,
            terminal,
        }
    }

    /// Runs `update finish` against `server` until it succeeds (at most `tries` times);
    /// the version told.
    fn finish(&self, server: &Server, tries: usize) -> Option<String> {
        for _ in 0..tries {
            let out = self
                .terminal
                .run(&["--url", &server.url(), "update", "finish"]);
            if out.status.success() {
                return Some(new_version(&out));
            }
            eprintln!("finish failed (tried again):\n{}", text(&out));
        }
        None
    }

    /// Every version of the disk the data dir knows.
    fn versions(&self) -> Vec<String> {
        admin_json(&self.site.data, &["disk", "versions", "win10"])
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// `version` is listed, exports as the updated image, and the store verifies clean.
    fn assert_kept(&self, version: &str) {
        assert!(
            self.versions().iter().any(|v| v == version),
            "told version {version} was lost: {:?}",
            self.versions()
        );
        let exported = self
            .site
            .export("win10", Some(version), &self.dir.path().join("out.img"));
        same_file(&exported, &self.pair.updated);
        let verify = admin(&self.site.data, &["store", "verify", "--all"]);
        assert_ok(&verify);
    }
}

/// The raw hash of the first block the terminal changed: it is in the rows an upload
/// records for its offers, and in no other write before the commit's manifest.
fn first_changed_hash(pair: &ImagePair) -> String {
    let base = std::fs::read(&pair.base).expect("base");
    let updated = std::fs::read(&pair.updated).expect("updated");
    let block = BLOCK as usize;
    let (changed, _) = updated
        .chunks(block)
        .zip(base.chunks(block))
        .find(|(new, old)| new != old && new.iter().any(|&b| b != 0))
        .expect("a changed block");
    Hash::of(changed)
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The data loss of a failed write then a power cut: the write that fails carries the
/// upload's recorded offers; the finish fails, a re-run says `New version X`, then the
/// power fails. X must be there after the restart.
#[test]
fn a_told_version_survives_a_failed_write_and_a_power_cut() {
    if !FaultyDisk::available("a_told_version_survives_a_failed_write_and_a_power_cut") {
        return;
    }
    let mut s = FaultySite::new(281);
    let server = Server::start(&s.site.data);
    assert_ok(&s.terminal.run(&["--url", &server.url(), "update", "start"]));
    s.disk.control(&format!(
        "fail-write-with {} 1",
        first_changed_hash(&s.pair)
    ));

    let told = s
        .finish(&server, 3)
        .expect("a finish succeeds after the failed write");
    assert_eq!(s.disk.counter("failed_writes"), 1, "the write was failed");
    let recovery = s.disk.power_cut(None, || drop(server));
    eprintln!("fsck and mount after the cut: {recovery:?}");
    s.assert_kept(&told);
}

/// What a power-cut round interrupts.
#[derive(Debug, Clone, Copy)]
enum Work {
    Finish,
    Import,
    Gc,
    VersionDelete,
}

/// A finish, an import, a store gc or a version delete runs; the power fails at a
/// random moment; after the restart every version told so far is there, the store
/// verifies clean, and an interrupted finish completes on its next run. At the end every
/// told version exports byte for byte. `HOTATE_POWER_CUTS` sets the rounds (4 here, one
/// of each; `benches/power-cuts.sh` runs many), `HOTATE_POWER_CUT_SEED` the randomness.
#[test]
fn power_cuts_at_random_moments_lose_no_told_version() {
    if !FaultyDisk::available("power_cuts_at_random_moments_lose_no_told_version") {
        return;
    }
    let rounds: usize = env_number("HOTATE_POWER_CUTS").unwrap_or(4);
    let seed = env_number("HOTATE_POWER_CUT_SEED").unwrap_or(2028);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = FaultySite::new(seed);
    let size = std::fs::metadata(&s.pair.base).expect("base").len();
    // (disk, version, image) of every version a command said it made.
    let mut told: Vec<(String, String, PathBuf)> = vec![(
        "win10".into(),
        s.site.first_version.clone(),
        s.pair.base.clone(),
    )];
    let mut server = Some(Server::start(&s.site.data));
    for round in 0..rounds {
        let work = [Work::Finish, Work::Import, Work::Gc, Work::VersionDelete][round % 4];
        let images_dir = s.dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&images_dir).expect("round dir");
        let image = images::synthetic_pair(&images_dir, size, 30, seed + round as u64).updated;
        let latest = told
            .iter()
            .rev()
            .find(|(d, ..)| d == "win10")
            .expect("latest")
            .1
            .clone();
        let deletable = told
            .iter()
            .filter(|(d, v, _)| d == "win10" && *v != latest && *v != s.site.first_version)
            .map(|(_, v, _)| v.clone())
            .next();
        let mut command = match work {
            Work::Finish => {
                s.terminal.image.clone_from(&image);
                s.terminal.write_config(&s.site.disk_id, &latest, "restore");
                let url = server.as_ref().expect("server").url();
                assert_ok(&s.terminal.run(&["--url", &url, "update", "start"]));
                s.terminal.client(&["update", "finish"])
            }
            Work::Import => admin_command(
                &s.site.data,
                &[
                    "--json",
                    "disk",
                    "import",
                    &format!("imp-{round}"),
                    path(&image),
                ],
            ),
            Work::Gc => admin_command(&s.site.data, &["--json", "store", "gc"]),
            Work::VersionDelete => match &deletable {
                Some(v) => admin_command(&s.site.data, &["version", "delete", "win10", v]),
                None => admin_command(&s.site.data, &["store", "stats"]),
            },
        };
        let child: Child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the work");
        // Admin commands on this small disk take a fraction of a finish's time.
        let within_ms = if matches!(work, Work::Finish) {
            1500
        } else {
            250
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(0..within_ms)));
        let half = rng.random_bool(0.5).then(|| rng.random());
        let mut child = Some(child);
        let mut output = None;
        let recovery = s.disk.power_cut(half, || {
            let mut child = child.take().expect("child");
            let _ = child.kill();
            output = Some(child.wait_with_output().expect("wait for the work"));
            drop(server.take());
        });
        let output = output.expect("output");
        let done = output.status.success();
        let restarted = Instant::now();
        server = Some(Server::start(&s.site.data));
        let listening = restarted.elapsed();
        let mut resumed = None;
        match work {
            Work::Finish => {
                let version = if done {
                    new_version(&output)
                } else {
                    let server = server.as_ref().expect("server");
                    let started = Instant::now();
                    let version = s
                        .finish(server, 3)
                        .expect("the interrupted finish completes on its next run");
                    resumed = Some(started.elapsed());
                    version
                };
                told.push(("win10".into(), version, image));
            }
            Work::Import if done => {
                let reply: serde_json::Value =
                    serde_json::from_slice(&output.stdout).expect("import json");
                let version = reply["version"].as_str().expect("version").to_owned();
                told.push((format!("imp-{round}"), version, image));
            }
            Work::VersionDelete => {
                // A delete that was told is gone; one cut short may have committed.
                if let Some(deleted) = &deletable
                    && (done || !s.versions().contains(deleted))
                {
                    told.retain(|(d, v, _)| !(d == "win10" && v == deleted));
                }
            }
            _ => {}
        }
        eprintln!(
            "round {round}: {work:?} {}; after the cut: fsck and mount {recovery:?}, \
             server listening {listening:?}, the interrupted finish {resumed:?}",
            if done { "done before the cut" } else { "cut" }
        );
        for (disk, version, _) in &told {
            let listed = admin_json(&s.site.data, &["disk", "versions", disk]);
            assert!(
                listed
                    .as_array()
                    .expect("versions")
                    .iter()
                    .any(|v| v["id"] == version.as_str()),
                "round {round} ({work:?}): told version {version} of {disk} was lost"
            );
        }
        assert_ok(&admin(&s.site.data, &["store", "verify", "--all"]));
    }
    for (disk, version, image) in &told {
        let exported = s
            .site
            .export(disk, Some(version), &s.dir.path().join("out.img"));
        same_file(&exported, image);
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An admin command on a data dir, not yet started.
fn admin_command(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("hotate-server"));
    cmd.arg("--data").arg(data).args(args).stdin(Stdio::null());
    cmd
}

/// EIO windows during a finish: writes of chunk files (zstd frames) and of the rows and
/// the manifest that name the first changed block fail; each finish that fails says so
/// and the next commits; the version told survives a power cut.
#[test]
fn eio_windows_during_a_finish_lose_nothing() {
    if !FaultyDisk::available("eio_windows_during_a_finish_lose_nothing") {
        return;
    }
    let mut s = FaultySite::new(282);
    let server = Server::start(&s.site.data);
    assert_ok(&s.terminal.run(&["--url", &server.url(), "update", "start"]));
    const ZSTD_MAGIC: &str = "28b52ffd";
    s.disk.control(&format!(
        "fail-write-with {ZSTD_MAGIC} 2\nfail-write-with {} 3",
        first_changed_hash(&s.pair)
    ));

    let told = s
        .finish(&server, 8)
        .expect("a finish commits once the disk heals");
    let failed = s.disk.counter("failed_writes");
    assert!(failed >= 2, "the disk failed {failed} writes");
    let recovery = s.disk.power_cut(None, || drop(server));
    eprintln!("fsck and mount after the cut: {recovery:?}");
    s.assert_kept(&told);
}

/// Drops the machine's page cache, so that reads reach the disk.
fn drop_page_cache() {
    let synced = Command::new("sync").status().expect("sync");
    assert!(synced.success());
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop the page cache");
}

/// `store verify` on a disk that fails to read one chunk: it reads on, reports that chunk
/// as unreadable with the versions it breaks (leaving it in place), reports a damaged one
/// beside it (quarantined), and `--json` says so; once the disk reads again, the
/// unreadable chunk verifies and only the quarantined one is missing.
#[test]
fn store_verify_reads_on_past_a_failing_disk() {
    if !FaultyDisk::available("store_verify_reads_on_past_a_failing_disk") {
        return;
    }
    let s = FaultySite::new(283);
    let store = hotate_engine::FsStore::open(&s.site.data.join("store")).expect("store");
    let base = std::fs::read(&s.pair.base).expect("base");
    let mut held = base
        .chunks(BLOCK as usize)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(Hash::of);
    let (unreadable, damaged) = (held.next().expect("a chunk"), held.next().expect("another"));
    let damaged_path = store.path_of(&damaged);
    let mut bytes = std::fs::read(&damaged_path).expect("chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&damaged_path, bytes).expect("damage");
    drop_page_cache();
    for range in s.disk.extents(&store.path_of(&unreadable)) {
        s.disk.control(&format!(
            "fail-read {} {} 1000000",
            range.start,
            range.end - range.start
        ));
    }

    let out = admin(&s.site.data, &["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let named = |list: &str| -> Vec<String> {
        report[list]
            .as_array()
            .expect("list")
            .iter()
            .map(|b| b["hash"].as_str().expect("hash").to_owned())
            .collect()
    };
    assert_eq!(named("unreadable"), [unreadable.to_string()], "{report}");
    assert_eq!(named("damaged"), [damaged.to_string()], "{report}");
    assert_eq!(
        report["unreadable"][0]["versions"][0]["version"],
        s.site.first_version.as_str()
    );
    let referenced = held.count() as u64 + 2;
    assert!(
        report["chunks_checked"].as_u64().expect("count") >= referenced,
        "it read on: {report}"
    );
    assert!(
        store.path_of(&unreadable).exists(),
        "not proven damaged: kept"
    );
    assert!(!damaged_path.exists(), "proven damaged: quarantined");

    s.disk.control("clear");
    drop_page_cache();
    let again = admin(&s.site.data, &["--json", "store", "verify"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["unreadable"], serde_json::json!([]), "{again}");
    assert_eq!(again["missing"][0]["hash"], damaged.to_string());
}
