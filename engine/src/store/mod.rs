//! The chunk store: content-addressed, verified chunks.
//!
//! Only a [`VerifiedChunk`] can be put, and `get` checks the hash of what it read, so a
//! store never hands out content that does not match its name. The trait is the seam
//! where an object store can replace the local filesystem one.

mod fs;
mod memory;

use bytes::Bytes;

use crate::block::{ChunkError, VerifiedChunk};
use crate::hash::Hash;

pub use fs::FsStore;
pub use memory::MemoryStore;

/// A content-addressed store of chunks. Calls block: async callers use `spawn_blocking`.
pub trait ChunkStore: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the chunk is stored.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn has(&self, hash: &Hash) -> Result<bool, StoreError>;

    /// The chunk's decoded content, at most `max_len` bytes, its hash checked.
    ///
    /// # Errors
    /// `NotFound` when absent, `Corrupt` when the stored bytes do not match the hash.
    fn get(&self, hash: &Hash, max_len: usize) -> Result<Bytes, StoreError>;

    /// Stores a chunk durably; returns false when it was already there.
    ///
    /// # Errors
    /// When the store cannot be written (a full disk among others).
    fn put(&self, chunk: &VerifiedChunk) -> Result<bool, StoreError>;

    /// The decoded length of a stored chunk, without verifying its content (cheap where
    /// the store can read it from a header); `None` when absent.
    ///
    /// # Errors
    /// When the store cannot be read, or the chunk is damaged beyond telling its length.
    fn content_len(&self, hash: &Hash, max_len: usize) -> Result<Option<usize>, StoreError> {
        match self.get(hash, max_len) {
            Ok(content) => Ok(Some(content.len())),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves a damaged chunk out of the way, so that the store no longer claims it and
    /// the next upload or import of that content stores it again.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn quarantine(&self, hash: &Hash) -> Result<(), StoreError>;

    /// The decoded length of an intact chunk, read and verified in full; `None` when it
    /// is absent or was damaged, in which case it is quarantined. This is what dedup
    /// trusts: a damaged chunk is never counted as held.
    ///
    /// # Errors
    /// When the store cannot be read or the damaged chunk cannot be moved.
    fn holds(&self, hash: &Hash, max_len: usize) -> Result<Option<usize>, StoreError> {
        match self.get(hash, max_len) {
            Ok(content) => Ok(Some(content.len())),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(StoreError::Corrupt { cause, .. }) => {
                tracing::warn!(chunk = %hash, %cause, "damaged chunk quarantined; it will be stored again");
                self.quarantine(hash)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every chunk held with its stored size, in no particular order.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn list(&self, each: &mut dyn FnMut(Hash, u64)) -> Result<(), StoreError>;

    /// Deletes a chunk; returns the bytes freed (0 when it was absent).
    ///
    /// # Errors
    /// When the store cannot be written.
    fn remove(&self, hash: &Hash) -> Result<u64, StoreError>;

    /// Deletes what writers that are gone left half-written; returns files and bytes.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn remove_stale_temps(&self) -> Result<(u64, u64), StoreError> {
        Ok((0, 0))
    }

    /// Stores several chunks; returns how many were new.
    ///
    /// # Errors
    /// As [`ChunkStore::put`].
    fn put_many(&self, chunks: &[VerifiedChunk]) -> Result<usize, StoreError> {
        let mut new = 0;
        for chunk in chunks {
            new += usize::from(self.put(chunk)?);
        }
        Ok(new)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    NotFound(Hash),
    #[error("stored chunk {hash} is damaged: {cause}")]
    Corrupt { hash: Hash, cause: ChunkError },
    #[error("chunk store IO error at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
pub(crate) mod contract {
    //! Tests every store implementation must pass.
    use super::*;
    use crate::testdata::{SIZES, TEST_BLOCK, pattern};

    pub fn round_trips_interesting_sizes(store: &dyn ChunkStore) {
        for &size in SIZES.iter().filter(|&&s| s > 0) {
            let data = Bytes::from(pattern(size, 77));
            let chunk = VerifiedChunk::seal(data.clone(), 1);
            let max = size.max(TEST_BLOCK);
            assert!(!store.has(&chunk.hash()).unwrap());
            assert!(matches!(
                store.get(&chunk.hash(), max),
                Err(StoreError::NotFound(_))
            ));
            assert!(store.put(&chunk).unwrap());
            assert!(!store.put(&chunk).unwrap(), "second put is not new");
            assert!(store.has(&chunk.hash()).unwrap());
            assert_eq!(store.get(&chunk.hash(), max).unwrap(), data);
        }
        let a = VerifiedChunk::seal(Bytes::from_static(b"a"), 1);
        let b = VerifiedChunk::seal(Bytes::from_static(b"b"), 1);
        assert_eq!(store.put_many(std::slice::from_ref(&a)).unwrap(), 1);
        assert_eq!(store.holds(&a.hash(), 16).unwrap(), Some(1));
        assert_eq!(store.holds(&b.hash(), 16).unwrap(), None);
    }
}
