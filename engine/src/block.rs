//! Blocks and chunks: the fixed-size regions of a disk and the content that travels.
//!
//! The types follow a block through the data path: a block is read, hashed (or found all
//! zero), compressed into a [`Frame`] and becomes a [`VerifiedChunk`]. Bytes that arrive
//! from outside are an [`UnverifiedChunk`] until [`UnverifiedChunk::verify`] has
//! decompressed them within the block size and checked their hash; only a verified chunk
//! can be stored.

use bytes::Bytes;

use crate::hash::Hash;

/// The default block size: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;

/// The default zstd level, chosen by measurement (see docs/benchmarks.md, "Compression"):
/// level 3 costs about 13% more CPU than level 1 and sends about 1% less on a real
/// filesystem update; uploads often cross slow links, so the bytes win. Level 6 costs
/// three times the CPU.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// A disk's block size: a power of two from 64 KiB to 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Smallest allowed block size.
    pub const MIN: u32 = 64 << 10;
    /// Largest allowed block size.
    pub const MAX: u32 = 16 << 20;

    /// Validates a block size.
    ///
    /// # Errors
    /// When `bytes` is not a power of two between 64 KiB and 16 MiB.
    pub fn new(bytes: u32) -> Result<Self, ChunkError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(ChunkError::BadBlockSize(bytes))
        }
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes, as a `usize`.
    pub const fn bytes(self) -> usize {
        self.0 as usize
    }

    /// How many blocks cover a disk of `disk_size` bytes (the last may be short).
    pub const fn count(self, disk_size: u64) -> u64 {
        disk_size.div_ceil(self.0 as u64)
    }

    /// The byte range of block `index` on a disk of `disk_size` bytes.
    pub fn range(self, index: u64, disk_size: u64) -> std::ops::Range<u64> {
        let start = index * u64::from(self.0);
        start..(start + u64::from(self.0)).min(disk_size)
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self(DEFAULT_BLOCK_SIZE)
    }
}

/// True when every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed pieces vectorizes well and still stops early on data.
    data.chunks(4096)
        .all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// How a chunk's bytes are encoded on the wire and in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The bytes as they are.
    Raw,
    /// A single zstd frame.
    Zstd,
}

/// A chunk's content as encoded for the wire and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub codec: Codec,
    pub payload: Bytes,
}

impl Frame {
    /// Compresses `raw` at `level`, keeping it raw when compression saves less than 1/32.
    pub fn encode(raw: Bytes, level: i32) -> Self {
        match zstd::bulk::compress(&raw, level) {
            Ok(packed) if packed.len() < raw.len() - raw.len() / 32 => Self {
                codec: Codec::Zstd,
                payload: Bytes::from(packed),
            },
            _ => Self::raw(raw),
        }
    }

    /// Wraps bytes that stay uncompressed.
    pub fn raw(raw: Bytes) -> Self {
        Self {
            codec: Codec::Raw,
            payload: raw,
        }
    }

    /// The decoded content, refusing to produce more than `max_len` bytes.
    ///
    /// # Errors
    /// When the payload is longer than `max_len` or is not a valid zstd frame.
    pub fn decode(&self, max_len: usize) -> Result<Bytes, ChunkError> {
        match self.codec {
            Codec::Raw if self.payload.len() > max_len => Err(ChunkError::TooLarge { max_len }),
            Codec::Raw => Ok(self.payload.clone()),
            Codec::Zstd => {
                // The output buffer is at most `max_len`: a hostile frame cannot make us
                // allocate more, and one that would decode larger is an error.
                use zstd::zstd_safe::{DCtx, get_error_name, zstd_sys::ZSTD_ErrorCode};
                let too_small =
                    (ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize).wrapping_neg();
                let mut out = Vec::with_capacity(max_len);
                match DCtx::create().decompress(&mut out, &self.payload[..]) {
                    Ok(_) => Ok(Bytes::from(out)),
                    Err(code) if code == too_small => Err(ChunkError::TooLarge { max_len }),
                    Err(code) => Err(ChunkError::Corrupt(get_error_name(code).to_owned())),
                }
            }
        }
    }
}

/// Chunk content claimed to hash to `hash`, not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedChunk {
    pub hash: Hash,
    pub frame: Frame,
}

impl UnverifiedChunk {
    /// Decodes the frame within `max_len` bytes and checks its hash.
    ///
    /// # Errors
    /// When the frame is corrupt, decodes to more than `max_len` bytes, is empty, or its
    /// content does not hash to the claimed hash.
    pub fn verify(self, max_len: usize) -> Result<VerifiedChunk, ChunkError> {
        let len = self.content(max_len)?.len();
        Ok(VerifiedChunk {
            hash: self.hash,
            len,
            frame: self.frame,
        })
    }

    /// Decodes the frame within `max_len` bytes and returns the content once its hash
    /// is checked.
    ///
    /// # Errors
    /// As [`UnverifiedChunk::verify`].
    pub fn content(&self, max_len: usize) -> Result<Bytes, ChunkError> {
        let data = self.frame.decode(max_len)?;
        if data.is_empty() {
            return Err(ChunkError::Corrupt("empty chunk".into()));
        }
        same_hash(self.hash, Hash::of(&data))?;
        Ok(data)
    }
}

/// Refuses content whose hash (`actual`) is not the one claimed for it.
///
/// # Errors
/// `HashMismatch` when they differ.
pub(crate) fn same_hash(claimed: Hash, actual: Hash) -> Result<(), ChunkError> {
    if actual == claimed {
        Ok(())
    } else {
        Err(ChunkError::HashMismatch { claimed, actual })
    }
}

/// A chunk whose frame is known to decode to content with this hash.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    hash: Hash,
    len: usize,
    frame: Frame,
}

impl VerifiedChunk {
    /// Hashes and compresses `data`: a chunk verified by construction.
    pub fn seal(data: Bytes, level: i32) -> Self {
        let hash = Hash::of(&data);
        Self::from_hashed(hash, data, level)
    }

    /// Compresses `data` whose hash the caller computed from these very bytes.
    pub(crate) fn from_hashed(hash: Hash, data: Bytes, level: i32) -> Self {
        let len = data.len();
        Self {
            hash,
            len,
            frame: Frame::encode(data, level),
        }
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Length of the decoded content.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Refuses a chunk whose content is not exactly its block's length.
    ///
    /// # Errors
    /// `WrongLength` when it differs.
    pub fn check_len(self, expected: usize) -> Result<Self, ChunkError> {
        if self.len == expected {
            Ok(self)
        } else {
            Err(ChunkError::WrongLength {
                expected,
                actual: self.len,
            })
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Bytes this chunk takes on the wire and in the store.
    pub fn encoded_len(&self) -> usize {
        self.frame.payload.len()
    }

    /// The same chunk with its payload in an allocation of its own, so that holding it
    /// does not keep a larger shared read buffer (and its place in a window) alive.
    #[must_use]
    pub fn detach(self) -> Self {
        match self.frame.codec {
            Codec::Raw => Self {
                frame: Frame::raw(Bytes::copy_from_slice(&self.frame.payload)),
                ..self
            },
            // A compressed payload already has its own allocation.
            Codec::Zstd => self,
        }
    }
}

/// Why a block size or chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("block size {0} is not a power of two between 64 KiB and 16 MiB")]
    BadBlockSize(u32),
    #[error("chunk decodes to more than the block size ({max_len} bytes)")]
    TooLarge { max_len: usize },
    #[error("chunk is corrupt: {0}")]
    Corrupt(String),
    #[error("chunk content hashes to {actual}, not the claimed {claimed}")]
    HashMismatch { claimed: Hash, actual: Hash },
    #[error("chunk has {actual} bytes, its block {expected}")]
    WrongLength { expected: usize, actual: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{SIZES, pattern};

    #[test]
    fn block_size_bounds() {
        assert!(BlockSize::new(64 << 10).is_ok());
        assert!(BlockSize::new(16 << 20).is_ok());
        assert!(BlockSize::new(32 << 10).is_err());
        assert!(BlockSize::new(32 << 20).is_err());
        assert!(BlockSize::new((1 << 20) + 1).is_err());
        let bs = BlockSize::new(1 << 16).unwrap();
        assert_eq!(bs.count(0), 0);
        assert_eq!(bs.count(1), 1);
        assert_eq!(bs.count(1 << 16), 1);
        assert_eq!(bs.count((1 << 16) + 1), 2);
        assert_eq!(bs.range(1, (1 << 16) + 5), (1 << 16)..(1 << 16) + 5);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 100_000]));
        let mut data = vec![0u8; 100_000];
        data[99_999] = 1;
        assert!(!is_zero(&data));
    }

    #[test]
    fn frames_round_trip_over_interesting_sizes() {
        for &size in SIZES {
            let data = Bytes::from(pattern(size, size as u64));
            for level in [1, 3] {
                let chunk = VerifiedChunk::seal(data.clone(), level);
                let back = chunk.frame().decode(size.max(1)).unwrap();
                assert_eq!(back, data, "size {size}");
            }
        }
    }

    #[test]
    fn incompressible_data_stays_raw() {
        let random = Bytes::from(blake3_stream(65536));
        assert_eq!(Frame::encode(random, 1).codec, Codec::Raw);
        let text = Bytes::from("hotate ".repeat(10_000));
        assert_eq!(Frame::encode(text, 1).codec, Codec::Zstd);
    }

    fn blake3_stream(len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new().finalize_xof().fill(&mut out);
        out
    }

    #[test]
    fn verify_rejects_wrong_hash_corrupt_and_oversized() {
        let data = Bytes::from(vec![7u8; 70_000]);
        let good = VerifiedChunk::seal(data.clone(), 1);
        let ok = UnverifiedChunk {
            hash: good.hash(),
            frame: good.frame().clone(),
        };
        assert!(ok.clone().verify(70_000).is_ok());
        // Decodes larger than the block size.
        assert!(matches!(
            ok.clone().verify(65_536),
            Err(ChunkError::TooLarge { .. })
        ));
        // Wrong claimed hash.
        let wrong = UnverifiedChunk {
            hash: Hash::of(b"other"),
            frame: good.frame().clone(),
        };
        assert!(matches!(
            wrong.verify(70_000),
            Err(ChunkError::HashMismatch { .. })
        ));
        // Flipped bytes inside the zstd frame.
        let mut bytes = good.frame().payload.to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        bytes.truncate(bytes.len() - 2);
        let corrupt = UnverifiedChunk {
            hash: good.hash(),
            frame: Frame {
                codec: Codec::Zstd,
                payload: Bytes::from(bytes),
            },
        };
        assert!(corrupt.verify(70_000).is_err());
        // A raw frame longer than the block.
        let raw = UnverifiedChunk {
            hash: Hash::of(&data),
            frame: Frame::raw(data),
        };
        assert!(matches!(
            raw.verify(65_536),
            Err(ChunkError::TooLarge { .. })
        ));
    }

    #[test]
    fn zip_bomb_is_bounded() {
        // 16 MiB of zeros compresses to a few hundred bytes; decoding must stop at the bound.
        let bomb = zstd::bulk::compress(&vec![0u8; 16 << 20], 3).unwrap();
        let frame = Frame {
            codec: Codec::Zstd,
            payload: Bytes::from(bomb),
        };
        assert!(matches!(
            frame.decode(1 << 20),
            Err(ChunkError::TooLarge { .. })
        ));
    }
}
