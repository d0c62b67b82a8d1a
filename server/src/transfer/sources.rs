//! The chunks an upload's composed chunks copy pages from. A source is a chunk this
//! session offered: stored already, or sent earlier on the stream and still being
//! verified or committed (a client copies pages of chunks it has sent, not only of those
//! acknowledged, so repeats within its window of chunks in flight are copies too).
//! Verified chunks wait here until their group is durable (they are in memory anyway,
//! compressed); a copy of one still being verified waits for it. Sources read are kept a
//! while: an install copies the same runtimes into many folders, so the same few chunks
//! are copied from again and again (at most `SOURCE_CACHE` bytes per session, the least
//! recently read leaving first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hotate_engine::{ChunkStore, Hash, StoreError, Stored};

use crate::error::ServerError;

/// Bytes of source content one upload session keeps.
const SOURCE_CACHE: usize = 16 << 20;
/// Longest a copy waits for its source's verification (which the stream started first).
const SOURCE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct Sources {
    kept: Mutex<Kept>,
    /// Signalled when a chunk is verified.
    verified: Condvar,
}

#[derive(Debug, Default)]
struct Kept {
    content: HashMap<Hash, Bytes>,
    /// Oldest first; a hash may appear again once read again.
    order: VecDeque<Hash>,
    bytes: usize,
    /// Verified chunks not yet durable in the store.
    fresh: HashMap<Hash, Stored>,
}

impl Sources {
    /// A chunk of this session is verified: copies may read it before it is stored.
    pub(super) fn verified(&self, chunk: &Stored) {
        self.lock().fresh.insert(chunk.hash(), chunk.clone());
        self.verified.notify_all();
    }

    /// These chunks are durable: copies read them from the store.
    pub(super) fn stored(&self, hashes: impl IntoIterator<Item = Hash>) {
        let mut kept = self.lock();
        for hash in hashes {
            kept.fresh.remove(&hash);
        }
    }

    /// The content of chunk `hash`: kept, verified in this session, or read (and
    /// verified) from the store. `sent`: the stream received it in this session, so
    /// it may still be being verified; a copy then waits for it.
    ///
    /// # Errors
    /// `BadRequest` when the chunk is neither stored nor sent in this session (or its
    /// verification never ended); as [`ChunkStore::get`] otherwise.
    pub(super) fn get(
        &self,
        store: &dyn ChunkStore,
        hash: &Hash,
        sent: bool,
        max_len: usize,
    ) -> Result<Bytes, ServerError> {
        let give_up = Instant::now() + SOURCE_WAIT;
        let mut kept = self.lock();
        loop {
            if let Some(content) = kept.content.get(hash) {
                return Ok(content.clone());
            }
            if let Some(fresh) = kept.fresh.get(hash).cloned() {
                drop(kept);
                let content = match &fresh {
                    Stored::Whole(chunk) => chunk.frame().decode(max_len)?,
                    Stored::Patch(patch) => {
                        let base = store.get(&patch.delta().base, max_len)?;
                        patch.content(&base, max_len)?
                    }
                };
                self.keep(*hash, content.clone());
                return Ok(content);
            }
            drop(kept);
            match store.get(hash, max_len) {
                Ok(content) => {
                    self.keep(*hash, content.clone());
                    return Ok(content);
                }
                Err(StoreError::NotFound(_)) if sent && Instant::now() < give_up => {}
                Err(StoreError::NotFound(_)) => {
                    return Err(ServerError::BadRequest(format!(
                        "a chunk copies pages from chunk {}, which was not sent before it",
                        hash.short()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            kept = self.lock();
            if !kept.fresh.contains_key(hash) && !kept.content.contains_key(hash) {
                let left = give_up.saturating_duration_since(Instant::now());
                let waited = self
                    .verified
                    .wait_timeout(kept, left.min(Duration::from_millis(100)));
                kept = waited.map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
            }
        }
    }

    fn keep(&self, hash: Hash, content: Bytes) {
        let mut kept = self.lock();
        if kept.content.insert(hash, content.clone()).is_none() {
            kept.bytes += content.len();
            kept.order.push_back(hash);
        }
        while kept.bytes > SOURCE_CACHE {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(gone) = kept.content.remove(&oldest) {
                kept.bytes -= gone.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotate_engine::{MemoryStore, VerifiedChunk};
    use std::sync::Arc;

    fn chunk(seed: u8) -> (Bytes, Stored) {
        let content = Bytes::from(vec![seed; 1 << 20]);
        (
            content.clone(),
            Stored::from(VerifiedChunk::seal(content, 1)),
        )
    }

    #[test]
    fn sources_are_read_once_and_the_cache_is_bounded() {
        let store = MemoryStore::default();
        let chunks: Vec<(Bytes, Stored)> = (0..20u8).map(chunk).collect();
        for (_, stored) in &chunks {
            store.put_many(std::slice::from_ref(stored)).unwrap();
        }
        let sources = Sources::default();
        let first = chunks[0].1.hash();
        assert_eq!(
            sources.get(&store, &first, false, 1 << 20).unwrap(),
            chunks[0].0
        );
        store.remove(&first).unwrap();
        assert_eq!(
            sources.get(&store, &first, false, 1 << 20).unwrap(),
            chunks[0].0,
            "kept"
        );
        for (_, stored) in &chunks[1..] {
            sources.get(&store, &stored.hash(), false, 1 << 20).unwrap();
        }
        assert!(sources.lock().bytes <= SOURCE_CACHE);
        assert!(
            sources.get(&store, &first, false, 1 << 20).is_err(),
            "the oldest left"
        );
    }

    #[test]
    fn a_copy_waits_for_a_chunk_sent_before_it_and_reads_it_before_it_is_stored() {
        let store = Arc::new(MemoryStore::default());
        let sources = Arc::new(Sources::default());
        let (content, stored) = chunk(7);
        let hash = stored.hash();
        let reader = {
            let (store, sources) = (store.clone(), sources.clone());
            std::thread::spawn(move || sources.get(store.as_ref(), &hash, true, 1 << 20))
        };
        std::thread::sleep(Duration::from_millis(200));
        sources.verified(&stored);
        assert_eq!(reader.join().unwrap().unwrap(), content);
        sources.stored([hash]);
        assert!(sources.lock().fresh.is_empty());
        // Never sent: refused at once.
        let never = Hash::of(b"never");
        let refused = sources.get(store.as_ref(), &never, false, 1 << 20);
        assert!(matches!(refused, Err(ServerError::BadRequest(_))));
    }
}
