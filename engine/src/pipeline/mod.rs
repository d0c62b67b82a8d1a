//! The pipeline: read → hash/zero-check → skip blocks equal to the parent → offer to the
//! sink → compress only what it needs (as a page delta where it offers a base) → hand to
//! the sink.
//!
//! Three stages run concurrently in the caller's task, joined by bounded channels:
//! reading (one read per span of blocks, at least 1 MiB, then hashing, on the blocking
//! pool, `read_ahead` spans in flight), offering (batches of changed blocks, many
//! awaiting the sink's "need" at once to hide round trips), and compressing
//! (`compress_jobs` on the blocking pool) into the sink. Every span held in memory is a
//! lease from a pool of `window / span` buffers, so memory stays within the window
//! (plus a block per compress job) whatever the image size. Changed blocks awaiting
//! their answer keep their content within half the window (a copy where a span holds
//! several blocks, so that the span's lease goes back); past it they let it go and
//! are read again if needed, so the offers in flight are not bounded by memory. One
//! that replaces a block of the parent keeps its page digests instead (a few KiB), so
//! when the sink offers that block as a delta base only the changed pages are read
//! again. No CPU work runs on the async executor.

mod buffers;
mod progress;
mod sink;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::block::{BlockSize, DEFAULT_ZSTD_LEVEL, Frame, VerifiedChunk, is_zero};
use crate::copies::PageIndex;
use crate::delta::{Base, Delta, Outgoing, PAGE, PageDigests};
use crate::hash::Hash;
use crate::manifest::{Entry, Manifest, ManifestError};
use crate::page_tree::PageTree;
use crate::source::ImageSource;
use buffers::{BlockBuffers, Lease};

pub use progress::{Progress, ProgressSnapshot};
pub use sink::{ChunkSink, Need, Offer, SinkError, StoreSink};

/// Default bytes of block data held in memory at once.
pub const DEFAULT_WINDOW: usize = 64 << 20;

/// Bytes read at once when blocks are smaller than this.
const READ_SPAN: usize = 1 << 20;

/// Offer batches awaiting the sink's answer at once, so a network round trip does not
/// stall the pipeline.
const OFFERS_IN_FLIGHT: usize = 32;

/// While fewer batches than this await their answer, a batch leaves without waiting to
/// fill: the first changes go out at once.
const EAGER_OFFERS: usize = 4;

/// Otherwise a batch leaves when full or this long after its first block: long enough to
/// gather the blocks read meanwhile, short against a round trip.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// Most changed blocks in one offer batch.
const OFFER_BATCH: usize = 64;

/// Bytes of page digests changed blocks may keep instead of their content: 4 KiB per
/// MiB block, so 2,048 such blocks in flight.
const PAGE_DIGEST_BUDGET: usize = 8 << 20;

/// Bytes per page digest a block keeps: as wide as any server's, so it can be compared
/// with whatever width the base comes in.
const KEPT_DIGEST_LEN: usize = 16;

/// Settings of one pipeline run.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Bytes of block data in memory at most (rounded down to whole blocks, at least 2).
    pub window: usize,
    /// zstd level for needed chunks.
    pub zstd_level: i32,
    /// Blocks read and hashed concurrently.
    pub read_ahead: usize,
    /// Chunks compressed concurrently.
    pub compress_jobs: usize,
    /// Most blocks offered in one batch.
    pub max_batch: usize,
    /// Trust an overlay's top layer: blocks it does not touch are the parent's, without
    /// reading them. Only for an overlay whose layers below are the parent version
    /// (see [`check_layers_below`]).
    pub top_layer_only: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            window: DEFAULT_WINDOW,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            // Reads block on IO (or page faults) as well as hashing, and a span that
            // finishes early waits for the ones before it: four per core keep every core
            // busy (measured: 2 per core reaches 93% of 4's throughput on a cached image).
            read_ahead: cores * 4,
            compress_jobs: cores,
            max_batch: 1024,
            top_layer_only: false,
        }
    }
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The manifest of the image that was read.
    pub manifest: Manifest,
    pub progress: ProgressSnapshot,
}

/// Why a pipeline run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the image is {image} bytes but the disk is {disk} bytes")]
    SizeMismatch { image: u64, disk: u64 },
    #[error("reading the image at byte {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
    #[error(
        "the image changed while it was read: the block at byte {offset} differs on a second read"
    )]
    Changed { offset: u64 },
    #[error("probing the image for holes: {0}")]
    Extents(std::io::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Sink(SinkError),
    #[error("a pipeline worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// One block on its way through the pipeline.
struct Hashed {
    index: u64,
    len: u64,
    entry: Entry,
    /// The content, kept only for non-zero blocks; it holds its place in the window.
    data: Option<Bytes>,
    /// Digests of its pages, kept by a changed block that let its content go.
    pages: Option<PageDigests>,
    /// The block the sink offered to take this one against as a delta.
    base: Option<Base>,
}

impl Hashed {
    fn without_data(index: u64, len: u64, entry: Entry) -> Self {
        Self {
            index,
            len,
            entry,
            data: None,
            pages: None,
            base: None,
        }
    }
}

/// What changed blocks awaiting their answer hold: content within half the window, then
/// page digests within `PAGE_DIGEST_BUDGET`, then nothing.
#[derive(Debug)]
struct Holding {
    blocks: AtomicUsize,
    block_budget: usize,
    digest_bytes: AtomicUsize,
}

impl Holding {
    /// Whether changed blocks hold all the content they may.
    fn blocks_full(&self) -> bool {
        self.blocks.load(Relaxed) >= self.block_budget
    }

    /// Whether a changed block may keep its content; it must be released once answered.
    fn take_block(&self) -> bool {
        Self::take(&self.blocks, 1, self.block_budget)
    }

    /// Whether a changed block may keep `bytes` of page digests.
    fn take_digests(&self, bytes: usize) -> bool {
        Self::take(&self.digest_bytes, bytes, PAGE_DIGEST_BUDGET)
    }

    fn take(counter: &AtomicUsize, amount: usize, budget: usize) -> bool {
        if counter.fetch_add(amount, Relaxed) + amount <= budget {
            true
        } else {
            counter.fetch_sub(amount, Relaxed);
            false
        }
    }

    /// Gives back what an answered block held.
    fn release(&self, block: &Hashed) {
        if block.data.is_some() {
            self.blocks.fetch_sub(1, Relaxed);
        }
        if let Some(pages) = &block.pages {
            self.digest_bytes.fetch_sub(pages.as_bytes().len(), Relaxed);
        }
    }
}

/// Reads `source`, diffs it against `parent` and feeds the changes to `sink`.
///
/// `parent` gives the disk geometry; for a first import pass [`Manifest::zeroed`].
///
/// # Errors
/// When the image does not match the disk size, a read fails, or the sink fails.
pub async fn run<S: ChunkSink>(
    source: Arc<dyn ImageSource>,
    parent: &Manifest,
    sink: &S,
    config: &PipelineConfig,
    progress: &Progress,
) -> Result<Outcome, PipelineError> {
    let disk_size = parent.disk_size();
    if source.size() != disk_size {
        return Err(PipelineError::SizeMismatch {
            image: source.size(),
            disk: disk_size,
        });
    }
    let block_size = parent.block_size();
    let window_blocks = (config.window / block_size.bytes()).max(2);
    // Small blocks are read several at a time: large reads keep unbuffered IO efficient.
    let blocks_per_span = (READ_SPAN.min(config.window / 4) / block_size.bytes()).max(1);
    let span_bytes = blocks_per_span * block_size.bytes();
    let buffers = BlockBuffers::new(span_bytes, (config.window / span_bytes).max(2));
    let geometry = Geometry {
        disk_size,
        block_size,
        blocks_per_span,
    };
    let (hashed_tx, hashed_rx) = mpsc::channel(window_blocks);
    let (needed_tx, needed_rx) = mpsc::channel(window_blocks);
    // Changed blocks awaiting their answer keep their content within half the window (the
    // other half reads ahead meanwhile).
    let holding = Arc::new(Holding {
        blocks: AtomicUsize::new(0),
        block_budget: window_blocks / 2,
        digest_bytes: AtomicUsize::new(0),
    });

    let source_for_compress = source.clone();
    let read = read_stage(
        source,
        parent,
        geometry,
        config,
        (buffers, holding.clone()),
        progress,
        hashed_tx,
    );
    let offer = offer_stage(
        parent, sink, config, &holding, progress, hashed_rx, needed_tx,
    );
    let compress = compress_stage(
        source_for_compress,
        geometry,
        sink,
        config,
        progress,
        needed_rx,
    );
    let ((), manifest, ()) = tokio::try_join!(read, offer, compress)?;
    sink.flush().await.map_err(PipelineError::Sink)?;
    Ok(Outcome {
        manifest,
        progress: progress.snapshot(),
    })
}

/// Reads and hashes every block in order, a span of blocks per read; spans wholly in
/// holes are zero without a read, and with `top_layer_only` spans an overlay's top layer
/// does not touch are the parent's without a read.
async fn read_stage(
    source: Arc<dyn ImageSource>,
    parent: &Manifest,
    geometry: Geometry,
    config: &PipelineConfig,
    (buffers, holding): (Arc<BlockBuffers>, Arc<Holding>),
    progress: &Progress,
    out: mpsc::Sender<Hashed>,
) -> Result<(), PipelineError> {
    let extents = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.data_extents())
            .await?
            .map_err(PipelineError::Extents)?
    };
    let top_layer = if config.top_layer_only {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.top_layer_extents())
            .await?
            .transpose()
            .map_err(PipelineError::Extents)?
    } else {
        None
    };
    let mut extents = extents.into_iter().peekable();
    let mut touched = top_layer.map(|t| t.into_iter().peekable());
    let block_count = geometry.block_size.count(geometry.disk_size);
    let plan = (0..block_count)
        .step_by(geometry.blocks_per_span)
        .map(move |first| {
            let blocks = first..(first + geometry.blocks_per_span as u64).min(block_count);
            let start = geometry.range(first).start;
            let end = geometry.range(blocks.end - 1).end;
            while extents.next_if(|e| e.end <= start).is_some() {}
            let has_data = extents.peek().is_some_and(|e| e.start < end);
            let untouched = touched.as_mut().is_some_and(|touched| {
                while touched.next_if(|e| e.end <= start).is_some() {}
                touched.peek().is_none_or(|e| e.start >= end)
            });
            (blocks, has_data, untouched)
        });
    let spans = stream::iter(plan)
        .map(|(blocks, has_data, untouched)| {
            let source = source.clone();
            let buffers = buffers.clone();
            let holding = holding.clone();
            async move {
                if untouched {
                    let same = blocks.map(|index| {
                        let entry = parent.get(index).unwrap_or(Entry::Zero);
                        Hashed::without_data(index, geometry.len(index), entry)
                    });
                    return Ok((same.collect(), 0));
                }
                if !has_data {
                    let zeros = blocks
                        .map(|index| Hashed::without_data(index, geometry.len(index), Entry::Zero));
                    return Ok((zeros.collect(), 0));
                }
                let lease = buffers
                    .lease()
                    .await
                    .map_err(|e| PipelineError::Sink(e.into()))?;
                let parents = blocks
                    .clone()
                    .map(|index| parent.get(index).unwrap_or(Entry::Zero))
                    .collect();
                tokio::task::spawn_blocking(move || {
                    read_span(&*source, geometry, (blocks, parents), lease, &holding)
                })
                .await?
            }
        })
        .buffered(config.read_ahead.max(1));
    futures::pin_mut!(spans);
    while let Some((blocks, read)) = spans.try_next().await? {
        Progress::add(&progress.bytes_read, read);
        for block in blocks {
            if out.send(block).await.is_err() {
                return Ok(()); // The offer stage stopped; its error says why.
            }
        }
    }
    Ok(())
}

/// Checks, before trusting an overlay's top layer, that its layers below hold the parent
/// version: `samples` blocks outside `touched` (the top layer's extents; the first, the
/// last and others spread between) are read through the chain and compared with the
/// parent's entries. Returns the first block that differs, if any.
///
/// # Errors
/// When the image cannot be read.
pub fn check_layers_below(
    source: &dyn ImageSource,
    parent: &Manifest,
    touched: &[std::ops::Range<u64>],
    samples: usize,
) -> Result<Option<u64>, PipelineError> {
    let (block_size, disk_size) = (parent.block_size(), parent.disk_size());
    first_sample_differing(source, parent, samples, |index| {
        let range = block_size.range(index, disk_size);
        !touched
            .iter()
            .any(|t| t.start < range.end && range.start < t.end)
    })
}

/// Reads `samples` blocks of `source` that `keep` admits (the first, the last and others
/// spread between) and compares them with `manifest`; returns the first that differs.
///
/// # Errors
/// When the image cannot be read.
pub fn first_sample_differing(
    source: &dyn ImageSource,
    manifest: &Manifest,
    samples: usize,
    keep: impl Fn(u64) -> bool,
) -> Result<Option<u64>, PipelineError> {
    let (block_size, disk_size) = (manifest.block_size(), manifest.disk_size());
    let count = manifest.len() as u64;
    let step = (count / samples.max(1) as u64).max(1);
    let mut picks: Vec<u64> = (0..count).step_by(step as usize).collect();
    picks.push(count.saturating_sub(1));
    let mut buf = crate::direct_io::AlignedBuf::zeroed(block_size.bytes());
    for index in picks.into_iter().filter(|&i| keep(i)) {
        let range = block_size.range(index, disk_size);
        let len = (range.end - range.start) as usize;
        source
            .read_at(range.start, len, &mut buf)
            .map_err(|source| PipelineError::Read {
                offset: range.start,
                source,
            })?;
        let entry = if is_zero(&buf[..len]) {
            Entry::Zero
        } else {
            Entry::Chunk(Hash::of(&buf[..len]))
        };
        if manifest.get(index) != Some(entry) {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Disk geometry and how many blocks one read covers.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    disk_size: u64,
    block_size: BlockSize,
    blocks_per_span: usize,
}

impl Geometry {
    fn range(self, index: u64) -> std::ops::Range<u64> {
        self.block_size.range(index, self.disk_size)
    }

    fn len(self, index: u64) -> u64 {
        let range = self.range(index);
        range.end - range.start
    }
}

/// Reads the blocks of one span with a single read (or takes them in place where the
/// image lives in memory), then zero-checks and hashes each; returns them with the bytes
/// read. `parents` are the parent's entries of the blocks: a changed block keeps its
/// content while `holding` allows, else its page digests where it replaces content.
fn read_span(
    source: &dyn ImageSource,
    geometry: Geometry,
    (blocks, parents): (std::ops::Range<u64>, Vec<Entry>),
    mut lease: Lease,
    holding: &Holding,
) -> Result<(Vec<Hashed>, u64), PipelineError> {
    let start = geometry.range(blocks.start).start;
    let len = (geometry.range(blocks.end - 1).end - start) as usize;
    let read_error = |source| PipelineError::Read {
        offset: start,
        source,
    };
    let span = match source.map_at(start, len) {
        Some(mapped) => {
            let mapped = mapped.map_err(read_error)?;
            if mapped.len() != len {
                return Err(read_error(std::io::ErrorKind::UnexpectedEof.into()));
            }
            lease.hold(mapped)
        }
        None => {
            source
                .read_at(start, len, lease.buf_mut())
                .map_err(read_error)?;
            lease.into_bytes()
        }
    };
    let hashed = blocks
        .zip(parents)
        .map(|(index, parent)| {
            let range = geometry.range(index);
            let data = span.slice((range.start - start) as usize..(range.end - start) as usize);
            let len = data.len() as u64;
            if is_zero(&data) {
                return Hashed::without_data(index, len, Entry::Zero);
            }
            // Past the content budget, a block that replaces content keeps its page
            // digests if it changed: one pass over its pages then gives its hash too.
            let replaces_content = matches!(parent, Entry::Chunk(_));
            let tree = (replaces_content && holding.blocks_full()).then(|| PageTree::of(&data));
            let hash = tree
                .as_ref()
                .and_then(PageTree::root)
                .unwrap_or_else(|| Hash::of(&data));
            let entry = Entry::Chunk(hash);
            let mut block = Hashed::without_data(index, len, entry);
            if entry == parent {
                // Dropped as soon as it is compared, with the span's lease.
                block.data = Some(data);
            } else if holding.take_block() {
                // Awaiting its answer for a round trip or more: a block that shares its
                // read span keeps a copy, so that the span's lease goes back to the reader
                // (the holding budget bounds these copies to half the window).
                block.data = Some(if geometry.blocks_per_span > 1 {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                });
            } else if replaces_content
                && holding.take_digests(data.len().div_ceil(PAGE) * KEPT_DIGEST_LEN)
            {
                let tree = tree.unwrap_or_else(|| PageTree::of(&data));
                block.pages = Some(PageDigests::of_tree(&tree, KEPT_DIGEST_LEN));
            }
            block
        })
        .collect();
    Ok((hashed, len as u64))
}

/// Skips blocks equal to the parent, offers the rest in batches and forwards the needed
/// ones; builds the new manifest.
///
/// Up to `OFFERS_IN_FLIGHT` batches await their answers at once; answers are taken in the
/// order the batches left, so the needed blocks reach the compress stage in image order
/// whatever order the sink answers in, and their copies (which follow their places) are
/// the same in a dry run and in the upload. A batch leaves when it is full, at the end of the
/// image, at once while fewer than `EAGER_OFFERS` are out, else `BATCH_LINGER` after its
/// first block. So a region of sparse or slightly changed blocks puts whatever the reader
/// finds in flight within milliseconds, not one block per batch in flight.
async fn offer_stage<S: ChunkSink>(
    parent: &Manifest,
    sink: &S,
    config: &PipelineConfig,
    holding: &Holding,
    progress: &Progress,
    mut input: mpsc::Receiver<Hashed>,
    out: mpsc::Sender<Answered>,
) -> Result<Manifest, PipelineError> {
    let mut manifest = parent.clone();
    let batch_cap = config.max_batch.clamp(1, OFFER_BATCH);
    let offer = |changed: Vec<Hashed>| async move {
        let offers = changed
            .iter()
            .map(|b| Offer {
                index: b.index,
                entry: b.entry,
            })
            .collect();
        let needed = sink.offer(offers).await.map_err(PipelineError::Sink)?;
        let needed: HashMap<Hash, Option<Base>> = needed
            .into_iter()
            .map(|need| (need.hash, need.base))
            .collect();
        Ok::<_, PipelineError>((changed, needed))
    };
    let mut in_flight = FuturesOrdered::new();
    let mut batch = Vec::with_capacity(batch_cap);
    // When the batch's first block came, and whether it has waited long enough.
    let mut batch_since = tokio::time::Instant::now();
    let mut lingered = false;
    let mut read_all = false;
    loop {
        let ready =
            batch.len() >= batch_cap || read_all || lingered || in_flight.len() < EAGER_OFFERS;
        if !batch.is_empty() && ready && in_flight.len() < OFFERS_IN_FLIGHT {
            in_flight.push_back(offer(std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_cap),
            )));
            lingered = false;
            continue;
        }
        if read_all && batch.is_empty() && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            // Answers first: they free what their blocks hold.
            biased;
            answered = in_flight.next(), if !in_flight.is_empty() => {
                let Some(answered) = answered else { continue };
                let (changed, mut needed) = answered?;
                count_answered(&changed, &needed, progress);
                let held = sink.takes_copies();
                if !forward_needed(changed, &mut needed, held, holding, progress, &out).await {
                    break; // The compress stage stopped with an error.
                }
            }
            block = input.recv(), if !read_all && batch.len() < batch_cap => {
                let Some(block) = block else {
                    read_all = true;
                    continue;
                };
                // Blocks equal to the parent leave at once (and free their place in the
                // window), so a batch holds changed blocks however much disk lies between.
                if parent.get(block.index) == Some(block.entry) {
                    Progress::add(&progress.blocks_skipped, 1);
                    Progress::add(&progress.bytes_done, block.len);
                    continue;
                }
                manifest.set(block.index, block.entry)?;
                Progress::add(&progress.blocks_changed, 1);
                Progress::add(&progress.bytes_changed, block.len);
                if batch.is_empty() {
                    batch_since = tokio::time::Instant::now();
                }
                batch.push(block);
            }
            () = tokio::time::sleep_until(batch_since + BATCH_LINGER),
                if !batch.is_empty() && !lingered => lingered = true,
        }
    }
    Ok(manifest)
}

/// Counts an answered batch: its changed bytes, and those the sink needs (each needed hash
/// once, as [`forward_needed`] hands them on).
fn count_answered(changed: &[Hashed], needed: &HashMap<Hash, Option<Base>>, progress: &Progress) {
    let mut seen = std::collections::HashSet::new();
    for block in changed {
        Progress::add(&progress.bytes_answered, block.len);
        if let Entry::Chunk(hash) = block.entry
            && needed.contains_key(&hash)
            && seen.insert(hash)
        {
            Progress::add(&progress.bytes_needed, block.len);
        }
    }
}

/// Hands an answered batch's needed blocks to the compress stage (each needed hash once,
/// by its first block) and counts the rest done; with `held`, the blocks the sink holds
/// already follow too, so later blocks may copy their pages. False when the compress
/// stage stopped.
async fn forward_needed(
    changed: Vec<Hashed>,
    needed: &mut HashMap<Hash, Option<Base>>,
    held: bool,
    holding: &Holding,
    progress: &Progress,
    out: &mpsc::Sender<Answered>,
) -> bool {
    let asked: std::collections::HashSet<Hash> = needed.keys().copied().collect();
    for mut block in changed {
        holding.release(&block);
        let answered = match block.entry {
            Entry::Chunk(hash) => match needed.remove(&hash) {
                Some(base) => {
                    block.base = base;
                    Answered::Needed(block)
                }
                // A repeat of a needed block in the batch brings no new pages.
                None if held && !asked.contains(&hash) => {
                    Progress::add(&progress.bytes_done, block.len);
                    Answered::Held(block)
                }
                None => {
                    Progress::add(&progress.bytes_done, block.len);
                    continue;
                }
            },
            Entry::Zero => {
                Progress::add(&progress.bytes_done, block.len);
                continue;
            }
        };
        if out.send(answered).await.is_err() {
            return false;
        }
    }
    true
}

/// An answered block on its way to the compress stage.
enum Answered {
    /// The sink needs it.
    Needed(Hashed),
    /// The sink holds it already: its pages may be copied from.
    Held(Hashed),
}

/// Compresses the needed blocks (as page deltas where the sink offered a base, with the
/// pages a chunk sent or held before carried copied) on the blocking pool and hands them
/// to the sink in order; a block that let its content go while its offer was in flight is
/// read again (and must hash as offered): only its changed pages where it kept their
/// digests and the sink offered a base. Held blocks take their place in the order too:
/// their pages are remembered, and nothing is sent.
async fn compress_stage<S: ChunkSink>(
    source: Arc<dyn ImageSource>,
    geometry: Geometry,
    sink: &S,
    config: &PipelineConfig,
    progress: &Progress,
    input: mpsc::Receiver<Answered>,
) -> Result<(), PipelineError> {
    let level = config.zstd_level;
    let jobs = config.compress_jobs.max(1);
    // The pages sent or held so far, for a receiver that takes copies.
    let index = Arc::new(std::sync::Mutex::new(PageIndex::default()));
    ReceiverStream::new(input)
        .filter_map(|answered| async move {
            let (Answered::Needed(block) | Answered::Held(block)) = &answered;
            let Entry::Chunk(hash) = block.entry else {
                return None;
            };
            Some((hash, answered))
        })
        .enumerate()
        .map(|(place, (hash, answered))| {
            let source = source.clone();
            // When a chunk's job starts, every chunk `jobs` places before it has been put
            // (`buffered` starts one as one ends): it may copy their pages. Counting
            // places, not puts, keeps a dry run's bytes those of the upload.
            let place = u32::try_from(place).unwrap_or(u32::MAX);
            let copies = sink.takes_copies().then(|| Copying {
                index: index.clone(),
                place,
                sent: place.saturating_add(1).saturating_sub(jobs as u32),
            });
            async move {
                let (job, len) = match answered {
                    Answered::Needed(block) => {
                        let len = block.len;
                        let job = tokio::task::spawn_blocking(move || {
                            encode(source.as_ref(), geometry, hash, block, level, copies)
                                .map(|(chunk, held, reread)| (Some((chunk, held)), reread))
                        });
                        (job, len)
                    }
                    Answered::Held(block) => {
                        let job = tokio::task::spawn_blocking(move || {
                            remember(source.as_ref(), geometry, hash, block, copies)
                                .map(|reread| (None, reread))
                        });
                        (job, 0)
                    }
                };
                let (chunk, reread) = job.await??;
                Progress::add(&progress.bytes_read, reread);
                Ok::<_, PipelineError>(chunk.map(|(chunk, held)| (chunk, held, len)))
            }
        })
        .buffered(jobs)
        .try_for_each(|chunk| async move {
            let Some((chunk, held, len)) = chunk else {
                return Ok(());
            };
            Progress::add(&progress.bytes_compressed, len);
            Progress::add(&progress.bytes_sent, chunk.encoded_len() as u64);
            Progress::add(&progress.chunks_sent, 1);
            sink.put(chunk).await.map_err(PipelineError::Sink)?;
            drop(held);
            Progress::add(&progress.bytes_done, len);
            Ok(())
        })
        .await
}

/// Remembers the pages of a block the sink holds (read again if it let its content go,
/// so what is remembered does not depend on timing); returns the bytes read again.
fn remember(
    source: &dyn ImageSource,
    geometry: Geometry,
    hash: Hash,
    block: Hashed,
    copies: Option<Copying>,
) -> Result<u64, PipelineError> {
    let Some(Copying { index, place, .. }) = copies else {
        return Ok(0);
    };
    let (data, reread) = match block.data {
        Some(data) => (data, 0),
        None => (read_again(source, geometry, block.index, hash)?, block.len),
    };
    PageIndex::remember(&index, &data, (hash, place));
    Ok(reread)
}

/// What a block may copy, for a receiver that takes copies: the pages sent, its place
/// among the needed chunks, and how many places before it were sent.
struct Copying {
    index: Arc<std::sync::Mutex<PageIndex>>,
    place: u32,
    sent: u32,
}

/// A needed block as it leaves (with `copies`, pages a chunk sent before carried are
/// copied; a delta against its offered base where that is smaller), the raw
/// content it holds until the sink has it, and the bytes read again for it.
fn encode(
    source: &dyn ImageSource,
    geometry: Geometry,
    hash: Hash,
    block: Hashed,
    level: i32,
    copies: Option<Copying>,
) -> Result<(Outgoing, Option<Bytes>, u64), PipelineError> {
    let len = block.len as usize;
    if let (None, Some(pages), Some(base)) = (&block.data, &block.pages, &block.base)
        && let Some((changed, content)) =
            read_changed_pages(source, geometry, block.index, pages, base)?
    {
        let read = content.len() as u64;
        // The same copies as when the block kept its content: its other pages are the
        // base's either way.
        if let Some(Copying { index, place, sent }) = &copies {
            let mut at = 0;
            let slices: Vec<(usize, &[u8])> = changed
                .iter()
                .map(|&i| {
                    let page_len = PAGE.min(len - i * PAGE);
                    at += page_len;
                    (i, &content[at - page_len..at])
                })
                .collect();
            let (count, chunk) = (len.div_ceil(PAGE), (hash, *place));
            let composed = PageIndex::compose_pages(
                index,
                count,
                &slices,
                chunk,
                *sent,
                Some(base.hash),
                level,
            );
            if let Some(composed) = composed {
                return Ok((
                    Outgoing::Composed {
                        hash,
                        len,
                        composed,
                    },
                    None,
                    read,
                ));
            }
        }
        let mut map = vec![0u8; len.div_ceil(PAGE).div_ceil(8)];
        for &i in &changed {
            map[i / 8] |= 1 << (i % 8);
        }
        let delta = Delta {
            base: base.hash,
            changed: Bytes::from(map),
            pages: Frame::encode(content, level),
        };
        return Ok((Outgoing::Delta { hash, len, delta }, None, read));
    }
    let (data, reread) = match block.data {
        Some(data) => (data, 0),
        None => (read_again(source, geometry, block.index, hash)?, block.len),
    };
    // The raw block keeps its place in the window until the sink has it.
    let held = data.clone();
    if let Some(Copying { index, place, sent }) = copies {
        let base = block.base.as_ref();
        let composed = PageIndex::compose(&index, &data, (hash, place), sent, base, level);
        if let Some(composed) = composed {
            let len = data.len();
            return Ok((
                Outgoing::Composed {
                    hash,
                    len,
                    composed,
                },
                Some(held),
                reread,
            ));
        }
    }
    let chunk = block
        .base
        .and_then(|base| Delta::encode(&data, &base, level))
        .map_or_else(
            || Outgoing::Whole(VerifiedChunk::from_hashed(hash, data, level)),
            |delta| Outgoing::Delta { hash, len, delta },
        );
    Ok((chunk, Some(held), reread))
}

/// The pages of block `index` that differ from `base`, read again: those whose digest
/// (`pages`, taken when the block was first read) differs from the base's, by number,
/// and their content; `None` when no page or every page differs (the whole block then
/// travels). Each page read must still have its digest.
fn read_changed_pages(
    source: &dyn ImageSource,
    geometry: Geometry,
    index: u64,
    pages: &PageDigests,
    base: &Base,
) -> Result<Option<(Vec<usize>, Bytes)>, PipelineError> {
    let count = pages.pages();
    if count != base.pages.pages() {
        return Ok(None);
    }
    let changed: Vec<usize> = (0..count)
        .filter(|&i| !pages.same_page(&base.pages, i))
        .collect();
    if changed.is_empty() || changed.len() == count {
        return Ok(None);
    }
    let range = geometry.range(index);
    let mut content = BytesMut::with_capacity(changed.len() * PAGE);
    let mut buf = crate::direct_io::AlignedBuf::zeroed(PAGE);
    // Runs of adjacent changed pages are read at once.
    let mut at = 0;
    while at < changed.len() {
        let first = changed[at];
        let mut last = first;
        while changed.get(at + 1) == Some(&(last + 1)) {
            at += 1;
            last += 1;
        }
        at += 1;
        let start = range.start + (first * PAGE) as u64;
        let end = (range.start + ((last + 1) * PAGE) as u64).min(range.end);
        let len = (end - start) as usize;
        source
            .read_at(start, len, &mut buf)
            .map_err(|source| PipelineError::Read {
                offset: start,
                source,
            })?;
        for (page, bytes) in (first..=last).zip(buf[..len].chunks(PAGE)) {
            if !pages.matches(page, bytes) {
                return Err(PipelineError::Changed { offset: start });
            }
        }
        content.extend_from_slice(&buf[..len]);
    }
    Ok(Some((changed, content.freeze())))
}

/// Reads block `index` again, for a needed block that let its content go while its
/// offer was in flight; it must still hash as offered.
fn read_again(
    source: &dyn ImageSource,
    geometry: Geometry,
    index: u64,
    hash: Hash,
) -> Result<Bytes, PipelineError> {
    let range = geometry.range(index);
    let len = (range.end - range.start) as usize;
    let read_error = |source| PipelineError::Read {
        offset: range.start,
        source,
    };
    let data = match source.map_at(range.start, len) {
        Some(mapped) => mapped.map_err(read_error)?,
        None => {
            let mut buf = crate::direct_io::AlignedBuf::zeroed(len);
            source
                .read_at(range.start, len, &mut buf)
                .map_err(read_error)?;
            Bytes::copy_from_slice(&buf[..len])
        }
    };
    if data.len() != len || Hash::of(&data) != hash {
        return Err(PipelineError::Changed {
            offset: range.start,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
