//! The chunks an upload's composed chunks copy pages from, read once and kept a while:
//! an install copies the same runtimes into many folders, so the same few chunks are
//! copied from again and again. At most `SOURCE_CACHE` bytes per upload session, the
//! least recently read leaving first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use hotate_engine::{ChunkStore, Hash, StoreError};

/// Bytes of source content one upload session keeps.
const SOURCE_CACHE: usize = 16 << 20;

#[derive(Debug, Default)]
pub(super) struct Sources {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    content: HashMap<Hash, Bytes>,
    /// Oldest first; a hash may appear again once read again.
    order: VecDeque<Hash>,
    bytes: usize,
}

impl Sources {
    /// The content of chunk `hash`, from the store (read and verified) unless kept.
    ///
    /// # Errors
    /// As [`ChunkStore::get`].
    pub(super) fn get(
        &self,
        store: &dyn ChunkStore,
        hash: &Hash,
        max_len: usize,
    ) -> Result<Bytes, StoreError> {
        if let Some(content) = self.lock().content.get(hash) {
            return Ok(content.clone());
        }
        let content = store.get(hash, max_len)?;
        let mut kept = self.lock();
        if kept.content.insert(*hash, content.clone()).is_none() {
            kept.bytes += content.len();
            kept.order.push_back(*hash);
        }
        while kept.bytes > SOURCE_CACHE {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(gone) = kept.content.remove(&oldest) {
                kept.bytes -= gone.len();
            }
        }
        Ok(content)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotate_engine::{MemoryStore, Stored, VerifiedChunk};

    #[test]
    fn sources_are_read_once_and_the_cache_is_bounded() {
        let store = MemoryStore::default();
        let chunks: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i; 1 << 20])).collect();
        for chunk in &chunks {
            let stored = Stored::from(VerifiedChunk::seal(chunk.clone(), 1));
            store.put_many(&[stored]).unwrap();
        }
        let sources = Sources::default();
        let first = Hash::of(&chunks[0]);
        assert_eq!(sources.get(&store, &first, 1 << 20).unwrap(), chunks[0]);
        store.remove(&first).unwrap();
        assert_eq!(
            sources.get(&store, &first, 1 << 20).unwrap(),
            chunks[0],
            "kept"
        );
        for chunk in &chunks[1..] {
            sources.get(&store, &Hash::of(chunk), 1 << 20).unwrap();
        }
        assert!(sources.lock().bytes <= SOURCE_CACHE);
        assert!(
            sources.get(&store, &first, 1 << 20).is_err(),
            "the oldest left"
        );
    }
}
