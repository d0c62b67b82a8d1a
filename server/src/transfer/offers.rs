//! Offers: each offered entry checked against the base version, and what the store lacks
//! of them, with the base block each may be sent against as a page delta.

use std::collections::HashMap;
use std::sync::Arc;

use hotate_engine::delta::DIGEST_LEN;
use hotate_engine::{Base, ChunkStore, Entry, Hash, Manifest, Offer, PageDigests, PageTree, Paged};
use hotate_proto::pb::{self};

use crate::error::ServerError;
use crate::parallel;

/// Bytes of base blocks' page values (32 bytes per 4 KiB page) kept from an offer's
/// answer until their delta arrives (beyond it, a delta's base is read again from the
/// store).
const BASE_CACHE_BYTES: usize = 16 << 20;
/// Bytes of base blocks one answer reads for page digests (each distinct base once, one
/// at a time); needed chunks beyond it are asked for whole...
pub(super) const BASE_ANSWER_READ: usize = 64 << 20;
/// ...and of those, the bytes of page values it keeps for the base cache. With
/// `OFFER_JOBS` answers at once this bounds what offers can make the server read and
/// hold, whatever they name.
const BASE_ANSWER_KEEP: usize = 4 << 20;

/// An offer checked and waiting to be answered.
pub(super) struct OfferJob {
    pub(super) batch: u64,
    pub(super) offers: Vec<Offer>,
    /// The hashes (with their block length) it asks about.
    pub(super) candidates: Vec<(Hash, usize)>,
    /// The base each replaces, for deltas.
    pub(super) replaced: HashMap<Hash, Hash>,
}

/// One offer's answer: the hashes it asked about, and those the store lacks with the
/// base each may be sent against.
pub(super) struct Answer {
    pub(super) batch: u64,
    pub(super) candidates: Vec<(Hash, usize)>,
    pub(super) needs: Vec<(Hash, usize, Option<BaseBlock>)>,
}

/// A base named for a delta, with the block's page values when the answer kept them.
pub(super) type BaseBlock = (Base, Option<Arc<KeptBase>>);

/// What a delta against a base needs of it: its page values, and how many patches deep
/// it is stored (a patch on it goes one deeper).
pub(super) struct KeptBase {
    pub(super) tree: PageTree,
    pub(super) depth: u8,
}

/// A hash asked for in this session and not yet stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    /// The base named for a delta, if any.
    pub(super) base: Option<Hash>,
    /// The length of its block: the chunk must be exactly this long.
    pub(super) len: usize,
}

/// Page values of base blocks read to answer offers, kept for the deltas that will use
/// them.
#[derive(Default)]
pub(super) struct BaseCache {
    pub(super) blocks: HashMap<Hash, Arc<KeptBase>>,
    pub(super) bytes: usize,
}

impl BaseCache {
    pub(super) fn keep(&mut self, hash: Hash, base: Arc<KeptBase>) {
        let bytes = base.tree.held_bytes();
        if self.bytes + bytes <= BASE_CACHE_BYTES && !self.blocks.contains_key(&hash) {
            self.bytes += bytes;
            self.blocks.insert(hash, base);
        }
    }

    pub(super) fn take(&mut self, hash: &Hash) -> Option<Arc<KeptBase>> {
        let base = self.blocks.remove(hash)?;
        self.bytes -= base.tree.held_bytes();
        Some(base)
    }
}

/// An offered entry, refused unless it names a block of `parent`'s disk.
pub(super) fn offered(entry: pb::Entry, parent: &Manifest) -> Result<Offer, ServerError> {
    let offer = Offer::try_from(entry).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let count = parent.len() as u64;
    if offer.index >= count {
        return Err(ServerError::BadRequest(format!(
            "block {} is beyond the disk's {count} blocks",
            offer.index
        )));
    }
    Ok(offer)
}

/// The block each offered hash replaces where it had content: the base of its delta.
pub(super) fn replaced_blocks(parent: &Manifest, offers: &[Offer]) -> HashMap<Hash, Hash> {
    let mut replaced = HashMap::new();
    for offer in offers {
        if let (Some(hash), Some(Entry::Chunk(old))) = (offer.entry.hash(), parent.get(offer.index))
        {
            replaced.entry(hash).or_insert(old);
        }
    }
    replaced
}

/// A chunk the store lacks: its hash, its block's length, and the base a delta may use.
pub(super) type Lacking = (Hash, usize, Option<BaseBlock>);

/// Which of `candidates` (hash and block length) the store lacks, each with the base a
/// delta may use: the block it replaces (`replaced`), read (and verified) for its page
/// digests while the answer has read less than `BASE_ANSWER_READ`, its page values kept
/// for the first `BASE_ANSWER_KEEP` bytes. A held chunk is read and verified: dedup
/// never trusts a damaged one; past `verify_budget` bytes of held chunks read (a probe's
/// bound, which stores nothing) it is counted held unread. Also returns the bytes read.
///
/// # Errors
/// When the store cannot be read, or a held chunk has another length than its block.
pub(super) fn lacking<S: ChunkStore + ?Sized>(
    store: &S,
    candidates: &[(Hash, usize)],
    replaced: &HashMap<Hash, Hash>,
    max_len: usize,
    verify_budget: usize,
) -> Result<(Vec<Lacking>, usize), ServerError> {
    let mut needs = Vec::new();
    let mut bases: HashMap<Hash, Option<BaseBlock>> = HashMap::new();
    let (mut read, mut kept, mut verified) = (0, 0, 0);
    // A wave of candidates at a time: their reads overlap (see `parallel`), and the
    // budgets are checked between waves.
    let at_once = parallel::for_blocks(max_len);
    for wave in candidates.chunks(at_once) {
        let verify = verified < verify_budget;
        let held = parallel::map_at_once(wave, at_once, |&(hash, len)| {
            if verify {
                store.holds(&hash, max_len)
            } else {
                Ok(store.has(&hash)?.then_some(len))
            }
        });
        let mut lacks = Vec::new();
        for (&(hash, len), held) in wave.iter().zip(held) {
            match held? {
                Some(held) if held == len => verified += if verify { held } else { 0 },
                Some(held) => {
                    return Err(ServerError::BadRequest(format!(
                        "a block of {len} bytes is offered as chunk {}, which has {held} bytes",
                        hash.short()
                    )));
                }
                None => lacks.push((hash, len)),
            }
        }
        // The blocks they replace, read for their page digests while under the budget.
        let mut to_read: Vec<Hash> = Vec::new();
        for (hash, _) in &lacks {
            if let Some(old) = replaced.get(hash)
                && !bases.contains_key(old)
                && !to_read.contains(old)
                && read + to_read.len() * max_len < BASE_ANSWER_READ
            {
                to_read.push(*old);
            }
        }
        // Without a readable base the chunk simply travels whole.
        let paged = parallel::map_at_once(&to_read, at_once, |old| {
            store.get_with_pages(old, max_len).ok().map(
                |Paged {
                     content,
                     tree,
                     depth,
                 }| {
                    let pages = PageDigests::of_tree(&tree, DIGEST_LEN);
                    (content.len(), Base { hash: *old, pages }, tree, depth)
                },
            )
        });
        for (old, paged) in to_read.into_iter().zip(paged) {
            let base = paged.map(|(len, base, tree, depth)| {
                read += len;
                let keep = kept + tree.held_bytes() <= BASE_ANSWER_KEEP;
                kept += if keep { tree.held_bytes() } else { 0 };
                (base, keep.then(|| Arc::new(KeptBase { tree, depth })))
            });
            bases.insert(old, base);
        }
        for (hash, len) in lacks {
            let base = replaced
                .get(&hash)
                .and_then(|old| bases.get(old).cloned().flatten());
            needs.push((hash, len, base));
        }
    }
    Ok((needs, read + verified))
}
