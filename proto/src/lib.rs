//! Hotate's wire protocol (`hotate.v1`): the generated gRPC code, re-exported as [`pb`],
//! and the conversions between wire messages and engine types. The engine never sees a
//! prost type; every message from the network is checked here on the way in.

/// The generated messages, clients and servers.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("hotate.v1");
}

pub mod cli_ja;
mod refusal;

pub use refusal::{Language, Refusal};

use bytes::Bytes;
use hotate_engine::{
    Base, Codec, Composed, Copies, Delta, Entry, Frame, Hash, Incoming, Need, Offer, Outgoing,
    PageDigests, UnverifiedChunk, UnverifiedComposed, UnverifiedDelta,
};

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

impl From<&Outgoing> for pb::Chunk {
    fn from(chunk: &Outgoing) -> Self {
        let hash = hash_bytes(&chunk.hash());
        match chunk {
            Outgoing::Whole(chunk) => Self {
                hash,
                codec: pb::Codec::from(chunk.frame().codec).into(),
                data: chunk.frame().payload.clone(),
                ..Self::default()
            },
            Outgoing::Delta { delta, .. } => Self {
                hash,
                codec: pb::Codec::from(delta.pages.codec).into(),
                data: delta.pages.payload.clone(),
                base: hash_bytes(&delta.base),
                changed_pages: delta.changed.clone(),
                ..Self::default()
            },
            Outgoing::Composed { composed, .. } => Self {
                hash,
                codec: pb::Codec::from(composed.pages.codec).into(),
                data: composed.pages.payload.clone(),
                base: composed.base.map_or_else(Bytes::new, |b| hash_bytes(&b)),
                changed_pages: composed.literal.clone(),
                copy_sources: composed.copies.sources.iter().map(hash_bytes).collect(),
                copied_pages: composed.copies.map.clone(),
                copy_source: composed.copies.from.iter().map(|&(s, _)| s).collect(),
                copy_page: composed.copies.from.iter().map(|&(_, p)| p).collect(),
            },
        }
    }
}

impl TryFrom<pb::Chunk> for Incoming {
    type Error = WireError;

    fn try_from(chunk: pb::Chunk) -> Result<Self, WireError> {
        let codec = match pb::Codec::try_from(chunk.codec) {
            Ok(pb::Codec::Raw) => Codec::Raw,
            Ok(pb::Codec::Zstd) => Codec::Zstd,
            Err(_) => return Err(WireError("unknown codec")),
        };
        let hash = parse_hash(&chunk.hash)?;
        let frame = Frame {
            codec,
            payload: chunk.data,
        };
        if !chunk.copy_sources.is_empty() {
            if chunk.copy_source.len() != chunk.copy_page.len() {
                return Err(WireError(
                    "each copied page needs its chunk and page number",
                ));
            }
            let sources = chunk
                .copy_sources
                .iter()
                .map(|s| parse_hash(s))
                .collect::<Result<_, _>>()?;
            let base = if chunk.base.is_empty() {
                None
            } else {
                Some(parse_hash(&chunk.base)?)
            };
            return Ok(Self::Composed(UnverifiedComposed {
                hash,
                composed: Composed {
                    base,
                    literal: chunk.changed_pages,
                    pages: frame,
                    copies: Copies {
                        sources,
                        map: chunk.copied_pages,
                        from: chunk.copy_source.into_iter().zip(chunk.copy_page).collect(),
                    },
                },
            }));
        }
        if chunk.base.is_empty() {
            return Ok(Self::Whole(UnverifiedChunk { hash, frame }));
        }
        Ok(Self::Delta(UnverifiedDelta {
            hash,
            delta: Delta {
                base: parse_hash(&chunk.base)?,
                changed: chunk.changed_pages,
                pages: frame,
            },
        }))
    }
}

/// The needs of one `Need` reply; bases that do not parse are dropped (the chunk then
/// travels whole), among them those of servers that digested pages another way and did
/// not say the digests' length.
pub fn needs(need: &pb::Need) -> Vec<Need> {
    let mut bases: std::collections::HashMap<Hash, Base> = need
        .bases
        .iter()
        .filter_map(|b| {
            let base = Base {
                hash: parse_hash(&b.base).ok()?,
                pages: PageDigests::from_bytes(b.page_digests.clone(), b.page_digest_len as usize)
                    .ok()?,
            };
            Some((parse_hash(&b.hash).ok()?, base))
        })
        .collect();
    need.hashes
        .iter()
        .filter_map(|h| parse_hash(h).ok())
        .map(|hash| Need {
            hash,
            base: bases.remove(&hash),
        })
        .collect()
}

/// The base the server offers for the needed hash `needed`.
pub fn delta_base(needed: &Hash, base: &Base) -> pb::DeltaBase {
    pb::DeltaBase {
        hash: hash_bytes(needed),
        base: hash_bytes(&base.hash),
        page_digests: base.pages.as_bytes().clone(),
        page_digest_len: base.pages.width() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotate_engine::{Stored, VerifiedChunk};
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
            let chunk = Outgoing::Whole(VerifiedChunk::seal(Bytes::from(data.clone()), 1));
            let Ok(Incoming::Whole(back)) = Incoming::try_from(pb::Chunk::from(&chunk)) else {
                panic!("a whole chunk arrives whole");
            };
            prop_assert_eq!(back.content(8192).unwrap(), Bytes::from(data));
        }

        #[test]
        fn deltas_round_trip(pages in 2usize..20, at in any::<prop::sample::Index>()) {
            let old: Vec<u8> = (0..pages * 4096).map(|i| (i * 7 % 251) as u8).collect();
            let mut new = old.clone();
            let at = at.index(new.len());
            new[at] ^= 0xff;
            let base = Base { hash: Hash::of(&old), pages: PageDigests::of(&old) };
            let reply = pb::Need {
                batch: 1,
                hashes: vec![hash_bytes(&Hash::of(&new))],
                bases: vec![delta_base(&Hash::of(&new), &base)],
            };
            let need = needs(&reply);
            prop_assert_eq!(need.len(), 1);
            let got = need[0].base.clone().expect("the base travels");
            prop_assert_eq!(&got, &base);
            let new = Bytes::from(new);
            let delta = Delta::encode(&new, &got, 3).expect("one page changed");
            let sent = Outgoing::Delta { hash: Hash::of(&new), len: new.len(), delta };
            let Ok(Incoming::Delta(back)) = Incoming::try_from(pb::Chunk::from(&sent)) else {
                panic!("a delta arrives as a delta");
            };
            let Stored::Patch(patch) = back.verify(&old, 0, old.len(), 1).unwrap() else {
                panic!("one changed page of several is kept as a patch");
            };
            prop_assert_eq!(patch.content(&old, old.len()).unwrap(), new);
        }
    }

    #[test]
    fn composed_chunks_round_trip_and_rebuild() {
        use hotate_engine::PageIndex;
        let page = |seed: u8| vec![seed; 4096];
        let first = Bytes::from([page(1), page(2), page(3), page(4)].concat());
        let second = Bytes::from([page(9), page(3), page(1), page(8)].concat());
        let index = std::sync::Mutex::new(PageIndex::default());
        assert!(PageIndex::compose(&index, &first, (Hash::of(&first), 0), 0, None, 3).is_none());
        let composed = PageIndex::compose(&index, &second, (Hash::of(&second), 1), 1, None, 3)
            .expect("two pages copied");
        let sent = Outgoing::Composed {
            hash: Hash::of(&second),
            len: second.len(),
            composed,
        };
        let wire = pb::Chunk::from(&sent);
        assert_eq!(wire.copy_page, [2, 0]);
        let Ok(Incoming::Composed(back)) = Incoming::try_from(wire.clone()) else {
            panic!("a composed chunk arrives composed");
        };
        let stored = back
            .verify(
                second.len(),
                None,
                std::slice::from_ref(&first),
                second.len(),
                3,
            )
            .unwrap();
        assert_eq!(stored.hash(), Hash::of(&second));
        let uneven = pb::Chunk {
            copy_page: vec![2],
            ..wire
        };
        assert!(Incoming::try_from(uneven).is_err());
    }

    #[test]
    fn bases_whose_digests_do_not_say_their_length_are_not_used() {
        let new = Hash::of(b"new");
        let reply = |page_digest_len| pb::Need {
            batch: 1,
            hashes: vec![hash_bytes(&new)],
            bases: vec![pb::DeltaBase {
                hash: hash_bytes(&new),
                base: hash_bytes(&Hash::of(b"old")),
                page_digests: Bytes::from(vec![7u8; 64]),
                page_digest_len,
            }],
        };
        let base = needs(&reply(8))[0].base.clone().expect("the base parses");
        assert_eq!((base.pages.width(), base.pages.pages()), (8, 8));
        let whole = needs(&reply(0));
        assert_eq!(whole.len(), 1);
        assert!(whole[0].base.is_none(), "travels whole");
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
            ..pb::Chunk::default()
        };
        assert!(Incoming::try_from(bad_codec).is_err());
        let bad_base = pb::Chunk {
            hash: hash_bytes(&Hash::of(b"")),
            base: Bytes::from_static(b"short"),
            ..pb::Chunk::default()
        };
        assert!(Incoming::try_from(bad_base).is_err());
    }
}
