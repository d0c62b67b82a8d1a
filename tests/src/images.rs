//! Realistic disk image pairs: a base disk and the same disk after a software install.
//!
//! With e2fsprogs, the base is a real ext4 filesystem built by `mkfs.ext4 -d` over a tree
//! of generated files, and the update is made in place by `debugfs -w` the way an install
//! changes a disk: new files, replaced files, and deleted files whose blocks are reused.
//! Without the tools, a synthetic pair with the same kinds of change is written instead.
//! The same install can be made on NTFS (`mkntfs`, `ntfscp`), as the terminals' Windows
//! disks are. ext4 pairs are deterministic for a seed (fixed UUIDs, hash seed and clock for
//! e2fsprogs); NTFS pairs in their files and placement (timestamps and the volume serial
//! vary).

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
    fs_pair(
        FileSystem::Ext4,
        Repeats::None,
        dir,
        size,
        change_percent,
        seed,
    )
    .unwrap_or_else(|| synthetic_pair(dir, size, change_percent, seed))
}

/// As [`pair`], but the install repeats content the way real ones do (see
/// [`Repeats::Runtimes`]), on ext4. `None` without the ext4 tools (there is no synthetic
/// stand-in: the file system places the copies).
pub fn install_pair(dir: &Path, size: u64, change_percent: u32, seed: u64) -> Option<ImagePair> {
    fs_pair(
        FileSystem::Ext4,
        Repeats::Runtimes,
        dir,
        size,
        change_percent,
        seed,
    )
}

/// The file system of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSystem {
    /// Built by `mkfs.ext4 -d` and changed by `debugfs -w` (e2fsprogs).
    Ext4,
    /// Built by `mkntfs` and written by `ntfscp` (ntfs-3g), as the terminals' Windows
    /// disks are. `ntfscp` makes no folders, so a folder's files sit in the root with the
    /// folder's name as a prefix; a deleted file is cut to nothing, which frees its
    /// clusters.
    Ntfs,
}

impl FileSystem {
    /// The tools that build its pairs, by command name.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Self::Ext4 => &["mkfs.ext4", "debugfs"],
            Self::Ntfs => &["mkntfs", "ntfscp"],
        }
    }
}

/// Whether an install repeats content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    /// New, replaced and deleted files, each with its own content.
    None,
    /// Also a set of runtime files (DLLs, shared libraries) copied into several program
    /// folders, each copy at a 4 KiB-aligned place that is arbitrary within its 1 MiB
    /// block. Copies make about two fifths of the install, so about a third of the changed
    /// pages repeat other changed pages.
    Runtimes,
}

/// Builds a pair on `fs`: a base filled to about 60% with generated files, and an install
/// that changes about `change_percent` of the used space. `None` when the file system's
/// tools are missing or fail.
///
/// # Panics
/// When the files cannot be written.
pub fn fs_pair(
    fs: FileSystem,
    repeats: Repeats,
    dir: &Path,
    size: u64,
    change_percent: u32,
    seed: u64,
) -> Option<ImagePair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    // Fill about 60% of the disk, like a used system disk.
    let files = write_tree(&tree, size * 6 / 10, "sys", &mut rng);
    let base = dir.join("base.img");
    let updated = dir.join("updated.img");
    let _ = std::fs::remove_file(&base);
    let built = match fs {
        FileSystem::Ext4 => mkfs_ext4(&tree, &base, size),
        FileSystem::Ntfs => mkfs_ntfs(&tree, &files, &base, size),
    };
    if !built {
        let _ = std::fs::remove_dir_all(&tree);
        return None;
    }
    copy_sparse(&base, &updated);

    let staging = dir.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("staging dir");
    let budget = size * 6 / 10 * u64::from(change_percent) / 100;
    let targets: Vec<String> = files
        .iter()
        .map(|f| format!("/{}", f.strip_prefix(&tree).expect("tree path").display()))
        .collect();
    let steps = plan_install(&mut rng, &targets, budget, repeats, &staging);
    let installed = match fs {
        FileSystem::Ext4 => install_ext4(&steps, dir, &updated),
        FileSystem::Ntfs => install_ntfs(&steps, &staging, &updated),
    };
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(&staging);
    if !installed {
        return None;
    }
    Some(ImagePair {
        base,
        updated,
        kind: match (fs, repeats) {
            (FileSystem::Ext4, Repeats::None) => "ext4",
            (FileSystem::Ext4, Repeats::Runtimes) => "ext4 install with repeats",
            (FileSystem::Ntfs, Repeats::None) => "ntfs",
            (FileSystem::Ntfs, Repeats::Runtimes) => "ntfs install with repeats",
        },
    })
}

/// One change an install makes, by path in the image.
enum Step {
    Mkdir(String),
    Write { source: PathBuf, target: String },
    Remove(String),
}

/// The install: delete some files (their blocks are freed and reused), replace some, add
/// new ones, and with [`Repeats::Runtimes`] copy runtimes into program folders, about
/// `budget` bytes in all. Its new content is written under `staging`.
fn plan_install(
    rng: &mut StdRng,
    files: &[String],
    budget: u64,
    repeats: Repeats,
    staging: &Path,
) -> Vec<Step> {
    let mut steps = Vec::new();
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
            std::fs::write(&source, file_content(rng, len)).expect("staging file");
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
            steps.push(Step::Mkdir(folder.clone()));
            for _ in 0..rng.random_range(1..4) {
                let runtime = &runtimes[rng.random_range(0..runtimes.len())];
                let name = runtime.file_name().expect("name").to_string_lossy();
                steps.push(Step::Write {
                    source: runtime.clone(),
                    target: format!("{folder}/{name}"),
                });
                let len = std::fs::metadata(runtime).map_or(0, |m| m.len());
                spent += len;
                copied += len;
            }
            continue;
        }
        let target = files[rng.random_range(0..files.len())].clone();
        let len = rng
            .random_range(16usize << 10..1 << 20)
            .min((budget - spent) as usize + 4096);
        let source = staging.join(format!("new{k:05}"));
        std::fs::write(&source, file_content(rng, len)).expect("staging file");
        match k % 3 {
            // Replace a file with new content.
            0 => {
                steps.push(Step::Remove(target.clone()));
                steps.push(Step::Write { source, target });
            }
            // Delete a file, and install a new one elsewhere that reuses its blocks.
            1 => {
                steps.push(Step::Remove(target));
                let target = format!("/app{k:03}.dll");
                steps.push(Step::Write { source, target });
            }
            // A brand new file.
            _ => {
                let target = format!("/new{k:03}.dat");
                steps.push(Step::Write { source, target });
            }
        }
        spent += len as u64;
        k += 1;
    }
    steps
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

fn mkfs_ext4(tree: &Path, image: &Path, size: u64) -> bool {
    Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-U", FIXED_UUID, "-E"])
        .arg(format!("hash_seed={FIXED_UUID},root_owner=0:0"))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .env("MKE2FS_DETERMINISTIC", "1")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Runs the install as one `debugfs -w` script.
fn install_ext4(steps: &[Step], dir: &Path, image: &Path) -> bool {
    let mut script = String::new();
    for step in steps {
        let _ = match step {
            Step::Mkdir(folder) => writeln!(script, "mkdir {folder}"),
            Step::Write { source, target } => {
                writeln!(script, "write {} {target}", source.display())
            }
            Step::Remove(target) => writeln!(script, "rm {target}"),
        };
    }
    let script_path = dir.join("install.debugfs");
    std::fs::File::create(&script_path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .expect("debugfs script");
    Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// An NTFS image with 4 KiB clusters holding the tree's files.
fn mkfs_ntfs(tree: &Path, files: &[PathBuf], image: &Path, size: u64) -> bool {
    let made = std::fs::File::create(image).and_then(|f| f.set_len(size));
    let formatted = made.is_ok()
        && Command::new("mkntfs")
            .args(["-F", "-Q", "-q", "-T", "-c", "4096"])
            .arg(image)
            .output()
            .is_ok_and(|out| out.status.success());
    formatted
        && files.iter().all(|file| {
            let target = ntfs_name(
                &file
                    .strip_prefix(tree)
                    .expect("tree path")
                    .display()
                    .to_string(),
            );
            ntfscp(image, file, &target)
        })
}

/// Runs the install with one `ntfscp` per file.
fn install_ntfs(steps: &[Step], staging: &Path, image: &Path) -> bool {
    let nothing = staging.join("empty");
    std::fs::write(&nothing, b"").expect("staging file");
    steps.iter().all(|step| match step {
        Step::Mkdir(_) => true,
        Step::Write { source, target } => ntfscp(image, source, &ntfs_name(target)),
        Step::Remove(target) => ntfscp(image, &nothing, &ntfs_name(target)),
    })
}

/// A path in the root folder: `ntfscp` makes no folders, so `/a/b` is `/a_b`.
fn ntfs_name(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/').replace('/', "_"))
}

fn ntfscp(image: &Path, source: &Path, target: &str) -> bool {
    Command::new("ntfscp")
        .arg("-q")
        .arg(image)
        .arg(source)
        .arg(target)
        .output()
        .is_ok_and(|out| out.status.success())
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
