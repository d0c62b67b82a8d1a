//! Micro benchmarks of the engine on the realistic block mix: hashing, compression at a
//! few zstd levels, and the whole pipeline into an in-memory store.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hotate_benches::{Mix, image};
use hotate_engine::{
    BlockSize, Frame, Hash, Manifest, MemoryStore, PipelineConfig, Progress, RawImage, StoreSink,
    pipeline,
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

criterion_group!(benches, hashing, compression, whole_pipeline);
criterion_main!(benches);
