//! The filesystem chunk store: one file per chunk under `chunks/ab/cd/<hash>`.
//!
//! A put writes temp files in the same filesystem, makes them durable, renames them into
//! place and makes the directories durable, so a crash leaves each chunk whole or absent.
//! `put_many` does this for a whole group with one `syncfs` per step (a group commit):
//! on a spinning disk an fsync per 64 KiB chunk would cap an upload at a few MB/s. Each file is
//! laid out as [`super::layout`] says. Damaged chunks are moved to
//! `quarantine/`, where nothing reads them, and kept for an administrator to inspect.
//!
//! A failed sync fails the whole group, and its chunks are written again by the next put,
//! never trusted from the page cache: the group's watch on the filesystem begins before its
//! first write, so every failed writeback since then fails it, and a chunk renamed into
//! place before a failed sync counts as absent until a put has proven it durable.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::layout::{self, Layout, PATCH_HEAD};
use super::{ChunkStore, Paged, StoreError, Stored};
use crate::direct_io::FilesystemSync;
use crate::hash::Hash;

/// Age after which a temp file is a crash's leftover, not a write in progress.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The largest zstd frame header (`ZSTD_FRAMEHEADERSIZE_MAX`).
const ZSTD_HEADER_MAX: usize = 18;
/// Bytes read from a chunk file's start to learn its layout and length.
const HEAD: usize = if PATCH_HEAD > 1 + ZSTD_HEADER_MAX {
    PATCH_HEAD
} else {
    1 + ZSTD_HEADER_MAX
};

/// Chunks stored as files in a directory tree.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    temp_dir: PathBuf,
    next_temp: AtomicU64,
    /// Chunks renamed into place by a group whose last sync failed: absent to `has` until
    /// a put writes them again and proves them durable.
    unproven: Mutex<HashSet<Hash>>,
}

impl FsStore {
    /// Opens (creating when needed) a store rooted at `root`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let temp_dir = root.join("tmp");
        for dir in [root.join("chunks"), temp_dir.clone()] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        // Leftovers of writes a crash interrupted. Other processes (a running server, an
        // admin command) may be writing now, so only old files are removed.
        if let Ok(entries) = fs::read_dir(&temp_dir) {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            temp_dir,
            next_temp: AtomicU64::new(0),
            unproven: Mutex::default(),
        })
    }

    /// Where the chunk with this hash lives.
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_string();
        self.root
            .join("chunks")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(hex)
    }

    /// Writes a chunk to a fresh temp file (not yet durable) and returns its path.
    fn write_temp(&self, chunk: &Stored) -> io::Result<PathBuf> {
        let temp = self.temp_dir.join(format!(
            "{}.{}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let (head, payload) = layout::encode(chunk);
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(&head)?;
            file.write_all(&payload)
        });
        match written {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// A chunk file's bytes; `None` when absent.
    fn read_file(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(hash);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// A chunk file's first bytes (enough for a zstd frame header or a patch head), how
    /// many were read, and the file's length; `None` when absent.
    fn head(&self, hash: &Hash) -> Result<Option<([u8; HEAD], usize, u64)>, StoreError> {
        let path = self.path_of(hash);
        let io_error = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(source)),
        };
        let mut head = [0u8; HEAD];
        let read = read_head(&mut file, &mut head).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        Ok(Some((head, read, file_len)))
    }

    fn unproven(&self) -> std::sync::MutexGuard<'_, HashSet<Hash>> {
        self.unproven.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stages, syncs, then publishes: a crash leaves each chunk whole or absent. Returns
    /// the chunks renamed into place, also when a later step failed.
    fn publish(
        &self,
        watch: Option<&FilesystemSync>,
        staged: &[(PathBuf, PathBuf, Hash)],
        renamed: &mut Vec<Hash>,
    ) -> io::Result<()> {
        let temps: Vec<&Path> = staged.iter().map(|(temp, ..)| temp.as_path()).collect();
        sync_all(watch, &temps)?;
        let mut dirs = Vec::new();
        for (temp, path, hash) in staged {
            let dir = path.parent().unwrap_or(&self.root);
            // Most directories exist: make one only when the rename says it is missing.
            if let Err(e) = fs::rename(temp, path) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
                fs::create_dir_all(dir)?;
                fs::rename(temp, path)?;
            }
            renamed.push(*hash);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        sync_all(watch, &dirs)
    }
}

/// Makes `paths` (files, then the directories naming them) durable: one `syncfs` for them
/// all through the group's watch where the system has it, else an fsync each.
fn sync_all(watch: Option<&FilesystemSync>, paths: &[&Path]) -> io::Result<()> {
    match watch {
        Some(watch) => watch.sync(),
        None => paths.iter().try_for_each(|path| sync_path(path)),
    }
}

/// Whether a process with this id runs now (always true where that cannot be told).
fn process_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Reads up to `buf.len()` bytes from the start of a file.
fn read_head(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match io::Read::read(file, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(unix)]
fn sync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(not(unix))]
fn sync_path(path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; their entries are durable with NTFS.
    if path.is_dir() {
        return Ok(());
    }
    fs::OpenOptions::new().write(true).open(path)?.sync_all()
}

impl ChunkStore for FsStore {
    fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        if self.unproven().contains(hash) {
            return Ok(false);
        }
        let path = self.path_of(hash);
        path.try_exists()
            .map_err(|source| StoreError::Io { path, source })
    }

    fn get(&self, hash: &Hash, max_len: usize) -> Result<Bytes, StoreError> {
        layout::content(hash, max_len, |hash| self.read_file(hash))
    }

    fn get_with_pages(&self, hash: &Hash, max_len: usize) -> Result<Paged, StoreError> {
        layout::content_with_pages(hash, max_len, |hash| self.read_file(hash))
    }

    fn layout(&self, hash: &Hash) -> Result<Layout, StoreError> {
        let Some((head, read, _)) = self.head(hash)? else {
            return Err(StoreError::NotFound(*hash));
        };
        layout::layout(&head[..read]).map_err(|cause| StoreError::Corrupt {
            hash: *hash,
            at: *hash,
            cause: Box::new(cause),
        })
    }

    /// Reads the length from the file: its size for a raw chunk, the zstd frame header
    /// for a compressed one, the head of a patch (decoding only when none says).
    fn content_len(&self, hash: &Hash, max_len: usize) -> Result<Option<usize>, StoreError> {
        let Some((head, read, file_len)) = self.head(hash)? else {
            return Ok(None);
        };
        let told = match (head[0], layout::layout(&head[..read])) {
            (_, Ok(Layout::Patch { len, .. })) => Some(len),
            (0, Ok(Layout::Whole)) => Some(file_len as usize - 1),
            (_, Ok(Layout::Whole)) => zstd::zstd_safe::get_frame_content_size(&head[1..read])
                .ok()
                .flatten()
                .map(|len| len as usize),
            (_, Err(_)) => None,
        };
        match told {
            Some(len) => Ok(Some(len)),
            None => self.get(hash, max_len).map(|content| Some(content.len())),
        }
    }

    fn quarantine(&self, hash: &Hash) -> Result<(), StoreError> {
        let path = self.path_of(hash);
        let dir = self.root.join("quarantine");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let to = dir.join(format!("{hash}.{stamp}"));
        let moved = fs::create_dir_all(&dir).and_then(|()| fs::rename(&path, &to));
        match moved {
            Ok(()) => Ok(()),
            // Another process moved it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Stores the chunks with one group commit: all temp files are written, made durable
    /// together, then renamed into place and their directories made durable.
    fn put_many(&self, chunks: &[Stored]) -> Result<usize, StoreError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        // Before the first write, so that every failed writeback of this group fails it.
        let watch = FilesystemSync::watch(&self.root).map_err(io_error(&self.root))?;
        let mut staged: Vec<(PathBuf, PathBuf, Hash)> = Vec::new();
        let mut result = Ok(());
        for chunk in chunks {
            let hash = chunk.hash();
            let path = self.path_of(&hash);
            if self.has(&hash)? || staged.iter().any(|(_, p, _)| *p == path) {
                continue;
            }
            match self.write_temp(chunk) {
                Ok(temp) => staged.push((temp, path, hash)),
                Err(source) => {
                    result = Err(StoreError::Io { path, source });
                    break;
                }
            }
        }
        let mut renamed = Vec::new();
        if result.is_ok() && !staged.is_empty() {
            result = self
                .publish(watch.as_ref(), &staged, &mut renamed)
                .map_err(io_error(&self.root));
        }
        let mut unproven = self.unproven();
        if result.is_ok() {
            for (.., hash) in &staged {
                unproven.remove(hash);
            }
        } else {
            unproven.extend(renamed);
            for (temp, ..) in &staged {
                let _ = fs::remove_file(temp);
            }
        }
        result.map(|()| staged.len())
    }

    /// Every chunk file in the store with its size on disk, in no particular order.
    /// Files whose names are not hashes are skipped.
    ///
    /// # Errors
    /// When a directory cannot be read.
    fn list(&self, each: &mut dyn FnMut(Hash, u64)) -> Result<(), StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let chunks = self.root.join("chunks");
        for top in fs::read_dir(&chunks).map_err(io(&chunks))? {
            let top = top.map_err(io(&chunks))?.path();
            let Ok(mids) = fs::read_dir(&top) else {
                continue;
            };
            for mid in mids {
                let mid = mid.map_err(io(&top))?.path();
                let Ok(files) = fs::read_dir(&mid) else {
                    continue;
                };
                for file in files {
                    let file = file.map_err(io(&mid))?;
                    let hash = file
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<Hash>().ok());
                    if let (Some(hash), Ok(meta)) = (hash, file.metadata()) {
                        each(hash, meta.len());
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes a chunk; returns the bytes freed (0 when it was absent).
    ///
    /// # Errors
    /// When the file cannot be removed.
    fn remove(&self, hash: &Hash) -> Result<u64, StoreError> {
        let path = self.path_of(hash);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Deletes temp files left by writers that are gone: their process no longer runs
    /// (where that can be told) or they are older than a day. Returns files and bytes.
    ///
    /// # Errors
    /// When the temp directory cannot be read.
    fn remove_stale_temps(&self) -> Result<(u64, u64), StoreError> {
        let entries = fs::read_dir(&self.temp_dir).map_err(|source| StoreError::Io {
            path: self.temp_dir.clone(),
            source,
        })?;
        let (mut files, mut bytes) = (0, 0);
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            let writer_gone = entry
                .file_name()
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !process_runs(pid));
            if (old || writer_gone) && fs::remove_file(entry.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
        Ok((files, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Codec, VerifiedChunk};

    fn whole(chunks: &[VerifiedChunk]) -> Vec<Stored> {
        chunks.iter().cloned().map(Stored::from).collect()
    }

    #[test]
    fn passes_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        super::super::contract::round_trips_interesting_sizes(&store);
        super::super::contract::keeps_patches_over_their_bases(&store);
        // Survives reopening.
        let chunk = VerifiedChunk::seal(Bytes::from_static(b"persisted"), 1);
        store.put(&chunk).unwrap();
        let again = FsStore::open(dir.path()).unwrap();
        assert_eq!(
            again.get(&chunk.hash(), 1 << 16).unwrap(),
            Bytes::from_static(b"persisted")
        );
    }

    #[test]
    fn a_group_is_stored_once_each_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let chunks: Vec<VerifiedChunk> = (0..10u8)
            .map(|i| VerifiedChunk::seal(Bytes::from(vec![i + 1; 70_000]), 3))
            .collect();
        let mut group = chunks.clone();
        group.push(chunks[3].clone()); // a duplicate within the group
        assert_eq!(store.put_many(&whole(&group)).unwrap(), 10);
        assert_eq!(
            store.put_many(&whole(&chunks)).unwrap(),
            0,
            "all already stored"
        );
        let again = FsStore::open(dir.path()).unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(
                again.get(&chunk.hash(), 1 << 20).unwrap(),
                vec![i as u8 + 1; 70_000]
            );
        }
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no temp left"
        );
    }

    #[test]
    fn opening_leaves_writes_in_progress_alone() {
        let dir = tempfile::tempdir().unwrap();
        let _store = FsStore::open(dir.path()).unwrap();
        let in_progress = dir.path().join("tmp").join("12345.0");
        fs::write(&in_progress, b"half a chunk").unwrap();
        let _again = FsStore::open(dir.path()).unwrap();
        assert!(in_progress.exists(), "another process's write was removed");
    }

    #[test]
    fn stale_temps_of_gone_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let tmp = dir.path().join("tmp");
        // No process has this id (above any pid_max); this process runs.
        fs::write(tmp.join("4294967294.7"), b"left by a killed import").unwrap();
        let mine = tmp.join(format!("{}.3", std::process::id()));
        fs::write(&mine, b"a write in progress").unwrap();
        assert_eq!(store.remove_stale_temps().unwrap(), (1, 23));
        assert!(mine.exists());
        assert!(!tmp.join("4294967294.7").exists());
    }

    #[test]
    fn lists_removes_quarantines_and_reads_lengths_from_headers() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let packed = VerifiedChunk::seal(Bytes::from(vec![3u8; 100_000]), 3);
        let mut noise = vec![0u8; 5000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let raw = VerifiedChunk::seal(Bytes::from(noise), 1);
        assert_eq!(raw.frame().codec, Codec::Raw);
        store
            .put_many(&whole(&[packed.clone(), raw.clone()]))
            .unwrap();
        assert_eq!(
            store.content_len(&packed.hash(), 1 << 20).unwrap(),
            Some(100_000)
        );
        assert_eq!(store.content_len(&raw.hash(), 1 << 20).unwrap(), Some(5000));
        let mut listed = Vec::new();
        store.list(&mut |hash, _| listed.push(hash)).unwrap();
        listed.sort_by_key(|h| h.to_string());
        let mut expected = vec![packed.hash(), raw.hash()];
        expected.sort_by_key(|h| h.to_string());
        assert_eq!(listed, expected);
        // A damaged chunk is not held: it is quarantined.
        let path = store.path_of(&packed.hash());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        assert_eq!(store.holds(&packed.hash(), 1 << 20).unwrap(), None);
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
        assert_eq!(store.holds(&raw.hash(), 1 << 20).unwrap(), Some(5000));
        assert_eq!(
            store.remove(&raw.hash()).unwrap(),
            5001,
            "codec byte and payload"
        );
        assert_eq!(store.content_len(&raw.hash(), 1 << 20).unwrap(), None);
    }

    #[test]
    fn detects_damage_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let chunk = VerifiedChunk::seal(Bytes::from(vec![5u8; 70_000]), 1);
        store.put(&chunk).unwrap();
        let path = store.path_of(&chunk.hash());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get(&chunk.hash(), 1 << 20),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get_with_pages(&chunk.hash(), 1 << 20),
            Err(StoreError::Corrupt { .. })
        ));
        fs::write(&path, b"\x09junk").unwrap();
        assert!(matches!(
            store.get(&chunk.hash(), 1 << 20),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
