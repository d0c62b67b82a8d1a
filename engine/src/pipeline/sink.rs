//! Where the pipeline's output goes: the other side's "need" answers and the chunks.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use crate::delta::{Base, Outgoing};
use crate::hash::Hash;
use crate::manifest::Entry;
use crate::store::{ChunkStore, Stored};

/// A block whose entry differs from the parent's, offered to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub index: u64,
    pub entry: Entry,
}

/// A hash the sink lacks, and a block it holds that the chunk may be sent against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub hash: Hash,
    pub base: Option<Base>,
}

impl Need {
    /// A need for the whole chunk.
    pub fn whole(hash: Hash) -> Self {
        Self { hash, base: None }
    }
}

/// The error a sink reports; the pipeline passes it through unchanged.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The receiving side of the pipeline: a network upload or a local store.
///
/// Both methods take `&self` so that offering the next batch and storing the previous
/// one's chunks can overlap.
pub trait ChunkSink: Send + Sync {
    /// Offers changed blocks, in index order; answers which of their hashes it lacks,
    /// each with the base it may be sent against as a delta.
    fn offer(
        &self,
        offers: Vec<Offer>,
    ) -> impl Future<Output = Result<Vec<Need>, SinkError>> + Send;

    /// Takes one needed chunk; a delta only against the base its need named.
    fn put(&self, chunk: Outgoing) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Whether the receiver rebuilds blocks from pages copied from chunks put before
    /// them ([`Outgoing::Composed`]), taking chunks in the order they are put.
    fn takes_copies(&self) -> bool {
        false
    }

    /// Called once after the last `put`: whatever the sink buffered must be kept now.
    fn flush(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Most chunks a [`StoreSink`] stores with one group commit.
const STORE_GROUP: usize = 64;
/// Most encoded bytes a [`StoreSink`] holds before committing them.
const STORE_GROUP_BYTES: usize = 8 << 20;

/// A sink that stores chunks in a [`ChunkStore`] (the server's `disk import`, benches),
/// in groups so that durability costs one commit per group. Held chunks are detached
/// from the pipeline's read buffers, so the group never holds the pipeline's window.
#[derive(Debug)]
pub struct StoreSink<S: ?Sized> {
    store: Arc<S>,
    group: std::sync::Mutex<Vec<Stored>>,
}

impl<S: ChunkStore + ?Sized> StoreSink<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            group: std::sync::Mutex::new(Vec::with_capacity(STORE_GROUP)),
        }
    }

    /// Stores the chunks gathered so far.
    async fn commit(&self) -> Result<(), SinkError> {
        let group = std::mem::take(&mut *self.group.lock().unwrap_or_else(|e| e.into_inner()));
        if group.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_many(&group)).await??;
        Ok(())
    }
}

impl<S: ChunkStore + ?Sized> ChunkSink for StoreSink<S> {
    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let mut seen = HashSet::new();
        let hashes: Vec<Hash> = offers
            .iter()
            .filter_map(|offer| offer.entry.hash())
            .filter(|hash| seen.insert(*hash))
            .collect();
        let store = self.store.clone();
        // Held chunks are read and verified: a damaged one is quarantined and stored anew.
        let missing = tokio::task::spawn_blocking(move || {
            let max_len = crate::BlockSize::MAX as usize;
            let mut missing = Vec::new();
            for hash in hashes {
                if store.holds(&hash, max_len)?.is_none() {
                    missing.push(hash);
                }
            }
            Ok::<_, crate::StoreError>(missing)
        })
        .await??;
        Ok(missing.into_iter().map(Need::whole).collect())
    }

    async fn put(&self, chunk: Outgoing) -> Result<(), SinkError> {
        let Outgoing::Whole(chunk) = chunk else {
            return Err("a store takes whole chunks; it offered no base for a delta".into());
        };
        let chunk = chunk.detach();
        let full = {
            let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            group.push(chunk.into());
            let bytes: usize = group.iter().map(Stored::encoded_len).sum();
            group.len() >= STORE_GROUP || bytes >= STORE_GROUP_BYTES
        };
        if full {
            self.commit().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.commit().await
    }
}
