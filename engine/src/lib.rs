//! Hotate's data path, with no network and no command line.
//!
//! A differential disk is read unbuffered ([`direct_io`], [`source`]), split into blocks
//! that are hashed, zero-checked and compressed ([`block`]) or sent as page deltas
//! ([`delta`]) with the pages an upload already sent copied ([`copies`]), described by a
//! [`Manifest`],
//! and fed by the [`pipeline`] to a [`ChunkSink`]: a network upload on the client, a
//! [`ChunkStore`] on the server.

pub mod block;
pub mod copies;
pub mod delta;
pub mod direct_io;
pub mod hash;
pub mod manifest;
pub mod page_tree;
pub mod pipeline;
pub mod source;
pub mod store;

#[cfg(any(test, feature = "contract"))]
#[doc(hidden)]
#[allow(clippy::unwrap_used, clippy::missing_panics_doc)]
pub mod testdata;

pub use block::{BlockSize, ChunkError, Codec, Frame, UnverifiedChunk, VerifiedChunk};
pub use copies::{Composed, Copies, PageIndex, UnverifiedComposed};
pub use delta::{
    Base, Delta, Incoming, MAX_PATCH_DEPTH, Outgoing, PageDigests, UnverifiedDelta, VerifiedPatch,
};
pub use hash::Hash;
pub use manifest::{Entry, Manifest, ManifestError};
pub use page_tree::PageTree;
pub use pipeline::{
    ChunkSink, Need, Offer, Outcome, PipelineConfig, PipelineError, Progress, ProgressSnapshot,
    SinkError, StoreSink,
};
pub use source::{Format, ImageSource, Qcow2Image, RawImage, VhdImage, VhdxImage};
pub use store::{ChunkStore, FsStore, Layout, MemoryStore, Paged, StoreError, Stored};
