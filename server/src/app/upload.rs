//! The application side of an upload: opening a session of a live update, and
//! [`UploadRecord`], through which the session records its offers and stored chunks and
//! commits the version. The transfer service moves the bytes; every state change it
//! makes goes through here.

use std::collections::HashMap;
use std::sync::Arc;

use hotate_engine::{Entry, Hash, Manifest, Offer, Stored};

use super::{App, check_owner};
use crate::data::DataDir;
use crate::error::ServerError;
use crate::meta::{Session, UpdateRow, VersionRow, must_be_uploading, now, still_uploading};

impl App {
    /// A version of a disk named by name or id.
    ///
    /// # Errors
    /// `UnknownDisk`, `UnknownVersion`.
    pub fn version_of(&self, disk: &str, version: &str) -> Result<VersionRow, ServerError> {
        let disk = self.data.meta().disk(disk)?;
        Ok(self.data.meta().version(&disk.id, version)?)
    }

    /// A version's manifest.
    ///
    /// # Errors
    /// When it cannot be read or is damaged.
    pub fn manifest(&self, version: &VersionRow) -> Result<Manifest, ServerError> {
        self.data.manifest(version)
    }

    /// The caller's own update of `disk` in progress (an admin's: any), for a probe
    /// against `version`, which must be that update's base: a probe answers only what an
    /// upload of that update would be told.
    ///
    /// # Errors
    /// `UnknownDisk`, `NoUpdate`, or `BadRequest` for another version.
    pub fn may_probe(
        &self,
        caller: &Session,
        disk: &str,
        version: &str,
    ) -> Result<UpdateRow, ServerError> {
        let disk = self.data.meta().disk(disk)?;
        let live = self
            .data
            .meta()
            .live_update(&disk.id)?
            .filter(|update| check_owner(update, caller).is_ok())
            .ok_or_else(|| ServerError::NoUpdate {
                disk: disk.name.clone(),
            })?;
        if live.base_version != version {
            return Err(ServerError::BadRequest(format!(
                "a probe is answered against the base of the update in progress ({}), not {version}",
                live.base_version
            )));
        }
        Ok(live)
    }

    /// Checks that `caller` may upload `guid` now, before a new session takes over.
    ///
    /// # Errors
    /// `UnknownUpdate`, `NotYourUpdate`, or an update that is not uploading.
    pub fn may_upload(&self, caller: &Session, guid: &str) -> Result<(), ServerError> {
        let update = self.data.meta().update(guid)?;
        check_owner(&update, caller)?;
        Ok(must_be_uploading(&update)?)
    }

    /// Opens a new session of `guid`'s upload: offers are re-sent by every session;
    /// chunks already stored stay. Returns its base version's manifest and the
    /// session's record (which holds the update).
    ///
    /// # Errors
    /// As [`App::may_upload`], or a base manifest that cannot be read.
    pub fn open_upload(&self, guid: &str) -> Result<(Manifest, UploadRecord), ServerError> {
        let update = self.data.meta().open_session(guid)?;
        let version = self
            .data
            .meta()
            .version(&update.disk_id, &update.base_version)?;
        let parent = self.data.manifest(&version)?;
        let record = UploadRecord {
            data: self.data.clone(),
            update,
        };
        Ok((parent, record))
    }
}

/// What one session of an upload records. Its calls block: the session runs them on
/// the blocking pool.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    data: Arc<DataDir>,
    update: UpdateRow,
}

/// What the client says at the end of an upload, and who asked.
#[derive(Debug)]
pub struct Finish {
    pub block_count: u64,
    pub root: Hash,
    pub comment: String,
    /// The user the version records.
    pub creator: String,
}

impl UploadRecord {
    /// The update as this session opened it.
    pub fn update(&self) -> &UpdateRow {
        &self.update
    }

    /// Fails when the update was aborted or cancelled, or another session took it over
    /// (perhaps in another process).
    ///
    /// # Errors
    /// `UploadAborted`, `UpdateNotLive`, `TakenOver`.
    pub fn still_ours(&self) -> Result<(), ServerError> {
        let now = self.data.meta().update(&self.update.guid)?;
        Ok(still_uploading(&now, self.update.session)?)
    }

    /// Records offers (durably) before they are answered.
    ///
    /// # Errors
    /// When this session no longer holds the update, or the metadata fails.
    pub fn offers(&self, offers: &[Offer]) -> Result<(), ServerError> {
        Ok(self
            .data
            .meta()
            .record_offers(&self.update.guid, self.update.session, offers)?)
    }

    /// Stores a group of verified chunks durably and counts them (with the bytes they
    /// took on the wire) for the update.
    ///
    /// # Errors
    /// When the store or the metadata cannot be written.
    pub fn stored(&self, chunks: &[Stored], received: u64) -> Result<(), ServerError> {
        self.data.store().put_many(chunks)?;
        Ok(self
            .data
            .meta()
            .add_received(&self.update.guid, chunks.len() as u64, received)?)
    }

    /// Commits the version: the base overlaid with this session's offers must count
    /// `block_count` blocks, hold every chunk at exactly its block's length, and have the
    /// client's root. An abort or a takeover that dropped the offers while they were
    /// read is said as such, not as content that differs.
    ///
    /// # Errors
    /// `BadRequest`, `Incomplete`, `RootMismatch`, or the update no longer this session's.
    #[tracing::instrument(name = "commit", skip_all, fields(update = %self.update.guid))]
    pub fn commit(&self, parent: &Manifest, finish: Finish) -> Result<VersionRow, ServerError> {
        match self.try_commit(parent, finish) {
            Err(e @ (ServerError::Incomplete(_) | ServerError::RootMismatch(_))) => {
                self.still_ours()?;
                Err(e)
            }
            done => done,
        }
    }

    fn try_commit(&self, parent: &Manifest, finish: Finish) -> Result<VersionRow, ServerError> {
        let (data, update) = (&self.data, &self.update);
        let mut manifest = parent.clone();
        if finish.block_count != manifest.len() as u64 {
            return Err(ServerError::BadRequest(format!(
                "the client counted {} blocks, the disk has {}",
                finish.block_count,
                manifest.len()
            )));
        }
        let offers = data.meta().offers(&update.guid, update.session)?;
        let mut changed = HashMap::new();
        for offer in &offers {
            manifest.set(offer.index, offer.entry)?;
            if let Entry::Chunk(hash) = offer.entry {
                changed.insert(hash, (offer.index, manifest.block_len(offer.index)));
            }
        }
        // Every chunk is present and exactly its block's length, or nothing commits: each
        // read whole and verified, a few at once.
        let max_len = manifest.block_size().bytes();
        let changed: Vec<(Hash, (u64, usize))> = changed.into_iter().collect();
        let at_once = crate::parallel::for_blocks(max_len);
        let held = crate::parallel::map_at_once(&changed, at_once, |(hash, _)| {
            data.store().content_len(hash, max_len)
        });
        let mut missing = Vec::new();
        for ((hash, (index, len)), held) in changed.into_iter().zip(held) {
            match held? {
                None => missing.push(hash),
                Some(held) if held != len => {
                    return Err(ServerError::BadRequest(format!(
                        "block {index} has {len} bytes but its chunk {} has {held}",
                        hash.short()
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(first) = missing.first() {
            return Err(ServerError::Incomplete(format!(
                "{} chunks are missing (first {})",
                missing.len(),
                first.short()
            )));
        }
        let root = manifest.root();
        if root != finish.root {
            return Err(ServerError::RootMismatch(format!(
                "server root {} differs from the client's {}; run finish again",
                root.short(),
                finish.root.short()
            )));
        }
        let changed_blocks = manifest.diff(parent)?.count() as u64;
        let fresh = data.meta().update(&update.guid)?;
        let version = VersionRow {
            disk_id: update.disk_id.clone(),
            id: data.new_version_id(&update.disk_id)?,
            parent: Some(update.base_version.clone()),
            comment: finish.comment,
            user: finish.creator,
            terminal: update.terminal.clone(),
            created_at: now(),
            root,
            blocks_changed: changed_blocks,
            bytes_stored: fresh.bytes_received,
        };
        data.meta()
            .commit(&update.guid, update.session, &version, || {
                data.write_manifest(&version.disk_id, &version.id, &manifest)
            })?;
        tracing::info!(update = %update.guid, version = %version.id, "update committed");
        Ok(version)
    }
}
