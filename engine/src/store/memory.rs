//! An in-memory chunk store, for tests and benchmarks.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::{ChunkStore, StoreError};
use crate::block::{Frame, UnverifiedChunk, VerifiedChunk};
use crate::hash::Hash;

/// Chunks kept in a map, encoded as they would be on disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    chunks: Mutex<HashMap<Hash, Frame>>,
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

    /// Replaces a chunk's stored frame, bypassing verification: tests damage chunks so.
    pub fn tamper(&self, hash: &Hash, frame: Frame) {
        self.lock().insert(*hash, frame);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Frame>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkStore for MemoryStore {
    fn has(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.lock().contains_key(hash))
    }

    fn get(&self, hash: &Hash, max_len: usize) -> Result<Bytes, StoreError> {
        let frame = self
            .lock()
            .get(hash)
            .cloned()
            .ok_or(StoreError::NotFound(*hash))?;
        UnverifiedChunk { hash: *hash, frame }
            .content(max_len)
            .map_err(|cause| StoreError::Corrupt { hash: *hash, cause })
    }

    fn put(&self, chunk: &VerifiedChunk) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .insert(chunk.hash(), chunk.frame().clone())
            .is_none())
    }

    fn quarantine(&self, hash: &Hash) -> Result<(), StoreError> {
        self.lock().remove(hash);
        Ok(())
    }

    fn list(&self, each: &mut dyn FnMut(Hash, u64)) -> Result<(), StoreError> {
        for (hash, frame) in self.lock().iter() {
            each(*hash, frame.payload.len() as u64);
        }
        Ok(())
    }

    fn remove(&self, hash: &Hash) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .remove(hash)
            .map_or(0, |frame| frame.payload.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_store_contract() {
        super::super::contract::round_trips_interesting_sizes(&MemoryStore::new());
    }
}
