//! What harder compression and the base block as a dictionary would save on the wire:
//! for the changed blocks of the upload bench's image pair (the server's answers as an
//! upload would get them, server-wide dedup aside), the bytes at several zstd levels,
//! whole blocks and page deltas, and page deltas compressed against the block they
//! replace as a raw-content dictionary (zstd's "patch from").
//!
//! `compress-probe [SIZE_MIB] [CHANGE_PERCENT]` (defaults 2048, 10; the pair of
//! `upload-bench`).

use std::collections::HashSet;
use std::time::Instant;

use hotate_engine::Hash;

const BLOCK: usize = 1 << 20;
const PAGE: usize = 4096;
const LEVELS: [i32; 4] = [3, 9, 15, 19];

fn main() {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let change: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("dir");
    eprintln!("generating a {size_mib} MiB image pair...");
    let pair = hotate_tests::images::pair(dir.path(), size_mib << 20, change, 2026);
    let base = std::fs::read(&pair.base).expect("base");
    let updated = std::fs::read(&pair.updated).expect("updated");
    let held: HashSet<Hash> = base.chunks(BLOCK).map(Hash::of).collect();
    // (whole blocks, page deltas with their base blocks)
    let (mut whole, mut deltas) = (Vec::new(), Vec::new());
    for (b, u) in base.chunks(BLOCK).zip(updated.chunks(BLOCK)) {
        if b == u || u.iter().all(|&x| x == 0) || held.contains(&Hash::of(u)) {
            continue;
        }
        if b.iter().all(|&x| x == 0) {
            whole.push(u);
            continue;
        }
        let pages: Vec<u8> = b
            .chunks(PAGE)
            .zip(u.chunks(PAGE))
            .filter(|(pb, pu)| pb != pu)
            .flat_map(|(_, pu)| pu.iter().copied())
            .collect();
        deltas.push((pages, b));
    }
    println!(
        "{} pair, {size_mib} MiB: {} whole blocks, {} page deltas ({:.1} MB of changed pages)",
        pair.kind,
        whole.len(),
        deltas.len(),
        deltas.iter().map(|(p, _)| p.len()).sum::<usize>() as f64 / 1e6
    );
    println!("| zstd level | whole blocks | page deltas | total | CPU s |");
    println!("|---|---|---|---|---|");
    for level in LEVELS {
        let started = Instant::now();
        let w: usize = whole.iter().map(|u| zstd_len(u, level)).sum();
        let d: usize = deltas.iter().map(|(p, _)| zstd_len(p, level)).sum();
        row(&level.to_string(), w, d, started.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let w: usize = whole.iter().map(|u| zstd_len(u, 3)).sum();
    let d: usize = deltas
        .iter()
        .map(|(pages, base)| {
            let mut with_base = zstd::bulk::Compressor::with_dictionary(3, base).expect("dict");
            with_base.compress(pages).expect("zstd").len()
        })
        .sum();
    row(
        "3, base block as dictionary",
        w,
        d,
        started.elapsed().as_secs_f64(),
    );
}

fn zstd_len(data: &[u8], level: i32) -> usize {
    zstd::bulk::compress(data, level).expect("zstd").len()
}

fn row(name: &str, whole: usize, deltas: usize, secs: f64) {
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "| {name} | {:.1} MB | {:.1} MB | {:.1} MB | {secs:.1} |",
        mb(whole),
        mb(deltas),
        mb(whole + deltas)
    );
}
