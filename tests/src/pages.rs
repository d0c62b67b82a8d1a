//! What an upload's changed pages hold: how many repeat other changed pages of the same
//! update, what per-block compression makes of them, and the floor a long-window
//! compressor reaches (`zstd -19 --long=27` of every changed page, in disk order), for
//! tests and benches to measure against.

use std::collections::HashSet;
use std::io::{Read, Write};

use hotate_engine::Hash;

const PAGE: usize = 4096;

/// The changed pages of an image pair, by block.
#[derive(Debug, Default)]
pub struct ChangedPages {
    /// Bytes of the blocks that changed (not zero, not held by the base).
    pub block_bytes: u64,
    /// The pages that differ from the base's page at the same place, in disk order.
    pub pages: Vec<u8>,
    /// Of those, bytes whose content an earlier changed page already had.
    pub repeated: u64,
    /// Of those, bytes whose earlier page came at least `LAG` bytes of changed blocks
    /// before (an upload's window of chunks in flight lies between).
    pub repeated_far: u64,
    /// Bytes of changed pages (not zero) whose content some page of the base image has:
    /// what an index of the pages the store holds could save.
    pub in_base: u64,
}

/// Bytes of changed blocks between a page and the repeat counted in `repeated_far`.
pub const LAG: u64 = 64 << 20;

impl ChangedPages {
    /// Reads both images a block at a time (the changed pages are kept).
    ///
    /// # Panics
    /// When an image cannot be read.
    pub fn of(base: &std::path::Path, updated: &std::path::Path, block: usize) -> Self {
        let blocks = |path: &std::path::Path| {
            let mut file = std::fs::File::open(path).expect("image");
            std::iter::from_fn(move || {
                let mut buf = vec![0u8; block];
                let mut got = 0;
                while got < block {
                    match file.read(&mut buf[got..]).expect("read image") {
                        0 => break,
                        n => got += n,
                    }
                }
                buf.truncate(got);
                (got > 0).then_some(buf)
            })
        };
        let held: HashSet<Hash> = blocks(base).map(|b| Hash::of(&b)).collect();
        let base_pages: HashSet<Hash> = blocks(base)
            .flat_map(|b| {
                b.chunks(PAGE)
                    .filter(|p| p.iter().any(|&x| x != 0))
                    .map(Hash::of)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut seen = std::collections::HashMap::new();
        let mut out = Self::default();
        for (b, u) in blocks(base).zip(blocks(updated)) {
            if b == u || u.iter().all(|&x| x == 0) || held.contains(&Hash::of(&u)) {
                continue;
            }
            out.block_bytes += u.len() as u64;
            for (pb, pu) in b.chunks(PAGE).zip(u.chunks(PAGE)) {
                if pb == pu {
                    continue;
                }
                let key = Hash::of(pu);
                if base_pages.contains(&key) {
                    out.in_base += pu.len() as u64;
                }
                match seen.entry(key) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        out.repeated += pu.len() as u64;
                        if out.block_bytes - first.get() >= LAG {
                            out.repeated_far += pu.len() as u64;
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(place) => {
                        place.insert(out.block_bytes);
                    }
                }
                out.pages.extend_from_slice(pu);
            }
        }
        out
    }

    /// The changed pages compressed a block's worth at a time at zstd level 3: about
    /// what an upload that sends every changed page sends, repeats included.
    ///
    /// # Panics
    /// When zstd fails.
    pub fn per_block(&self, block: usize) -> u64 {
        self.pages
            .chunks(block)
            .map(|c| zstd::bulk::compress(c, 3).expect("zstd").len() as u64)
            .sum()
    }

    /// `zstd -19 --long=27` of every changed page: the floor of the bytes an upload needs.
    ///
    /// # Panics
    /// When zstd fails.
    pub fn floor(&self) -> u64 {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).expect("zstd");
        encoder.long_distance_matching(true).expect("ldm");
        encoder.window_log(27).expect("window");
        encoder.write_all(&self.pages).expect("zstd");
        encoder.finish().expect("zstd").len() as u64
    }
}
