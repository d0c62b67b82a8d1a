//! Counters the pipeline updates as it goes, for progress bars and summaries.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one pipeline run; read them from any thread while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the image whose fate is settled: unchanged, zero, already held by the
    /// other side, or handed to the sink.
    pub bytes_done: AtomicU64,
    /// Bytes actually read from the image (holes are not read).
    pub bytes_read: AtomicU64,
    /// Blocks equal to the parent's, not offered.
    pub blocks_skipped: AtomicU64,
    /// Blocks offered because they differ from the parent.
    pub blocks_changed: AtomicU64,
    /// Bytes of the changed blocks...
    pub bytes_changed: AtomicU64,
    /// ...of those the sink answered for...
    pub bytes_answered: AtomicU64,
    /// ...and of those it needs (to be compressed and sent; `bytes_compressed` so far).
    pub bytes_needed: AtomicU64,
    /// Uncompressed bytes of the chunks the sink needed.
    pub bytes_compressed: AtomicU64,
    /// Encoded bytes handed to the sink.
    pub bytes_sent: AtomicU64,
    /// Chunks handed to the sink.
    pub chunks_sent: AtomicU64,
    /// Bytes of blocks handed to the sink that its far end has not yet confirmed stored
    /// (a network sink counts them, see [`Progress::handed_over`]): a progress display
    /// shows [`Progress::settled`], so it reaches 100% when the server has everything,
    /// not when the last chunk is queued.
    pub bytes_unconfirmed: AtomicU64,
    /// Bytes of the image the read will cover (its data, or an overlay's top layer), once
    /// known (0 until then): with `bytes_read`, how much reading is left.
    pub bytes_to_read: AtomicU64,
    /// Encoded bytes the sink's far end confirmed stored (see [`Progress::stored`]).
    pub wire_stored: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub bytes_done: u64,
    pub bytes_read: u64,
    pub blocks_skipped: u64,
    pub blocks_changed: u64,
    pub bytes_changed: u64,
    pub bytes_compressed: u64,
    pub bytes_sent: u64,
    pub chunks_sent: u64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_done: self.bytes_done.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            blocks_skipped: self.blocks_skipped.load(Relaxed),
            blocks_changed: self.blocks_changed.load(Relaxed),
            bytes_changed: self.bytes_changed.load(Relaxed),
            bytes_compressed: self.bytes_compressed.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            chunks_sent: self.chunks_sent.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A sink took `n` bytes of blocks that its far end has yet to confirm.
    pub fn handed_over(&self, n: u64) {
        self.bytes_unconfirmed.fetch_add(n, Relaxed);
    }

    /// The far end stored `wire` encoded bytes.
    pub fn stored(&self, wire: u64) {
        self.wire_stored.fetch_add(wire, Relaxed);
    }

    /// The far end confirmed `n` bytes handed over before.
    pub fn confirmed(&self, n: u64) {
        let _ = self
            .bytes_unconfirmed
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }

    /// Bytes done and, where the sink confirms, confirmed.
    pub fn settled(&self) -> u64 {
        self.bytes_done
            .load(Relaxed)
            .saturating_sub(self.bytes_unconfirmed.load(Relaxed))
    }
}
