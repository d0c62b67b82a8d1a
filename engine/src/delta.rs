//! Page deltas: a changed block sent as only the pages that differ from a block the
//! receiver already holds.
//!
//! An install rewrites files, not whole blocks, so a changed block often keeps most of its
//! 4 KiB pages: the tail of a new file beside an untouched neighbour, an inode table with
//! a few entries rewritten. The receiver describes a base block it holds (the parent
//! version's block at the same index) by a digest per page ([`PageDigests`]); the sender
//! sends the pages whose digest differs ([`Delta`]); the receiver rebuilds the block from
//! the base and those pages and checks the whole block's BLAKE3 like any chunk's
//! ([`UnverifiedDelta::verify`]). A digest collision can therefore only fail a chunk,
//! never store a wrong one.

use bytes::{Bytes, BytesMut};

use crate::block::{ChunkError, Frame, VerifiedChunk, same_hash};
use crate::hash::Hash;
use crate::page_tree::{PageTree, page_value, root_of};

pub use crate::page_tree::PAGE;

/// Bytes of one page digest (the page's BLAKE3 chaining value in its block, cut short) as
/// this side makes them: a false match is one in 2^64 per page, and it only fails a chunk
/// (its hash is checked).
pub const DIGEST_LEN: usize = 8;
/// Digest widths a receiver accepts: shorter would fail chunks too often.
const DIGEST_WIDTHS: std::ops::RangeInclusive<usize> = 8..=32;

/// A digest of every page of a block, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDigests {
    width: usize,
    digests: Bytes,
}

impl PageDigests {
    /// Digests the pages of `block` (the last may be short).
    pub fn of(block: &[u8]) -> Self {
        Self::of_width(block, DIGEST_LEN)
    }

    /// Digests the pages of `block`, `width` bytes each (at most 32).
    pub fn of_width(block: &[u8], width: usize) -> Self {
        Self::of_tree(&PageTree::of(block), width)
    }

    /// The digests of a block whose page values are known, `width` bytes each.
    pub fn of_tree(tree: &PageTree, width: usize) -> Self {
        let width = width.min(32);
        let mut out = BytesMut::with_capacity(tree.pages() * width);
        for i in 0..tree.pages() {
            out.extend_from_slice(&tree.value(i)[..width]);
        }
        Self {
            width,
            digests: out.freeze(),
        }
    }

    /// Digests as they travel: `width` bytes per page.
    ///
    /// # Errors
    /// When the width is outside 8..=32 bytes or the length is not a whole number of
    /// digests.
    pub fn from_bytes(digests: Bytes, width: usize) -> Result<Self, ChunkError> {
        if DIGEST_WIDTHS.contains(&width) && digests.len().is_multiple_of(width) {
            Ok(Self { width, digests })
        } else {
            Err(ChunkError::Corrupt(format!(
                "{} bytes of page digests are not a whole number of {width}-byte digests",
                digests.len()
            )))
        }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.digests
    }

    /// Bytes per digest.
    pub fn width(&self) -> usize {
        self.width
    }

    /// How many pages the block has.
    pub fn pages(&self) -> usize {
        self.digests.len() / self.width
    }

    /// Whether `page` (page number `index`) has the digest this page has.
    pub fn matches(&self, index: usize, page: &[u8]) -> bool {
        let (start, width) = (index * self.width, self.width);
        page_value(index, page)[..width] == self.digests[start..start + width]
    }

    /// Whether page `index` has the same digest here and in `other`, as far as the
    /// narrower of the two goes (at least 8 bytes).
    pub fn same_page(&self, other: &Self, index: usize) -> bool {
        let width = self.width.min(other.width);
        let (mine, theirs) = (index * self.width, index * other.width);
        self.digests[mine..mine + width] == other.digests[theirs..theirs + width]
    }
}

/// A block the receiver holds and offers as the base of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub hash: Hash,
    pub pages: PageDigests,
}

/// The pages of a block that differ from a base block, compressed as one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The block the unchanged pages come from.
    pub base: Hash,
    /// A bit per page, least significant first: set when the page is in `pages`.
    pub changed: Bytes,
    /// The changed pages, concatenated.
    pub pages: Frame,
}

impl Delta {
    /// The delta of `block` against `base`, or `None` when no page is the same (then
    /// the whole block is cheaper) or the block has another page count.
    pub fn encode(block: &Bytes, base: &Base, level: i32) -> Option<Self> {
        let count = block.len().div_ceil(PAGE);
        if count != base.pages.pages() {
            return None;
        }
        let mut changed = vec![0u8; count.div_ceil(8)];
        let mut pages = BytesMut::new();
        for (i, page) in block.chunks(PAGE).enumerate() {
            if !base.pages.matches(i, page) {
                changed[i / 8] |= 1 << (i % 8);
                pages.extend_from_slice(page);
            }
        }
        if pages.len() == block.len() {
            return None;
        }
        Some(Self {
            base: base.hash,
            changed: Bytes::from(changed),
            pages: Frame::encode(pages.freeze(), level),
        })
    }

    /// Bytes this delta takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.changed.len() + self.pages.payload.len()
    }

    fn is_changed(&self, page: usize) -> bool {
        self.changed[page / 8] & (1 << (page % 8)) != 0
    }

    /// Refuses a page map that does not fit a block of `count` pages.
    fn check_map(&self, count: usize) -> Result<(), ChunkError> {
        if self.changed.len() != count.div_ceil(8)
            || (count..self.changed.len() * 8).any(|i| self.is_changed(i))
        {
            return Err(ChunkError::Corrupt(
                "the page map does not fit the base block".into(),
            ));
        }
        Ok(())
    }

    /// How many pages it changes.
    pub fn changed_pages(&self) -> usize {
        self.changed.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Rebuilds the block from the base block's content.
    ///
    /// # Errors
    /// When the page map does not fit the base, or the pages are corrupt or are not
    /// exactly the changed pages.
    pub fn apply(&self, base: &[u8], max_len: usize) -> Result<Bytes, ChunkError> {
        let pages = self.pages.decode(max_len)?;
        let mut changed = self
            .changed_slices(base.len(), &pages)?
            .into_iter()
            .peekable();
        let mut block = BytesMut::with_capacity(base.len());
        for (i, old) in base.chunks(PAGE).enumerate() {
            match changed.next_if(|(page, _)| *page == i) {
                Some((_, new)) => block.extend_from_slice(new),
                None => block.extend_from_slice(old),
            }
        }
        Ok(block.freeze())
    }

    /// Each changed page of a block of `len` bytes, by number, cut from `pages` (the
    /// decoded changed pages).
    ///
    /// # Errors
    /// When the page map does not fit the block, or `pages` are not exactly the changed
    /// pages.
    fn changed_slices<'a>(
        &self,
        len: usize,
        pages: &'a [u8],
    ) -> Result<Vec<(usize, &'a [u8])>, ChunkError> {
        let count = len.div_ceil(PAGE);
        self.check_map(count)?;
        let mut slices = Vec::new();
        let mut taken = 0;
        for i in (0..count).filter(|&i| self.is_changed(i)) {
            let page_len = (len - i * PAGE).min(PAGE);
            let page = pages
                .get(taken..taken + page_len)
                .ok_or_else(|| ChunkError::Corrupt("fewer pages than the page map".into()))?;
            slices.push((i, page));
            taken += page_len;
        }
        if taken != pages.len() {
            return Err(ChunkError::Corrupt("more pages than the page map".into()));
        }
        Ok(slices)
    }
}

/// A delta claimed to rebuild a block hashing to `hash`, not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedDelta {
    pub hash: Hash,
    pub delta: Delta,
}

impl UnverifiedDelta {
    /// Rebuilds the block from `base` (the content of `delta.base`, itself `base_depth`
    /// patches deep) and checks its hash. The block is kept as a patch of the base when
    /// at most half its pages changed and the chain stays within [`MAX_PATCH_DEPTH`]:
    /// a few changed pages then cost their own bytes in the store and no compression.
    /// Otherwise it is compressed at `level` into a chunk that stands alone.
    ///
    /// # Errors
    /// As [`Delta::apply`], or when the rebuilt block does not hash to the claimed hash.
    pub fn verify(
        self,
        base: &[u8],
        base_depth: u8,
        max_len: usize,
        level: i32,
    ) -> Result<Stored, ChunkError> {
        let block = self.delta.apply(base, max_len)?;
        same_hash(self.hash, Hash::of(&block))?;
        if patchable(self.delta.changed_pages(), block.len(), base_depth) {
            Ok(Stored::Patch(VerifiedPatch {
                hash: self.hash,
                len: block.len(),
                depth: base_depth + 1,
                delta: self.delta,
            }))
        } else {
            Ok(Stored::Whole(VerifiedChunk::from_hashed(
                self.hash, block, level,
            )))
        }
    }

    /// Checks the delta against its base's page values (`base`, of the base named),
    /// hashing only the changed pages, and keeps it as a patch of the base (`base_depth`
    /// patches deep). `None` when it would not be kept as a patch: then
    /// [`UnverifiedDelta::verify`] rebuilds it from the base's content.
    ///
    /// # Errors
    /// When the page map does not fit the base, the pages are corrupt or are not exactly
    /// the changed pages, or the block does not hash to the claimed hash.
    pub fn verify_by_pages(
        &self,
        base: &PageTree,
        base_depth: u8,
        max_len: usize,
    ) -> Result<Option<Stored>, ChunkError> {
        let (len, count) = (base.len(), base.pages());
        self.delta.check_map(count)?;
        if !patchable(self.delta.changed_pages(), len, base_depth) || count < 2 {
            return Ok(None);
        }
        let pages = self.delta.pages.decode(max_len)?;
        let mut values: Vec<_> = (0..count).map(|i| *base.value(i)).collect();
        for (i, page) in self.delta.changed_slices(len, &pages)? {
            values[i] = page_value(i, page);
        }
        let actual =
            root_of(len, &|i| values[i]).ok_or_else(|| ChunkError::Corrupt("one page".into()))?;
        same_hash(self.hash, actual)?;
        Ok(Some(Stored::Patch(VerifiedPatch {
            hash: self.hash,
            len,
            depth: base_depth + 1,
            delta: self.delta.clone(),
        })))
    }
}

/// Whether a block of `len` bytes with `changed` pages changed is kept as a patch of a
/// base `base_depth` patches deep: at most half its pages changed, and the chain stays
/// within [`MAX_PATCH_DEPTH`].
fn patchable(changed: usize, len: usize, base_depth: u8) -> bool {
    base_depth < MAX_PATCH_DEPTH && changed * 2 <= len.div_ceil(PAGE)
}

/// Patches on patches go at most this deep, so reading a chunk reads at most this many
/// bases; a block that would go deeper is stored whole.
pub const MAX_PATCH_DEPTH: u8 = 4;

/// A block known to be its base's content with these pages changed, to hash to `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPatch {
    hash: Hash,
    len: usize,
    depth: u8,
    delta: Delta,
}

impl VerifiedPatch {
    /// A patch read back from a store: trusted only once its content is rebuilt and
    /// its hash checked, which [`VerifiedPatch::content`] does.
    pub(crate) fn stored(hash: Hash, len: usize, depth: u8, delta: Delta) -> Self {
        Self {
            hash,
            len,
            depth,
            delta,
        }
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Length of the block.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many patches deep: 1 on a whole chunk.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    pub fn delta(&self) -> &Delta {
        &self.delta
    }

    /// The block rebuilt from its base's content, its length and hash checked.
    ///
    /// # Errors
    /// When the pages do not fit the base or the block is not the one named.
    pub fn content(&self, base: &[u8], max_len: usize) -> Result<Bytes, ChunkError> {
        let block = self.rebuild(base, max_len)?;
        same_hash(self.hash, Hash::of(&block))?;
        Ok(block)
    }

    /// The block rebuilt from its base's content, its length checked but not its hash.
    ///
    /// # Errors
    /// When the pages do not fit the base or the block has another length.
    pub(crate) fn rebuild(&self, base: &[u8], max_len: usize) -> Result<Bytes, ChunkError> {
        let block = self.delta.apply(base, max_len)?;
        if block.len() != self.len {
            return Err(ChunkError::WrongLength {
                expected: self.len,
                actual: block.len(),
            });
        }
        Ok(block)
    }
}

/// A chunk as it arrives: whole, or as a delta against a block the receiver holds.
#[derive(Debug, Clone)]
pub enum Incoming {
    Whole(crate::block::UnverifiedChunk),
    Delta(UnverifiedDelta),
    /// Pages copied from chunks the receiver holds, besides literal and base pages.
    Composed(crate::copies::UnverifiedComposed),
}

impl Incoming {
    pub fn hash(&self) -> Hash {
        match self {
            Self::Whole(chunk) => chunk.hash,
            Self::Delta(delta) => delta.hash,
            Self::Composed(composed) => composed.hash,
        }
    }

    /// The base block it is built on, if any.
    pub fn base(&self) -> Option<Hash> {
        match self {
            Self::Whole(_) => None,
            Self::Delta(delta) => Some(delta.delta.base),
            Self::Composed(composed) => composed.composed.base,
        }
    }

    /// Bytes it took on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Whole(chunk) => chunk.frame.payload.len(),
            Self::Delta(delta) => delta.delta.encoded_len(),
            Self::Composed(composed) => composed.composed.encoded_len(),
        }
    }
}

/// A needed chunk as it leaves: whole, or as a delta against a base the receiver offered.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Whole(VerifiedChunk),
    /// The pages of a block of `len` bytes that differ from a base.
    Delta {
        hash: Hash,
        len: usize,
        delta: Delta,
    },
    /// A block of `len` bytes with pages copied from chunks the receiver holds.
    Composed {
        hash: Hash,
        len: usize,
        composed: crate::copies::Composed,
    },
}

impl Outgoing {
    /// The hash of the block this carries.
    pub fn hash(&self) -> Hash {
        match self {
            Self::Whole(chunk) => chunk.hash(),
            Self::Delta { hash, .. } | Self::Composed { hash, .. } => *hash,
        }
    }

    /// Bytes of the block this carries.
    pub fn block_len(&self) -> usize {
        match self {
            Self::Whole(chunk) => chunk.len(),
            Self::Delta { len, .. } | Self::Composed { len, .. } => *len,
        }
    }

    /// Bytes this takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Whole(chunk) => chunk.encoded_len(),
            Self::Delta { delta, .. } => delta.encoded_len(),
            Self::Composed { composed, .. } => composed.encoded_len(),
        }
    }
}

/// A verified chunk as a store keeps it.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Its whole content in one frame.
    Whole(VerifiedChunk),
    /// The pages that differ from a chunk the store holds (its base): a few changed
    /// pages cost their own bytes, not a whole block's. The base must outlive it.
    Patch(VerifiedPatch),
}

impl Stored {
    pub fn hash(&self) -> Hash {
        match self {
            Self::Whole(chunk) => chunk.hash(),
            Self::Patch(patch) => patch.hash(),
        }
    }

    /// Length of the block's content.
    pub fn len(&self) -> usize {
        match self {
            Self::Whole(chunk) => chunk.len(),
            Self::Patch(patch) => patch.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of its payload: a whole chunk's frame, a patch's page map and pages.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Whole(chunk) => chunk.encoded_len(),
            Self::Patch(patch) => patch.delta().encoded_len(),
        }
    }

    /// Refuses a chunk whose content is not exactly its block's length.
    ///
    /// # Errors
    /// `WrongLength` when it differs.
    pub fn check_len(self, expected: usize) -> Result<Self, ChunkError> {
        if self.len() == expected {
            Ok(self)
        } else {
            Err(ChunkError::WrongLength {
                expected,
                actual: self.len(),
            })
        }
    }
}

impl From<VerifiedChunk> for Stored {
    fn from(chunk: VerifiedChunk) -> Self {
        Self::Whole(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Codec;
    use crate::page_tree::PageTree;
    use crate::testdata::{SIZES, pattern};
    use proptest::prelude::*;

    fn base_of(block: &[u8]) -> Base {
        Base {
            hash: Hash::of(block),
            pages: PageDigests::of(block),
        }
    }

    fn rebuild(new: &[u8], old: &[u8]) -> Option<(Delta, Bytes)> {
        let delta = Delta::encode(&Bytes::copy_from_slice(new), &base_of(old), 3)?;
        let back = delta.apply(old, new.len()).unwrap();
        Some((delta, back))
    }

    #[test]
    fn only_changed_pages_travel_for_every_size() {
        for &size in SIZES.iter().filter(|&&s| s > PAGE) {
            let old = pattern(size, 1);
            let mut new = old.clone();
            new[PAGE + 7] ^= 0xff; // page 1
            new[size - 1] ^= 0xff; // the last, maybe short, page
            let (delta, back) = rebuild(&new, &old).expect("most pages are unchanged");
            assert_eq!(back, new, "size {size}");
            let last = (size - 1) / PAGE;
            let sent = PAGE + (size - last * PAGE);
            assert_eq!(delta.pages.decode(size).unwrap().len(), sent, "size {size}");
        }
    }

    #[test]
    fn no_delta_when_every_page_differs_or_the_page_count_differs() {
        let old = pattern(3 * PAGE, 1);
        assert!(rebuild(&pattern(3 * PAGE, 2), &old).is_none());
        assert!(rebuild(&old[..2 * PAGE], &old).is_none());
    }

    #[test]
    fn a_wrong_base_or_damaged_delta_is_refused() {
        let old = pattern(8 * PAGE, 1);
        let mut new = old.clone();
        new[0] ^= 1;
        let (delta, _) = rebuild(&new, &old).unwrap();
        let claim = |delta: Delta| UnverifiedDelta {
            hash: Hash::of(&new),
            delta,
        };
        assert!(claim(delta.clone()).verify(&old, 0, old.len(), 3).is_ok());
        // Applied to another base, the block does not hash right.
        let other = pattern(8 * PAGE, 9);
        assert!(matches!(
            claim(delta.clone()).verify(&other, 0, old.len(), 3),
            Err(ChunkError::HashMismatch { .. })
        ));
        // A page map naming more pages than were sent, or pages beyond the block.
        let mut more = delta.clone();
        more.changed = Bytes::from_static(&[0b11]);
        assert!(more.apply(&old, old.len()).is_err());
        let mut beyond = delta.clone();
        beyond.changed = Bytes::from_static(&[0b1, 0b1]);
        assert!(beyond.apply(&old, old.len()).is_err());
        // Pages decoding larger than the bound.
        assert!(delta.apply(&old, 100).is_err());
        assert!(PageDigests::from_bytes(Bytes::from_static(&[0; 17]), 8).is_err());
        assert!(PageDigests::from_bytes(Bytes::from_static(&[0; 16]), 4).is_err());
        assert!(PageDigests::from_bytes(Bytes::from_static(&[0; 32]), 16).is_ok());
    }

    #[test]
    fn a_delta_is_checked_by_its_changed_pages_alone() {
        let old = pattern(16 * PAGE + 100, 1);
        let mut new = old.clone();
        new[3 * PAGE + 5] ^= 1;
        new[16 * PAGE + 99] ^= 1; // the short last page
        let (delta, _) = rebuild(&new, &old).unwrap();
        let tree = PageTree::of(&old);
        let claim = |hash: Hash, delta: Delta| UnverifiedDelta { hash, delta };
        let by_pages = claim(Hash::of(&new), delta.clone())
            .verify_by_pages(&tree, 0, old.len())
            .unwrap();
        let Some(Stored::Patch(patch)) = by_pages else {
            panic!("two changed pages of seventeen: a patch");
        };
        assert_eq!(patch.content(&old, old.len()).unwrap(), new);
        assert_eq!(patch.depth(), 1);
        // Another claimed hash, a map naming a page not sent, pages of another base.
        assert!(matches!(
            claim(Hash::of(&old), delta.clone()).verify_by_pages(&tree, 0, old.len()),
            Err(ChunkError::HashMismatch { .. })
        ));
        let mut more = delta.clone();
        more.changed = Bytes::from_static(&[0b1001, 0, 0b1]);
        assert!(
            claim(Hash::of(&new), more)
                .verify_by_pages(&tree, 0, old.len())
                .is_err()
        );
        let other = PageTree::of(&pattern(16 * PAGE + 100, 2));
        assert!(matches!(
            claim(Hash::of(&new), delta.clone()).verify_by_pages(&other, 0, old.len()),
            Err(ChunkError::HashMismatch { .. })
        ));
        // Too deep a chain, or most pages changed: left to the rebuild.
        let deep = claim(Hash::of(&new), delta).verify_by_pages(&tree, MAX_PATCH_DEPTH, old.len());
        assert!(deep.unwrap().is_none());
        let most = pattern(16 * PAGE + 100, 3);
        let mut mostly = most.clone();
        mostly[..PAGE].copy_from_slice(&old[..PAGE]);
        let (delta, _) = rebuild(&mostly, &old).unwrap();
        let by_pages = claim(Hash::of(&mostly), delta).verify_by_pages(&tree, 0, old.len());
        assert!(by_pages.unwrap().is_none());
    }

    proptest! {
        #[test]
        fn hostile_deltas_are_refused_without_panic(
            base_len in 0usize..5 * PAGE,
            changed in prop::collection::vec(any::<u8>(), 0..4),
            pages in prop::collection::vec(any::<u8>(), 0..3 * PAGE),
            zstd in any::<bool>(),
        ) {
            let base = pattern(base_len, 8);
            let delta = Delta {
                base: Hash::of(&base),
                changed: Bytes::from(changed),
                pages: Frame {
                    codec: if zstd { Codec::Zstd } else { Codec::Raw },
                    payload: Bytes::from(pages),
                },
            };
            if let Ok(block) = delta.apply(&base, 5 * PAGE) {
                prop_assert_eq!(block.len(), base.len());
            }
        }

        #[test]
        fn deltas_rebuild_the_block(
            pages in 1usize..24,
            tail in 1usize..=PAGE,
            flips in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
        ) {
            let size = (pages - 1) * PAGE + tail;
            let old = pattern(size, 3);
            let mut new = old.clone();
            for flip in &flips {
                new[flip.index(size)] ^= 0x5a;
            }
            match rebuild(&new, &old) {
                Some((delta, back)) => {
                    prop_assert_eq!(&back, &Bytes::from(new.clone()));
                    let claim = UnverifiedDelta { hash: Hash::of(&new), delta };
                    let by_pages = claim.verify_by_pages(&PageTree::of(&old), 0, size);
                    if let Some(Stored::Patch(patch)) = by_pages.unwrap() {
                        prop_assert_eq!(patch.content(&old, size).unwrap(), back);
                    }
                }
                // Only when every page changed.
                None => prop_assert!(new
                    .chunks(PAGE)
                    .zip(old.chunks(PAGE))
                    .all(|(a, b)| a != b)),
            }
        }
    }
}
