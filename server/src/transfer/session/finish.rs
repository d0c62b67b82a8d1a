//! The end of an upload: the manifest rebuilt (the base overlaid with the offers) and
//! checked complete, every chunk exactly its block's length, the root the client's;
//! then the version committed.

use std::collections::HashMap;

use hotate_engine::Entry;
use hotate_proto::pb::{self, upload_reply};
use tonic::Status;

use crate::app::blocking;
use crate::error::ServerError;
use crate::live::Counters;
use crate::meta::{VersionRow, now, still_uploading};

use super::Upload;
use crate::transfer::offers::block_len;

impl Upload {
    pub(super) async fn finish(&mut self, finish: pb::Finish) -> Result<(), Status> {
        self.drain().await?;
        if !self.pending.is_empty() {
            return Err(ServerError::Incomplete(format!(
                "{} needed chunks were not sent",
                self.pending.len()
            ))
            .into());
        }
        crate::text::check_comment(&finish.comment)?;
        let client_root = hotate_proto::parse_hash(&finish.root)
            .map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let data = self.data.clone();
        let update = self.update.clone();
        let parent = self.parent.clone();
        let mut manifest = self.parent.clone();
        let comment = finish.comment;
        let creator = self.session.user.clone();
        let block_count = finish.block_count;
        let version = blocking(move || {
            let (guid, session) = (update.guid.clone(), update.session);
            let commit = || {
                if block_count != manifest.len() as u64 {
                    return Err(ServerError::BadRequest(format!(
                        "the client counted {block_count} blocks, the disk has {}",
                        manifest.len()
                    )));
                }
                let offers = data.meta().offers(&update.guid, update.session)?;
                let mut changed = HashMap::new();
                for offer in &offers {
                    manifest.set(offer.index, offer.entry)?;
                    if let Entry::Chunk(hash) = offer.entry {
                        changed.insert(hash, (offer.index, block_len(&manifest, offer.index)));
                    }
                }
                // Every chunk is present and exactly its block's length, or nothing commits.
                let max_len = manifest.block_size().bytes();
                let mut missing = Vec::new();
                for (hash, (index, len)) in changed {
                    match data.store().content_len(&hash, max_len)? {
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
                if root != client_root {
                    return Err(ServerError::RootMismatch(format!(
                        "server root {} differs from the client's {}; run finish again",
                        root.short(),
                        client_root.short()
                    )));
                }
                let changed_blocks = manifest.diff(&parent)?.count() as u64;
                let fresh = data.meta().update(&update.guid)?;
                let version = VersionRow {
                    disk_id: update.disk_id.clone(),
                    id: data.new_version_id(&update.disk_id)?,
                    parent: Some(update.base_version.clone()),
                    comment,
                    user: creator,
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
                Ok(version)
            };
            match commit() {
                // An abort or a takeover may have dropped this session's offers while
                // they were read: say that, not that the content differs.
                Err(e @ (ServerError::Incomplete(_) | ServerError::RootMismatch(_))) => {
                    still_uploading(&data.meta().update(&guid)?, session)?;
                    Err(e)
                }
                done => done,
            }
        })
        .await?;
        Counters::add(&self.live.counters.versions_committed, 1);
        tracing::info!(update = %self.update.guid, version = %version.id, "update committed");
        self.send(upload_reply::Kind::Committed(pb::Committed {
            version: version.id,
        }))
        .await
    }
}
