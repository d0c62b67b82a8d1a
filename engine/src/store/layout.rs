//! How a store lays a chunk out: one byte naming the encoding, then its bytes.
//!
//! A whole chunk is its frame's payload (raw or zstd). A patch is a small head (depth,
//! block length, base hash, page map) and the changed pages' frame: reading it reads its
//! base first, and each block of the chain is rebuilt and its hash checked, so a patch
//! is trusted exactly as a whole chunk is.

use bytes::Bytes;

use super::{Paged, StoreError, Stored};
use crate::block::{ChunkError, Codec, Frame, UnverifiedChunk, same_hash};
use crate::delta::{Delta, MAX_PATCH_DEPTH, VerifiedPatch};
use crate::hash::Hash;
use crate::page_tree::PageTree;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const PATCH: u8 = 2;

/// Bytes of a patch before its page map: kind, depth, block length (u32 LE), base hash,
/// page map length (u16 LE).
pub(crate) const PATCH_HEAD: usize = 1 + 1 + 4 + Hash::LEN + 2;

fn codec_byte(codec: Codec) -> u8 {
    match codec {
        Codec::Raw => RAW,
        Codec::Zstd => ZSTD,
    }
}

fn codec_of(byte: u8) -> Result<Codec, ChunkError> {
    match byte {
        RAW => Ok(Codec::Raw),
        ZSTD => Ok(Codec::Zstd),
        _ => Err(corrupt("unknown codec byte")),
    }
}

/// The bytes a store keeps for `chunk`: a head, then the payload it shares with the
/// chunk.
pub(crate) fn encode(chunk: &Stored) -> (Vec<u8>, Bytes) {
    match chunk {
        Stored::Whole(chunk) => (
            vec![codec_byte(chunk.frame().codec)],
            chunk.frame().payload.clone(),
        ),
        Stored::Patch(patch) => {
            let delta = patch.delta();
            let mut head = Vec::with_capacity(PATCH_HEAD + delta.changed.len() + 1);
            head.push(PATCH);
            head.push(patch.depth());
            head.extend_from_slice(&(patch.len() as u32).to_le_bytes());
            head.extend_from_slice(delta.base.as_bytes());
            head.extend_from_slice(&(delta.changed.len() as u16).to_le_bytes());
            head.extend_from_slice(&delta.changed);
            head.push(codec_byte(delta.pages.codec));
            (head, delta.pages.payload.clone())
        }
    }
}

/// A stored chunk as read, not yet checked.
pub(crate) enum Kept {
    Whole(Frame),
    Patch(VerifiedPatch),
}

/// What the first bytes of a stored chunk say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A frame that stands alone.
    Whole,
    /// A patch of `base`, `depth` patches deep (1 on a whole chunk).
    Patch { base: Hash, depth: u8, len: usize },
}

impl Layout {
    /// How many patches deep: 0 for a whole chunk.
    pub fn depth(&self) -> u8 {
        match self {
            Self::Whole => 0,
            Self::Patch { depth, .. } => *depth,
        }
    }
}

fn corrupt(what: &str) -> ChunkError {
    ChunkError::Corrupt(what.into())
}

/// The layout named by a stored chunk's first `PATCH_HEAD` bytes (or all its bytes when
/// shorter).
pub(crate) fn layout(head: &[u8]) -> Result<Layout, ChunkError> {
    match head.first() {
        Some(&RAW | &ZSTD) => Ok(Layout::Whole),
        Some(&PATCH) if head.len() >= PATCH_HEAD => {
            let len = u32::from_le_bytes(head[2..6].try_into().unwrap_or_default());
            let base =
                Hash::from_slice(&head[6..6 + Hash::LEN]).ok_or_else(|| corrupt("short base"))?;
            Ok(Layout::Patch {
                base,
                depth: head[1],
                len: len as usize,
            })
        }
        Some(&PATCH) => Err(corrupt("truncated patch head")),
        _ => Err(corrupt("unknown codec byte")),
    }
}

/// Parses a stored chunk named `hash`.
pub(crate) fn decode(hash: Hash, mut bytes: Bytes) -> Result<Kept, ChunkError> {
    let frame = |codec, payload| Frame { codec, payload };
    match layout(&bytes)? {
        Layout::Whole => Ok(Kept::Whole(frame(codec_of(bytes[0])?, bytes.split_off(1)))),
        Layout::Patch { base, depth, len } => {
            let map_len = usize::from(u16::from_le_bytes([
                bytes[PATCH_HEAD - 2],
                bytes[PATCH_HEAD - 1],
            ]));
            let mut rest = bytes.split_off(PATCH_HEAD);
            if rest.len() < map_len + 1 {
                return Err(corrupt("truncated patch"));
            }
            let changed = rest.split_to(map_len);
            let pages = frame(codec_of(rest[0])?, rest.split_off(1));
            let delta = Delta {
                base,
                changed,
                pages,
            };
            Ok(Kept::Patch(VerifiedPatch::stored(hash, len, depth, delta)))
        }
    }
}

/// The content of chunk `hash`, at most `max_len` bytes, its hash checked: its stored
/// bytes come from `read` (`None` when absent), a patch's base first. A base that is
/// missing or damaged makes the chunk itself damaged: it cannot be read.
pub(crate) fn content(
    hash: &Hash,
    max_len: usize,
    read: impl Fn(&Hash) -> Result<Option<Bytes>, StoreError>,
) -> Result<Bytes, StoreError> {
    content_with(hash, max_len, read, |data, _| {
        same_hash(*hash, Hash::of(&data))?;
        Ok(data)
    })
}

/// As [`content`], with the content's page values, the hash checked through them (one
/// pass over the content), and how many patches deep it is stored.
pub(crate) fn content_with_pages(
    hash: &Hash,
    max_len: usize,
    read: impl Fn(&Hash) -> Result<Option<Bytes>, StoreError>,
) -> Result<Paged, StoreError> {
    content_with(hash, max_len, read, |content, depth| {
        let tree = PageTree::of(&content);
        same_hash(*hash, tree.root().unwrap_or_else(|| Hash::of(&content)))?;
        Ok(Paged {
            content,
            tree,
            depth,
        })
    })
}

/// Reads chunk `hash` through its patches, every base checked, and hands the chunk's own
/// content, not yet checked, to `seal`, which checks it against `hash`, with how many
/// patches deep it is stored.
fn content_with<T>(
    hash: &Hash,
    max_len: usize,
    read: impl Fn(&Hash) -> Result<Option<Bytes>, StoreError>,
    seal: impl FnOnce(Bytes, u8) -> Result<T, ChunkError>,
) -> Result<T, StoreError> {
    let damaged = |at: Hash, cause: ChunkError| StoreError::Corrupt {
        hash: *hash,
        at,
        cause: Box::new(if at == *hash {
            cause
        } else {
            ChunkError::Corrupt(format!("its base chunk {at} is damaged: {cause}"))
        }),
    };
    let mut patches = Vec::new();
    let mut at = *hash;
    let frame = loop {
        let bytes = match read(&at)? {
            Some(bytes) => bytes,
            None if at == *hash => return Err(StoreError::NotFound(at)),
            None => {
                return Err(StoreError::Corrupt {
                    hash: *hash,
                    at,
                    cause: Box::new(ChunkError::Corrupt(format!(
                        "its base chunk {at} is missing"
                    ))),
                });
            }
        };
        match decode(at, bytes).map_err(|cause| damaged(at, cause))? {
            Kept::Whole(frame) => break frame,
            Kept::Patch(patch) => {
                if patches.len() == usize::from(MAX_PATCH_DEPTH) {
                    return Err(damaged(
                        *hash,
                        corrupt("its patches go deeper than a store writes them"),
                    ));
                }
                at = patch.delta().base;
                patches.push(patch);
            }
        }
    };
    let nonempty = |data: Bytes| {
        if data.is_empty() {
            Err(corrupt("empty chunk"))
        } else {
            Ok(data)
        }
    };
    // `patches` runs from the chunk itself down to the one on the whole frame.
    // At most `MAX_PATCH_DEPTH`, checked above.
    let depth = patches.len() as u8;
    let Some((own, below)) = patches.split_first() else {
        let data = frame.decode(max_len).and_then(nonempty);
        return data
            .and_then(|data| seal(data, depth))
            .map_err(|cause| damaged(*hash, cause));
    };
    let mut block = UnverifiedChunk { hash: at, frame }
        .content(max_len)
        .map_err(|cause| damaged(at, cause))?;
    for patch in below.iter().rev() {
        block = patch
            .content(&block, max_len)
            .map_err(|cause| damaged(patch.hash(), cause))?;
    }
    own.rebuild(&block, max_len)
        .and_then(|data| seal(data, depth))
        .map_err(|cause| damaged(*hash, cause))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A damaged chunk file (any bytes, a patch head among them) reads as damaged or
        /// as content that hashes right, never as a panic or a loop.
        #[test]
        fn damaged_files_are_refused_without_panic(
            kind in 0u8..4,
            rest in prop::collection::vec(any::<u8>(), 0..200),
            self_based in any::<bool>(),
        ) {
            let hash = Hash::of(b"named");
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&rest);
            if self_based && bytes.len() >= PATCH_HEAD {
                bytes[6..6 + Hash::LEN].copy_from_slice(hash.as_bytes());
            }
            let bytes = Bytes::from(bytes);
            let read = |h: &Hash| Ok((*h == hash).then(|| bytes.clone()));
            match content(&hash, 1 << 16, read) {
                Ok(data) => prop_assert_eq!(Hash::of(&data), hash),
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
            let _ = layout(&bytes);
        }
    }
}
