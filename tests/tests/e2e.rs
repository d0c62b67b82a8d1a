//! End to end: the real `hotate-server` and `hotate-client` on loopback, temporary dirs,
//! and every new version exported and compared byte for byte.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::{Frame, Hash};
use hotate_tests::harness::{PASSWORD, Server, Site, Terminal, USER, admin, admin_ok, text};
use hotate_tests::has_command;
use hotate_tests::images::{self, ImagePair};
use hotate_tests::pages::ChangedPages;

#[path = "e2e/bench.rs"]
mod bench;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/durability.rs"]
mod durability;
#[path = "e2e/flow.rs"]
mod flow;
#[path = "e2e/formats.rs"]
mod formats;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/interruptions.rs"]
mod interruptions;
#[path = "e2e/prompts.rs"]
mod prompts;
#[path = "e2e/refusals.rs"]
mod refusals;
#[path = "e2e/scale.rs"]
mod scale;
#[path = "e2e/soak.rs"]
mod soak;
#[path = "e2e/store.rs"]
mod store;
#[path = "e2e/terminal.rs"]
mod terminal;
#[path = "e2e/tls.rs"]
mod tls;

const BLOCK: u32 = 64 << 10;

struct Setup {
    dir: tempfile::TempDir,
    pair: ImagePair,
    site: Site,
    server: Server,
    terminal: Terminal,
}

impl Setup {
    /// `update start` on the terminal, which then knows the server's URL.
    fn start_update(&self) {
        assert_ok(
            &self
                .terminal
                .run(&["--url", &self.server.url(), "update", "start"]),
        );
    }
}

/// A site with a synthetic disk of `size` bytes, a server and terminal PC-001 booted from
/// its first version, whose differential disk is the updated image.
fn setup(size: u64, seed: u64) -> Setup {
    setup_changing(size, 20, seed)
}

fn setup_changing(size: u64, change_percent: u32, seed: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), size, change_percent, seed);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let server = Server::start(&site.data);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    Setup {
        dir,
        pair,
        site,
        server,
        terminal,
    }
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}:\n{}",
        out.status.code(),
        text(out)
    );
}

fn new_version(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("New version: "))
        .unwrap_or_else(|| panic!("no version in:\n{stdout}"))
        .to_owned()
}

/// Bytes the client reported sending ("sent X MB" in the summary), in bytes.
fn reported_sent(out: &std::process::Output) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let after = stdout.split(", sent ").nth(1).expect("summary line");
    after
        .split(' ')
        .next()
        .expect("number")
        .parse::<f64>()
        .expect("float")
        * 1e6
}

/// Bytes the blocks of `updated` that the server lacks would take sent whole, each
/// compressed on its own as the client does.
fn whole_chunk_bytes(base: &Path, updated: &Path, block: usize) -> usize {
    let base = std::fs::read(base).expect("base");
    let updated = std::fs::read(updated).expect("updated");
    let held: std::collections::HashSet<_> = base.chunks(block).map(Hash::of).collect();
    let mut sent = std::collections::HashSet::new();
    updated
        .chunks(block)
        .filter(|b| b.iter().any(|&x| x != 0))
        .filter(|b| !held.contains(&Hash::of(b)) && sent.insert(Hash::of(b)))
        .map(|b| {
            Frame::encode(bytes::Bytes::copy_from_slice(b), DEFAULT_ZSTD_LEVEL)
                .payload
                .len()
        })
        .sum()
}

/// Exports the latest version of disk `win10` and compares it with `image`.
fn assert_latest_is(site: &Site, scratch: &Path, image: &Path) {
    let exported = site.export("win10", None, &scratch.join("latest.img"));
    same_file(&exported, image);
}

fn same_file(a: &[u8], b: &Path) {
    let b = std::fs::read(b).expect("read image");
    assert!(
        a == b.as_slice(),
        "exported image differs from the updated image"
    );
}

/// Waits until the server has counted at least `bytes` received for the live update.
fn wait_for_received(site: &Site, bytes: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        // The live update (several may have started within the same second).
        let updates = site.updates();
        let live = updates
            .iter()
            .find(|u| u["state"] == "uploading" || u["state"] == "reserved")
            .or(updates.last());
        let received = live.and_then(|u| u["bytes_received"].as_u64()).unwrap_or(0);
        if received >= bytes || Instant::now() > deadline {
            return received;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `update finish` paced at `rate` and returns once the server has stored part of
/// the upload, the client still running.
fn finish_in_background(terminal: &Terminal, site: &Site, rate: &str) -> std::process::Child {
    let mut child = terminal
        .client(&["update", "finish", "--limit-rate", rate])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The server counts stored bytes every 16 chunks.
    let received = wait_for_received(site, 1, Duration::from_secs(30));
    if child.try_wait().expect("poll").is_some() {
        let out = child.wait_with_output().expect("output");
        panic!(
            "the client ended before it could be interrupted:\n{}",
            text(&out)
        );
    }
    assert!(received > 0, "nothing was stored while the client ran");
    child
}
