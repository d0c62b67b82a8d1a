//! Memory on a large change: a sparse image of `SIZE_GIB` whose `CHANGE_GIB` are written
//! anew (text-like data at 4 KiB-aligned, 1 MiB-unaligned places, a fifth of it repeated
//! at other places, so the page index fills), an update of the empty base finished on
//! loopback; reports the peak RSS of client and server against the bounds the upload path
//! promises (client ≤ 256 MiB whatever the change).
//!
//! `big-image-bench [SIZE_GIB] [CHANGE_GIB] [IMAGE_DIR]` (defaults 64, 10, /dev/shm; the
//! server's data dir goes to the temp dir).

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use hotate_benches::measure::run_measured;
use hotate_tests::harness::{Server, Site, text};
use rand::{Rng, RngCore, SeedableRng};

const MIB: u64 = 1 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let size_gib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let change_gib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let images = args
        .next()
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let work = tempfile::tempdir().expect("work dir");
    let image_dir = tempfile::tempdir_in(&images).expect("image dir");
    let base = image_dir.path().join("base.img");
    let updated = image_dir.path().join("updated.img");
    std::fs::File::create(&base)
        .and_then(|f| f.set_len(size_gib << 30))
        .expect("sparse base");
    eprintln!("writing {change_gib} GiB of changes into a {size_gib} GiB image...");
    write_changes(&updated, size_gib << 30, change_gib << 30);

    let site = Site::new(work.path(), "big", &base, MIB as u32);
    let server = Server::start(&site.data);
    let terminal = site.terminal(work.path(), "PC-001", &updated);
    let start = terminal.run(&["--url", &server.url(), "update", "start"]);
    assert!(start.status.success(), "{}", text(&start));
    let finish = run_measured(&mut terminal.client(&["update", "finish"]));
    assert!(finish.success, "the finish failed:\n{}", finish.stdout);
    println!(
        "| image | changed | finish | client peak RSS | server peak RSS | client CPU s |\n|---|---|---|---|---|---|\n| {size_gib} GiB sparse | {change_gib} GiB | {:.1} s | {:.0} MiB | {:.0} MiB | {:.1} |",
        finish.wall.as_secs_f64(),
        finish.max_rss_mib,
        server.peak_rss() as f64 / MIB as f64,
        finish.cpu,
    );
}

/// Writes `change` bytes of new content into a sparse image of `size` bytes: runs of
/// 256 KiB to 4 MiB at random 4 KiB-aligned places; a fifth of the runs repeat an
/// earlier one.
fn write_changes(path: &std::path::Path, size: u64, change: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(64);
    let mut file = std::fs::File::create(path).expect("updated image");
    file.set_len(size).expect("sparse image");
    let (mut written, mut earlier) = (0u64, Vec::<Vec<u8>>::new());
    while written < change {
        let run = if !earlier.is_empty() && rng.random_ratio(1, 5) {
            earlier[rng.random_range(0..earlier.len())].clone()
        } else {
            let len = rng.random_range(64..1024) * 4096;
            let mut run = vec![0u8; len];
            // Text-like: words with numbers, compressible about 3:1.
            let words: [&[u8]; 6] = [
                b"update ",
                b"kernel32.dll ",
                b"<assembly> ",
                b"the ",
                b"and ",
                b"\r\n",
            ];
            let mut at = 0;
            while at < len {
                let word = if rng.random_ratio(1, 4) {
                    rng.next_u64().to_string().into_bytes()
                } else {
                    words[rng.random_range(0..words.len())].to_vec()
                };
                let n = word.len().min(len - at);
                run[at..at + n].copy_from_slice(&word[..n]);
                at += n;
            }
            if earlier.len() < 64 {
                earlier.push(run.clone());
            }
            run
        };
        let at = rng.random_range(0..(size - run.len() as u64) / 4096) * 4096;
        file.seek(SeekFrom::Start(at)).expect("seek");
        file.write_all(&run).expect("write");
        written += run.len() as u64;
    }
}
