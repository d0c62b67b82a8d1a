//! Pages seen once per upload. Installs repeat content (the same runtime DLLs in every
//! program folder), and file systems place file data on 4 KiB clusters at any place
//! within a block, so whole-block hashes miss the repeats. The sender keeps a
//! [`PageIndex`] of the pages it sent; a changed page that an earlier chunk of the same
//! upload carried, one the receiver has stored, travels as a reference to that chunk's
//! page. A block is then [`Composed`] of literal pages (compressed), pages of its base
//! block (as a delta), and pages copied from those chunks.
//!
//! The receiver rebuilds the block from its base, the chunks named and the literal
//! pages, and checks the whole block's BLAKE3 before it stores anything
//! ([`UnverifiedComposed::verify`]). References are a transfer encoding only: the block
//! is stored whole, or as a patch of its base as any delta, so nothing stored depends on
//! the chunks copied from, and gc, verify, export and healing are as before.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::block::{ChunkError, Frame, VerifiedChunk, is_zero, same_hash};
use crate::delta::{Base, Delta, MAX_PATCH_DEPTH, PAGE, Stored, VerifiedPatch};
use crate::hash::Hash;

/// Chunks one block may copy pages from: the receiver reads each whole, so this bounds
/// what one chunk makes it read.
pub const MAX_COPY_SOURCES: usize = 8;

/// Distinct pages a [`PageIndex`] remembers (about 3.5 GiB of pages in 24 MiB); pages
/// sent past it are not remembered, and their repeats travel as literal pages.
pub const PAGE_INDEX_ENTRIES: usize = 900_000;

/// Pages of a block copied from chunks the receiver holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copies {
    /// The chunks copied from.
    pub sources: Vec<Hash>,
    /// A bit per page of the block, least significant first: set when it is copied.
    pub map: Bytes,
    /// For each copied page in order: its source (an index into `sources`) and its
    /// page number in that source.
    pub from: Vec<(u32, u32)>,
}

/// A block as pages from three places: its base block (pages in neither map), chunks
/// the receiver holds (`copies`), and the literal pages that travel (`pages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The block the base's pages come from, which the receiver offered.
    pub base: Option<Hash>,
    /// A bit per page, least significant first: set when the page is in `pages`.
    pub literal: Bytes,
    /// The literal pages, concatenated.
    pub pages: Frame,
    pub copies: Copies,
}

fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn corrupt(what: &str) -> ChunkError {
    ChunkError::Corrupt(what.to_owned())
}

impl Composed {
    /// Bytes this takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.literal.len()
            + self.pages.payload.len()
            + self.copies.map.len()
            + self.copies.sources.len() * 32
            + self.copies.from.len() * 4
    }

    /// Refuses maps that do not fit a block of `count` pages.
    fn check(&self, count: usize) -> Result<(), ChunkError> {
        let bytes = count.div_ceil(8);
        let copies = &self.copies;
        if self.literal.len() != bytes || copies.map.len() != bytes {
            return Err(corrupt("a page map does not fit the block"));
        }
        if (count..bytes * 8).any(|i| bit(&self.literal, i) || bit(&copies.map, i)) {
            return Err(corrupt("a page map names pages beyond the block"));
        }
        if (0..count).any(|i| bit(&self.literal, i) && bit(&copies.map, i)) {
            return Err(corrupt("a page is both copied and sent"));
        }
        if self.base.is_none() && (0..count).any(|i| !bit(&self.literal, i) && !bit(&copies.map, i))
        {
            return Err(corrupt("a page comes from no base"));
        }
        let copied = (0..count).filter(|&i| bit(&copies.map, i)).count();
        if copies.from.len() != copied {
            return Err(corrupt("the copies do not match their page map"));
        }
        if copies.sources.is_empty() || copies.sources.len() > MAX_COPY_SOURCES {
            return Err(ChunkError::Corrupt(format!(
                "{} chunks to copy from; 1 to {MAX_COPY_SOURCES}",
                copies.sources.len()
            )));
        }
        if copies
            .from
            .iter()
            .any(|&(source, _)| source as usize >= copies.sources.len())
        {
            return Err(corrupt("a copy names no chunk"));
        }
        Ok(())
    }

    /// Rebuilds a block of `len` bytes from `base` (the base's content, when it has one)
    /// and `sources` (the content of each chunk copied from, in order); returns it with
    /// the map of its pages that are not the base's.
    ///
    /// # Errors
    /// When a map does not fit the block, the pages are corrupt or are not exactly the
    /// literal pages, the base is missing or of another length, or a copied page is not
    /// in its chunk.
    pub fn apply(
        &self,
        len: usize,
        base: Option<&[u8]>,
        sources: &[Bytes],
        max_len: usize,
    ) -> Result<(Bytes, Vec<u8>), ChunkError> {
        if len > max_len {
            return Err(ChunkError::TooLarge { max_len });
        }
        let count = len.div_ceil(PAGE);
        self.check(count)?;
        if sources.len() != self.copies.sources.len() {
            return Err(corrupt("the chunks copied from are missing"));
        }
        if let Some(base) = base
            && base.len() != len
        {
            return Err(ChunkError::WrongLength {
                expected: len,
                actual: base.len(),
            });
        }
        let literal = self.pages.decode(max_len)?;
        let (mut taken, mut copy) = (0, self.copies.from.iter());
        let mut block = BytesMut::with_capacity(len);
        let mut changed = vec![0u8; count.div_ceil(8)];
        for i in 0..count {
            let range = i * PAGE..((i + 1) * PAGE).min(len);
            let page_len = range.len();
            let page = if bit(&self.literal, i) {
                let page = literal
                    .get(taken..taken + page_len)
                    .ok_or_else(|| corrupt("fewer pages than the page map"))?;
                taken += page_len;
                page
            } else if bit(&self.copies.map, i) {
                let &(source, at) = copy.next().ok_or_else(|| corrupt("too few copies"))?;
                let start = at as usize * PAGE;
                sources[source as usize]
                    .get(start..start + page_len)
                    .ok_or_else(|| corrupt("a copied page is not in its chunk"))?
            } else {
                let base = base.ok_or_else(|| corrupt("a page comes from no base"))?;
                &base[range]
            };
            if bit(&self.literal, i) || bit(&self.copies.map, i) {
                changed[i / 8] |= 1 << (i % 8);
            }
            block.extend_from_slice(page);
        }
        if taken != literal.len() {
            return Err(corrupt("more pages than the page map"));
        }
        Ok((block.freeze(), changed))
    }
}

/// A composed block claimed to hash to `hash`, not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedComposed {
    pub hash: Hash,
    pub composed: Composed,
}

impl UnverifiedComposed {
    /// Rebuilds the block of `len` bytes (see [`Composed::apply`]; `base` is the base's
    /// content and how many patches deep it is) and checks its hash. It is kept as a
    /// patch of its base when at most half its pages are not the base's and the chain
    /// stays within [`MAX_PATCH_DEPTH`] (its pages compressed at `level`), else whole.
    ///
    /// # Errors
    /// As [`Composed::apply`], or when the block does not hash to the claimed hash.
    pub fn verify(
        self,
        len: usize,
        base: Option<(&[u8], u8)>,
        sources: &[Bytes],
        max_len: usize,
        level: i32,
    ) -> Result<Stored, ChunkError> {
        let composed = &self.composed;
        let (block, changed) = composed.apply(len, base.map(|(b, _)| b), sources, max_len)?;
        same_hash(self.hash, Hash::of(&block))?;
        let changed_pages: usize = changed.iter().map(|b| b.count_ones() as usize).sum();
        if let (Some(base_hash), Some((_, depth))) = (composed.base, base)
            && depth < MAX_PATCH_DEPTH
            && changed_pages * 2 <= len.div_ceil(PAGE)
        {
            let mut pages = BytesMut::with_capacity(changed_pages * PAGE);
            for (i, page) in block.chunks(PAGE).enumerate() {
                if bit(&changed, i) {
                    pages.extend_from_slice(page);
                }
            }
            let delta = Delta {
                base: base_hash,
                changed: Bytes::from(changed),
                pages: Frame::encode(pages.freeze(), level),
            };
            return Ok(Stored::Patch(VerifiedPatch::stored(
                self.hash,
                len,
                depth + 1,
                delta,
            )));
        }
        Ok(Stored::Whole(VerifiedChunk::from_hashed(
            self.hash, block, level,
        )))
    }
}

/// A page's content, wherever it lies: 16 bytes of its BLAKE3 (a false match is one in
/// 2^128, and only fails a chunk: its hash is checked).
fn page_key(page: &[u8]) -> u128 {
    let hash = blake3::hash(page);
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(key)
}

/// The pages a sender has sent or found held, by content: where each was first seen (the
/// chunk, by its place in the upload's order of chunks, and its page number there). At most
/// [`PAGE_INDEX_ENTRIES`]. Blocks are composed concurrently, so each page keeps its
/// earliest place whatever the order they come in: a block's copies depend only on the
/// chunks before it, and a dry run predicts an upload's bytes exactly.
#[derive(Debug, Default)]
pub struct PageIndex {
    pages: HashMap<u128, (u32, u32)>,
    /// Each chunk's hash, by its place.
    chunks: Vec<Option<Hash>>,
    /// The chunks whose pages are remembered.
    seen: std::collections::HashSet<Hash>,
}

impl PageIndex {
    /// Pages remembered.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Remembers the pages of `block`, a chunk hashing to `hash` that the receiver holds
    /// (at `place` in the upload's order of chunks), so later blocks may copy them. A
    /// chunk already remembered is not hashed again. Pages are hashed outside the lock.
    pub fn remember(index: &std::sync::Mutex<Self>, block: &[u8], (hash, place): (Hash, u32)) {
        if index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .contains(&hash)
        {
            return;
        }
        let keys: Vec<Option<u128>> = block
            .chunks(PAGE)
            .map(|page| (!is_zero(page)).then(|| page_key(page)))
            .collect();
        let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
        index.place(hash, place);
        let pages = keys.into_iter().enumerate();
        index.keep(pages.filter_map(|(i, key)| Some((key?, i as u32))), place);
    }

    /// Names the chunk at `place`.
    fn place(&mut self, hash: Hash, place: u32) {
        let at = place as usize;
        if self.chunks.len() <= at {
            self.chunks.resize(at + 1, None);
        }
        self.chunks[at] = Some(hash);
        self.seen.insert(hash);
    }

    /// Remembers pages (by key and page number) of the chunk at `place`: the earliest
    /// place wins, whichever block came first; past [`PAGE_INDEX_ENTRIES`], new pages are
    /// not remembered.
    fn keep(&mut self, pages: impl IntoIterator<Item = (u128, u32)>, place: u32) {
        for (key, page) in pages {
            let room = self.pages.len() < PAGE_INDEX_ENTRIES;
            match self.pages.get_mut(&key) {
                Some(first) if first.0 > place => *first = (place, page),
                Some(_) => {}
                None if room => {
                    self.pages.insert(key, (place, page));
                }
                None => {}
            }
        }
    }

    /// `block` (hashing to `hash`, the needed chunk at `place` in the upload's order) as a
    /// composed block: its pages that a chunk before `sent` (the places the receiver has
    /// been sent) carried become copies; those of `base` (when offered) stay the base's;
    /// the rest travel compressed at `level`. Remembers the pages it sends. `None` when no
    /// page is copied: the block then travels as before (whole, or as a delta against its
    /// base). Pages are hashed and compressed outside the lock.
    pub fn compose(
        index: &std::sync::Mutex<Self>,
        block: &Bytes,
        chunk: (Hash, u32),
        sent: u32,
        base: Option<&Base>,
        level: i32,
    ) -> Option<Composed> {
        let count = block.len().div_ceil(PAGE);
        let base = base.filter(|b| b.pages.pages() == count);
        let changed: Vec<(usize, &[u8])> = block
            .chunks(PAGE)
            .enumerate()
            .filter(|&(i, page)| !base.is_some_and(|b| b.pages.matches(i, page)))
            .collect();
        let base = base.map(|b| b.hash);
        Self::compose_pages(index, count, &changed, chunk, sent, base, level)
    }

    /// As [`PageIndex::compose`], for a block of `count` pages whose pages that are not
    /// its base's are `changed` (number and content, in order): all of them without a
    /// base.
    pub fn compose_pages(
        index: &std::sync::Mutex<Self>,
        count: usize,
        changed: &[(usize, &[u8])],
        (hash, place): (Hash, u32),
        sent: u32,
        base: Option<Hash>,
        level: i32,
    ) -> Option<Composed> {
        // Per page: `None` for the base's, else its key (`None` inside for zeros).
        let mut keys: Vec<Option<Option<u128>>> = vec![None; count];
        for &(i, page) in changed {
            keys[i] = Some((!is_zero(page)).then(|| page_key(page)));
        }
        let copies =
            index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .copies(&keys, (hash, place), sent)?;
        let mut literal_map = vec![0u8; count.div_ceil(8)];
        let mut literal = BytesMut::new();
        for &(i, page) in changed {
            if !bit(&copies.map, i) {
                literal_map[i / 8] |= 1 << (i % 8);
                literal.extend_from_slice(page);
            }
        }
        Some(Composed {
            base,
            literal: Bytes::from(literal_map),
            pages: Frame::encode(literal.freeze(), level),
            copies,
        })
    }

    /// The copies of a block whose pages have `keys` (as [`PageIndex::compose`] makes
    /// them), if any; remembers the pages that are not copied, as chunk `hash`'s at
    /// `place`.
    fn copies(
        &mut self,
        keys: &[Option<Option<u128>>],
        (hash, place): (Hash, u32),
        sent: u32,
    ) -> Option<Copies> {
        self.place(hash, place);
        let mut copies = Copies::default();
        let mut map = vec![0u8; keys.len().div_ceil(8)];
        let mut fresh = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = *key else { continue };
            let found = key
                .and_then(|key| self.pages.get(&key).copied())
                .filter(|&(chunk, _)| chunk < sent)
                .and_then(|(chunk, at)| Some((self.chunks[chunk as usize]?, at)));
            let slot = found.and_then(|(source, at)| {
                let slot = match copies.sources.iter().position(|s| *s == source) {
                    Some(slot) => slot,
                    None if copies.sources.len() < MAX_COPY_SOURCES => {
                        copies.sources.push(source);
                        copies.sources.len() - 1
                    }
                    None => return None,
                };
                Some((slot as u32, at))
            });
            match slot {
                Some(from) => {
                    map[i / 8] |= 1 << (i % 8);
                    copies.from.push(from);
                }
                None => fresh.extend(key.map(|key| (key, i as u32))),
            }
        }
        self.keep(fresh, place);
        if copies.from.is_empty() {
            return None;
        }
        copies.map = Bytes::from(map);
        Some(copies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::PageDigests;
    use crate::testdata::pattern;

    const BLOCK: usize = 16 * PAGE;

    fn page(seed: u64) -> Vec<u8> {
        pattern(PAGE, seed)
    }

    fn block_of(pages: &[Vec<u8>]) -> Bytes {
        Bytes::from(pages.concat())
    }

    /// Rebuilds `composed` the way a receiver would, from `held` chunks.
    fn rebuild(
        composed: &Composed,
        len: usize,
        base: Option<&[u8]>,
        held: &HashMap<Hash, Bytes>,
    ) -> Bytes {
        let sources: Vec<Bytes> = composed
            .copies
            .sources
            .iter()
            .map(|h| held[h].clone())
            .collect();
        composed.apply(len, base, &sources, BLOCK).unwrap().0
    }

    #[test]
    fn repeated_pages_travel_once_and_the_block_rebuilds() {
        let index = std::sync::Mutex::new(PageIndex::default());
        let pages: Vec<Vec<u8>> = (0..16).map(page).collect();
        let first = block_of(&pages);
        let mut held = HashMap::new();
        assert!(
            PageIndex::compose(&index, &first, (Hash::of(&first), 0), 0, None, 3).is_none(),
            "nothing seen yet"
        );
        held.insert(Hash::of(&first), first.clone());
        // The same file four pages further on, beside new pages.
        let mut moved: Vec<Vec<u8>> = (100..104).map(page).collect();
        moved.extend(pages[..12].iter().cloned());
        let second = block_of(&moved);
        let composed = PageIndex::compose(&index, &second, (Hash::of(&second), 1), 1, None, 3)
            .expect("copies");
        assert_eq!(composed.copies.from.len(), 12);
        assert_eq!(composed.copies.sources, [Hash::of(&first)]);
        assert!(
            composed.encoded_len() < 5 * PAGE,
            "{}",
            composed.encoded_len()
        );
        assert_eq!(rebuild(&composed, BLOCK, None, &held), second);
        let stored = UnverifiedComposed {
            hash: Hash::of(&second),
            composed,
        }
        .verify(BLOCK, None, std::slice::from_ref(&first), BLOCK, 3)
        .unwrap();
        assert!(matches!(stored, Stored::Whole(_)));
        // Pages of a chunk not sent before this one are not copied, whichever block was
        // composed first.
        let fresh = std::sync::Mutex::new(PageIndex::default());
        assert!(PageIndex::compose(&fresh, &second, (Hash::of(&second), 1), 0, None, 3).is_none());
        let earlier = PageIndex::compose(&fresh, &first, (Hash::of(&first), 0), 0, None, 3);
        assert!(earlier.is_none(), "a later chunk's pages are never copied");
        let later = block_of(&[moved[4..].to_vec(), (500..504).map(page).collect()].concat());
        let composed =
            PageIndex::compose(&fresh, &later, (Hash::of(&later), 2), 2, None, 3).expect("copies");
        assert_eq!(
            composed.copies.sources,
            [Hash::of(&first)],
            "the earliest place"
        );
    }

    #[test]
    fn base_pages_copies_and_literals_make_one_block_kept_as_a_patch() {
        let index = std::sync::Mutex::new(PageIndex::default());
        let runtime = block_of(&(0..16).map(page).collect::<Vec<_>>());
        PageIndex::compose(&index, &runtime, (Hash::of(&runtime), 0), 0, None, 3);
        // A base block; the new block keeps ten of its pages, copies four, adds two.
        let old: Vec<Vec<u8>> = (200..216).map(page).collect();
        let mut new = old.clone();
        new[3] = page(5);
        new[4] = page(6);
        new[9] = page(7);
        new[10] = page(8);
        new[14] = page(300);
        new[15] = vec![0; PAGE];
        let (old, new) = (block_of(&old), block_of(&new));
        let base = Base {
            hash: Hash::of(&old),
            pages: PageDigests::of(&old),
        };
        let composed = PageIndex::compose(&index, &new, (Hash::of(&new), 1), 1, Some(&base), 3)
            .expect("copies");
        assert_eq!(composed.base, Some(base.hash));
        assert_eq!(composed.copies.from, [(0, 5), (0, 6), (0, 7), (0, 8)]);
        let held = HashMap::from([(Hash::of(&runtime), runtime.clone())]);
        assert_eq!(rebuild(&composed, BLOCK, Some(&old), &held), new);
        let claim = UnverifiedComposed {
            hash: Hash::of(&new),
            composed: composed.clone(),
        };
        let Stored::Patch(patch) = claim
            .verify(
                BLOCK,
                Some((&old, 0)),
                std::slice::from_ref(&runtime),
                BLOCK,
                3,
            )
            .unwrap()
        else {
            panic!("six of sixteen pages changed: a patch of the base");
        };
        assert_eq!(patch.content(&old, BLOCK).unwrap(), new);
        assert_eq!(patch.depth(), 1);
        // Deep chains are stored whole.
        let claim = UnverifiedComposed {
            hash: Hash::of(&new),
            composed: composed.clone(),
        };
        let deep = claim.verify(
            BLOCK,
            Some((&old, MAX_PATCH_DEPTH)),
            std::slice::from_ref(&runtime),
            BLOCK,
            3,
        );
        assert!(matches!(deep.unwrap(), Stored::Whole(_)));
        // Another claimed hash, another source's content, no base: refused.
        let claim = UnverifiedComposed {
            hash: Hash::of(&old),
            composed: composed.clone(),
        };
        assert!(matches!(
            claim.verify(
                BLOCK,
                Some((&old, 0)),
                std::slice::from_ref(&runtime),
                BLOCK,
                3
            ),
            Err(ChunkError::HashMismatch { .. })
        ));
        let claim = UnverifiedComposed {
            hash: Hash::of(&new),
            composed: composed.clone(),
        };
        assert!(
            claim
                .verify(BLOCK, Some((&old, 0)), std::slice::from_ref(&old), BLOCK, 3)
                .is_err()
        );
        assert!(composed.apply(BLOCK, None, &[runtime], BLOCK).is_err());
    }

    #[test]
    fn the_sources_per_block_and_the_index_are_bounded() {
        let index = std::sync::Mutex::new(PageIndex::default());
        // Ten chunks, each with one page the next block repeats.
        let mut repeated = Vec::new();
        for n in 0..10u64 {
            let mut pages: Vec<Vec<u8>> = (0..16).map(|i| page(1000 * (n + 1) + i)).collect();
            pages[0] = page(n);
            let block = block_of(&pages);
            PageIndex::compose(&index, &block, (Hash::of(&block), n as u32), 0, None, 3);
            repeated.push(page(n));
        }
        repeated.extend((0..6).map(|i| page(50_000 + i)));
        let block = block_of(&repeated);
        let composed =
            PageIndex::compose(&index, &block, (Hash::of(&block), 10), 10, None, 3).unwrap();
        assert_eq!(composed.copies.sources.len(), MAX_COPY_SOURCES);
        assert_eq!(composed.copies.from.len(), MAX_COPY_SOURCES);
        assert!(index.lock().unwrap().len() <= PAGE_INDEX_ENTRIES);
    }

    proptest::proptest! {
        #[test]
        fn hostile_composed_blocks_are_refused_without_panic(
            literal in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            map in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            from in proptest::collection::vec((0u32..10, 0u32..40), 0..20),
            sources in 0usize..10,
            pages in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3 * PAGE),
            with_base in proptest::prelude::any::<bool>(),
        ) {
            let base = pattern(BLOCK, 8);
            let composed = Composed {
                base: with_base.then(|| Hash::of(&base)),
                literal: Bytes::from(literal),
                pages: Frame::raw(Bytes::from(pages)),
                copies: Copies {
                    sources: (0..sources).map(|i| Hash::of(&[i as u8])).collect(),
                    map: Bytes::from(map),
                    from,
                },
            };
            let held: Vec<Bytes> = (0..sources).map(|i| Bytes::from(pattern(BLOCK, i as u64))).collect();
            if let Ok((block, _)) = composed.apply(BLOCK, with_base.then_some(&base[..]), &held, BLOCK) {
                proptest::prop_assert_eq!(block.len(), BLOCK);
            }
        }
    }
}
