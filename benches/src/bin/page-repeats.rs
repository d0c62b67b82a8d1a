//! How much of an install's changed pages repeat other changed pages (and how many of
//! those repeats lie beyond an upload's window of chunks in flight), how much is already
//! in the base image (what an index of the store's pages could save), for the plain and
//! the install-like pairs of `upload-bench` on ext4 and on NTFS (when ntfs-3g is
//! installed), and the floor of their bytes.
//!
//! `page-repeats [SIZE_MIB] [CHANGE_PERCENT]` (defaults 2048, 10).

use hotate_tests::images::{self, FileSystem, Repeats};
use hotate_tests::pages::ChangedPages;

fn main() {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let change: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    println!(
        "| pair | changed blocks MB | changed pages MB | repeated | repeated 64 MiB or more later | in the base image | zstd -3 per block MB | floor MB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pairs = [FileSystem::Ext4, FileSystem::Ntfs]
        .into_iter()
        .flat_map(|fs| [(fs, Repeats::None), (fs, Repeats::Runtimes)]);
    for (fs, repeats) in pairs {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("dir");
        let size = size_mib << 20;
        let Some(pair) = images::fs_pair(fs, repeats, dir.path(), size, change, 2026) else {
            eprintln!("no {fs:?} pair: install {}", fs.tools().join(" and "));
            continue;
        };
        let changed = ChangedPages::of(&pair.base, &pair.updated, 1 << 20);
        let per_block = changed.per_block(1 << 20);
        println!(
            "| {} | {:.1} | {:.1} | {:.0}% | {:.0}% | {:.1}% | {:.1} | {:.1} |",
            pair.kind,
            changed.block_bytes as f64 / 1e6,
            changed.pages.len() as f64 / 1e6,
            changed.repeated as f64 * 100.0 / changed.pages.len().max(1) as f64,
            changed.repeated_far as f64 * 100.0 / changed.pages.len().max(1) as f64,
            changed.in_base as f64 * 100.0 / changed.pages.len().max(1) as f64,
            per_block as f64 / 1e6,
            changed.floor() as f64 / 1e6,
        );
    }
}
