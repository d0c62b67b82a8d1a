//! Realistic disk image pairs: a base disk and the same disk after a software install.
//!
//! With e2fsprogs, the base is a real ext4 filesystem built by `mkfs.ext4 -d` over a tree
//! of generated files, and the update is made in place by `debugfs -w` the way an install
//! changes a disk: new files, replaced files, and deleted files whose blocks are reused.
//! Without the tools, a synthetic pair with the same kinds of change is written instead.
//! Both are deterministic for a seed (fixed UUIDs, hash seed and clock for e2fsprogs).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// A base image and its updated copy.
#[derive(Debug, Clone)]
pub struct ImagePair {
    pub base: PathBuf,
    pub updated: PathBuf,
    /// `ext4`, `ext4 install with repeats` or `synthetic`.
    pub kind: &'static str,
}

const FIXED_UUID: &str = "6a1f3c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b";
const FAKE_TIME: &str = "1700000000";

/// Builds a pair of `size` bytes in `dir`, where about `change_percent` of the used
/// space changes. Uses ext4 when `mkfs.ext4` and `debugfs` work, else synthetic.
///
/// # Panics
/// When the files cannot be written (tests and benches want that loud).
pub fn pair(dir: &Path, size: u64, change_percent: u32, seed: u64) -> ImagePair {
    ext4_pair(dir, size, change_percent, seed, Repeats::None)
        .unwrap_or_else(|| synthetic_pair(dir, size, change_percent, seed))
}

/// As [`pair`], but the install repeats content the way real ones do: a set of runtime
/// files (DLLs, shared libraries) is copied into several program folders, each copy at a
/// 4 KiB-aligned place that is arbitrary within its 1 MiB block, beside new files. Copies
/// make about two fifths of the install, so about a third of the changed pages repeat
/// other changed pages. `None` without the ext4 tools (there is no synthetic stand-in:
/// the file system places the copies).
pub fn install_pair(dir: &Path, size: u64, change_percent: u32, seed: u64) -> Option<ImagePair> {
    ext4_pair(dir, size, change_percent, seed, Repeats::Runtimes)
}

/// Whether an install repeats content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeats {
    None,
    Runtimes,
}

/// File content: text-like (compressible) or random (already compressed), by seed.
fn file_content(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    if rng.random_ratio(3, 5) {
        const WORDS: &[&str] = &[
            "Program Files",
            "Microsoft",
            "update",
            "kernel32.dll",
            "HKEY_LOCAL_MACHINE",
            "<assembly>",
            "version=10.0",
            "license",
            "config",
            "\r\n",
            "the ",
            "and ",
            "{ }",
        ];
        let mut at = 0;
        while at < len {
            let word = WORDS[rng.random_range(0..WORDS.len())].as_bytes();
            let n = word.len().min(len - at);
            data[at..at + n].copy_from_slice(&word[..n]);
            at += n;
            if rng.random_ratio(1, 6) && at + 4 <= len {
                data[at..at + 4].copy_from_slice(&rng.next_u32().to_le_bytes());
                at += 4;
            }
        }
    } else {
        rng.fill_bytes(&mut data);
    }
    data
}

/// Writes a tree of files totalling about `bytes` under `root`.
fn write_tree(root: &Path, bytes: u64, prefix: &str, rng: &mut StdRng) -> Vec<PathBuf> {
    let mut written = 0u64;
    let mut files = Vec::new();
    let mut n = 0;
    while written < bytes {
        let dir = root.join(format!("{prefix}{:02}", n % 16));
        std::fs::create_dir_all(&dir).expect("create tree dir");
        // Mostly small files, some large, like an OS and its applications.
        let len = if rng.random_ratio(1, 10) {
            rng.random_range(256 << 10..4 << 20)
        } else {
            rng.random_range(1 << 10..96 << 10)
        };
        let len = len.min((bytes - written) as usize).max(1);
        let path = dir.join(format!("file{n:05}.bin"));
        std::fs::write(&path, file_content(rng, len)).expect("write tree file");
        written += len as u64;
        files.push(path);
        n += 1;
    }
    files
}

fn ext4_pair(
    dir: &Path,
    size: u64,
    change_percent: u32,
    seed: u64,
    repeats: Repeats,
) -> Option<ImagePair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    // Fill about 60% of the disk, like a used system disk.
    let files = write_tree(&tree, size * 6 / 10, "sys", &mut rng);
    let base = dir.join("base.img");
    let updated = dir.join("updated.img");
    let _ = std::fs::remove_file(&base);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-U", FIXED_UUID, "-E"])
        .arg(format!("hash_seed={FIXED_UUID},root_owner=0:0"))
        .arg("-d")
        .arg(&tree)
        .arg(&base)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .env("MKE2FS_DETERMINISTIC", "1")
        .output()
        .ok()?;
    if !status.status.success() {
        return None;
    }
    copy_sparse(&base, &updated);

    // The install: delete some files (their blocks are freed and reused), replace some,
    // add new ones, about `change_percent` of the used space in all.
    let budget = size * 6 / 10 * u64::from(change_percent) / 100;
    let staging = dir.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("staging dir");
    let mut script = String::new();
    let mut spent = 0u64;
    let mut k = 0;
    // The runtimes an install copies into each program folder: about a twelfth of the
    // budget, each copied three to six times.
    let mut runtimes = Vec::new();
    if repeats == Repeats::Runtimes {
        let mut set = 0u64;
        while set < budget / 12 {
            let len = rng.random_range(16usize << 10..512 << 10);
            let source = staging.join(format!("runtime{:03}.dll", runtimes.len()));
            std::fs::write(&source, file_content(&mut rng, len)).expect("staging file");
            runtimes.push(source);
            set += len as u64;
        }
    }
    let (mut program, mut copied) = (0, 0u64);
    while spent < budget {
        // Copies make about two fifths of the install.
        if !runtimes.is_empty() && copied * 5 < spent * 2 {
            // A program folder with a few of the runtimes beside its own files.
            let folder = format!("/prog{program:03}");
            program += 1;
            let _ = writeln!(script, "mkdir {folder}");
            for _ in 0..rng.random_range(1..4) {
                let runtime = &runtimes[rng.random_range(0..runtimes.len())];
                let name = runtime.file_name().expect("name").to_string_lossy();
                let _ = writeln!(script, "write {} {folder}/{name}", runtime.display());
                let len = std::fs::metadata(runtime).map_or(0, |m| m.len());
                spent += len;
                copied += len;
            }
            continue;
        }
        let victim = &files[rng.random_range(0..files.len())];
        let rel = victim.strip_prefix(&tree).expect("tree path");
        let target = format!("/{}", rel.display());
        let len = rng
            .random_range(16usize << 10..1 << 20)
            .min((budget - spent) as usize + 4096);
        let source = staging.join(format!("new{k:05}"));
        std::fs::write(&source, file_content(&mut rng, len)).expect("staging file");
        match k % 3 {
            // Replace a file with new content.
            0 => {
                let _ = writeln!(script, "rm {target}");
                let _ = writeln!(script, "write {} {target}", source.display());
            }
            // Delete a file, and install a new one elsewhere that reuses its blocks.
            1 => {
                let _ = writeln!(script, "rm {target}");
                let _ = writeln!(script, "write {} /app{:03}.dll", source.display(), k);
            }
            // A brand new file.
            _ => {
                let _ = writeln!(script, "write {} /new{:03}.dat", source.display(), k);
            }
        }
        spent += len as u64;
        k += 1;
    }
    let script_path = dir.join("install.debugfs");
    std::fs::File::create(&script_path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .expect("debugfs script");
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&updated)
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(&staging);
    if !out.status.success() {
        return None;
    }
    Some(ImagePair {
        base,
        updated,
        kind: match repeats {
            Repeats::None => "ext4",
            Repeats::Runtimes => "ext4 install with repeats",
        },
    })
}

fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        std::fs::copy(from, to).expect("copy image");
    }
}

/// A synthetic pair: zero, text-like and random blocks; `change_percent` of the blocks
/// rewritten, some zero blocks filled, some blocks zeroed.
///
/// # Panics
/// When the files cannot be written.
pub fn synthetic_pair(dir: &Path, size: u64, change_percent: u32, seed: u64) -> ImagePair {
    const BLOCK: usize = 64 << 10;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    for block in data.chunks_mut(BLOCK) {
        if rng.random_ratio(2, 3) {
            let content = file_content(&mut rng, block.len());
            block.copy_from_slice(&content);
        }
    }
    let base = dir.join("base.img");
    std::fs::write(&base, &data).expect("write base");
    for block in data.chunks_mut(BLOCK) {
        if rng.random_ratio(change_percent, 100) {
            if rng.random_ratio(1, 10) {
                block.fill(0);
            } else {
                let content = file_content(&mut rng, block.len());
                block.copy_from_slice(&content);
            }
        }
    }
    let updated = dir.join("updated.img");
    std::fs::write(&updated, &data).expect("write updated");
    ImagePair {
        base,
        updated,
        kind: "synthetic",
    }
}
