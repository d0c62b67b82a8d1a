//! `bench`: what would bound an `update finish` of this terminal, and how long it would
//! take. It measures the round trip and the upload rate to the server (a stream the
//! server counts and discards), the disk's unbuffered read rate, and hashing and
//! compression on this machine's cores; then it runs the finish's pipeline dry, its
//! offers answered by the server as an upload's would be but recorded nowhere, so the
//! bytes a finish would send are known exactly. Nothing changes on the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::direct_io::AlignedBuf;
use hotate_engine::{
    ChunkSink, Frame, Hash, ImageSource, Manifest, Need, Offer, Outgoing, PipelineConfig, Progress,
    ProgressSnapshot, SinkError, pipeline,
};
use hotate_proto::pb::{self, transfer_client::TransferClient};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::Context;
use crate::cmd::finish::transfer_endpoint;
use crate::error::{Failed, UsageError};
use crate::server::{Session, explain};
use crate::upload;

/// Round trips timed (after one to warm up); the median is kept.
const RTT_SAMPLES: usize = 5;
/// Size of the messages of the link measurement.
const LINK_MESSAGE: usize = 256 << 10;
/// The first part of the link measurement is not counted: TCP is still ramping up.
const LINK_WARMUP: f64 = 0.2;
/// Bytes sent and not yet acknowledged at most: enough for 1 Gbit/s at 120 ms, and
/// little left queued on a slow link when the measurement ends.
const LINK_IN_FLIGHT: u64 = 16 << 20;
/// Most bytes and time the disk read measurement takes.
const READ_BYTES: u64 = 256 << 20;
const READ_TIME: Duration = Duration::from_secs(3);
/// How long each of the hashing and compression measurements runs.
const CPU_TIME: Duration = Duration::from_millis(700);
/// Round trips before a finish's data flows (connect, login, show, begin, transfer
/// connect, manifest and stream open, the first offer's answer), and after (finish and
/// commit): measured on loopback and emulated links.
const SETUP_ROUND_TRIPS: f64 = 7.0;
const TAIL_ROUND_TRIPS: f64 = 1.0;

/// Options of `bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub json: bool,
    /// How long the link is measured.
    pub link_seconds: f64,
    /// As `update finish --limit-rate`: the prediction assumes that cap.
    pub limit_rate: Option<u64>,
}

/// What `bench` measured and predicts; `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    pub disk_id: String,
    pub base_version: String,
    /// Median round trip to the control service.
    pub rtt_ms: f64,
    /// Upload rate to the transfer service, bytes per second (capped by `limit_rate`).
    pub upload_bytes_per_sec: f64,
    pub upload_measured_bytes: u64,
    pub limit_rate: Option<u64>,
    /// Unbuffered sequential read rate of the image, bytes per second.
    pub disk_read_bytes_per_sec: f64,
    /// BLAKE3 and zstd rates on all cores, bytes of block per second.
    pub hash_bytes_per_sec: f64,
    pub compress_bytes_per_sec: f64,
    pub zstd_level: i32,
    pub cores: usize,
    pub image_size: u64,
    pub format: String,
    /// What a finish would read, find changed, and send (compressed, page deltas).
    pub bytes_to_read: u64,
    pub bytes_changed: u64,
    pub blocks_changed: u64,
    pub bytes_to_send: u64,
    pub manifest_bytes: u64,
    /// The dry run of the pipeline: read, hash, compare, compress, offers answered.
    pub dry_run_secs: f64,
    pub stages: Stages,
    /// `disk`, `hashing`, `compression` or `link`.
    pub bound_by: &'static str,
    pub predicted_finish_secs: f64,
}

/// Seconds each stage of a finish would take alone.
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    pub read_secs: f64,
    pub hash_secs: f64,
    pub compress_secs: f64,
    pub send_secs: f64,
    /// Round trips and the manifest before data flows, the commit after.
    pub setup_secs: f64,
}

/// # Errors
/// When an input is missing, the server refuses, or the image cannot be read.
pub async fn run(ctx: &Context, options: &BenchOptions) -> anyhow::Result<()> {
    let lang = ctx.lang;
    let terminal = ctx.state.terminal()?;
    // The prediction is of this update's finish: the server answers its probes only
    // for an update in progress.
    let Some(record) = ctx.state.update()? else {
        return Err(UsageError(lang.bench_needs_update()).into());
    };
    let session = ctx.login(&terminal).await?;
    let url = session.url.clone();
    if !options.json {
        crate::say!("{}", lang.bench_started(&url));
    }

    let (disk, rtt) = round_trips(&session, &terminal.disk_id).await?;
    let transfer_url = transfer_endpoint(&url, &disk.transfer_url, disk.transfer_port);
    // The link is measured on a connection of its own, closed before the dry run.
    let (measured, rate) = {
        let mut link = session.transfer(&transfer_url, ctx.ca()).await?;
        link_rate(&session, &mut link, &transfer_url, options).await?
    };
    let mut transfer = session.transfer(&transfer_url, ctx.ca()).await?;

    let base_version = record.base_version.clone();
    let parent = upload::fetch_manifest(
        &session,
        &mut transfer,
        &transfer_url,
        &disk.id,
        &base_version,
    )
    .await?;
    if base_version == disk.latest_version
        && hotate_proto::hash_bytes(&parent.root()) != disk.latest_root
    {
        return Err(
            Failed(lang.bad_base_manifest("it does not match the base version's root")).into(),
        );
    }
    let image = upload::open_image(&terminal, disk.size, lang)?;
    let shown = terminal.image.display().to_string();
    let unreadable =
        |e: &dyn std::fmt::Display| Failed(lang.image_unreadable(&shown, &e.to_string()));
    let layers = layers_of(&image, &parent)
        .await
        .map_err(|e| unreadable(&e))?;
    if let Layers::OverOther(index) = layers {
        return Err(UsageError(lang.overlay_not_on_base(&shown, &base_version, index)).into());
    }
    let local = {
        let image = image.clone();
        let block = parent.block_size().bytes();
        tokio::task::spawn_blocking(move || local_rates(image.as_ref(), block)).await?
    }
    .map_err(|e| unreadable(&e))?;

    let sink = ProbeSink {
        session: session.clone(),
        transfer: transfer.clone(),
        url: transfer_url.clone(),
        disk_id: disk.id.clone(),
        version: base_version.clone(),
    };
    let (dry_run_secs, done) = dry_run(image.clone(), &parent, &sink, layers)
        .await
        .map_err(|e| match e {
            hotate_engine::PipelineError::Sink(inner) => anyhow::anyhow!(inner),
            other => unreadable(&other).into(),
        })?;

    let manifest_bytes = parent.encode().len() as u64;
    let rtt_secs = rtt.as_secs_f64();
    let stages = Stages::predict(&done, &local, rate, rtt_secs, manifest_bytes);
    let bound_by = stages.bound_by();
    // The stages overlap: the slowest sets the pace. The dry run is the local part of a
    // finish as it really runs (its offers' round trips included).
    let predicted = stages.setup_secs + stages.send_secs.max(dry_run_secs);
    let report = Report {
        server: url,
        disk_id: disk.id,
        base_version,
        rtt_ms: rtt_secs * 1e3,
        upload_bytes_per_sec: rate,
        upload_measured_bytes: measured,
        limit_rate: options.limit_rate,
        disk_read_bytes_per_sec: local.read,
        hash_bytes_per_sec: local.hash,
        compress_bytes_per_sec: local.compress,
        zstd_level: DEFAULT_ZSTD_LEVEL,
        cores: local.cores,
        image_size: image.size(),
        format: terminal.format.clone(),
        bytes_to_read: done.bytes_read,
        bytes_changed: done.bytes_changed,
        blocks_changed: done.blocks_changed,
        bytes_to_send: done.bytes_sent,
        manifest_bytes,
        dry_run_secs,
        stages,
        bound_by,
        predicted_finish_secs: predicted,
    };
    if options.json {
        crate::say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, lang);
    }
    Ok(())
}

/// The finish's pipeline run dry into `sink`: its time and what it counted.
async fn dry_run(
    image: Arc<dyn ImageSource>,
    parent: &Manifest,
    sink: &ProbeSink,
    layers: Layers,
) -> Result<(f64, ProgressSnapshot), hotate_engine::PipelineError> {
    let config = PipelineConfig {
        top_layer_only: layers == Layers::OverBase,
        ..PipelineConfig::default()
    };
    let progress = Progress::default();
    let started = Instant::now();
    pipeline::run(image, parent, sink, &config, &progress).await?;
    Ok((started.elapsed().as_secs_f64(), progress.snapshot()))
}

impl Stages {
    /// How long each stage of a finish of what the dry run counted would take here.
    fn predict(
        done: &ProgressSnapshot,
        local: &LocalRates,
        rate: f64,
        rtt_secs: f64,
        manifest_bytes: u64,
    ) -> Self {
        Self {
            read_secs: done.bytes_read as f64 / local.read,
            hash_secs: done.bytes_read as f64 / local.hash,
            compress_secs: done.bytes_changed as f64 / local.compress,
            send_secs: done.bytes_sent as f64 / rate,
            setup_secs: (SETUP_ROUND_TRIPS + TAIL_ROUND_TRIPS) * rtt_secs
                + manifest_bytes as f64 / rate,
        }
    }

    /// The slowest stage, which sets a finish's pace.
    fn bound_by(&self) -> &'static str {
        [
            ("disk", self.read_secs),
            ("hashing", self.hash_secs),
            ("compression", self.compress_secs),
            ("link", self.send_secs),
        ]
        .into_iter()
        .fold(
            ("link", -1.0),
            |best, stage| {
                if stage.1 > best.1 { stage } else { best }
            },
        )
        .0
    }
}

fn print_report(r: &Report, lang: crate::i18n::Lang) {
    let mb = |bytes: f64| format!("{:.1}", bytes / 1e6);
    crate::say!("{}", lang.bench_rtt(&format!("{:.1}", r.rtt_ms)));
    crate::say!(
        "{}",
        lang.bench_link(
            &mb(r.upload_bytes_per_sec),
            &mb(r.upload_measured_bytes as f64)
        )
    );
    crate::say!("{}", lang.bench_disk(&mb(r.disk_read_bytes_per_sec)));
    crate::say!(
        "{}",
        lang.bench_cpu(
            &mb(r.hash_bytes_per_sec),
            &mb(r.compress_bytes_per_sec),
            r.zstd_level,
            r.cores
        )
    );
    crate::say!(
        "{}",
        lang.bench_bytes(
            &mb(r.bytes_to_read as f64),
            &mb(r.bytes_changed as f64),
            &mb(r.bytes_to_send as f64),
            &format!("{:.1}", r.dry_run_secs)
        )
    );
    let stage_secs = match r.bound_by {
        "disk" => r.stages.read_secs,
        "hashing" => r.stages.hash_secs,
        "compression" => r.stages.compress_secs,
        _ => r.stages.send_secs,
    };
    crate::say!(
        "{}",
        lang.bench_bound(r.bound_by, &format!("{stage_secs:.1}"))
    );
    crate::say!(
        "{}",
        lang.bench_predicted(&format!("{:.1}", r.predicted_finish_secs))
    );
}

/// The disk (one warm-up call) and the median of `RTT_SAMPLES` round trips.
async fn round_trips(session: &Session, disk: &str) -> anyhow::Result<(pb::Disk, Duration)> {
    let mut control = session.control.clone();
    let ask = || {
        session.request(pb::GetDiskRequest {
            disk: disk.to_owned(),
        })
    };
    let found = control
        .get_disk(ask())
        .await
        .map_err(|s| explain(&s, session.lang, &session.url))?
        .into_inner();
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let started = Instant::now();
        control
            .get_disk(ask())
            .await
            .map_err(|s| explain(&s, session.lang, &session.url))?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok((found, samples[RTT_SAMPLES / 2]))
}

/// Sends incompressible bytes for `link_seconds` on a discard stream; the bytes the
/// server acknowledged and its rate after the ramp-up (capped by `limit_rate`).
async fn link_rate(
    session: &Session,
    transfer: &mut TransferClient<Channel>,
    url: &str,
    options: &BenchOptions,
) -> anyhow::Result<(u64, f64)> {
    let (tx, rx) = mpsc::channel::<pb::DiscardRequest>(4);
    let payload = incompressible(LINK_MESSAGE);
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            if acked
                .wait_for(|acked| sent < acked + LINK_IN_FLIGHT)
                .await
                .is_err()
            {
                return;
            }
            let message = pb::DiscardRequest {
                data: payload.clone(),
            };
            if tx.send(message).await.is_err() {
                return;
            }
            sent += LINK_MESSAGE as u64;
        }
    });
    let mut replies = transfer
        .discard(session.request(ReceiverStream::new(rx)))
        .await
        .map_err(|s| explain(&s, session.lang, url))?
        .into_inner();
    let started = Instant::now();
    let total = Duration::from_secs_f64(options.link_seconds.max(0.5));
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (started, 0);
    while started.elapsed() < total {
        let Ok(reply) = tokio::time::timeout_at((started + total).into(), replies.message()).await
        else {
            break;
        };
        let Some(reply) = reply.map_err(|s| explain(&s, session.lang, url))? else {
            break;
        };
        let now = Instant::now();
        let _ = acked_tx.send(reply.received);
        if first.is_none() && now - started >= total.mul_f64(LINK_WARMUP) {
            first = Some((now, reply.received));
        }
        last = (now, reply.received);
        if reply.done {
            break;
        }
    }
    sender.abort();
    let (t0, b0) = first.unwrap_or((started, 0));
    let secs = (last.0 - t0).as_secs_f64();
    if secs <= 0.0 || last.1 <= b0 {
        return Err(Failed(session.lang.bench_no_link()).into());
    }
    let measured = (last.1 - b0) as f64 / secs;
    let rate = options
        .limit_rate
        .map_or(measured, |cap| measured.min(cap as f64));
    Ok((last.1, rate))
}

/// Pseudo-random bytes (xorshift): what no compression or cache shortens.
fn incompressible(len: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// What a finish would make of the image's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layers {
    /// One whole image: every block is read.
    Whole,
    /// An overlay over the base: its top layer alone is read.
    OverBase,
    /// An overlay whose layers below differ from the base at this block: refused.
    OverOther(u64),
}

/// Checks an overlay's layers below against the base, as a finish does.
async fn layers_of(
    image: &Arc<dyn ImageSource>,
    parent: &Manifest,
) -> Result<Layers, hotate_engine::PipelineError> {
    let touched = match image.top_layer_extents() {
        None => return Ok(Layers::Whole),
        Some(extents) => extents.map_err(hotate_engine::PipelineError::Extents)?,
    };
    let (image, parent) = (image.clone(), parent.clone());
    tokio::task::spawn_blocking(move || {
        pipeline::check_layers_below(image.as_ref(), &parent, &touched, 16)
            .map(|differs| differs.map_or(Layers::OverBase, Layers::OverOther))
    })
    .await?
}

/// Rates of this machine, bytes per second.
struct LocalRates {
    read: f64,
    hash: f64,
    compress: f64,
    cores: usize,
}

/// Reads the image's data (its top layer's, for an overlay) sequentially, unbuffered, up
/// to `READ_BYTES` or `READ_TIME`, then hashes and compresses what it read on every
/// core.
fn local_rates(image: &dyn ImageSource, block: usize) -> std::io::Result<LocalRates> {
    let extents = match image.top_layer_extents() {
        Some(extents) => extents?,
        None => image.data_extents()?,
    };
    let size = image.size();
    let mut buf = AlignedBuf::zeroed(block);
    let mut sample: Vec<Bytes> = Vec::new();
    let (mut read, started) = (0u64, Instant::now());
    'extents: for extent in extents {
        let mut offset = extent.start / block as u64 * block as u64;
        while offset < extent.end {
            let len = (size - offset).min(block as u64) as usize;
            image.read_at(offset, len, &mut buf)?;
            read += len as u64;
            if sample.len() < 64 {
                sample.push(Bytes::copy_from_slice(&buf[..len]));
            }
            offset += block as u64;
            if read >= READ_BYTES || started.elapsed() >= READ_TIME {
                break 'extents;
            }
        }
    }
    let read_rate = if read == 0 {
        f64::INFINITY
    } else {
        read as f64 / started.elapsed().as_secs_f64().max(1e-6)
    };
    if sample.is_empty() {
        // Nothing to read: measure on a block of mixed content.
        let mut mixed = incompressible(block).to_vec();
        mixed[block / 2..].fill(0);
        sample.push(Bytes::from(mixed));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hash = on_all_cores(cores, &sample, |block| {
        std::hint::black_box(Hash::of(block));
    });
    let compress = on_all_cores(cores, &sample, |block| {
        std::hint::black_box(Frame::encode(block.clone(), DEFAULT_ZSTD_LEVEL));
    });
    Ok(LocalRates {
        read: read_rate,
        hash,
        compress,
        cores,
    })
}

/// Bytes per second `work` gets through `sample`'s blocks over `CPU_TIME`, one thread
/// per core.
fn on_all_cores(cores: usize, sample: &[Bytes], work: impl Fn(&Bytes) + Sync) -> f64 {
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|core| {
                let work = &work;
                scope.spawn(move || {
                    let mut done = 0u64;
                    for block in sample.iter().cycle().skip(core) {
                        if started.elapsed() >= CPU_TIME {
                            break;
                        }
                        work(block);
                        done += block.len() as u64;
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    total as f64 / started.elapsed().as_secs_f64().max(1e-6)
}

/// The pipeline's sink in a dry run: the server answers its offers as it would an
/// upload's (`Probe`), and the chunks are counted by the pipeline, then dropped. Pages
/// that repeat a chunk sent before are counted as copies, as an upload to a server that
/// takes them sends them.
#[derive(Debug)]
struct ProbeSink {
    session: Session,
    transfer: TransferClient<Channel>,
    url: String,
    disk_id: String,
    version: String,
}

impl ChunkSink for ProbeSink {
    fn takes_copies(&self) -> bool {
        true
    }

    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let request = pb::ProbeRequest {
            disk_id: self.disk_id.clone(),
            version: self.version.clone(),
            entries: offers.into_iter().map(pb::Entry::from).collect(),
        };
        let need = self
            .transfer
            .clone()
            .probe(self.session.request(request))
            .await
            .map_err(|s| explain(&s, self.session.lang, &self.url).to_string())?
            .into_inner();
        Ok(hotate_proto::needs(&need))
    }

    async fn put(&self, _chunk: Outgoing) -> Result<(), SinkError> {
        Ok(())
    }
}
