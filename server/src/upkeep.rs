//! Store upkeep: `store verify` (a scrub that quarantines damaged chunks so the next
//! upload heals them), `store gc`, `store stats` and the bytes each disk holds.
//!
//! # Why gc is safe beside a running server
//! A chunk may go only when no version and no live update names it. The danger is a
//! chunk that looks unreferenced to gc while an upload counts on it: the upload offered
//! its hash, the server found it held and did not ask for it, and the version that
//! commits later names it. Three rules close that:
//! 1. An upload records its offered entries in the database *before* it checks which
//!    chunks the store holds, and commits a version (manifest file and row) in one
//!    transaction that also drops those entries.
//! 2. gc deletes chunks in batches, each while holding the database's write lock, and
//!    under that lock re-checks every candidate against the live updates' entries and
//!    the versions committed since it read the manifests. An offer recorded before the
//!    lock is seen; one recorded after it finds the chunk gone and asks for it.
//! 3. `disk import` writes chunks that no row names until it ends, so it holds a shared
//!    file lock on the store that gc needs alone; a killed import releases it.
//!
//! 4. A chunk stored as a patch needs its base: a base stays while any patch on it stays
//!    (for a version, a live update, or another patch), checked again under the lock.
//!    A patch whose base went before it was offered reads as damaged, so the upload
//!    asks for it again.
//!
//! A kill at any point leaves only unreferenced chunks deleted, or none: versions are
//! never touched. Manifests that no version names (a commit killed between file and
//! row) are removed under the same write lock, so a commit in flight is never robbed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hotate_engine::{BlockSize, Entry, Hash, Layout, MAX_PATCH_DEPTH, Manifest, StoreError};
use serde::Serialize;

use crate::data::DataDir;
use crate::error::ServerError;
use crate::meta::{VersionRow, now};

/// Chunks deleted per hold of the database's write lock.
const GC_BATCH: usize = 512;
/// Ended updates are kept this long for `update list`, then pruned by gc.
const KEEP_ENDED_UPDATES_SECS: i64 = 30 * 24 * 3600;

/// A version, as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRef {
    pub disk: String,
    pub disk_id: String,
    pub version: String,
}

/// A chunk that is damaged, missing or unreadable, and the versions it breaks: those
/// naming it, and those naming a patch stored on it.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    pub hash: String,
    pub reason: String,
    pub versions: Vec<VersionRef>,
    /// Patches stored on this chunk: intact themselves and left in place, they read
    /// again once this chunk is restored (uploaded or imported again).
    pub patches: Vec<String>,
}

/// What `store verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Proven damaged and quarantined.
    pub damaged: Vec<Broken>,
    pub missing: Vec<Broken>,
    /// The disk would not read them (an I/O error): not proven damaged, so left in place.
    pub unreadable: Vec<Broken>,
    /// Versions whose manifest cannot be read or does not match its root.
    pub unreadable_manifests: Vec<VersionRef>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
            && self.missing.is_empty()
            && self.unreadable.is_empty()
            && self.unreadable_manifests.is_empty()
    }
}

/// What `store gc` removed (or, with `--dry-run`, would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
    pub temp_files_deleted: u64,
    pub manifests_deleted: u64,
    pub updates_pruned: u64,
}

/// What the last `store verify` or `store gc` found, as recorded for the console (JSON in
/// the metadata), so that each page words it in its own language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum UpkeepOutcome {
    Verify {
        all: bool,
        chunks_checked: u64,
        damaged: u64,
        missing: u64,
        unreadable: u64,
        unreadable_manifests: u64,
    },
    Gc {
        chunks_deleted: u64,
        bytes_freed: u64,
    },
}

impl UpkeepOutcome {
    pub fn of_verify(report: &VerifyReport, all: bool) -> Self {
        Self::Verify {
            all,
            chunks_checked: report.chunks_checked,
            damaged: report.damaged.len() as u64,
            missing: report.missing.len() as u64,
            unreadable: report.unreadable.len() as u64,
            unreadable_manifests: report.unreadable_manifests.len() as u64,
        }
    }

    pub fn of_gc(report: &GcReport) -> Self {
        Self::Gc {
            chunks_deleted: report.chunks_deleted,
            bytes_freed: report.bytes_freed,
        }
    }

    /// A recorded outcome; `None` for one recorded as text by an earlier release.
    pub fn parse(recorded: &str) -> Option<Self> {
        serde_json::from_str(recorded).ok()
    }

    /// The outcome in English, as the API's `outcome` and the admin commands say it.
    pub fn english(&self) -> String {
        self.say(&ENGLISH)
    }

    /// The outcome in `words`.
    pub fn say(&self, words: &OutcomeWords) -> String {
        match *self {
            Self::Verify {
                all,
                chunks_checked,
                damaged,
                missing,
                unreadable,
                unreadable_manifests,
            } => {
                let found = if damaged + missing + unreadable + unreadable_manifests == 0 {
                    words
                        .verify_clean
                        .replace("{chunks}", &chunks_checked.to_string())
                } else {
                    words
                        .verify_found
                        .replace("{damaged}", &damaged.to_string())
                        .replace("{missing}", &missing.to_string())
                        .replace("{unreadable}", &unreadable.to_string())
                        .replace("{manifests}", &unreadable_manifests.to_string())
                };
                if all {
                    format!("{found} {}", words.verify_all)
                } else {
                    found
                }
            }
            Self::Gc {
                chunks_deleted,
                bytes_freed,
            } => words
                .gc_done
                .replace("{chunks}", &chunks_deleted.to_string())
                .replace("{bytes}", &crate::text::binary_size(bytes_freed)),
        }
    }
}

/// The sentences an upkeep outcome is said in, `{…}` standing for its figures.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeWords {
    /// `{chunks}`.
    pub verify_clean: &'static str,
    /// `{damaged}`, `{missing}`, `{unreadable}`, `{manifests}`.
    pub verify_found: &'static str,
    /// After either, for a run of `verify --all`.
    pub verify_all: &'static str,
    /// `{chunks}`, `{bytes}`.
    pub gc_done: &'static str,
}

/// The outcome's words in English, for scripts and the admin commands.
pub const ENGLISH: OutcomeWords = OutcomeWords {
    verify_clean: "all well: {chunks} chunks checked",
    verify_found: "{damaged} damaged, {missing} missing, {unreadable} unreadable chunks, {manifests} unreadable manifests",
    verify_all: "(--all)",
    gc_done: "{chunks} chunks deleted, {bytes} freed",
};

/// `store stats`.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub chunks: u64,
    pub bytes: u64,
    pub unreferenced_chunks: u64,
    pub unreferenced_bytes: u64,
}

/// Progress of a long walk: items done of total, and bytes.
pub type OnProgress<'a> = &'a (dyn Fn(u64, u64, u64) + Sync);

/// Every chunk the versions name, with the length its blocks need.
#[derive(Debug, Default)]
struct References {
    chunks: HashMap<Hash, usize>,
    unreadable: Vec<VersionRef>,
}

impl References {
    fn add(&mut self, manifest: &Manifest) {
        for (index, entry) in manifest.entries().iter().enumerate() {
            if let Entry::Chunk(hash) = entry {
                let range = manifest
                    .block_size()
                    .range(index as u64, manifest.disk_size());
                self.chunks
                    .entry(*hash)
                    .or_insert((range.end - range.start) as usize);
            }
        }
    }
}

/// Reads the manifests of versions committed after `seq`; returns the newest seq read.
fn read_references(
    data: &DataDir,
    seq: i64,
    refs: &mut References,
    names: &mut DiskNames,
) -> Result<i64, ServerError> {
    let mut newest = seq;
    for (seq, version) in data.meta().versions_since(seq)? {
        newest = newest.max(seq);
        match data.manifest(&version) {
            Ok(manifest) => refs.add(&manifest),
            Err(e) => {
                tracing::warn!(version = %version.id, cause = %e, "unreadable manifest");
                refs.unreadable.push(names.version_ref(data, &version));
            }
        }
    }
    Ok(newest)
}

/// Disk names by id, looked up once.
#[derive(Debug, Default)]
struct DiskNames(HashMap<String, String>);

impl DiskNames {
    fn version_ref(&mut self, data: &DataDir, version: &VersionRow) -> VersionRef {
        let name = self
            .0
            .entry(version.disk_id.clone())
            .or_insert_with(|| {
                data.meta()
                    .disk(&version.disk_id)
                    .map_or_else(|_| version.disk_id.clone(), |d| d.name)
            })
            .clone();
        VersionRef {
            disk: name,
            disk_id: version.disk_id.clone(),
            version: version.id.clone(),
        }
    }
}

/// How one chunk checked.
enum Checked {
    Good(u64),
    Missing,
    /// Its own bytes are damaged (quarantined).
    Damaged(String),
    /// Intact itself, but stored as a patch on a base that is damaged or missing.
    OnBrokenBase(Hash),
    /// The disk failed to read it: nothing is proven, nothing moved.
    Unreadable(String),
}

/// How the broken chunks went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Damaged,
    Missing,
    Unreadable,
}

fn check_chunk(data: &DataDir, hash: &Hash, expected: Option<usize>) -> Checked {
    let max_len = expected.unwrap_or(BlockSize::MAX as usize);
    match data.store().get(hash, max_len) {
        Ok(content) => match expected {
            Some(len) if content.len() != len => {
                Checked::Damaged(format!("has {} bytes, its blocks {len}", content.len()))
            }
            _ => Checked::Good(content.len() as u64),
        },
        Err(StoreError::NotFound(_)) => Checked::Missing,
        Err(StoreError::Corrupt { at, .. }) if at != *hash => Checked::OnBrokenBase(at),
        Err(StoreError::Corrupt { cause, .. }) => {
            // An upload may have stored it anew since: quarantine only what is still bad.
            if data.store().get(hash, max_len).is_ok() {
                return Checked::Good(0);
            }
            match data.store().quarantine(hash) {
                Ok(()) => Checked::Damaged(cause.to_string()),
                Err(e) => Checked::Damaged(format!("{cause}; not quarantined: {e}")),
            }
        }
        Err(e @ StoreError::Io { .. }) => Checked::Unreadable(e.to_string()),
    }
}

/// `store verify`: reads every chunk a version references (`all`: every chunk stored),
/// checks its length and BLAKE3, quarantines the damaged, and names the versions each
/// damaged, missing or unreadable chunk breaks. A chunk the disk fails to read is
/// reported and left in place, and the scan reads on. A patch on a broken base is not
/// blamed: the base is reported with the versions of its patches too. Runs on all cores;
/// memory holds one entry per distinct referenced chunk.
///
/// # Errors
/// When the metadata or the store cannot be read.
pub fn verify(
    data: &DataDir,
    all: bool,
    progress: OnProgress<'_>,
) -> Result<VerifyReport, ServerError> {
    let mut refs = References::default();
    let mut names = DiskNames::default();
    read_references(data, 0, &mut refs, &mut names)?;
    let mut work: Vec<(Hash, Option<usize>)> = refs
        .chunks
        .iter()
        .map(|(h, len)| (*h, Some(*len)))
        .collect();
    if all {
        data.store().list(&mut |hash, _| {
            if !refs.chunks.contains_key(&hash) {
                work.push((hash, None));
            }
        })?;
    }
    let total = work.len() as u64;
    let next = AtomicUsize::new(0);
    let (done, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    // Each broken chunk with its fault and reason; patches on broken bases by base.
    let broken: Mutex<HashMap<Hash, (Fault, String)>> = Mutex::default();
    let patches: Mutex<HashMap<Hash, Vec<Hash>>> = Mutex::default();
    let note = |hash: Hash, checked: Checked| match checked {
        Checked::Good(n) => {
            bytes.fetch_add(n, Ordering::Relaxed);
        }
        Checked::Missing => {
            lock(&broken).insert(hash, (Fault::Missing, "missing".into()));
        }
        Checked::Damaged(why) => {
            lock(&broken).insert(hash, (Fault::Damaged, why));
        }
        Checked::Unreadable(why) => {
            lock(&broken).insert(hash, (Fault::Unreadable, why));
        }
        Checked::OnBrokenBase(base) => lock(&patches).entry(base).or_default().push(hash),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some((hash, expected)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                    note(*hash, check_chunk(data, hash, *expected));
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(n, total, bytes.load(Ordering::Relaxed));
                }
            });
        }
    });
    // Bases of broken patches that no version names were not checked yet.
    let unchecked: Vec<Hash> = lock(&patches)
        .keys()
        .filter(|base| !lock(&broken).contains_key(base))
        .copied()
        .collect();
    for base in unchecked {
        note(base, check_chunk(data, &base, None));
    }
    let broken = broken.into_inner().unwrap_or_else(|e| e.into_inner());
    let patches = patches.into_inner().unwrap_or_else(|e| e.into_inner());
    let involved = broken
        .keys()
        .chain(patches.values().flatten())
        .copied()
        .collect();
    let users = versions_using(data, involved, &mut names)?;
    let mut report = VerifyReport {
        chunks_checked: done.into_inner(),
        bytes_checked: bytes.into_inner(),
        unreadable_manifests: refs.unreadable,
        ..VerifyReport::default()
    };
    let mut entries: Vec<(Fault, Broken)> = broken
        .into_iter()
        .map(|(hash, (fault, reason))| {
            let on_it = patches.get(&hash).cloned().unwrap_or_default();
            let mut versions: Vec<VersionRef> = Vec::new();
            for user in std::iter::once(&hash).chain(&on_it) {
                for v in users.get(user).into_iter().flatten() {
                    if !versions.contains(v) {
                        versions.push(v.clone());
                    }
                }
            }
            let broken = Broken {
                hash: hash.to_string(),
                reason,
                versions,
                patches: on_it.iter().map(Hash::to_string).collect(),
            };
            (fault, broken)
        })
        .collect();
    entries.sort_by(|a, b| a.1.hash.cmp(&b.1.hash));
    for (fault, entry) in entries {
        match fault {
            Fault::Damaged => report.damaged.push(entry),
            Fault::Missing => report.missing.push(entry),
            Fault::Unreadable => report.unreadable.push(entry),
        }
    }
    Ok(report)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The versions whose manifests name any of `hashes`.
fn versions_using(
    data: &DataDir,
    hashes: HashSet<Hash>,
    names: &mut DiskNames,
) -> Result<HashMap<Hash, Vec<VersionRef>>, ServerError> {
    let mut out: HashMap<Hash, Vec<VersionRef>> = HashMap::new();
    if hashes.is_empty() {
        return Ok(out);
    }
    for (_, version) in data.meta().versions_since(0)? {
        let Ok(manifest) = data.manifest(&version) else {
            continue;
        };
        let named: HashSet<Hash> = manifest
            .entries()
            .iter()
            .filter_map(|e| e.hash())
            .filter(|h| hashes.contains(h))
            .collect();
        for hash in named {
            out.entry(hash)
                .or_default()
                .push(names.version_ref(data, &version));
        }
    }
    Ok(out)
}

/// `store gc`: deletes chunks no version and no live update names, temp files of writers
/// that are gone, manifests no version names, expired tokens and long-ended updates.
///
/// # Errors
/// `StoreBusy` while an import runs; otherwise when the store or metadata fail.
pub fn gc(data: &DataDir, dry_run: bool) -> Result<GcReport, ServerError> {
    let Some(_lock) = data.lock_store(true)? else {
        return Err(ServerError::StoreBusy);
    };
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let mut refs = References::default();
    let mut names = DiskNames::default();
    let mut seq = read_references(data, 0, &mut refs, &mut names)?;
    let live: HashSet<Hash> = data.meta().live_hashes()?.into_iter().collect();
    let (candidates, patches) = unreferenced(data, stored_chunks(data)?, &refs, &live)?;
    if dry_run {
        report.chunks_deleted = candidates.len() as u64;
        report.bytes_freed = candidates.iter().map(|(_, len)| len).sum();
        return Ok(report);
    }
    let (temps, temp_bytes) = data.store().remove_stale_temps()?;
    report.temp_files_deleted = temps;
    report.bytes_freed += temp_bytes;
    for batch in candidates.chunks(GC_BATCH) {
        loop {
            // Versions committed meanwhile are read outside the lock, then confirmed
            // under it.
            seq = read_references(data, seq, &mut refs, &mut names)?;
            let deleted = data.meta().exclusive(|db| -> Result<_, ServerError> {
                if db.newest_seq()? != seq {
                    return Ok(None);
                }
                let (mut chunks, mut bytes) = (0, 0);
                let mut needed =
                    |hash: &Hash| Ok(refs.chunks.contains_key(hash) || db.live_update_holds(hash)?);
                for (hash, _) in batch {
                    if patches.keeps(hash, &mut needed)? {
                        continue;
                    }
                    bytes += data.store().remove(hash)?;
                    chunks += 1;
                }
                Ok(Some((chunks, bytes)))
            })?;
            if let Some((chunks, bytes)) = deleted {
                report.chunks_deleted += chunks;
                report.bytes_freed += bytes;
                break;
            }
        }
    }
    report.manifests_deleted = remove_orphan_manifests(data)?;
    report.updates_pruned = data.meta().prune(now() - KEEP_ENDED_UPDATES_SECS)? as u64;
    Ok(report)
}

/// Every stored chunk with its stored size.
fn stored_chunks(data: &DataDir) -> Result<Vec<(Hash, u64)>, ServerError> {
    let mut stored = Vec::new();
    data.store()
        .list(&mut |hash, len| stored.push((hash, len)))?;
    Ok(stored)
}

/// Which of the `stored` chunks (with their sizes) no version, live update or patch
/// needs, and the patches among them, by base.
fn unreferenced(
    data: &DataDir,
    stored: Vec<(Hash, u64)>,
    refs: &References,
    live: &HashSet<Hash>,
) -> Result<(Vec<(Hash, u64)>, Patches), ServerError> {
    let patches = Patches::read(data, stored.iter().map(|(hash, _)| hash))?;
    let mut needed = |hash: &Hash| Ok(refs.chunks.contains_key(hash) || live.contains(hash));
    let mut unreferenced = Vec::new();
    for (hash, len) in stored {
        if !patches.keeps(&hash, &mut needed)? {
            unreferenced.push((hash, len));
        }
    }
    Ok((unreferenced, patches))
}

/// The chunks stored as patches, by the base each names.
#[derive(Debug, Default)]
struct Patches(HashMap<Hash, Vec<Hash>>);

impl Patches {
    /// Reads the layout of each of `hashes`; a chunk whose head cannot be read, or that
    /// went meanwhile, names no base.
    fn read<'a>(
        data: &DataDir,
        hashes: impl Iterator<Item = &'a Hash>,
    ) -> Result<Self, ServerError> {
        let mut on = HashMap::<Hash, Vec<Hash>>::new();
        for hash in hashes {
            match data.store().layout(hash) {
                Ok(Layout::Patch { base, .. }) => on.entry(base).or_default().push(*hash),
                Ok(Layout::Whole) | Err(StoreError::NotFound(_) | StoreError::Corrupt { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self(on))
    }

    /// Whether `hash` must stay: `needed` for itself, or the base of a patch that must.
    fn keeps(
        &self,
        hash: &Hash,
        needed: &mut dyn FnMut(&Hash) -> Result<bool, ServerError>,
    ) -> Result<bool, ServerError> {
        self.keeps_within(hash, needed, MAX_PATCH_DEPTH)
    }

    fn keeps_within(
        &self,
        hash: &Hash,
        needed: &mut dyn FnMut(&Hash) -> Result<bool, ServerError>,
        depth: u8,
    ) -> Result<bool, ServerError> {
        if needed(hash)? {
            return Ok(true);
        }
        for patch in self.0.get(hash).into_iter().flatten() {
            // Deeper than a store writes: a damaged chain; keep rather than guess.
            if depth == 0 || self.keeps_within(patch, needed, depth - 1)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Removes manifest files (and temp files) that no version names, under the database's
/// write lock so that no commit is between its manifest and its row.
fn remove_orphan_manifests(data: &DataDir) -> Result<u64, ServerError> {
    let mut by_disk: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (disk, name) in data.manifests().names()? {
        by_disk.entry(disk).or_default().push(name);
    }
    let mut removed = 0;
    for (disk_id, names) in by_disk {
        removed += data.meta().exclusive(|db| -> Result<_, ServerError> {
            let disk_known = db.disk_exists(&disk_id)?;
            let mut removed = 0;
            for name in &names {
                let keep = match name.strip_suffix(".manifest") {
                    Some(version) => disk_known && db.version_exists(&disk_id, version)?,
                    None => false,
                };
                if !keep && data.manifests().remove(&disk_id, name) {
                    removed += 1;
                }
            }
            if !disk_known {
                data.manifests().tidy(&disk_id);
            }
            Ok(removed)
        })?;
    }
    Ok(removed)
}

/// `store stats`: chunks and bytes stored, and how many no version or live update names.
///
/// # Errors
/// When the metadata or the store cannot be read.
pub fn stats(data: &DataDir) -> Result<Stats, ServerError> {
    let mut refs = References::default();
    read_references(data, 0, &mut refs, &mut DiskNames::default())?;
    let live: HashSet<Hash> = data.meta().live_hashes()?.into_iter().collect();
    let stored = stored_chunks(data)?;
    let (chunks, bytes) = (stored.len() as u64, stored.iter().map(|(_, len)| len).sum());
    let (unreferenced, _) = unreferenced(data, stored, &refs, &live)?;
    Ok(Stats {
        chunks,
        bytes,
        unreferenced_chunks: unreferenced.len() as u64,
        unreferenced_bytes: unreferenced.iter().map(|(_, len)| len).sum(),
    })
}

/// Bytes of the distinct chunks each disk's versions name (a chunk shared by two disks
/// counts for both), given the stored size of each chunk.
///
/// # Errors
/// When the metadata cannot be read.
pub fn stored_bytes_per_disk(
    data: &DataDir,
    sizes: &HashMap<Hash, u64>,
) -> Result<HashMap<String, u64>, ServerError> {
    let mut per_disk: HashMap<String, HashSet<Hash>> = HashMap::new();
    for (_, version) in data.meta().versions_since(0)? {
        if let Ok(manifest) = data.manifest(&version) {
            per_disk
                .entry(version.disk_id.clone())
                .or_default()
                .extend(manifest.entries().iter().filter_map(|e| e.hash()));
        }
    }
    Ok(per_disk
        .into_iter()
        .map(|(disk, hashes)| {
            let bytes = hashes.iter().filter_map(|h| sizes.get(h)).sum();
            (disk, bytes)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_recorded_as_figures_and_read_back() {
        let found = UpkeepOutcome::Gc {
            chunks_deleted: 3,
            bytes_freed: 3 << 20,
        };
        let recorded = serde_json::to_string(&found).unwrap();
        assert_eq!(UpkeepOutcome::parse(&recorded), Some(found.clone()));
        assert_eq!(found.english(), "3 chunks deleted, 3.0 MiB freed");
        let verify = UpkeepOutcome::Verify {
            all: true,
            chunks_checked: 9,
            damaged: 1,
            missing: 0,
            unreadable: 0,
            unreadable_manifests: 0,
        };
        assert_eq!(
            verify.english(),
            "1 damaged, 0 missing, 0 unreadable chunks, 0 unreadable manifests (--all)"
        );
        // A run an earlier release recorded as text stays as it was written.
        assert_eq!(UpkeepOutcome::parse("all well: 9 chunks checked"), None);
    }
}
