//! Hotate's wire protocol (`hotate.v1`): the generated gRPC code, re-exported as [`pb`],
//! and the conversions between wire messages and engine types. The engine never sees a
//! prost type; every message from the network is checked here on the way in.

/// The generated messages, clients and servers.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("hotate.v1");
}

use bytes::Bytes;
use hotate_engine::{Codec, Entry, Frame, Hash, Offer, UnverifiedChunk, VerifiedChunk};

/// Default port of the control service.
pub const CONTROL_PORT: u16 = 30806;
/// Default port of the transfer service.
pub const TRANSFER_PORT: u16 = 30811;
/// Metadata key carrying `Bearer TOKEN`.
pub const AUTHORIZATION: &str = "authorization";
/// Largest gRPC message: a 16 MiB block stored raw, plus framing.
pub const MAX_MESSAGE: usize = (16 << 20) + (64 << 10);

/// A wire message that does not make sense.
#[derive(Debug)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// A hash as wire bytes.
pub fn hash_bytes(hash: &Hash) -> Bytes {
    Bytes::copy_from_slice(hash.as_bytes())
}

/// A hash from wire bytes.
///
/// # Errors
/// When the bytes are not exactly 32 long.
pub fn parse_hash(bytes: &[u8]) -> Result<Hash, WireError> {
    Hash::from_slice(bytes).ok_or(WireError("a hash must be 32 bytes"))
}

impl From<Offer> for pb::Entry {
    fn from(offer: Offer) -> Self {
        Self {
            index: offer.index,
            hash: offer
                .entry
                .hash()
                .map_or_else(Bytes::new, |h| hash_bytes(&h)),
        }
    }
}

impl TryFrom<pb::Entry> for Offer {
    type Error = WireError;

    fn try_from(entry: pb::Entry) -> Result<Self, WireError> {
        let parsed = if entry.hash.is_empty() {
            Entry::Zero
        } else {
            Entry::Chunk(parse_hash(&entry.hash)?)
        };
        Ok(Self {
            index: entry.index,
            entry: parsed,
        })
    }
}

impl From<Codec> for pb::Codec {
    fn from(codec: Codec) -> Self {
        match codec {
            Codec::Raw => Self::Raw,
            Codec::Zstd => Self::Zstd,
        }
    }
}

impl From<&VerifiedChunk> for pb::Chunk {
    fn from(chunk: &VerifiedChunk) -> Self {
        Self {
            hash: hash_bytes(&chunk.hash()),
            codec: pb::Codec::from(chunk.frame().codec).into(),
            data: chunk.frame().payload.clone(),
        }
    }
}

impl TryFrom<pb::Chunk> for UnverifiedChunk {
    type Error = WireError;

    fn try_from(chunk: pb::Chunk) -> Result<Self, WireError> {
        let codec = match pb::Codec::try_from(chunk.codec) {
            Ok(pb::Codec::Raw) => Codec::Raw,
            Ok(pb::Codec::Zstd) => Codec::Zstd,
            Err(_) => return Err(WireError("unknown codec")),
        };
        Ok(Self {
            hash: parse_hash(&chunk.hash)?,
            frame: Frame {
                codec,
                payload: chunk.data,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn offers_round_trip(index in any::<u64>(), seed in any::<Option<u8>>()) {
            let entry = seed.map_or(Entry::Zero, |b| Entry::Chunk(Hash::of(&[b])));
            let offer = Offer { index, entry };
            prop_assert_eq!(Offer::try_from(pb::Entry::from(offer)).unwrap(), offer);
        }

        #[test]
        fn chunks_round_trip(data in prop::collection::vec(any::<u8>(), 1..5000)) {
            let chunk = VerifiedChunk::seal(Bytes::from(data.clone()), 1);
            let back = UnverifiedChunk::try_from(pb::Chunk::from(&chunk)).unwrap();
            prop_assert_eq!(back.content(8192).unwrap(), Bytes::from(data));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bad_hash = pb::Entry {
            index: 1,
            hash: Bytes::from_static(b"short"),
        };
        assert!(Offer::try_from(bad_hash).is_err());
        let bad_codec = pb::Chunk {
            hash: hash_bytes(&Hash::of(b"")),
            codec: 9,
            data: Bytes::new(),
        };
        assert!(UnverifiedChunk::try_from(bad_codec).is_err());
    }
}
