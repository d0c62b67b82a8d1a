//! The fault soak: random SIGKILLs of the client and the server during finish, of
//! imports, aborts during uploads, and gc killed at random, round after round. Then every
//! committed version exports byte for byte, `store verify` passes, and gc leaves nothing
//! unreferenced. `HOTATE_SOAK_ROUNDS` (default 20) and `HOTATE_SOAK_SEED` set the run;
//! `benches/soak.sh` runs a long one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};

use hotate_tests::harness::{admin_json, bin};

use super::*;

/// A small deterministic generator, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `previous` with about a third of its blocks rewritten or zeroed.
fn next_image(previous: &Path, out: PathBuf, rng: &mut Rng) -> PathBuf {
    let mut data = std::fs::read(previous).expect("image");
    for block in data.chunks_mut(BLOCK as usize) {
        match rng.below(9) {
            0..=1 => {
                for word in block.chunks_mut(8) {
                    let bytes = (rng.next() << 31 ^ rng.next()).to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
            2 => block.fill(0),
            _ => {}
        }
    }
    std::fs::write(&out, data).expect("write image");
    out
}

fn kill_after(mut child: Child, millis: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_millis(millis);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[derive(Debug, Default)]
struct Counts {
    finishes_killed: u32,
    servers_killed: u32,
    imports_killed: u32,
    aborts: u32,
    gcs_killed: u32,
    commits: u32,
}

#[test]
fn fault_soak() {
    let rounds: u32 = std::env::var("HOTATE_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("HOTATE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fault soak: {rounds} rounds, HOTATE_SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let s = setup(8 << 20, seed);
    let mut server = s.server;
    let data = s.site.data.clone();
    // Every version with the image it must export as.
    let mut expected: HashMap<String, PathBuf> = HashMap::new();
    expected.insert(s.site.first_version.clone(), s.pair.base.clone());
    let mut imports: HashMap<String, PathBuf> = HashMap::new();
    let mut latest = (s.site.first_version.clone(), s.pair.base.clone());
    let mut update: Option<PathBuf> = None;
    let mut counts = Counts::default();
    let terminal_at = |version: &str, image: &Path| {
        Terminal::new(s.dir.path(), "PC-001", &s.site.disk_id, version, image)
    };

    // Notes any version committed since, as the image of the update in progress.
    let settle = |expected: &mut HashMap<String, PathBuf>,
                  latest: &mut (String, PathBuf),
                  update: &mut Option<PathBuf>,
                  counts: &mut Counts| {
        let listed = admin_json(&data, &["disk", "versions", "win10"]);
        for v in listed.as_array().expect("array") {
            let id = v["id"].as_str().expect("id").to_owned();
            if !expected.contains_key(&id) {
                let image = update
                    .clone()
                    .expect("a version appeared without an update");
                expected.insert(id.clone(), image.clone());
                *latest = (id, image);
                counts.commits += 1;
            }
        }
    };

    for round in 0..rounds {
        let url = server.url();
        let image = match &update {
            Some(image) => image.clone(),
            None => {
                let image = next_image(
                    &latest.1,
                    s.dir.path().join(format!("img-{round}.img")),
                    &mut rng,
                );
                let t = terminal_at(&latest.0, &image);
                let out = t.run(&["--url", &url, "update", "start"]);
                assert_ok(&out);
                update = Some(image.clone());
                image
            }
        };
        let terminal = Terminal {
            name: "PC-001".into(),
            state: s.dir.path().join("state-PC-001"),
            image: image.clone(),
        };
        let finish = || {
            terminal
                .client(&["--url", &url, "update", "finish", "--limit-rate", "12m"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("finish")
        };
        match rng.below(6) {
            0 => {
                if kill_after(finish(), rng.below(700)).is_none() {
                    counts.finishes_killed += 1;
                }
            }
            1 => {
                let child = finish();
                std::thread::sleep(Duration::from_millis(rng.below(700)));
                let _ = Command::new("kill")
                    .args(["-KILL", &server.pid().to_string()])
                    .status();
                counts.servers_killed += 1;
                let _ = kill_after(child, 3000);
                server = Server::start(&data);
            }
            2 => {
                let name = format!("imp-{round}");
                let child = Command::new(bin("hotate-server"))
                    .arg("--data")
                    .arg(&data)
                    .args([
                        "disk",
                        "import",
                        &name,
                        image.to_str().expect("path"),
                        "--block-size",
                        &BLOCK.to_string(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("import");
                match kill_after(child, rng.below(120)) {
                    Some(status) if status.success() => {
                        imports.insert(name, image.clone());
                    }
                    _ => counts.imports_killed += 1,
                }
            }
            3 => {
                let child = finish();
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                let aborted = admin(&data, &["update", "abort", "win10"]);
                let _ = kill_after(child, 5000);
                settle(&mut expected, &mut latest, &mut update, &mut counts);
                // The update stays (reserved again): a later finish uploads it anew.
                if aborted.status.success() {
                    counts.aborts += 1;
                }
            }
            4 => {
                let gc = Command::new(bin("hotate-server"))
                    .arg("--data")
                    .arg(&data)
                    .args(["store", "gc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("gc");
                if kill_after(gc, rng.below(40)).is_none() {
                    counts.gcs_killed += 1;
                }
            }
            _ => {
                let done = terminal.run(&["--url", &url, "update", "finish"]);
                assert_ok(&done);
            }
        }
        settle(&mut expected, &mut latest, &mut update, &mut counts);
        // A finish whose commit landed: the next finish only completes the terminal.
        if update.is_some() && !terminal.state.join("update.toml").exists() {
            update = None;
        }
        if let Some(image) = &update
            && expected.values().any(|v| v == image)
        {
            assert_ok(&terminal.run(&["--url", &url, "update", "finish"]));
            update = None;
        }
    }
    // Finish what is open, then check everything.
    if let Some(image) = &update {
        let terminal = Terminal {
            name: "PC-001".into(),
            state: s.dir.path().join("state-PC-001"),
            image: image.clone(),
        };
        assert_ok(&terminal.run(&["--url", &server.url(), "update", "finish"]));
        settle(&mut expected, &mut latest, &mut update, &mut counts);
    }
    eprintln!(
        "fault soak: {counts:?}, {} versions, {} imports",
        expected.len(),
        imports.len()
    );
    for (version, image) in &expected {
        let out = s.dir.path().join("check.img");
        same_file(&s.site.export("win10", Some(version), &out), image);
    }
    for (disk, image) in &imports {
        let out = s.dir.path().join("check.img");
        same_file(&s.site.export(disk, None, &out), image);
    }
    let verify = admin(&data, &["store", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    admin_ok(&data, &["store", "gc"]);
    assert_eq!(
        admin_json(&data, &["store", "gc", "--dry-run"])["chunks_deleted"],
        0
    );
    assert_eq!(
        admin_json(&data, &["store", "stats"])["unreferenced_chunks"],
        0
    );
}
