//! `migrate`: copies a data dir (users, disks, versions, manifests, chunks) into other
//! places (`--to-meta` PostgreSQL, `--to-store` an S3 bucket), verifying every chunk: each
//! is read whole and checked from the source, and read back and checked once written.
//!
//! It can be run again after an interruption: a chunk already there is kept once it reads
//! back whole, and a version is added only after its chunks and its manifest, so the
//! target never names what it lacks. Refused while an update is live.

use std::collections::HashSet;

use hotate_engine::{Hash, VerifiedChunk};
use serde::Serialize;

use crate::data::DataDir;
use crate::error::ServerError;
use crate::meta::{MetaError, UpdateQuery};

/// zstd level of the chunks copied (a patch of the source is copied as its whole block).
const COPY_LEVEL: i32 = 3;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Migrated {
    pub users: u64,
    pub disks: u64,
    pub versions: u64,
    /// Chunks written to the target, each read back whole.
    pub chunks_copied: u64,
    /// Chunks the target held already (a run before this one), each read back whole.
    pub chunks_kept: u64,
    /// Decoded bytes of the chunks copied.
    pub bytes_copied: u64,
}

/// Copies everything `from` holds into `to`; `step` hears each version as it is done.
///
/// # Errors
/// A live update in `from`, a chunk or manifest of `from` that is missing or damaged
/// (nothing of its version is added), or a failure of either side.
pub fn migrate(
    from: &DataDir,
    to: &DataDir,
    step: &mut dyn FnMut(&str),
) -> Result<Migrated, ServerError> {
    if let Some(live) = from.meta().updates(&UpdateQuery::live())?.first() {
        return Err(ServerError::BadRequest(format!(
            "update {} of disk {} from terminal {} is in progress: finish or cancel it, then \
             migrate",
            live.guid, live.disk_id, live.terminal
        )));
    }
    // The target's gc must not take the chunks copied before their version is added.
    let _lease = to.lock_store(false)?;
    let mut done = Migrated::default();
    for user in from.meta().users()? {
        let Some(hash) = from.meta().password_hash(&user.name)? else {
            continue;
        };
        match to.meta().add_user(&user.name, &hash, Some(user.role)) {
            Ok(_) => done.users += 1,
            Err(MetaError::UserExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut checked: HashSet<Hash> = HashSet::new();
    for disk in from.meta().disks()? {
        let max_len = disk.block_size as usize;
        let mut first = true;
        for version in from.meta().versions(&disk.id)? {
            let manifest = from.manifest(&version)?;
            for hash in manifest.chunk_hashes() {
                if checked.insert(hash) {
                    copy_chunk(from, to, hash, max_len, &mut done)?;
                }
            }
            to.write_manifest(&disk.id, &version.id, &manifest)?;
            let added = if first {
                match to.meta().create_disk(&disk, &version) {
                    Ok(()) => {
                        done.disks += 1;
                        true
                    }
                    // A run before this one created it.
                    Err(MetaError::DiskExists(_)) if to.meta().disk(&disk.id).is_ok() => false,
                    Err(e) => return Err(e.into()),
                }
            } else {
                to.meta().add_version(&version)?
            };
            first = false;
            if added {
                done.versions += 1;
            }
            step(&format!("{} version {}", disk.name, version.id));
        }
    }
    Ok(done)
}

/// Copies one chunk unless the target holds it whole already; either way the target's
/// copy is read back and checked.
fn copy_chunk(
    from: &DataDir,
    to: &DataDir,
    hash: Hash,
    max_len: usize,
    done: &mut Migrated,
) -> Result<(), ServerError> {
    if to.store().holds(&hash, max_len)?.is_some() {
        done.chunks_kept += 1;
        return Ok(());
    }
    let content = from.store().get(&hash, max_len)?;
    let len = content.len() as u64;
    let chunk = VerifiedChunk::seal(content, COPY_LEVEL);
    if chunk.hash() != hash {
        return Err(ServerError::Internal(format!(
            "chunk {hash} read back as another content"
        )));
    }
    to.store().put(&chunk)?;
    if to.store().holds(&hash, max_len)?.is_none() {
        return Err(ServerError::Internal(format!(
            "chunk {hash} did not read back whole from the target after it was written"
        )));
    }
    done.chunks_copied += 1;
    done.bytes_copied += len;
    Ok(())
}
