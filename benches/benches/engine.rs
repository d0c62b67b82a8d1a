//! Micro benchmarks of the engine on the realistic block mix: hashing, compression at a
//! few zstd levels, the whole pipeline into an in-memory store, and the server's
//! verify-and-store of received chunks.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hotate_benches::{Mix, image};
use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::{
    BlockSize, ChunkStore, Frame, FsStore, Hash, Manifest, MemoryStore, PipelineConfig, Progress,
    RawImage, StoreSink, Stored, UnverifiedChunk, VerifiedChunk, pipeline,
};

const BLOCK: usize = 1 << 20;
const SIZE: usize = 64 << 20;

fn blocks() -> Vec<Bytes> {
    image(SIZE, BLOCK, Mix::default(), 1)
        .chunks(BLOCK)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn hashing(c: &mut Criterion) {
    let blocks = blocks();
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("blake3 per block", |b| {
        b.iter(|| {
            blocks
                .iter()
                .fold(0u8, |acc, x| acc ^ Hash::of(x).as_bytes()[0])
        })
    });
    group.finish();
}

fn compression(c: &mut Criterion) {
    let blocks = blocks();
    let mut group = c.benchmark_group("compress");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    for level in [1, 3, 6] {
        group.bench_with_input(BenchmarkId::new("zstd", level), &level, |b, &level| {
            b.iter(|| {
                blocks
                    .iter()
                    .map(|x| Frame::encode(x.clone(), level).payload.len())
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

fn whole_pipeline(c: &mut Criterion) {
    let dir = tempfile_dir();
    let path = dir.join("bench.img");
    std::fs::write(&path, image(SIZE, BLOCK, Mix::default(), 2)).expect("write bench image");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let block_size = BlockSize::default();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("import into memory store", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let source = Arc::new(RawImage::open(&path).expect("open"));
                let parent = Manifest::zeroed(SIZE as u64, block_size).expect("manifest");
                let sink = StoreSink::new(Arc::new(MemoryStore::new()));
                pipeline::run(
                    source,
                    &parent,
                    &sink,
                    &PipelineConfig::default(),
                    &Progress::default(),
                )
                .await
                .expect("pipeline")
            })
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("hotate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// The server's side of an upload: decompress within the block size and verify BLAKE3
/// on 16 threads, then store durably with one group commit, as the transfer service
/// does, into a store on the data disk (not tmpfs, so the sync is real).
fn verify_and_store(c: &mut Criterion) {
    let wire: Vec<UnverifiedChunk> = blocks()
        .into_iter()
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| {
            let chunk = VerifiedChunk::seal(b, DEFAULT_ZSTD_LEVEL);
            UnverifiedChunk {
                hash: chunk.hash(),
                frame: chunk.frame().clone(),
            }
        })
        .collect();
    let raw_bytes = (wire.len() * BLOCK) as u64;
    let base = std::env::temp_dir().join(format!("hotate-store-bench-{}", std::process::id()));
    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Bytes(raw_bytes));
    group.sample_size(10);
    let mut round = 0;
    group.bench_function("verify on 16 threads, store as one group", |b| {
        b.iter(|| {
            round += 1;
            let store = FsStore::open(&base.join(round.to_string())).expect("store");
            let per_thread = wire.len().div_ceil(16);
            let verified: Vec<Stored> = std::thread::scope(|scope| {
                let jobs: Vec<_> = wire
                    .chunks(per_thread)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|c| Stored::from(c.clone().verify(BLOCK).expect("verify")))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .flat_map(|job| job.join().expect("verify thread"))
                    .collect()
            });
            store.put_many(&verified).expect("put_many")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(base);
}

criterion_group!(
    benches,
    hashing,
    compression,
    whole_pipeline,
    verify_and_store
);
criterion_main!(benches);
