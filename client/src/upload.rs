//! The upload of a differential disk: the engine pipeline feeding a network sink on the
//! transfer service's bidirectional stream.
//!
//! Offers go out in batches and each waits for its "need" answer while chunks of earlier
//! batches keep streaming; a reader task routes the server's replies. The request queue
//! is small and bounded, so memory stays within the pipeline's window. `--limit-rate`
//! paces the chunks.

use crate::progress::JobFigures;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hotate_engine::{
    ChunkSink, Hash, ImageSource, Manifest, Need, Offer, Outgoing, PipelineConfig, Progress,
    SinkError, pipeline, source,
};
use hotate_proto::pb::{self, upload_reply, upload_request};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::Unreachable;
use crate::error::{Failed, UsageError};
use crate::server::{Session, explain};

/// A failure of the upload stream: a lost connection says how to resume; anything else
/// is the server's own answer.
fn explain_stream(status: &Status, lang: crate::i18n::Lang, url: &str) -> anyhow::Error {
    if crate::server::is_transport_failure(status) {
        Unreachable(lang.connection_lost(status.message())).into()
    } else {
        explain(status, lang, url)
    }
}

/// Chunks queued towards the server; a few keep the link busy.
const REQUEST_QUEUE: usize = 8;
/// Offers queued towards the server; they pass the queued chunks.
const OFFER_QUEUE: usize = 32;
/// Waits between tries while the server is at its upload limit, and when to give up.
const BUSY_FIRST_WAIT: Duration = Duration::from_secs(2);
const BUSY_MAX_WAIT: Duration = Duration::from_secs(60);
const BUSY_GIVE_UP: Duration = Duration::from_secs(30 * 60);

/// What reading the image needs: known before login when `update start` kept the base
/// manifest, else once the upload has begun.
#[derive(Debug)]
pub struct ImagePlan {
    /// The differential disk, opened and checked by [`open_image`].
    pub image: Arc<dyn ImageSource>,
    pub image_path: std::path::PathBuf,
    pub base_version: String,
    /// The images below the overlay as `update start` recorded them (empty: unknown).
    pub layers_at_start: Vec<String>,
    /// The base version's manifest, checked against its root.
    pub parent: Manifest,
}

/// What the upload stream needs, known once the upload has begun.
#[derive(Debug)]
pub struct StreamPlan<'a> {
    pub upload_id: String,
    pub transfer_url: String,
    pub disk_size: u64,
    pub ca: Option<&'a Path>,
    /// A connection to `transfer_url` opened while logging in, if any.
    pub transfer: Option<TransferClient>,
    pub comment: String,
}

/// A client of the transfer service.
pub type TransferClient = pb::transfer_client::TransferClient<tonic::transport::Channel>;

/// What a finished upload produced.
#[derive(Debug)]
pub struct Uploaded {
    pub version: String,
    pub image_size: u64,
    pub bytes_changed: u64,
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

/// Opens the image in its format (an overlay with its backing chain), checking it
/// covers the disk exactly.
///
/// # Errors
/// A usage error when it is missing, unreadable, damaged, or of the wrong size.
pub fn open_image(
    terminal: &crate::state::Terminal,
    disk_size: u64,
    lang: crate::i18n::Lang,
) -> anyhow::Result<Arc<dyn ImageSource>> {
    let shown = terminal.image.display().to_string();
    let image = terminal.open_image().map_err(|e| {
        use hotate_engine::source::ImageError;
        let device = hotate_engine::direct_io::is_device_path(&terminal.image);
        match &e {
            ImageError::Io(io) if device && io.kind() == std::io::ErrorKind::PermissionDenied => {
                UsageError(lang.needs_administrator(&shown))
            }
            _ => UsageError(lang.image_unopenable(&shown, &e.to_string())),
        }
    })?;
    let size = image.size();
    if size != disk_size {
        return Err(UsageError(lang.image_wrong_size(&shown, size, disk_size)).into());
    }
    Ok(image)
}

/// A failure reading the image, in the user's language.
fn unreadable(plan: &ImagePlan, lang: crate::i18n::Lang, cause: impl std::fmt::Display) -> Failed {
    Failed(lang.image_unreadable(&plan.image_path.display().to_string(), &cause.to_string()))
}

/// Downloads the base version's manifest and checks it against its root and size.
///
/// # Errors
/// When the download fails or the manifest does not match.
pub async fn base_manifest(
    session: &Session,
    transfer: &mut TransferClient,
    url: &str,
    (disk_id, version): (&str, &str),
    (root, disk_size): (Hash, u64),
) -> anyhow::Result<Manifest> {
    let manifest = fetch_manifest(session, transfer, url, disk_id, version).await?;
    if manifest.root() != root || manifest.disk_size() != disk_size {
        return Err(Failed(
            session
                .lang
                .bad_base_manifest("it does not match the base version's root"),
        )
        .into());
    }
    Ok(manifest)
}

/// Downloads and decodes a version's manifest.
///
/// # Errors
/// When the download fails or the manifest is malformed.
pub async fn fetch_manifest(
    session: &Session,
    transfer: &mut TransferClient,
    url: &str,
    disk_id: &str,
    version: &str,
) -> anyhow::Result<Manifest> {
    let mut parts = transfer
        .get_manifest(session.request(pb::GetManifestRequest {
            disk_id: disk_id.to_owned(),
            version: version.to_owned(),
        }))
        .await
        .map_err(|s| explain(&s, session.lang, url))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(part) = parts
        .message()
        .await
        .map_err(|s| explain(&s, session.lang, url))?
    {
        bytes.extend_from_slice(&part.data);
    }
    Manifest::decode(&bytes)
        .map_err(|e| Failed(session.lang.bad_base_manifest(&e.to_string())).into())
}

/// Blocks of the layers below an overlay compared with the base version before its top
/// layer alone is trusted.
const BASE_SAMPLES: usize = 16;

/// Whether to read only an overlay's top layer: yes when the image is an overlay whose
/// layers below hold the base version (checked on sample blocks); an overlay over
/// anything else is refused, since its unchanged blocks would not be the base's.
async fn trust_top_layer(plan: &ImagePlan, lang: crate::i18n::Lang) -> anyhow::Result<bool> {
    let touched = match plan.image.top_layer_extents() {
        None => return Ok(false),
        Some(extents) => extents.map_err(|e| unreadable(plan, lang, e))?,
    };
    let top: u64 = touched.iter().map(|r| r.end - r.start).sum();
    check_layers_unchanged(plan, lang)?;
    let image = plan.image.clone();
    let base = plan.parent.clone();
    let differs = tokio::task::spawn_blocking(move || {
        pipeline::check_layers_below(image.as_ref(), &base, &touched, BASE_SAMPLES)
    })
    .await?
    .map_err(|e| unreadable(plan, lang, e))?;
    if let Some(index) = differs {
        return Err(UsageError(lang.overlay_not_on_base(
            &plan.image_path.display().to_string(),
            &plan.base_version,
            index,
        ))
        .into());
    }
    crate::say!(
        "{}",
        lang.top_layer_only(
            &format!("{:.1}", top as f64 / 1e6),
            &format!("{:.1}", plan.parent.disk_size() as f64 / 1e6)
        )
    );
    Ok(true)
}

/// Refuses an overlay whose images below changed since `update start` recorded them.
fn check_layers_unchanged(plan: &ImagePlan, lang: crate::i18n::Lang) -> anyhow::Result<()> {
    if plan.layers_at_start.is_empty() {
        return Ok(());
    }
    let now: Vec<String> = source::layers_below(plan.image.as_ref())
        .map_err(|e| unreadable(plan, lang, e))?
        .iter()
        .map(ToString::to_string)
        .collect();
    if now == plan.layers_at_start {
        return Ok(());
    }
    let none = || "-".to_owned();
    let changed = (0..now.len().max(plan.layers_at_start.len()))
        .find(|&i| now.get(i) != plan.layers_at_start.get(i))
        .unwrap_or(0);
    Err(UsageError(
        lang.layers_changed(
            &plan.image_path.display().to_string(),
            &plan
                .layers_at_start
                .get(changed)
                .cloned()
                .unwrap_or_else(none),
            &now.get(changed).cloned().unwrap_or_else(none),
        ),
    )
    .into())
}

/// Routes server replies to whoever waits for them.
#[derive(Debug)]
struct Replies {
    needs: Mutex<HashMap<u64, oneshot::Sender<Vec<Need>>>>,
    committed: Mutex<Option<oneshot::Sender<String>>>,
    failure: Mutex<Option<Status>>,
    /// Block bytes and encoded bytes of each chunk sent and not yet acknowledged stored.
    unconfirmed: Mutex<HashMap<Hash, (u64, u64)>>,
    /// The server said it takes copied pages.
    copies: AtomicBool,
    progress: Arc<Progress>,
}

impl Replies {
    fn new(progress: Arc<Progress>) -> Self {
        Self {
            needs: Mutex::default(),
            committed: Mutex::default(),
            failure: Mutex::default(),
            unconfirmed: Mutex::default(),
            copies: AtomicBool::new(false),
            progress,
        }
    }

    /// A chunk of a `len`-byte block, `wire` bytes encoded, is on its way.
    fn sent(&self, hash: Hash, len: u64, wire: u64) {
        let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        if unconfirmed.insert(hash, (len, wire)).is_none() {
            self.progress.handed_over(len);
        }
    }

    /// The server stored these chunks.
    fn stored(&self, hashes: &[bytes::Bytes]) {
        let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        for hash in hashes
            .iter()
            .filter_map(|h| hotate_proto::parse_hash(h).ok())
        {
            if let Some((len, wire)) = unconfirmed.remove(&hash) {
                self.progress.confirmed(len);
                self.progress.stored(wire);
            }
        }
    }

    /// Registers the waiter of an offer's answer; refused once the stream has failed,
    /// whose waiters are all woken (checked under the same lock, so none is missed).
    fn await_need(&self, batch: u64, waiter: oneshot::Sender<Vec<Need>>) -> Result<(), SinkError> {
        let mut needs = self.needs.lock().unwrap_or_else(|e| e.into_inner());
        let failed = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(status) = failed {
            return Err(StreamFailed(status).into());
        }
        needs.insert(batch, waiter);
        Ok(())
    }

    /// Records why the stream failed, then wakes every waiter.
    fn fail(&self, status: Status) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(status);
        // Dropping the senders wakes every waiter.
        self.needs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn failure(&self) -> Status {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Status::unavailable("the connection to the server was lost"))
    }

    async fn route(self: Arc<Self>, mut stream: tonic::Streaming<pb::UploadReply>) {
        loop {
            match stream.message().await {
                Ok(Some(pb::UploadReply { kind: Some(kind) })) => match kind {
                    upload_reply::Kind::Need(need) => {
                        let hashes = hotate_proto::needs(&need);
                        let waiter = self
                            .needs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&need.batch);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(hashes);
                        }
                    }
                    upload_reply::Kind::Committed(committed) => {
                        if let Some(waiter) = self
                            .committed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                        {
                            let _ = waiter.send(committed.version);
                        }
                        return;
                    }
                    // Acknowledgements matter to the server's resume, not to this run.
                    upload_reply::Kind::Stored(stored) => self.stored(&stored.hashes),
                    upload_reply::Kind::Opened(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => return self.fail(Status::unavailable("the server closed the upload")),
                Err(status) => return self.fail(status),
            }
        }
    }
}

/// Paces chunks to a byte rate.
#[derive(Debug)]
struct Pacer {
    rate: u64,
    /// When the first chunk was paced (the clock starts there, so that the time spent
    /// logging in and opening the stream is no credit for a burst), and the bytes since.
    sent: Mutex<(Option<Instant>, u64)>,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            sent: Mutex::new((None, 0)),
        }
    }

    async fn pace(&self, bytes: u64) {
        let due = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let start = *sent.0.get_or_insert_with(Instant::now);
            let due = start + Duration::from_secs_f64(sent.1 as f64 / self.rate as f64);
            sent.1 += bytes;
            due
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// The pipeline's sink on an upload stream.
struct NetworkSink {
    requests: Outbox,
    replies: Arc<Replies>,
    next_batch: AtomicU64,
    pacer: Option<Pacer>,
    /// When the finish's upload began: trace events say how long after.
    started: Instant,
}

/// The upload stream failed; carries the server's status.
#[derive(Debug)]
struct StreamFailed(Status);

impl std::fmt::Display for StreamFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.message())
    }
}

impl std::error::Error for StreamFailed {}

impl NetworkSink {
    async fn send(&self, kind: upload_request::Kind) -> Result<(), SinkError> {
        self.requests
            .send(kind)
            .await
            .map_err(|_| StreamFailed(self.replies.failure()).into())
    }
}

/// The pipeline's requests on their way to the stream: offers, then chunks and the rest.
#[derive(Debug, Clone)]
struct Outbox {
    offers: mpsc::Sender<pb::UploadRequest>,
    others: mpsc::Sender<pb::UploadRequest>,
}

/// What the forwarder takes from an [`Outbox`].
struct Inbox {
    offers: mpsc::Receiver<pb::UploadRequest>,
    others: mpsc::Receiver<pb::UploadRequest>,
}

impl Outbox {
    fn new() -> (Self, Inbox) {
        let (offers, offers_rx) = mpsc::channel(OFFER_QUEUE);
        let (others, others_rx) = mpsc::channel(REQUEST_QUEUE);
        let inbox = Inbox {
            offers: offers_rx,
            others: others_rx,
        };
        (Self { offers, others }, inbox)
    }

    /// Queues `kind` behind the chunks unless the queue is full (then it is dropped).
    fn try_send(&self, kind: upload_request::Kind) {
        let _ = self.others.try_send(pb::UploadRequest { kind: Some(kind) });
    }

    async fn send(&self, kind: upload_request::Kind) -> Result<(), ()> {
        let queue = match kind {
            upload_request::Kind::Offer(_) => &self.offers,
            _ => &self.others,
        };
        queue
            .send(pb::UploadRequest { kind: Some(kind) })
            .await
            .map_err(|_| ())
    }
}

impl ChunkSink for NetworkSink {
    fn takes_copies(&self) -> bool {
        self.replies.copies.load(Ordering::Relaxed)
    }

    async fn offer(&self, offers: Vec<Offer>) -> Result<Vec<Need>, SinkError> {
        let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.await_need(batch, tx)?;
        let first_block = offers.first().map(|offer| offer.index);
        let blocks = offers.len();
        let entries = offers.into_iter().map(pb::Entry::from).collect();
        self.send(upload_request::Kind::Offer(pb::Offer { batch, entries }))
            .await?;
        tracing::trace!(elapsed = ?self.started.elapsed(), batch, blocks, first_block, "offered");
        let needs: Vec<Need> = rx.await.map_err(|_| StreamFailed(self.replies.failure()))?;
        tracing::trace!(
            elapsed = ?self.started.elapsed(),
            batch,
            needs = needs.len(),
            deltas = needs.iter().filter(|need| need.base.is_some()).count(),
            "answered"
        );
        Ok(needs)
    }

    async fn put(&self, chunk: Outgoing) -> Result<(), SinkError> {
        if let Some(pacer) = &self.pacer {
            pacer.pace(chunk.encoded_len() as u64).await;
        }
        self.replies.sent(
            chunk.hash(),
            chunk.block_len() as u64,
            chunk.encoded_len() as u64,
        );
        self.send(upload_request::Kind::Chunk(pb::Chunk::from(&chunk)))
            .await?;
        tracing::trace!(elapsed = ?self.started.elapsed(), bytes = chunk.encoded_len(), "chunk queued");
        Ok(())
    }
}

/// Moves the pipeline's requests onto the open stream; an offer passes the chunks queued
/// before it, since its answer is a round trip away and theirs is not awaited. Chunks
/// keep their order, and a chunk is only ever sent once its offer was answered.
async fn forward(mut inbox: Inbox, stream: mpsc::Sender<pb::UploadRequest>) {
    loop {
        let request = tokio::select! {
            biased;
            Some(offer) = inbox.offers.recv() => offer,
            Some(other) = inbox.others.recv() => other,
            else => return,
        };
        if stream.send(request).await.is_err() {
            return; // The stream ended; the router says why.
        }
    }
}

/// The offers sent behind `open` while the stream opens, kept for the next try if the
/// busy server refuses this one.
#[derive(Debug, Default)]
struct EarlyOffers {
    sent: Vec<pb::UploadRequest>,
    /// How many of `sent` this try has sent again.
    replayed: usize,
}

impl EarlyOffers {
    /// Sends those sent on an earlier try again, then new ones from `offers`, each kept.
    /// Cancel-safe: an offer leaves `offers` only once `requests` has room for it.
    /// Never returns: it ends when dropped.
    async fn feed(
        &mut self,
        requests: &mpsc::Sender<pb::UploadRequest>,
        offers: &mut mpsc::Receiver<pb::UploadRequest>,
    ) -> std::convert::Infallible {
        while let Ok(permit) = requests.reserve().await {
            if let Some(offer) = self.sent.get(self.replayed) {
                permit.send(offer.clone());
                self.replayed += 1;
                continue;
            }
            let Some(offer) = offers.recv().await else {
                break;
            };
            self.sent.push(offer.clone());
            self.replayed += 1;
            permit.send(offer);
        }
        std::future::pending().await
    }

    /// Awaits `step` of opening the stream while feeding it offers.
    async fn during<T>(
        &mut self,
        step: impl std::future::Future<Output = T>,
        requests: &mpsc::Sender<pb::UploadRequest>,
        offers: &mut mpsc::Receiver<pb::UploadRequest>,
    ) -> T {
        tokio::select! {
            done = step => done,
            never = self.feed(requests, offers) => match never {},
        }
    }
}

/// Opens the upload stream (waiting while the server is at its upload limit); returns
/// its request queue, its replies after `Opened`, and `Opened` (what the server already
/// holds, whether it takes copied pages).
/// Offers from `inbox` follow `open` at once, without waiting a round trip for `Opened`;
/// a try the busy server refused loses none of them.
async fn open_stream(
    session: &Session,
    transfer: &mut TransferClient,
    plan: &StreamPlan<'_>,
    inbox: &mut Inbox,
) -> anyhow::Result<(
    mpsc::Sender<pb::UploadRequest>,
    tonic::Streaming<pb::UploadReply>,
    pb::Opened,
)> {
    let (lang, url) = (session.lang, &plan.transfer_url);
    // A server at its upload limit says so; wait and retry, growing the wait.
    let mut wait = BUSY_FIRST_WAIT;
    let busy_until = Instant::now() + BUSY_GIVE_UP;
    let mut early = EarlyOffers::default();
    loop {
        // The open request, then offers, then what the forwarder moves on.
        let (requests, queue) = mpsc::channel(1);
        let open = upload_request::Kind::Open(pb::Open {
            upload_id: plan.upload_id.clone(),
        });
        requests
            .send(pb::UploadRequest { kind: Some(open) })
            .await
            .map_err(|_| Failed("the upload stream closed".into()))?;
        early.replayed = 0;
        let call = transfer.upload(session.request(ReceiverStream::new(queue)));
        match early.during(call, &requests, &mut inbox.offers).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let first = early
                    .during(stream.next(), &requests, &mut inbox.offers)
                    .await;
                return match first {
                    Some(Ok(pb::UploadReply {
                        kind: Some(upload_reply::Kind::Opened(opened)),
                    })) => Ok((requests, stream, opened)),
                    Some(Err(status)) => Err(explain(&status, lang, url)),
                    _ => Err(Failed(lang.upload_not_opened()).into()),
                };
            }
            Err(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && matches!(
                        hotate_proto::Refusal::read(s.metadata()),
                        Some(hotate_proto::Refusal::ServerBusy { .. })
                    )
                    && Instant::now() + wait < busy_until =>
            {
                eprintln!("{}", lang.server_busy(s.message()));
                eprintln!("{}", lang.waiting_for_server(wait.as_secs()));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BUSY_MAX_WAIT);
            }
            Err(s) => return Err(explain(&s, lang, url)),
        }
    }
}

/// Uploads the image and commits the new version. `reading` yields what reading the
/// image needs and `connecting` what the stream needs: the image is read, hashed and
/// offered as soon as the first is there, while the second logs in, begins the upload
/// and opens the stream (the requests queue until it is open). `progress` is live for
/// display, and `on_open` receives the bytes the server held when the stream opened.
///
/// # Errors
/// When either input fails, the image cannot be read, the connection fails, or the
/// server refuses.
#[tracing::instrument(name = "upload", skip_all)]
pub async fn upload<'a>(
    lang: crate::i18n::Lang,
    reading: impl Future<Output = anyhow::Result<ImagePlan>>,
    connecting: impl Future<Output = anyhow::Result<(Session, StreamPlan<'a>)>>,
    limit_rate: Option<u64>,
    progress: &Arc<Progress>,
    figures: &Arc<JobFigures>,
    on_open: impl FnOnce(&StreamPlan<'a>, u64),
) -> anyhow::Result<Uploaded> {
    let started = Instant::now();
    let replies = Arc::new(Replies::new(progress.clone()));
    let (committed_tx, committed_rx) = oneshot::channel();
    *replies.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed_tx);
    let (requests, pending) = Outbox::new();
    let sink = NetworkSink {
        requests: requests.clone(),
        replies: replies.clone(),
        next_batch: AtomicU64::new(1),
        pacer: limit_rate.map(Pacer::new),
        started,
    };
    // Where the stream goes, once known: a failure of the stream names it.
    let stream_url = std::sync::OnceLock::new();
    let opening = async {
        let (session, plan) = connecting.await?;
        let _ = stream_url.set(plan.transfer_url.clone());
        let mut transfer = match plan.transfer.clone() {
            Some(transfer) => {
                tracing::debug!("using the transfer connection opened while logging in");
                transfer
            }
            None => session.transfer(&plan.transfer_url, plan.ca).await?,
        };
        let mut pending = pending;
        let (stream_requests, stream, opened) =
            open_stream(&session, &mut transfer, &plan, &mut pending).await?;
        tracing::debug!(elapsed = ?started.elapsed(), page_copies = opened.page_copies, "stream open");
        replies.copies.store(opened.page_copies, Ordering::Relaxed);
        on_open(&plan, opened.bytes_stored);
        let router = tokio::spawn(replies.clone().route(stream));
        tokio::spawn(forward(pending, stream_requests));
        let reporting = opened
            .job_progress
            .then(|| AbortOnDrop(tokio::spawn(report_job(figures.clone(), requests.clone()))));
        Ok::<_, anyhow::Error>((router, plan, reporting))
    };
    let reading = async {
        let plan = reading.await?;
        let config = PipelineConfig {
            top_layer_only: trust_top_layer(&plan, lang).await?,
            ..PipelineConfig::default()
        };
        let to_read = bytes_to_read(&plan, config.top_layer_only, lang).await?;
        progress.bytes_to_read.store(to_read, Ordering::Relaxed);
        tracing::debug!(elapsed = ?started.elapsed(), top_layer_only = config.top_layer_only, "image checked");
        pipeline::run(plan.image.clone(), &plan.parent, &sink, &config, progress)
            .await
            .map_err(|e| read_failure(e, &plan, lang))
    };
    let failed_stream = |e: anyhow::Error| match e.downcast::<StreamFailed>() {
        Ok(failed) => explain_stream(&failed.0, lang, stream_url.get().map_or("", String::as_str)),
        Err(other) => other,
    };
    let ((router, plan, _reporting), outcome) =
        tokio::try_join!(opening, reading).map_err(failed_stream)?;
    let url = &plan.transfer_url;
    tracing::debug!(elapsed = ?started.elapsed(), progress = ?outcome.progress, "pipeline done");
    let finish = upload_request::Kind::Finish(pb::Finish {
        block_count: outcome.manifest.len() as u64,
        root: hotate_proto::hash_bytes(&outcome.manifest.root()),
        comment: plan.comment.clone(),
    });
    sink.send(finish)
        .await
        .map_err(|_| explain_stream(&replies.failure(), lang, url))?;
    let version = committed_rx
        .await
        .map_err(|_| explain_stream(&replies.failure(), lang, url))?;
    tracing::debug!(elapsed = ?started.elapsed(), %version, "committed");
    drop(requests);
    router.abort();
    Ok(Uploaded {
        version,
        image_size: plan.disk_size,
        bytes_changed: outcome.progress.bytes_changed,
        bytes_sent: outcome.progress.bytes_sent,
        elapsed: started.elapsed(),
    })
}

/// How often the terminal tells the server its progress line's figures.
const JOB_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Sends the progress line's figures to the server when they change, about once a
/// second, never holding up the chunks (a full queue skips a report).
async fn report_job(figures: Arc<JobFigures>, requests: Outbox) {
    let mut last = None;
    let mut tick = tokio::time::interval(JOB_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let now = figures.get();
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        if let Some(f) = now {
            requests.try_send(upload_request::Kind::Progress(pb::JobProgress {
                percent: u32::try_from(f.percent).unwrap_or(99),
                total_bytes: f.total,
                eta_secs: f.eta_secs.unwrap_or(0),
                rate: f.rate,
            }));
        }
    }
}

/// A task that stops when its handle goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The bytes of the image the read covers: an overlay's top layer when only it is read
/// (the differential disk's size, as the manual counts it), else the image's data.
async fn bytes_to_read(
    plan: &ImagePlan,
    top_layer_only: bool,
    lang: crate::i18n::Lang,
) -> anyhow::Result<u64> {
    let image = plan.image.clone();
    let extents = tokio::task::spawn_blocking(move || match image.top_layer_extents() {
        Some(top) if top_layer_only => top,
        _ => image.data_extents(),
    })
    .await?
    .map_err(|e| unreadable(plan, lang, e))?;
    Ok(extents.iter().map(|r| r.end - r.start).sum())
}

/// A failed read of the image in the user's words; a failed stream stays a
/// [`StreamFailed`] for the caller, who knows where the stream went.
fn read_failure(
    e: hotate_engine::PipelineError,
    plan: &ImagePlan,
    lang: crate::i18n::Lang,
) -> anyhow::Error {
    match e {
        hotate_engine::PipelineError::Sink(inner) => match inner.downcast::<StreamFailed>() {
            Ok(failed) => (*failed).into(),
            Err(other) => anyhow::anyhow!(other),
        },
        // Its size was checked before reading: an image that ends early now was cut
        // short meanwhile (as a mapped one that shrinks is reported).
        hotate_engine::PipelineError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Failed(lang.image_shrunk(&plan.image_path.display().to_string())).into()
        }
        other => unreadable(plan, lang, other).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_offer_made_after_the_stream_failed_is_refused_not_left_waiting() {
        let replies = Arc::new(Replies::new(Arc::new(Progress::default())));
        // The queue still takes requests (as one towards a stream that just ended does).
        let (requests, _queue) = Outbox::new();
        let sink = NetworkSink {
            requests,
            replies: replies.clone(),
            next_batch: AtomicU64::new(1),
            pacer: None,
            started: Instant::now(),
        };
        let offer = || {
            vec![Offer {
                index: 0,
                entry: hotate_engine::Entry::Chunk(Hash::of(b"a")),
            }]
        };
        // An offer in flight when the stream fails is woken with the failure...
        let waiting = tokio::spawn({
            let sink_replies = replies.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                sink_replies.await_need(9, tx).expect("registered");
                rx.await.is_err()
            }
        });
        tokio::task::yield_now().await;
        replies.fail(Status::unavailable("the server closed the upload"));
        assert!(waiting.await.expect("task"), "woken by the failure");
        // ...and one made after it fails at once.
        let after = tokio::time::timeout(Duration::from_secs(5), sink.offer(offer())).await;
        let refused = after.expect("answered at once, not left waiting");
        assert!(refused.is_err());
    }

    #[test]
    fn progress_counts_a_sent_chunk_once_the_server_stored_it() {
        let progress = Arc::new(Progress::default());
        let replies = Replies::new(progress.clone());
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        // The pipeline counts both blocks done as it hands them over.
        progress.bytes_done.fetch_add(3 << 20, Ordering::Relaxed);
        replies.sent(a, 1 << 20, 1000);
        replies.sent(b, 2 << 20, 2000);
        assert_eq!(progress.settled(), 0);
        let stored = |hashes: &[Hash]| {
            let wire: Vec<bytes::Bytes> = hashes.iter().map(hotate_proto::hash_bytes).collect();
            replies.stored(&wire);
        };
        stored(&[b]);
        assert_eq!(progress.settled(), 2 << 20);
        assert_eq!(progress.wire_stored.load(Ordering::Relaxed), 2000);
        // A repeated or unknown acknowledgement changes nothing.
        stored(&[b, Hash::of(b"c")]);
        assert_eq!(progress.settled(), 2 << 20);
        stored(&[a]);
        assert_eq!(progress.settled(), 3 << 20);
    }

    #[tokio::test]
    async fn an_offer_passes_the_chunks_queued_before_it() {
        let (outbox, inbox) = Outbox::new();
        let chunk = |n: u8| {
            upload_request::Kind::Chunk(pb::Chunk {
                hash: vec![n].into(),
                ..pb::Chunk::default()
            })
        };
        for n in 0..3 {
            outbox.send(chunk(n)).await.unwrap();
        }
        let offer = pb::Offer {
            batch: 7,
            entries: Vec::new(),
        };
        outbox
            .send(upload_request::Kind::Offer(offer.clone()))
            .await
            .unwrap();
        drop(outbox);
        let (stream, mut sent) = mpsc::channel(8);
        forward(inbox, stream).await;
        let mut order = Vec::new();
        while let Some(request) = sent.recv().await {
            order.push(request.kind.unwrap());
        }
        let expected = vec![
            upload_request::Kind::Offer(offer),
            chunk(0),
            chunk(1),
            chunk(2),
        ];
        assert_eq!(order, expected);
    }

    fn offer_request(batch: u64) -> pb::UploadRequest {
        pb::UploadRequest {
            kind: Some(upload_request::Kind::Offer(pb::Offer {
                batch,
                entries: Vec::new(),
            })),
        }
    }

    #[tokio::test]
    async fn a_retried_open_sends_the_earlier_offers_again_then_new_ones() {
        let (outbox, mut inbox) = Outbox::new();
        outbox.send(offer_request(3).kind.unwrap()).await.unwrap();
        // Offers 1 and 2 went out on a try the server refused.
        let mut early = EarlyOffers {
            sent: vec![offer_request(1), offer_request(2)],
            replayed: 0,
        };
        let (requests, mut queue) = mpsc::channel(8);
        let feed = early.feed(&requests, &mut inbox.offers);
        let fed = tokio::time::timeout(std::time::Duration::from_millis(200), feed).await;
        assert!(fed.is_err(), "feeding goes on until dropped");
        let mut sent = Vec::new();
        while let Ok(request) = queue.try_recv() {
            sent.push(request);
        }
        assert_eq!(sent, [offer_request(1), offer_request(2), offer_request(3)]);
        // All three are kept for another try.
        assert_eq!(early.sent, sent);
        assert_eq!(early.replayed, 3);
    }

    #[tokio::test]
    async fn an_offer_waiting_for_room_while_the_stream_opens_is_not_lost() {
        let (outbox, mut inbox) = Outbox::new();
        outbox.send(offer_request(1).kind.unwrap()).await.unwrap();
        // The stream's queue is full (of `open`): the offer cannot go yet.
        let (requests, _queue) = mpsc::channel(1);
        requests.send(offer_request(0)).await.unwrap();
        let mut early = EarlyOffers::default();
        let feed = early.feed(&requests, &mut inbox.offers);
        let fed = tokio::time::timeout(std::time::Duration::from_millis(100), feed).await;
        assert!(fed.is_err());
        // Dropped meanwhile (the stream opened): the offer is still there to forward.
        assert!(early.sent.is_empty());
        assert_eq!(inbox.offers.try_recv().unwrap(), offer_request(1));
    }
}
