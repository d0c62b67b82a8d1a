//! The chunk store: content-addressed, verified chunks.
//!
//! Only a verified chunk can be put ([`Stored`]: whole, or as a patch of a chunk the
//! store holds), and `get` checks the hash of what it read, so a store never hands out
//! content that does not match its name. The trait is the seam where an object store
//! can replace the local filesystem one.

mod fs;
mod layout;
mod memory;
mod objects;

use bytes::Bytes;

use crate::block::{ChunkError, VerifiedChunk};
pub use crate::delta::Stored;
use crate::hash::Hash;
use crate::page_tree::PageTree;

pub use fs::FsStore;
pub use layout::Layout;
pub use memory::MemoryStore;
#[cfg(any(test, feature = "contract"))]
pub use objects::contract as objects_contract;
pub use objects::{MemoryObjects, ObjectError, ObjectStore, Objects};

/// A chunk read with its page values ([`ChunkStore::get_with_pages`]).
#[derive(Debug, Clone)]
pub struct Paged {
    pub content: Bytes,
    pub tree: PageTree,
    /// How many patches deep it is stored: 0 when whole.
    pub depth: u8,
}

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

    /// The chunk's content with its page values, its hash checked through them (one pass
    /// over the content where the store can), and how many patches deep it is stored.
    ///
    /// # Errors
    /// As [`ChunkStore::get`].
    fn get_with_pages(&self, hash: &Hash, max_len: usize) -> Result<Paged, StoreError> {
        let content = self.get(hash, max_len)?;
        let tree = PageTree::of(&content);
        let depth = self.layout(hash)?.depth();
        Ok(Paged {
            content,
            tree,
            depth,
        })
    }

    /// Stores a chunk durably; returns false when it was already there.
    ///
    /// # Errors
    /// When the store cannot be written (a full disk among others).
    fn put(&self, chunk: &VerifiedChunk) -> Result<bool, StoreError> {
        Ok(self.put_many(&[Stored::Whole(chunk.clone())])? == 1)
    }

    /// How a stored chunk is laid out: whole, or a patch naming its base (read from its
    /// head, not verified).
    ///
    /// # Errors
    /// `NotFound` when absent, `Corrupt` when its head is unreadable.
    fn layout(&self, hash: &Hash) -> Result<Layout, StoreError>;

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

    /// Stores several chunks durably; returns how many were new. A patch's base must be
    /// stored already (or earlier in `chunks`).
    ///
    /// # Errors
    /// When the store cannot be written (a full disk among others).
    fn put_many(&self, chunks: &[Stored]) -> Result<usize, StoreError>;
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    NotFound(Hash),
    /// Chunk `hash` cannot be read back whole: the stored bytes of `at` are damaged or
    /// missing, where `at` is `hash` itself or, for a patch, a base below it (then the
    /// patch's own bytes are intact, and restoring the base heals it).
    #[error("stored chunk {hash} is damaged: {cause}")]
    Corrupt {
        hash: Hash,
        at: Hash,
        cause: Box<ChunkError>,
    },
    #[error("chunk store IO error at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[cfg(any(test, feature = "contract"))]
#[allow(clippy::unwrap_used)]
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
            let paged = store.get_with_pages(&chunk.hash(), max).unwrap();
            assert_eq!(
                (paged.content, paged.tree.pages(), paged.depth),
                (data, size.div_ceil(4096), 0)
            );
        }
        let a = VerifiedChunk::seal(Bytes::from_static(b"a"), 1);
        let b = VerifiedChunk::seal(Bytes::from_static(b"b"), 1);
        assert_eq!(store.put_many(&[a.clone().into()]).unwrap(), 1);
        assert_eq!(store.holds(&a.hash(), 16).unwrap(), Some(1));
        assert_eq!(store.holds(&b.hash(), 16).unwrap(), None);
    }

    /// A chain of patches, each one page off its base: read back through every base,
    /// stored whole past `MAX_PATCH_DEPTH`, and damaged when a base is gone or the chain
    /// loops.
    pub fn keeps_patches_over_their_bases(store: &dyn ChunkStore) {
        use crate::delta::{Base, Delta, MAX_PATCH_DEPTH, PAGE, PageDigests, UnverifiedDelta};
        let max = 8 * PAGE;
        let first = pattern(max, 5);
        let root = VerifiedChunk::seal(Bytes::from(first.clone()), 3);
        store.put(&root).unwrap();
        assert_eq!(store.layout(&root.hash()).unwrap(), Layout::Whole);
        let mut blocks = vec![first];
        for depth in 1..=MAX_PATCH_DEPTH + 1 {
            let old = blocks.last().unwrap().clone();
            let mut new = old.clone();
            new[usize::from(depth) * 17] ^= 0x55;
            let base = Base {
                hash: Hash::of(&old),
                pages: PageDigests::of(&old),
            };
            let delta = Delta::encode(&Bytes::from(new.clone()), &base, 3).unwrap();
            let base_depth = store.layout(&base.hash).unwrap().depth();
            let stored = UnverifiedDelta {
                hash: Hash::of(&new),
                delta,
            }
            .verify(&old, base_depth, max, 3)
            .unwrap();
            assert_eq!(
                matches!(stored, Stored::Patch(_)),
                depth <= MAX_PATCH_DEPTH,
                "depth {depth}"
            );
            assert_eq!(store.put_many(std::slice::from_ref(&stored)).unwrap(), 1);
            let hash = stored.hash();
            assert_eq!(store.get(&hash, max).unwrap(), new);
            assert_eq!(store.content_len(&hash, max).unwrap(), Some(max));
            let expected = if depth <= MAX_PATCH_DEPTH { depth } else { 0 };
            assert_eq!(store.layout(&hash).unwrap().depth(), expected);
            let paged = store.get_with_pages(&hash, max).unwrap();
            assert_eq!(
                (paged.content, paged.tree.root(), paged.depth),
                (Bytes::from(new.clone()), Some(hash), expected)
            );
            blocks.push(new);
        }
        // A block with most pages changed stands alone.
        let old = blocks.last().unwrap();
        let mut new = pattern(max, 6);
        new[..PAGE].copy_from_slice(&old[..PAGE]);
        let base = Base {
            hash: Hash::of(old),
            pages: PageDigests::of(old),
        };
        let delta = Delta::encode(&Bytes::from(new.clone()), &base, 3).unwrap();
        let stored = UnverifiedDelta {
            hash: Hash::of(&new),
            delta,
        }
        .verify(old, 0, max, 3)
        .unwrap();
        assert!(matches!(stored, Stored::Whole(_)));
        // Without its root, every patch above it is damaged and no longer held.
        let second = Hash::of(&blocks[1]);
        store.remove(&root.hash()).unwrap();
        match store.get(&second, max) {
            Err(StoreError::Corrupt { hash, cause, .. }) => {
                assert_eq!(hash, second);
                assert!(cause.to_string().contains("missing"), "{cause}");
            }
            other => panic!("a patch without its base reads as {other:?}"),
        }
        assert_eq!(store.holds(&second, max).unwrap(), None);
        assert!(!store.has(&second).unwrap(), "quarantined");
        assert!(matches!(
            store.get(&Hash::of(&blocks[2]), max),
            Err(StoreError::Corrupt { .. })
        ));
        // A patch naming itself as its base loops: refused, not followed forever.
        let looped = Hash::of(b"loop");
        let delta = Delta {
            base: looped,
            changed: Bytes::from_static(&[1]),
            pages: crate::block::Frame::raw(Bytes::from(vec![0u8; PAGE])),
        };
        let patch = crate::delta::VerifiedPatch::stored(looped, 8 * PAGE, 1, delta);
        store.put_many(&[Stored::Patch(patch)]).unwrap();
        assert!(matches!(
            store.get(&looped, max),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
