//! A block's BLAKE3 tree cut at its 4 KiB pages.
//!
//! BLAKE3 hashes 1 KiB chunks into a binary tree whose left subtrees are whole powers of
//! two, so every 4 KiB page of a block is a subtree of its own: the page's chaining value
//! (which depends on where the page lies) and the tree's shape give the block's hash.
//! The server keeps these values for a base block while a delta against it is on its
//! way; the delta's block is then checked by hashing only its changed pages. Page
//! digests are these values cut short, so one pass over a base yields both.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::hash::Hash;

/// Bytes per page: the cluster size of the filesystems terminals use (NTFS, ext4).
pub const PAGE: usize = 4096;

/// The chaining value of page `index` of a block (the last page may be short).
pub fn page_value(index: usize, page: &[u8]) -> ChainingValue {
    debug_assert!(!page.is_empty() && page.len() <= PAGE);
    blake3::Hasher::new()
        .set_input_offset((index * PAGE) as u64)
        .update(page)
        .finalize_non_root()
}

/// The chaining values of a block's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageTree {
    len: usize,
    values: Vec<ChainingValue>,
}

impl PageTree {
    /// One pass over `block`.
    pub fn of(block: &[u8]) -> Self {
        Self {
            len: block.len(),
            values: block
                .chunks(PAGE)
                .enumerate()
                .map(|(i, page)| page_value(i, page))
                .collect(),
        }
    }

    /// Length of the block.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pages the block has.
    pub fn pages(&self) -> usize {
        self.values.len()
    }

    /// The chaining value of page `index`.
    pub fn value(&self, index: usize) -> &ChainingValue {
        &self.values[index]
    }

    /// Bytes this holds.
    pub fn held_bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<ChainingValue>()
    }

    /// The block's hash, as [`Hash::of`] gives it; `None` for a block of one page or
    /// less, whose hash is not made of page values.
    pub fn root(&self) -> Option<Hash> {
        root_of(self.len, &|i| self.values[i])
    }
}

/// The hash of a block of `len` bytes whose page `i` has the chaining value `value(i)`;
/// `None` when the block has one page or less.
pub fn root_of(len: usize, value: &dyn Fn(usize) -> ChainingValue) -> Option<Hash> {
    if len <= PAGE {
        return None;
    }
    let left = left_subtree_len(len as u64) as usize;
    let root = merge_subtrees_root(
        &subtree(0, left, value),
        &subtree(left / PAGE, len - left, value),
        Mode::Hash,
    );
    Some(Hash::from_bytes(*root.as_bytes()))
}

/// The chaining value of the `len` bytes starting at page `first`: the page's own value,
/// or its two subtrees merged. Left subtrees of more than a page are whole powers of two
/// of 1 KiB chunks, so they end on a page boundary.
fn subtree(first: usize, len: usize, value: &dyn Fn(usize) -> ChainingValue) -> ChainingValue {
    if len <= PAGE {
        return value(first);
    }
    let left = left_subtree_len(len as u64) as usize;
    merge_subtrees_non_root(
        &subtree(first, left, value),
        &subtree(first + left / PAGE, len - left, value),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{SIZES, pattern};
    use proptest::prelude::*;

    #[test]
    fn the_page_values_give_the_block_hash_for_every_size() {
        for &size in SIZES.iter().filter(|&&s| s > PAGE) {
            let block = pattern(size, 9);
            let tree = PageTree::of(&block);
            assert_eq!(tree.pages(), size.div_ceil(PAGE));
            assert_eq!(tree.root(), Some(Hash::of(&block)), "size {size}");
        }
        assert_eq!(PageTree::of(&pattern(PAGE, 1)).root(), None);
    }

    proptest! {
        #[test]
        fn a_changed_page_changes_the_root_as_hashing_the_block_does(
            pages in 2usize..80,
            tail in 1usize..=PAGE,
            at in any::<prop::sample::Index>(),
        ) {
            let len = (pages - 1) * PAGE + tail;
            let old = pattern(len, 4);
            let mut new = old.clone();
            let at = at.index(len);
            new[at] ^= 0x81;
            let tree = PageTree::of(&old);
            let page = at / PAGE;
            let end = ((page + 1) * PAGE).min(len);
            let changed = page_value(page, &new[page * PAGE..end]);
            let value = |i: usize| if i == page { changed } else { *tree.value(i) };
            prop_assert_eq!(root_of(len, &value), Some(Hash::of(&new)));
        }
    }
}
