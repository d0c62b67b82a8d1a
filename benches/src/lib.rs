//! Realistic benchmark data: disk images with a mix of zero, compressible and random
//! blocks, generated deterministically from a seed; [`link`], the link emulator; and
//! [`measure`], what a child process cost.

pub mod flags;
pub mod link;
pub mod measure;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Share of each kind of block in a generated image, in percent.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub zero: u32,
    pub text: u32,
    // The rest is random (already compressed files, media).
}

impl Default for Mix {
    /// Roughly a used Windows system disk: a quarter free space, half files that
    /// compress about 3:1, the rest incompressible.
    fn default() -> Self {
        Self { zero: 25, text: 50 }
    }
}

const WORDS: &[&str] = &[
    "system32",
    "drivers",
    "Program Files",
    "Microsoft",
    "Windows",
    "update",
    "\0\0\0\0",
    "MZ\x7f\0\x03",
    "<assembly>",
    "kernel32.dll",
    "0x00000000",
    "registry",
    "HKEY_LOCAL_MACHINE",
    "version=10.0.19045",
    "license",
    "the",
    "and",
    "of",
    "config",
    "\r\n",
    "{",
    "}",
    "=",
    ";",
];

/// Fills `block` with content of one kind picked by `rng` according to `mix`.
pub fn fill_block(block: &mut [u8], mix: Mix, rng: &mut StdRng) {
    let pick = rng.random_range(0..100);
    if pick < mix.zero {
        block.fill(0);
    } else if pick < mix.zero + mix.text {
        let mut at = 0;
        while at < block.len() {
            let word = WORDS[rng.random_range(0..WORDS.len())].as_bytes();
            let n = word.len().min(block.len() - at);
            block[at..at + n].copy_from_slice(&word[..n]);
            at += n;
            if rng.random_ratio(1, 8) && at + 4 <= block.len() {
                block[at..at + 4].copy_from_slice(&rng.next_u32().to_le_bytes());
                at += 4;
            }
        }
    } else {
        rng.fill_bytes(block);
    }
}

/// An image of `size` bytes in blocks of `block` bytes following `mix`.
pub fn image(size: usize, block: usize, mix: Mix, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    for piece in data.chunks_mut(block) {
        fill_block(piece, mix, &mut rng);
    }
    data
}
