//! Manifests: one entry per block of a version (a chunk hash or zero), and their root.
//!
//! The root is BLAKE3 over a format tag, the disk size, the block size and the entries;
//! it names a version's content end to end. The binary encoding run-length codes zero
//! blocks and ends with the root, so a damaged manifest file is detected on decode.

use crate::block::BlockSize;
use crate::hash::Hash;

const ROOT_TAG: &[u8] = b"hotate-manifest-v1\0";
const MAGIC: &[u8; 4] = b"HTMF";
const FORMAT: u8 = 1;

/// What one block of a version holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// All zeros; no chunk stored.
    Zero,
    /// The chunk with this hash.
    Chunk(Hash),
}

impl Entry {
    pub fn hash(self) -> Option<Hash> {
        match self {
            Self::Zero => None,
            Self::Chunk(hash) => Some(hash),
        }
    }
}

/// The entries of one version of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    disk_size: u64,
    block_size: BlockSize,
    entries: Vec<Entry>,
}

impl Manifest {
    /// A manifest of an all-zero disk.
    ///
    /// # Errors
    /// When the disk has more blocks than this machine can address.
    pub fn zeroed(disk_size: u64, block_size: BlockSize) -> Result<Self, ManifestError> {
        let count =
            usize::try_from(block_size.count(disk_size)).map_err(|_| ManifestError::TooLarge)?;
        Ok(Self {
            disk_size,
            block_size,
            entries: vec![Entry::Zero; count],
        })
    }

    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The length of block `index`: the block size, or less for the disk's last block.
    pub fn block_len(&self, index: u64) -> usize {
        let range = self.block_size.range(index, self.disk_size);
        (range.end - range.start) as usize
    }

    /// The entry of block `index`, `None` beyond the disk.
    pub fn get(&self, index: u64) -> Option<Entry> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i).copied())
    }

    /// Sets the entry of block `index`.
    ///
    /// # Errors
    /// When `index` is beyond the disk.
    pub fn set(&mut self, index: u64, entry: Entry) -> Result<(), ManifestError> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .ok_or(ManifestError::IndexOutOfRange(index))?;
        *slot = entry;
        Ok(())
    }

    /// Whether `other` describes a disk of the same size and block size.
    pub fn same_geometry(&self, other: &Self) -> bool {
        self.disk_size == other.disk_size && self.block_size == other.block_size
    }

    /// The root hash naming this content.
    pub fn root(&self) -> Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(ROOT_TAG);
        hasher.update(&self.disk_size.to_le_bytes());
        hasher.update(&self.block_size.get().to_le_bytes());
        for entry in &self.entries {
            match entry {
                Entry::Zero => hasher.update(&[0]),
                Entry::Chunk(hash) => hasher.update(&[1]).update(hash.as_bytes()),
            };
        }
        hasher.finalize().into()
    }

    /// Indices of the blocks whose entries differ from `parent`'s.
    ///
    /// # Errors
    /// When the two manifests describe disks of different geometry.
    pub fn diff<'a>(
        &'a self,
        parent: &'a Self,
    ) -> Result<impl Iterator<Item = u64> + 'a, ManifestError> {
        if !self.same_geometry(parent) {
            return Err(ManifestError::GeometryMismatch);
        }
        Ok(self
            .entries
            .iter()
            .zip(&parent.entries)
            .enumerate()
            .filter(|(_, (ours, theirs))| ours != theirs)
            .map(|(i, _)| i as u64))
    }

    /// The distinct chunk hashes this manifest refers to.
    pub fn chunk_hashes(&self) -> std::collections::BTreeSet<Hash> {
        self.entries.iter().filter_map(|e| e.hash()).collect()
    }

    /// The compact binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.entries.len() * 33);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.block_size.get().to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        let mut entries = self.entries.iter().peekable();
        while let Some(entry) = entries.next() {
            match entry {
                Entry::Chunk(hash) => {
                    out.push(1);
                    out.extend_from_slice(hash.as_bytes());
                }
                Entry::Zero => {
                    let mut run = 1u64;
                    while entries.next_if_eq(&&Entry::Zero).is_some() {
                        run += 1;
                    }
                    out.push(0);
                    out.extend_from_slice(&run.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(self.root().as_bytes());
        out
    }

    /// Decodes [`Manifest::encode`]'s output, checking its trailing root.
    ///
    /// # Errors
    /// When the bytes are truncated, malformed, or do not match their root.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut input = Reader(bytes);
        if input.take(4)? != MAGIC || input.take(1)? != [FORMAT] {
            return Err(ManifestError::Malformed("not a Hotate manifest"));
        }
        let disk_size = input.u64()?;
        let block_size =
            BlockSize::new(input.u32()?).map_err(|_| ManifestError::Malformed("bad block size"))?;
        let count = input.u64()?;
        if count != block_size.count(disk_size) {
            return Err(ManifestError::Malformed(
                "entry count does not match the disk",
            ));
        }
        let mut manifest = Self::zeroed(disk_size, block_size)?;
        let mut at = 0usize;
        while at < manifest.entries.len() {
            match input.take(1)?[0] {
                1 => {
                    let hash = Hash::from_slice(input.take(Hash::LEN)?)
                        .ok_or(ManifestError::Malformed("short hash"))?;
                    manifest.entries[at] = Entry::Chunk(hash);
                    at += 1;
                }
                0 => {
                    let run = usize::try_from(input.u64()?)
                        .map_err(|_| ManifestError::Malformed("zero run too long"))?;
                    if run == 0 || run > manifest.entries.len() - at {
                        return Err(ManifestError::Malformed("zero run out of range"));
                    }
                    at += run;
                }
                _ => return Err(ManifestError::Malformed("unknown entry tag")),
            }
        }
        let root = Hash::from_slice(input.take(Hash::LEN)?)
            .ok_or(ManifestError::Malformed("short root"))?;
        if !input.0.is_empty() {
            return Err(ManifestError::Malformed("trailing bytes"));
        }
        if root != manifest.root() {
            return Err(ManifestError::RootMismatch);
        }
        Ok(manifest)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.0.len() < n {
            return Err(ManifestError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, ManifestError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| ManifestError::Malformed("truncated"))?,
        ))
    }

    fn u32(&mut self) -> Result<u32, ManifestError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| ManifestError::Malformed("truncated"))?,
        ))
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is malformed: {0}")]
    Malformed(&'static str),
    #[error("manifest does not match its root hash")]
    RootMismatch,
    #[error("block index {0} is beyond the disk")]
    IndexOutOfRange(u64),
    #[error("the manifests describe disks of different size or block size")]
    GeometryMismatch,
    #[error("disk too large for this machine")]
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest_strategy() -> impl Strategy<Value = Manifest> {
        (
            0u64..200,
            0u64..(64 << 10),
            prop::collection::vec(0u8..6, 200),
        )
            .prop_map(|(blocks, tail, picks)| {
                let bs = BlockSize::new(64 << 10).unwrap();
                let disk_size = blocks * u64::from(bs.get()) + tail;
                let mut m = Manifest::zeroed(disk_size, bs).unwrap();
                for i in 0..m.len() {
                    // A few distinct hashes and zeros, in runs, like a real disk.
                    let pick = picks[i % picks.len()];
                    let entry = if pick < 2 {
                        Entry::Zero
                    } else {
                        Entry::Chunk(Hash::of(&[pick]))
                    };
                    m.set(i as u64, entry).unwrap();
                }
                m
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(m in manifest_strategy()) {
            let bytes = m.encode();
            let back = Manifest::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(back.root(), m.root());
        }

        #[test]
        fn decode_never_panics_on_damage(m in manifest_strategy(), cut in 0usize..10_000, flip in 0usize..10_000) {
            let mut bytes = m.encode();
            let at = flip % bytes.len();
            bytes[at] ^= 0x40;
            prop_assert!(Manifest::decode(&bytes).is_err());
            let bytes = m.encode();
            let cut = cut % bytes.len();
            prop_assert!(Manifest::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn diff_lists_exactly_the_changed_blocks(parent in manifest_strategy(), changes in prop::collection::btree_map(0u64..300, any::<u8>(), 0..20)) {
            let mut child = parent.clone();
            let mut expected = Vec::new();
            for (&index, &byte) in &changes {
                if index < child.len() as u64 {
                    let entry = Entry::Chunk(Hash::of(&[byte, 0xAA]));
                    child.set(index, entry).unwrap();
                    if parent.get(index) != Some(entry) {
                        expected.push(index);
                    }
                }
            }
            let diff: Vec<u64> = child.diff(&parent).unwrap().collect();
            prop_assert_eq!(diff, expected);
            prop_assert_eq!(child.root() == parent.root(), child == parent);
        }
    }

    #[test]
    fn root_depends_on_geometry() {
        let a = Manifest::zeroed(1 << 20, BlockSize::new(64 << 10).unwrap()).unwrap();
        let b = Manifest::zeroed(1 << 20, BlockSize::new(128 << 10).unwrap()).unwrap();
        let c = Manifest::zeroed((1 << 20) - 1, BlockSize::new(64 << 10).unwrap()).unwrap();
        assert_ne!(a.root(), b.root());
        assert_ne!(a.root(), c.root());
        assert!(a.diff(&b).is_err());
    }
}
