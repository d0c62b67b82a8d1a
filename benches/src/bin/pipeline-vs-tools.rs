//! The engine pipeline against `b3sum` and `zstd` on the same page-cached image.
//!
//! `pipeline-vs-tools [SIZE_MIB]` writes a realistic image to /dev/shm (memory: as cached
//! as a file can be, and the pipeline uses it in place, as b3sum's mapping does), then
//! times, best of three: the pipeline with every block new (hash, zero check, compress,
//! into a discarding sink), the pipeline with no block changed (hash only), `b3sum
//! --num-threads 2`, and `zstd -1 -T2`. For reference it also times the hash-only run on
//! a copy on disk, read with `O_DIRECT` as a terminal reads its differential disk. It
//! prints throughputs and the ratios docs/benchmarks.md reports.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotate_benches::{Mix, image};
use hotate_engine::{
    BlockSize, ChunkSink, Manifest, Need, Offer, Outgoing, PipelineConfig, Progress, RawImage,
    SinkError, pipeline,
};

/// Needs every offered hash and drops the chunks.
struct Discard;

impl ChunkSink for Discard {
    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        Ok(offers
            .iter()
            .filter_map(|o| o.entry.hash())
            .map(Need::whole)
            .collect())
    }
    async fn put(&self, _chunk: Outgoing) -> Result<(), SinkError> {
        Ok(())
    }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        let took = start.elapsed();
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, out));
        }
    }
    best.expect("at least one run")
}

fn tool(cmd: &str, args: &[&str]) -> Duration {
    best_of(3, || {
        let status = Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (install it first)"));
        assert!(status.success(), "{cmd} failed");
    })
    .0
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(1024, |s| s.parse().expect("SIZE_MIB must be a number"));
    let size = mib << 20;
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let path = std::path::PathBuf::from(format!("{dir}/hotate-pipeline-bench.img"));
    std::fs::write(&path, image(size, 1 << 20, Mix::default(), 7)).expect("write image");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let block_size = BlockSize::default();
    let config = PipelineConfig::default();

    let run_on = |path: &std::path::Path, parent: &Manifest| {
        runtime.block_on(async {
            let source = Arc::new(RawImage::open(path).expect("open image"));
            pipeline::run(source, parent, &Discard, &config, &Progress::default())
                .await
                .expect("pipeline")
        })
    };
    let run = |parent: &Manifest| run_on(&path, parent);
    let zeroed = Manifest::zeroed(size as u64, block_size).expect("manifest");
    let (all_changed, outcome) = best_of(3, || run(&zeroed));
    let (unchanged, _) = best_of(3, || run(&outcome.manifest));
    let on_disk = std::env::current_dir()
        .expect("current dir")
        .join("hotate-pipeline-bench.img");
    std::fs::copy(&path, &on_disk).expect("copy image to disk");
    let (unchanged_on_disk, _) = best_of(3, || run_on(&on_disk, &outcome.manifest));
    let _ = std::fs::remove_file(&on_disk);
    let file = path.to_str().expect("utf-8 path");
    let b3sum = tool("b3sum", &["--num-threads", "2", file]);
    let zstd = tool("zstd", &["-1", "-T2", "-c", "-q", file]);

    let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    println!("image: {mib} MiB, realistic mix, in {dir}");
    println!(
        "sent: {:.0} MB of {:.0} MB changed",
        outcome.progress.bytes_sent as f64 / 1e6,
        outcome.progress.bytes_changed as f64 / 1e6
    );
    println!("| run | time | MB/s |");
    println!("|---|---|---|");
    for (name, d) in [
        ("pipeline, every block new", all_changed),
        ("pipeline, nothing changed", unchanged),
        (
            "pipeline, nothing changed, on disk (O_DIRECT)",
            unchanged_on_disk,
        ),
        ("b3sum --num-threads 2", b3sum),
        ("zstd -1 -T2", zstd),
        ("b3sum then zstd", b3sum + zstd),
    ] {
        println!("| {name} | {:.3} s | {:.0} |", d.as_secs_f64(), rate(d));
    }
    println!(
        "ratio every-block-new vs b3sum+zstd: {:.0}% (goal >= 80%)",
        100.0 * (b3sum + zstd).as_secs_f64() / all_changed.as_secs_f64()
    );
    println!(
        "ratio nothing-changed vs b3sum: {:.0}% (goal >= 80%)",
        100.0 * b3sum.as_secs_f64() / unchanged.as_secs_f64()
    );
    let _ = std::fs::remove_file(&path);
}
