//! An in-memory chunk store, for tests and benchmarks.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::layout::{self, Layout};
use super::{ChunkStore, Paged, StoreError, Stored};
use crate::hash::Hash;

/// Chunks kept in a map, laid out as they would be on disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    chunks: Mutex<HashMap<Hash, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Bytes>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkStore for MemoryStore {
    fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.lock().contains_key(hash))
    }

    fn get(&self, hash: &Hash, max_len: usize) -> Result<Bytes, StoreError> {
        layout::content(hash, max_len, |hash| Ok(self.lock().get(hash).cloned()))
    }

    fn get_with_pages(&self, hash: &Hash, max_len: usize) -> Result<Paged, StoreError> {
        layout::content_with_pages(hash, max_len, |hash| Ok(self.lock().get(hash).cloned()))
    }

    fn layout(&self, hash: &Hash) -> Result<Layout, StoreError> {
        let bytes = self
            .lock()
            .get(hash)
            .cloned()
            .ok_or(StoreError::NotFound(*hash))?;
        layout::layout(&bytes).map_err(|cause| StoreError::Corrupt {
            hash: *hash,
            at: *hash,
            cause: Box::new(cause),
        })
    }

    fn put_many(&self, chunks: &[Stored]) -> Result<usize, StoreError> {
        let mut map = self.lock();
        let mut new = 0;
        for chunk in chunks {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(chunk.hash()) {
                let (head, payload) = layout::encode(chunk);
                slot.insert(Bytes::from([head.as_slice(), &payload].concat()));
                new += 1;
            }
        }
        Ok(new)
    }

    fn quarantine(&self, hash: &Hash) -> Result<(), StoreError> {
        self.lock().remove(hash);
        Ok(())
    }

    fn list(&self, each: &mut dyn FnMut(Hash, u64)) -> Result<(), StoreError> {
        for (hash, bytes) in self.lock().iter() {
            each(*hash, bytes.len() as u64);
        }
        Ok(())
    }

    fn remove(&self, hash: &Hash) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .remove(hash)
            .map_or(0, |bytes| bytes.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_store_contract() {
        super::super::contract::round_trips_interesting_sizes(&MemoryStore::new());
        super::super::contract::keeps_patches_over_their_bases(&MemoryStore::new());
    }
}
