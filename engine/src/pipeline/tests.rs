use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::direct_io::AlignedBuf;
use crate::source::RawImage;
use crate::store::{ChunkStore, MemoryStore};
use crate::testdata::{SIZES, TEST_BLOCK, pattern};

fn block_size() -> BlockSize {
    BlockSize::new(TEST_BLOCK as u32).unwrap()
}

fn write_image(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> Arc<dyn ImageSource> {
    let path = dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    Arc::new(RawImage::open(&path).unwrap())
}

fn export(manifest: &Manifest, store: &dyn ChunkStore) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, entry) in manifest.entries().iter().enumerate() {
        let range = manifest.block_size().range(i as u64, manifest.disk_size());
        match entry {
            Entry::Zero => out.resize(out.len() + (range.end - range.start) as usize, 0),
            Entry::Chunk(hash) => out.extend_from_slice(&store.get(hash, TEST_BLOCK).unwrap()),
        }
    }
    out
}

/// Image content with zero, compressible and repeated blocks.
fn mixed(size: usize) -> Vec<u8> {
    let mut data = pattern(size, 5);
    for (i, block) in data.chunks_mut(TEST_BLOCK).enumerate() {
        match i % 4 {
            1 => block.fill(0),
            3 => block.fill(0x33), // the same content in every fourth block
            _ => {}
        }
    }
    data
}

async fn import(source: Arc<dyn ImageSource>, store: &Arc<MemoryStore>) -> Outcome {
    let parent = Manifest::zeroed(source.size(), block_size()).unwrap();
    let sink = StoreSink::new(store.clone());
    run(
        source,
        &parent,
        &sink,
        &PipelineConfig::default(),
        &Progress::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn import_then_export_gives_the_image_back_for_every_size() {
    let dir = tempfile::tempdir().unwrap();
    for &size in SIZES {
        let data = mixed(size);
        let store = Arc::new(MemoryStore::new());
        let outcome = import(write_image(&dir, &format!("i{size}"), &data), &store).await;
        assert_eq!(export(&outcome.manifest, &*store), data, "size {size}");
        assert_eq!(outcome.progress.bytes_done, size as u64);
        // Zero blocks are not stored; repeated blocks are stored once.
        assert_eq!(store.len(), outcome.manifest.chunk_hashes().len());
    }
}

/// Reads an image through `read_at` only, hiding that it lives in memory; each read
/// waits `pace` first, as on a slow disk or a busy terminal.
#[derive(Debug)]
struct ReadOnly(Arc<dyn ImageSource>, std::time::Duration);

impl ImageSource for ReadOnly {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn data_extents(&self) -> std::io::Result<Vec<std::ops::Range<u64>>> {
        self.0.data_extents()
    }
    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> std::io::Result<()> {
        std::thread::sleep(self.1);
        self.0.read_at(offset, len, buf)
    }
}

#[tokio::test]
async fn an_image_in_memory_is_used_in_place_with_the_same_result() {
    let Some(dir) = crate::testdata::memory_dir() else {
        return; // No memory filesystem on this system: nothing is ever mapped.
    };
    for &size in SIZES {
        let data = mixed(size);
        let mapped = write_image(&dir, &format!("m{size}"), &data);
        let whole = mapped.map_at(0, size).expect("tmpfs is mapped").unwrap();
        assert_eq!(whole, data, "size {size}");
        let in_place_store = Arc::new(MemoryStore::new());
        let in_place = import(mapped.clone(), &in_place_store).await;
        let read_store = Arc::new(MemoryStore::new());
        let read = import(
            Arc::new(ReadOnly(mapped, std::time::Duration::ZERO)),
            &read_store,
        )
        .await;
        assert_eq!(in_place.manifest, read.manifest, "size {size}");
        assert_eq!(export(&in_place.manifest, &*in_place_store), data);
        assert_eq!(in_place.progress.bytes_read, read.progress.bytes_read);
    }
}

/// An image in memory whose mapping comes back short of the span asked for.
#[derive(Debug)]
struct ShortInMemory;

impl ImageSource for ShortInMemory {
    fn size(&self) -> u64 {
        TEST_BLOCK as u64 * 2
    }
    fn data_extents(&self) -> std::io::Result<Vec<std::ops::Range<u64>>> {
        Ok(std::iter::once(0..self.size()).collect())
    }
    fn map_at(&self, _: u64, len: usize) -> Option<std::io::Result<Bytes>> {
        Some(Ok(Bytes::from(vec![1u8; len - 10])))
    }
    fn read_at(&self, _: u64, _: usize, _: &mut AlignedBuf) -> std::io::Result<()> {
        unreachable!("an image in memory is not read")
    }
}

#[tokio::test]
async fn a_short_mapping_is_a_read_error() {
    let store = Arc::new(MemoryStore::new());
    let parent = Manifest::zeroed(ShortInMemory.size(), block_size()).unwrap();
    let err = run(
        Arc::new(ShortInMemory),
        &parent,
        &StoreSink::new(store),
        &PipelineConfig::default(),
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PipelineError::Read { .. }), "{err}");
}

/// Records what the pipeline offers and sends; needs only hashes in `lacks`, offering
/// the bases in `bases` for deltas.
#[derive(Default)]
struct RecordingSink {
    lacks: Option<std::collections::HashSet<Hash>>,
    bases: HashMap<Hash, Base>,
    offered: Mutex<Vec<Offer>>,
    sent: Mutex<Vec<Outgoing>>,
    /// Takes copied pages of the chunks put before.
    copies: bool,
}

impl ChunkSink for RecordingSink {
    fn takes_copies(&self) -> bool {
        self.copies
    }

    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let needed = offers
            .iter()
            .filter_map(|o| o.entry.hash())
            .filter(|h| self.lacks.as_ref().is_none_or(|lacks| lacks.contains(h)))
            .map(|hash| Need {
                hash,
                base: self.bases.get(&hash).cloned(),
            })
            .collect();
        self.offered.lock().unwrap().extend(offers);
        Ok(needed)
    }

    async fn put(&self, chunk: Outgoing) -> Result<(), SinkError> {
        self.sent.lock().unwrap().push(chunk);
        Ok(())
    }
}

#[tokio::test]
async fn only_changed_blocks_are_offered_and_only_needed_ones_sent() {
    let dir = tempfile::tempdir().unwrap();
    let base = mixed(TEST_BLOCK * 20 + 123);
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;

    let mut updated = base.clone();
    updated[TEST_BLOCK * 2..TEST_BLOCK * 2 + 10].fill(0xEE); // block 2 changed
    updated[TEST_BLOCK * 6..TEST_BLOCK * 7].fill(0); // block 6 becomes zero
    updated[TEST_BLOCK * 20 + 5] ^= 1; // the short tail block changed
    updated[TEST_BLOCK * 9..TEST_BLOCK * 10].fill(0x33); // block 9 now equals a stored one
    let changed_block_2 = Hash::of(&updated[TEST_BLOCK * 2..TEST_BLOCK * 3]);

    // The other side lacks only block 2's content.
    let sink = RecordingSink {
        lacks: Some([changed_block_2].into()),
        ..Default::default()
    };
    let source = write_image(&dir, "updated", &updated);
    let outcome = run(
        source,
        &parent,
        &sink,
        &PipelineConfig::default(),
        &Progress::default(),
    )
    .await
    .unwrap();

    let offered: Vec<u64> = sink
        .offered
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.index)
        .collect();
    assert_eq!(offered, vec![2, 6, 9, 20]);
    let expected: Vec<u64> = outcome.manifest.diff(&parent).unwrap().collect();
    assert_eq!(offered, expected);
    let sent = sink.sent.lock().unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].hash(), changed_block_2);
    assert_eq!(outcome.progress.blocks_skipped, 17);
    assert_eq!(outcome.progress.bytes_done, updated.len() as u64);
    assert_eq!(outcome.manifest.get(6), Some(Entry::Zero));
}

/// Text-like content: words and numbers, compressible the way documents are.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "update ",
        "kernel32.dll ",
        "<assembly> ",
        "version=10.0 ",
        "the ",
        "and ",
        "Program Files ",
        "\r\n",
    ];
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 8) as usize].as_bytes());
        out.extend_from_slice((x >> 40).to_string().as_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn pages_a_chunk_sent_before_carried_travel_as_copies() {
    let dir = tempfile::tempdir().unwrap();
    let base = vec![0u8; TEST_BLOCK * 8];
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;
    // Block 1 new; block 5 holds the same file one page further on.
    let file = text(TEST_BLOCK, 9);
    let mut updated = base.clone();
    updated[TEST_BLOCK..2 * TEST_BLOCK].copy_from_slice(&file);
    let at = 5 * TEST_BLOCK + PAGE;
    updated[at..6 * TEST_BLOCK].copy_from_slice(&file[..TEST_BLOCK - PAGE]);
    let source = write_image(&dir, "updated", &updated);
    let mut sent = Vec::new();
    for copies in [false, true] {
        let sink = RecordingSink {
            copies,
            ..Default::default()
        };
        let config = PipelineConfig {
            compress_jobs: 1,
            ..PipelineConfig::default()
        };
        run(
            source.clone(),
            &parent,
            &sink,
            &config,
            &Progress::default(),
        )
        .await
        .unwrap();
        let chunks = sink.sent.into_inner().unwrap();
        sent.push(chunks.iter().map(Outgoing::encoded_len).sum::<usize>());
        let composed = chunks.iter().find_map(|c| match c {
            Outgoing::Composed { composed, hash, .. } => Some((*hash, composed.clone())),
            _ => None,
        });
        if !copies {
            assert!(composed.is_none());
            continue;
        }
        let (hash, composed) = composed.expect("block 5 copies block 1's pages");
        assert_eq!(composed.copies.from.len(), TEST_BLOCK / PAGE - 1);
        let (block, _) = composed
            .apply(TEST_BLOCK, None, &[Bytes::from(file.clone())], TEST_BLOCK)
            .unwrap();
        assert_eq!(Hash::of(&block), hash);
        assert_eq!(&block[..], &updated[5 * TEST_BLOCK..6 * TEST_BLOCK]);
    }
    assert!(sent[1] * 3 < sent[0] * 2, "{sent:?}");
}

/// A resumed upload: the blocks an interrupted session sent are held by the sink, and a
/// block after them that repeats their pages copies them instead of sending them again,
/// whether the held blocks kept their content or were read again.
#[tokio::test]
async fn pages_of_blocks_the_sink_holds_travel_as_copies() {
    let dir = tempfile::tempdir().unwrap();
    let base = vec![0u8; TEST_BLOCK * 12];
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;
    // Blocks 1 to 6 were sent before the interruption; block 9 repeats block 2's file
    // one page further on, beside new pages.
    let mut updated = base.clone();
    for block in 1..=6 {
        let range = block * TEST_BLOCK..(block + 1) * TEST_BLOCK;
        updated[range].copy_from_slice(&text(TEST_BLOCK, block as u64));
    }
    let file = updated[2 * TEST_BLOCK..3 * TEST_BLOCK].to_vec();
    let at = 9 * TEST_BLOCK;
    updated[at..at + PAGE].copy_from_slice(&text(PAGE, 99));
    updated[at + PAGE..at + TEST_BLOCK].copy_from_slice(&file[..TEST_BLOCK - PAGE]);
    let repeat = Hash::of(&updated[at..at + TEST_BLOCK]);
    for window in [DEFAULT_WINDOW, TEST_BLOCK * 4] {
        let sink = RecordingSink {
            lacks: Some([repeat].into()),
            copies: true,
            ..Default::default()
        };
        let config = PipelineConfig {
            window,
            ..PipelineConfig::default()
        };
        let source = write_image(&dir, "updated", &updated);
        run(source, &parent, &sink, &config, &Progress::default())
            .await
            .unwrap();
        let sent = sink.sent.into_inner().unwrap();
        assert_eq!(sent.len(), 1, "only block 9 travels");
        let Outgoing::Composed { composed, .. } = &sent[0] else {
            panic!("block 9 copies the held block's pages (window {window})");
        };
        assert_eq!(composed.copies.sources, [Hash::of(&file)]);
        assert_eq!(composed.copies.from.len(), TEST_BLOCK / PAGE - 1);
        let (block, _) = composed
            .apply(TEST_BLOCK, None, &[Bytes::from(file.clone())], TEST_BLOCK)
            .unwrap();
        assert_eq!(&block[..], &updated[at..at + TEST_BLOCK]);
    }
}

#[tokio::test]
async fn a_block_with_an_offered_base_travels_as_its_changed_pages() {
    let dir = tempfile::tempdir().unwrap();
    let base = mixed(TEST_BLOCK * 4);
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;
    let mut updated = base.clone();
    updated[10..20].fill(0xEE); // block 0, first page
    updated[TEST_BLOCK * 2..TEST_BLOCK * 3].copy_from_slice(&pattern(TEST_BLOCK, 77)); // all of block 2
    let old = |i: usize| &base[i * TEST_BLOCK..(i + 1) * TEST_BLOCK];
    let new = |i: usize| &updated[i * TEST_BLOCK..(i + 1) * TEST_BLOCK];
    let base_of = |i: usize| Base {
        hash: Hash::of(old(i)),
        pages: crate::delta::PageDigests::of(old(i)),
    };
    let sink = RecordingSink {
        bases: HashMap::from([
            (Hash::of(new(0)), base_of(0)),
            (Hash::of(new(2)), base_of(2)),
        ]),
        ..Default::default()
    };
    let progress = Progress::default();
    run(
        write_image(&dir, "updated", &updated),
        &parent,
        &sink,
        &PipelineConfig::default(),
        &progress,
    )
    .await
    .unwrap();
    let sent = sink.sent.lock().unwrap();
    let Outgoing::Delta { hash, len, delta } = &sent[0] else {
        panic!("block 0 keeps 15 of its 16 pages: a delta");
    };
    assert_eq!(*hash, Hash::of(new(0)));
    assert_eq!(*len, TEST_BLOCK);
    assert_eq!(delta.base, Hash::of(old(0)));
    assert_eq!(
        delta.pages.decode(TEST_BLOCK).unwrap().len(),
        crate::delta::PAGE
    );
    assert_eq!(delta.apply(old(0), TEST_BLOCK).unwrap(), new(0));
    // Every page of block 2 changed: the whole chunk is cheaper.
    assert!(matches!(&sent[1], Outgoing::Whole(chunk) if chunk.hash() == Hash::of(new(2))));
    let total: usize = sent.iter().map(Outgoing::encoded_len).sum();
    assert_eq!(progress.snapshot().bytes_sent, total as u64);
}

/// Holes are found with `SEEK_DATA`/`SEEK_HOLE`, which only Linux has here.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn holes_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    let file = std::fs::File::create(&path).unwrap();
    let size = 256 * TEST_BLOCK as u64;
    file.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, &pattern(TEST_BLOCK, 1), 100 * TEST_BLOCK as u64)
        .unwrap();
    drop(file);
    let store = Arc::new(MemoryStore::new());
    let outcome = import(Arc::new(RawImage::open(&path).unwrap()), &store).await;
    assert!(
        outcome.progress.bytes_read < size / 4,
        "{:?}",
        outcome.progress
    );
    assert_eq!(store.len(), 1);
    assert_eq!(
        outcome.manifest.get(100),
        Some(Entry::Chunk(Hash::of(&pattern(TEST_BLOCK, 1))))
    );
}

#[tokio::test]
async fn refuses_an_image_of_the_wrong_size() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_image(&dir, "short", &[1u8; 1000]);
    let parent = Manifest::zeroed(2000, block_size()).unwrap();
    let err = run(
        source,
        &parent,
        &RecordingSink::default(),
        &PipelineConfig::default(),
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        PipelineError::SizeMismatch {
            image: 1000,
            disk: 2000
        }
    ));
}

/// Needs every offered hash whole.
fn all_needed(offers: &[Offer]) -> Vec<Need> {
    offers
        .iter()
        .filter_map(|o| o.entry.hash())
        .map(Need::whole)
        .collect()
}

/// Never finishes a put: the pipeline must stop reading once the window is full.
struct StuckSink(AtomicUsize);

impl ChunkSink for StuckSink {
    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        Ok(all_needed(&offers))
    }

    async fn put(&self, _chunk: Outgoing) -> Result<(), SinkError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stuck_sink_stops_the_reading_within_the_offers_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 400;
    let source = write_image(&dir, "big", &pattern(TEST_BLOCK * blocks, 2));
    let parent = Manifest::zeroed(source.size(), block_size()).unwrap();
    let config = PipelineConfig {
        window: TEST_BLOCK * 16,
        max_batch: 4,
        ..PipelineConfig::default()
    };
    let progress = Progress::default();
    let sink = StuckSink(AtomicUsize::new(0));
    let run = run(source, &parent, &sink, &config, &progress);
    let stalled = tokio::time::timeout(std::time::Duration::from_millis(500), run).await;
    assert!(
        stalled.is_err(),
        "the pipeline cannot finish with a stuck sink"
    );
    // Held content stays within the window (blocks past it let theirs go and are read
    // again when needed); what is read ahead is bounded by the offers in flight, the
    // channels and the spans read ahead, not by the image.
    let read = progress.snapshot().bytes_read;
    let bound = OFFERS_IN_FLIGHT * 4 + 2 * 16 + config.read_ahead * 4 + config.compress_jobs + 4;
    assert!(read > 0);
    assert!(
        read <= (TEST_BLOCK * bound) as u64,
        "read {read} bytes, past {bound} blocks"
    );
}

/// A 64-block base imported into a store, and an update with one byte of every block
/// changed.
async fn every_block_changed(
    dir: &tempfile::TempDir,
    seed: u64,
) -> (Arc<MemoryStore>, Manifest, Vec<u8>) {
    let base = pattern(TEST_BLOCK * 64, seed);
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(dir, "base", &base), &store)
        .await
        .manifest;
    let mut updated = base;
    for block in 0..64 {
        updated[block * TEST_BLOCK + 7] ^= 0x5a;
    }
    (store, parent, updated)
}

#[tokio::test]
async fn needed_blocks_that_let_their_content_go_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, parent, updated) = every_block_changed(&dir, 3).await;
    let sink = StoreSink::new(store.clone());
    let outcome = run_in_a_small_window(&dir, &parent, &sink, &updated).await;
    assert_eq!(export(&outcome.manifest, store.as_ref()), updated);
    // Some blocks were read again, none more than twice.
    let read = outcome.progress.bytes_read;
    assert!(read > updated.len() as u64, "{read}");
    assert!(read <= 2 * updated.len() as u64, "{read}");
}

/// Runs `updated` in a window of 4 blocks, which holds 2 while offers are in flight: the
/// rest let their content go and are read again.
async fn run_in_a_small_window<S: ChunkSink>(
    dir: &tempfile::TempDir,
    parent: &Manifest,
    sink: &S,
    updated: &[u8],
) -> Outcome {
    let config = PipelineConfig {
        window: TEST_BLOCK * 4,
        ..PipelineConfig::default()
    };
    run(
        write_image(dir, "updated", updated),
        parent,
        sink,
        &config,
        &Progress::default(),
    )
    .await
    .unwrap()
}

/// The parent's block of every block of `base`, offered as its delta base.
fn every_block_a_base(base: &[u8], updated: &[u8]) -> HashMap<Hash, Base> {
    base.chunks(TEST_BLOCK)
        .zip(updated.chunks(TEST_BLOCK))
        .map(|(old, new)| {
            let base = Base {
                hash: Hash::of(old),
                pages: crate::delta::PageDigests::of(old),
            };
            (Hash::of(new), base)
        })
        .collect()
}

#[tokio::test]
async fn blocks_that_let_their_content_go_read_again_only_their_changed_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parent, updated) = every_block_changed(&dir, 5).await;
    let base = pattern(TEST_BLOCK * 64, 5);
    let sink = RecordingSink {
        bases: every_block_a_base(&base, &updated),
        ..Default::default()
    };
    let outcome = run_in_a_small_window(&dir, &parent, &sink, &updated).await;
    let sent = sink.sent.lock().unwrap();
    assert_eq!(sent.len(), 64);
    for (i, chunk) in sent.iter().enumerate() {
        let Outgoing::Delta { delta, .. } = chunk else {
            panic!("block {i} changed one page: a delta");
        };
        let old = &base[i * TEST_BLOCK..(i + 1) * TEST_BLOCK];
        let new = &updated[i * TEST_BLOCK..(i + 1) * TEST_BLOCK];
        assert_eq!(delta.apply(old, TEST_BLOCK).unwrap(), new, "block {i}");
    }
    // Blocks past the window read again one page each, not their whole content.
    let read = outcome.progress.bytes_read;
    let image = updated.len() as u64;
    assert!(read > image, "{read}");
    assert!(read <= image + 64 * crate::delta::PAGE as u64, "{read}");
}

#[tokio::test]
async fn an_image_that_changes_before_a_block_is_read_again_is_an_error() {
    /// Answers every offer after the image changed under the pipeline, once at least 8
    /// blocks were offered (or 3 s passed): with a window of 4, at most 2 of them keep
    /// their content, and the others are read again after the change.
    struct ChangingSink<S> {
        path: std::path::PathBuf,
        inner: S,
        offered: AtomicUsize,
    }
    impl<S: ChunkSink> ChunkSink for ChangingSink<S> {
        async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
            offered_until(&self.offered, offers.len(), 8).await;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap();
            crate::source::write_all_at(&file, &vec![0xee; TEST_BLOCK * 64], 0).unwrap();
            self.inner.offer(offers).await
        }
        async fn put(&self, chunk: Outgoing) -> Result<(), SinkError> {
            self.inner.put(chunk).await
        }
    }
    let config = PipelineConfig {
        window: TEST_BLOCK * 4,
        ..PipelineConfig::default()
    };
    // Read again whole, or only the changed pages where a base is offered.
    for with_bases in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, parent, updated) = every_block_changed(&dir, 4).await;
        let path = dir.path().join("updated");
        std::fs::write(&path, &updated).unwrap();
        let source: Arc<dyn ImageSource> = Arc::new(RawImage::open(&path).unwrap());
        let err = if with_bases {
            let base = pattern(TEST_BLOCK * 64, 4);
            let inner = RecordingSink {
                bases: every_block_a_base(&base, &updated),
                ..Default::default()
            };
            let sink = ChangingSink {
                path,
                inner,
                offered: AtomicUsize::new(0),
            };
            run(source, &parent, &sink, &config, &Progress::default()).await
        } else {
            let inner = StoreSink::new(store.clone());
            let sink = ChangingSink {
                path,
                inner,
                offered: AtomicUsize::new(0),
            };
            run(source, &parent, &sink, &config, &Progress::default()).await
        }
        .unwrap_err();
        assert!(matches!(err, PipelineError::Changed { .. }), "{err}");
    }
}

#[tokio::test]
async fn a_store_sink_never_starves_a_small_window_of_incompressible_blocks() {
    // Random blocks stay raw and share read buffers; a grouping sink that kept them
    // would hold every buffer of a 4-span window and stall the reader forever.
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; TEST_BLOCK * 64];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    let source = write_image(&dir, "random", &data);
    let parent = Manifest::zeroed(source.size(), block_size()).unwrap();
    let store = Arc::new(MemoryStore::new());
    let sink = StoreSink::new(store.clone());
    let config = PipelineConfig {
        window: TEST_BLOCK * 16,
        ..PipelineConfig::default()
    };
    let progress = Progress::default();
    let run = run(source, &parent, &sink, &config, &progress);
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the pipeline stalled")
        .unwrap();
    assert_eq!(export(&outcome.manifest, &*store), data);
}

/// Records the blocks of each offer batch, and answers none until reading has gone as
/// far as it can (the whole image read, or no progress for 200 ms): the changed blocks
/// read meanwhile queue up behind the offers in flight, as they would behind a long
/// round trip, however fast this machine reads or slowly it schedules.
struct GatedOfferSink {
    batches: Mutex<Vec<Vec<u64>>>,
    progress: Arc<Progress>,
    image_len: u64,
    open: std::sync::atomic::AtomicBool,
}

impl ChunkSink for GatedOfferSink {
    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let step = std::time::Duration::from_millis(200);
        let mut seen = u64::MAX;
        while !self.open.load(Relaxed) {
            let read = self.progress.snapshot().bytes_read;
            if read >= self.image_len || read == seen {
                self.open.store(true, Relaxed);
                break;
            }
            seen = read;
            tokio::time::sleep(step).await;
        }
        self.batches
            .lock()
            .unwrap()
            .push(offers.iter().map(|o| o.index).collect());
        Ok(Vec::new())
    }

    async fn put(&self, _chunk: Outgoing) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_holds_changed_blocks_however_far_apart() {
    let dir = tempfile::tempdir().unwrap();
    const BLOCKS: usize = 512;
    let base = pattern(TEST_BLOCK * BLOCKS, 9);
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;
    // Every eighth block changed: more than the offers in flight hold one by one, so
    // the last batch waits to fill.
    let mut updated = base.clone();
    for block in (0..BLOCKS).step_by(8) {
        updated[block * TEST_BLOCK] ^= 0xff;
    }
    // The window holds the whole image: nothing but the batching limits the offers.
    let config = PipelineConfig::default();
    let progress = Arc::new(Progress::default());
    let sink = GatedOfferSink {
        batches: Mutex::default(),
        progress: progress.clone(),
        image_len: updated.len() as u64,
        open: std::sync::atomic::AtomicBool::new(false),
    };
    let source = write_image(&dir, "updated", &updated);
    run(source, &parent, &sink, &config, &progress)
        .await
        .unwrap();
    let batches = sink.batches.into_inner().unwrap();
    let mut offered: Vec<u64> = batches.iter().flatten().copied().collect();
    offered.sort_unstable();
    assert_eq!(offered, (0..BLOCKS as u64).step_by(8).collect::<Vec<u64>>());
    // Unchanged blocks between do not take a batch's places: the blocks that queued up
    // share batches, each spanning 8 blocks per changed one.
    assert!(
        batches
            .iter()
            .any(|b| b.len() >= 2 && b.windows(2).all(|w| w[1] - w[0] == 8)),
        "{batches:?}"
    );
}

/// Counts `count` more blocks offered into `offered`, then waits until `target` were
/// offered in all (or 3 s passed): an answer held back like one a long round trip away.
async fn offered_until(offered: &AtomicUsize, count: usize, target: usize) {
    offered.fetch_add(count, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while offered.load(Ordering::SeqCst) < target && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Holds every answer until `target` blocks were offered (or 3 s passed), like a long
/// round trip, then needs every block whole.
struct HeldAnswers {
    offered: AtomicUsize,
    target: usize,
    at_first_answer: std::sync::OnceLock<usize>,
}

impl ChunkSink for HeldAnswers {
    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        offered_until(&self.offered, offers.len(), self.target).await;
        self.at_first_answer
            .get_or_init(|| self.offered.load(Ordering::SeqCst));
        Ok(all_needed(&offers))
    }

    async fn put(&self, _chunk: Outgoing) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Runs `source` against answers held until `target` blocks were offered; returns the
/// run's progress and how many blocks were offered before the first answer.
async fn offered_before_first_answer(
    source: Arc<dyn ImageSource>,
    parent: &Manifest,
    config: &PipelineConfig,
    target: usize,
) -> (ProgressSnapshot, usize) {
    let sink = HeldAnswers {
        offered: AtomicUsize::new(0),
        target,
        at_first_answer: std::sync::OnceLock::new(),
    };
    let outcome = run(source, parent, &sink, config, &Progress::default())
        .await
        .unwrap();
    (outcome.progress, *sink.at_first_answer.get().unwrap())
}

#[tokio::test]
async fn changed_blocks_read_one_at_a_time_are_offered_many_per_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(TEST_BLOCK * 200, 9);
    // One block every 2 ms.
    let source: Arc<dyn ImageSource> = Arc::new(ReadOnly(
        write_image(&dir, "slow", &data),
        std::time::Duration::from_millis(2),
    ));
    let parent = Manifest::zeroed(source.size(), block_size()).unwrap();
    // One block per read, one read at a time.
    let config = PipelineConfig {
        window: TEST_BLOCK * 4,
        read_ahead: 1,
        ..PipelineConfig::default()
    };
    let (progress, offered) = offered_before_first_answer(source, &parent, &config, 64).await;
    assert_eq!(progress.blocks_changed, 200);
    // Blocks that come one at a time gather into batches while earlier ones await their
    // answer: a round trip covers what was read meanwhile, not one block per batch.
    assert!(
        offered >= 64,
        "only {offered} blocks were offered before the first answer"
    );
}

#[tokio::test]
async fn a_changed_block_awaiting_its_answer_does_not_hold_its_whole_read_span() {
    let dir = tempfile::tempdir().unwrap();
    const BLOCKS: usize = 512;
    let base = pattern(TEST_BLOCK * BLOCKS, 13);
    let store = Arc::new(MemoryStore::new());
    let parent = import(write_image(&dir, "base", &base), &store)
        .await
        .manifest;
    // One changed block in every read span of 16 blocks, in a window of 4 spans.
    let mut updated = base;
    for block in (0..BLOCKS).step_by(16) {
        updated[block * TEST_BLOCK + 3] ^= 0x77;
    }
    let config = PipelineConfig {
        window: TEST_BLOCK * 64,
        ..PipelineConfig::default()
    };
    let source = write_image(&dir, "updated", &updated);
    let (progress, offered) = offered_before_first_answer(source, &parent, &config, 24).await;
    assert_eq!(progress.blocks_changed, 32);
    // Held for their answers, the changed blocks keep copies and the reader reads on:
    // holding the spans themselves stopped it after four.
    assert!(
        offered >= 24,
        "only {offered} blocks were offered before the first answer"
    );
}

/// Answers each batch after a delay that falls with its first block's index, so later
/// batches are answered before earlier ones; needs every block whole and takes copies.
#[derive(Default)]
struct LateFirstAnswers {
    sent: Mutex<Vec<Outgoing>>,
}

impl ChunkSink for LateFirstAnswers {
    fn takes_copies(&self) -> bool {
        true
    }

    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let first = offers.first().map_or(0, |o| o.index);
        let wait = 20u64.saturating_sub(first % 10 * 2);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        Ok(all_needed(&offers))
    }

    async fn put(&self, chunk: Outgoing) -> Result<(), SinkError> {
        self.sent.lock().unwrap().push(chunk);
        Ok(())
    }
}

#[tokio::test]
async fn needed_blocks_travel_in_image_order_whatever_order_answers_come_in() {
    let dir = tempfile::tempdir().unwrap();
    // Forty blocks, each repeating a file of the one before at another page offset, so
    // what a block copies depends on which blocks went before it.
    let files: Vec<Vec<u8>> = (0..4).map(|seed| text(TEST_BLOCK, seed)).collect();
    let mut image = vec![0u8; TEST_BLOCK * 40];
    for (i, block) in image.chunks_mut(TEST_BLOCK).enumerate() {
        let shift = (i % 7 + 1) * PAGE;
        block[..TEST_BLOCK - shift].copy_from_slice(&files[i % 4][shift..]);
        block[TEST_BLOCK - shift..].copy_from_slice(&pattern(shift, i as u64));
    }
    let source = write_image(&dir, "image", &image);
    let parent = Manifest::zeroed(source.size(), block_size()).unwrap();
    let config = PipelineConfig {
        max_batch: 1,
        compress_jobs: 2,
        ..PipelineConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let late = LateFirstAnswers::default();
        run(
            source.clone(),
            &parent,
            &late,
            &config,
            &Progress::default(),
        )
        .await
        .unwrap();
        let recording = RecordingSink {
            copies: true,
            ..Default::default()
        };
        run(
            source.clone(),
            &parent,
            &recording,
            &config,
            &Progress::default(),
        )
        .await
        .unwrap();
        runs.push((
            late.sent.into_inner().unwrap(),
            recording.sent.into_inner().unwrap(),
        ));
    }
    let in_order: Vec<Hash> = image.chunks(TEST_BLOCK).map(Hash::of).collect();
    for (late, recording) in &runs {
        let hashes: Vec<Hash> = late.iter().map(Outgoing::hash).collect();
        assert_eq!(hashes, in_order, "chunks in image order");
        let bytes =
            |chunks: &[Outgoing]| chunks.iter().map(Outgoing::encoded_len).collect::<Vec<_>>();
        assert_eq!(bytes(late), bytes(recording), "the same copies");
        assert!(late.iter().any(|c| matches!(c, Outgoing::Composed { .. })));
    }
}
