//! The transfer service: manifests out, uploads in.
//!
//! An upload stream is one session of an update's upload. The stream's loop only routes
//! messages; the work runs beside it on the blocking pool, so that a slow disk never
//! stalls the stream:
//! - offers are persisted and answered (`OFFER_JOBS` at a time, `OFFERS_QUEUED` more
//!   waiting while chunks keep flowing) with the hashes the store
//!   lacks and this session has not already asked for, each with the page digests of
//!   the base version's block at its index where that block had content, so the client
//!   may send only the changed pages (the page values of the base blocks read for that
//!   are kept, within `BASE_CACHE_BYTES`, until their chunks arrive);
//! - chunks are verified, up to `VERIFY_BYTES` of blocks (and `VERIFY_JOBS`) at a time:
//!   a delta that changes few pages by hashing those pages into its base's kept page
//!   values, and stored as a patch of its base; others rebuilt against their base;
//! - verified chunks are stored durably in groups (one group commit for up to
//!   `GROUP_COMMIT` chunks, or what verified within `GROUP_WAIT` of a group's first
//!   chunk; one group in flight while the next fills) and acknowledged once on disk.
//!
//! `finish` rebuilds the manifest (base overlaid with the offers), checks it is complete,
//! every chunk exactly its block's length, and the root the client's, then commits the
//! version. A later session of the same update asks only for what is still missing.
//!
//! One stream holds an update at a time: a newly opened stream stops the older one (which
//! stores what it verified, then ends with "another finish took over this upload"). A
//! stream also ends within `STATE_POLL` when the update is aborted or cancelled, from
//! this process or an admin command.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::delta::DIGEST_LEN;
use hotate_engine::{
    Base, ChunkStore, Entry, Hash, Incoming, MAX_PATCH_DEPTH, Manifest, Offer, PageDigests,
    PageTree, Paged, Stored,
};
use hotate_proto::pb::{self, transfer_server::Transfer, upload_reply, upload_request};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{blocking, check_owner};
use crate::data::DataDir;
use crate::error::ServerError;
use crate::gate::caller;
use crate::limits::Limits;
use crate::live::{Counters, Live};
use crate::meta::{
    MetaError, Session, UpdateRow, VersionRow, must_be_uploading, now, still_uploading,
};

/// Chunks verified concurrently per upload, at most...
const VERIFY_JOBS: usize = 16;
/// ...and at most this many bytes of blocks (each job holds about three: the decoded
/// block, a rebuilt one, its compressed frame), but two jobs whatever the block size.
const VERIFY_BYTES: usize = 32 << 20;
/// Offers answered concurrently per upload...
const OFFER_JOBS: usize = 4;
/// ...and offers waiting for one of them. Past this the stream reads nothing until an
/// answer is done; below it, chunks keep flowing while offers wait (the client keeps up
/// to 32 in flight).
const OFFERS_QUEUED: usize = 64;
/// Verified chunks stored with one group commit (fewer when the stream pauses)...
const GROUP_COMMIT: usize = 64;
/// ...or fewer when they reach this many received bytes. While one group commits the
/// next fills, and a full group waits for it: at most two groups per upload in memory.
const GROUP_COMMIT_BYTES: u64 = 8 << 20;
/// A group that does not fill commits this long after its first chunk verified: on a
/// slow link chunks arrive one by one, and each would otherwise cost a durable commit.
const GROUP_WAIT: Duration = Duration::from_millis(50);
/// Bytes of base blocks' page values (32 bytes per 4 KiB page) kept from an offer's
/// answer until their delta arrives (beyond it, a delta's base is read again from the
/// store).
const BASE_CACHE_BYTES: usize = 16 << 20;
/// Bytes of base blocks one answer reads for page digests (each distinct base once, one
/// at a time); needed chunks beyond it are asked for whole...
const BASE_ANSWER_READ: usize = 64 << 20;
/// ...and of those, the bytes of page values it keeps for the base cache. With
/// `OFFER_JOBS` answers at once this bounds what offers can make the server read and
/// hold, whatever they name.
const BASE_ANSWER_KEEP: usize = 4 << 20;
/// Hashes one upload session may have asked for and not yet received: an honest client
/// has at most its window's worth outstanding; the bound keeps an offer flood from
/// growing the server.
const MAX_PENDING: usize = 16_384;
/// How often a stream checks that its update is still live and still its own.
const STATE_POLL: Duration = Duration::from_secs(1);
/// How long a new stream waits for the one it takes over to store what it verified.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);
/// Replies queued towards the client.
const REPLY_QUEUE: usize = 256;
/// Size of the parts a manifest is sent in.
const MANIFEST_PART: usize = 1 << 20;
/// Probes answered at once, server-wide (each may read `BASE_ANSWER_READ` of bases);
/// more wait.
const PROBE_JOBS: usize = 4;
/// Most entries in one probe, as in one offer batch of the client.
const PROBE_ENTRIES: usize = 1024;
/// A discard stream ends after this many bytes...
const DISCARD_BYTES: u64 = 4 << 30;
/// ...or this long.
const DISCARD_TIME: Duration = Duration::from_secs(30);

/// Serves `hotate.v1.Transfer`.
#[derive(Debug, Clone)]
pub struct TransferService {
    data: Arc<DataDir>,
    live: Arc<Live>,
    streams: Arc<Mutex<HashMap<String, LiveStream>>>,
    /// One permit per upload stream, up to `Limits::max_uploads`.
    uploads: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    /// Probes answered at once.
    probes: Arc<tokio::sync::Semaphore>,
    /// The manifest probes last read: a bench probes one base many times.
    probed: Arc<Mutex<Option<Probed>>>,
}

/// A version's manifest, by disk and version id.
type Probed = (String, String, Arc<Manifest>);

/// The stream that holds an update now.
#[derive(Debug)]
struct LiveStream {
    session: u64,
    stop: watch::Sender<bool>,
    ended: watch::Receiver<bool>,
}

/// Marks a stream ended (and forgets it, unless a newer one replaced it) when dropped.
struct StreamGuard {
    streams: Arc<Mutex<HashMap<String, LiveStream>>>,
    live: Arc<Live>,
    guid: String,
    session: u64,
    ended: watch::Sender<bool>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let _ = self.ended.send(true);
        self.live.closed(&self.guid, self.session);
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams
            .get(&self.guid)
            .is_some_and(|s| s.session == self.session)
        {
            streams.remove(&self.guid);
        }
    }
}

impl TransferService {
    pub fn new(data: Arc<DataDir>, live: Arc<Live>, limits: Limits) -> Self {
        Self {
            data,
            live,
            streams: Arc::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(limits.max_uploads.max(1))),
            limits,
            probes: Arc::new(tokio::sync::Semaphore::new(PROBE_JOBS)),
            probed: Arc::default(),
        }
    }

    /// A place among the `--max-uploads` streams, or `Busy` (the client waits and
    /// retries).
    fn upload_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ServerError> {
        self.uploads.clone().try_acquire_owned().map_err(|_| {
            ServerError::Busy(format!(
                "{} uploads are running, the server's limit",
                self.limits.max_uploads
            ))
        })
    }

    /// Stops the stream holding `guid`, if any, and waits until it has stored what it
    /// verified.
    async fn take_over(&self, guid: &str) {
        let ended = {
            let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.get(guid).map(|old| {
                let _ = old.stop.send(true);
                old.ended.clone()
            })
        };
        if let Some(mut ended) = ended {
            tracing::info!(update = %guid, "a new stream takes over the upload");
            let _ = tokio::time::timeout(TAKEOVER_WAIT, ended.wait_for(|e| *e)).await;
        }
    }
}

type ReplyStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Transfer for TransferService {
    type GetManifestStream = ReplyStream<pb::ManifestPart>;
    type UploadStream = ReplyStream<pb::UploadReply>;
    type DiscardStream = ReplyStream<pb::DiscardReply>;

    async fn probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::Need>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        if req.entries.len() > PROBE_ENTRIES {
            return Err(ServerError::BadRequest(format!(
                "a probe of {} entries; at most {PROBE_ENTRIES}",
                req.entries.len()
            ))
            .into());
        }
        let _permit = self
            .probes
            .acquire()
            .await
            .map_err(|_| ServerError::Internal("probes closed".into()))?;
        let data = self.data.clone();
        let probed = self.probed.clone();
        let need = blocking(move || {
            let disk = data.meta().disk(&req.disk_id)?;
            let version = data.meta().version(&disk.id, &req.version)?;
            let parent = {
                let mut probed = probed.lock().unwrap_or_else(|e| e.into_inner());
                match probed.as_ref() {
                    Some((d, v, manifest)) if *d == disk.id && *v == version.id => manifest.clone(),
                    _ => {
                        let manifest = Arc::new(data.manifest(&version)?);
                        *probed = Some((disk.id.clone(), version.id.clone(), manifest.clone()));
                        manifest
                    }
                }
            };
            let offers = req
                .entries
                .into_iter()
                .map(|entry| offered(entry, &parent))
                .collect::<Result<Vec<_>, _>>()?;
            let lengths: HashMap<Hash, usize> = offers
                .iter()
                .filter_map(|o| Some((o.entry.hash()?, block_len(&parent, o.index))))
                .collect();
            let replaced = replaced_blocks(&parent, &offers);
            let candidates: Vec<(Hash, usize)> = lengths.into_iter().collect();
            let max_len = parent.block_size().bytes();
            let needs = lacking(data.store().as_ref(), &candidates, &replaced, max_len)?;
            let mut need = pb::Need::default();
            for (hash, _, base) in needs {
                need.hashes.push(hotate_proto::hash_bytes(&hash));
                if let Some((base, _)) = base {
                    need.bases.push(hotate_proto::delta_base(&hash, &base));
                }
            }
            Ok(need)
        })
        .await?;
        Ok(Response::new(need))
    }

    async fn discard(
        &self,
        request: Request<Streaming<pb::DiscardRequest>>,
    ) -> Result<Response<Self::DiscardStream>, Status> {
        caller(&request)?;
        // A measurement takes a place among the uploads: it loads the link as one does.
        let permit = self.upload_permit()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + DISCARD_TIME;
            let mut received = 0u64;
            loop {
                let next = tokio::time::timeout_at(deadline, inbound.message()).await;
                let done = match next {
                    Ok(Ok(Some(message))) => {
                        received += message.data.len() as u64;
                        received >= DISCARD_BYTES
                    }
                    Ok(Ok(None) | Err(_)) => return,
                    Err(_) => true,
                };
                let reply = pb::DiscardReply { received, done };
                if tx.send(Ok(reply)).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<Self::GetManifestStream>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        let data = self.data.clone();
        let bytes = blocking(move || {
            let disk = data.meta().disk(&req.disk_id)?;
            let version = data.meta().version(&disk.id, &req.version)?;
            Ok(data.manifest(&version)?.encode())
        })
        .await?;
        let bytes = bytes::Bytes::from(bytes);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for start in (0..bytes.len()).step_by(MANIFEST_PART) {
                let end = (start + MANIFEST_PART).min(bytes.len());
                let part = pb::ManifestPart {
                    data: bytes.slice(start..end),
                };
                if tx.send(Ok(part)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<Self::UploadStream>, Status> {
        let session = caller(&request)?;
        let permit = self.upload_permit()?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.limits.handshake_timeout, inbound.message())
            .await
            .map_err(|_| {
                ServerError::BadRequest("the upload stream did not send `open` in time".into())
            })?;
        let Some(pb::UploadRequest {
            kind: Some(upload_request::Kind::Open(open)),
        }) = first?
        else {
            return Err(ServerError::BadRequest("an upload must begin with `open`".into()).into());
        };
        let data = self.data.clone();
        let guid = open.upload_id.clone();
        let caller = session.clone();
        blocking(move || {
            let update = data.meta().update(&guid)?;
            check_owner(&update, &caller)?;
            Ok(must_be_uploading(&update)?)
        })
        .await?;
        self.take_over(&open.upload_id).await;
        let data = self.data.clone();
        let (update, parent) = blocking(move || {
            // Offers are re-sent by every session; chunks already stored stay.
            let update = data.meta().open_session(&open.upload_id)?;
            let version = data.meta().version(&update.disk_id, &update.base_version)?;
            let parent = data.manifest(&version)?;
            Ok((update, parent))
        })
        .await?;
        let (stop_tx, stop) = watch::channel(false);
        let (ended_tx, ended_rx) = watch::channel(false);
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                update.guid.clone(),
                LiveStream {
                    session: update.session,
                    stop: stop_tx,
                    ended: ended_rx,
                },
            );
        self.live.opened(&update.guid, update.session);
        let guard = StreamGuard {
            streams: self.streams.clone(),
            live: self.live.clone(),
            guid: update.guid.clone(),
            session: update.session,
            ended: ended_tx,
        };
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let opened = pb::Opened {
            chunks_stored: update.chunks_received,
            bytes_stored: update.bytes_received,
        };
        let _ = tx.send(Ok(reply(upload_reply::Kind::Opened(opened)))).await;
        let upload = Upload {
            data: self.data.clone(),
            live: self.live.clone(),
            session,
            offered: vec![0; parent.len().div_ceil(64)],
            update,
            parent,
            stop,
            pending: HashMap::new(),
            answering: JoinSet::new(),
            queued: VecDeque::new(),
            asking: HashMap::new(),
            base_cache: BaseCache::default(),
            verifying: JoinSet::new(),
            verified: Vec::new(),
            group_since: None,
            committing: JoinSet::new(),
            replies: tx.clone(),
        };
        tokio::spawn(async move {
            let guid = upload.update.guid.clone();
            let result = upload.run(inbound).await;
            drop(guard);
            drop(permit);
            if let Err(status) = result {
                tracing::warn!(update = %guid, cause = %status.message(), "upload stopped");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until_or_never(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// An offer checked and waiting to be answered.
struct OfferJob {
    batch: u64,
    offers: Vec<Offer>,
    /// The hashes (with their block length) it asks about.
    candidates: Vec<(Hash, usize)>,
    /// The base each replaces, for deltas.
    replaced: HashMap<Hash, Hash>,
}

/// One offer's answer: the hashes it asked about, and those the store lacks with the
/// base each may be sent against.
struct Answer {
    batch: u64,
    candidates: Vec<(Hash, usize)>,
    needs: Vec<(Hash, usize, Option<BaseBlock>)>,
}

/// A base named for a delta, with the block's page values when the answer kept them.
type BaseBlock = (Base, Option<Arc<KeptBase>>);

/// What a delta against a base needs of it: its page values, and how many patches deep
/// it is stored (a patch on it goes one deeper).
struct KeptBase {
    tree: PageTree,
    depth: u8,
}

/// A hash asked for in this session and not yet stored.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The base named for a delta, if any.
    base: Option<Hash>,
    /// The length of its block: the chunk must be exactly this long.
    len: usize,
}

/// Page values of base blocks read to answer offers, kept for the deltas that will use
/// them.
#[derive(Default)]
struct BaseCache {
    blocks: HashMap<Hash, Arc<KeptBase>>,
    bytes: usize,
}

impl BaseCache {
    fn keep(&mut self, hash: Hash, base: Arc<KeptBase>) {
        let bytes = base.tree.held_bytes();
        if self.bytes + bytes <= BASE_CACHE_BYTES && !self.blocks.contains_key(&hash) {
            self.bytes += bytes;
            self.blocks.insert(hash, base);
        }
    }

    fn take(&mut self, hash: &Hash) -> Option<Arc<KeptBase>> {
        let base = self.blocks.remove(hash)?;
        self.bytes -= base.tree.held_bytes();
        Some(base)
    }
}

/// An offered entry, refused unless it names a block of `parent`'s disk.
fn offered(entry: pb::Entry, parent: &Manifest) -> Result<Offer, ServerError> {
    let offer = Offer::try_from(entry).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let count = parent.len() as u64;
    if offer.index >= count {
        return Err(ServerError::BadRequest(format!(
            "block {} is beyond the disk's {count} blocks",
            offer.index
        )));
    }
    Ok(offer)
}

/// The length of block `index` of `manifest`'s disk: the length its chunk must have.
fn block_len(manifest: &Manifest, index: u64) -> usize {
    let range = manifest.block_size().range(index, manifest.disk_size());
    (range.end - range.start) as usize
}

/// The block each offered hash replaces where it had content: the base of its delta.
fn replaced_blocks(parent: &Manifest, offers: &[Offer]) -> HashMap<Hash, Hash> {
    let mut replaced = HashMap::new();
    for offer in offers {
        if let (Some(hash), Some(Entry::Chunk(old))) = (offer.entry.hash(), parent.get(offer.index))
        {
            replaced.entry(hash).or_insert(old);
        }
    }
    replaced
}

/// Which of `candidates` (hash and block length) the store lacks, each with the base a
/// delta may use: the block it replaces (`replaced`), read (and verified) for its page
/// digests while the answer has read less than `BASE_ANSWER_READ`, its page values kept
/// for the first `BASE_ANSWER_KEEP` bytes. A held chunk is read and verified: dedup
/// never trusts a damaged one.
///
/// # Errors
/// When the store cannot be read, or a held chunk has another length than its block.
fn lacking<S: ChunkStore + ?Sized>(
    store: &S,
    candidates: &[(Hash, usize)],
    replaced: &HashMap<Hash, Hash>,
    max_len: usize,
) -> Result<Vec<(Hash, usize, Option<BaseBlock>)>, ServerError> {
    let mut needs = Vec::new();
    let mut bases: HashMap<Hash, Option<BaseBlock>> = HashMap::new();
    let (mut read, mut kept) = (0, 0);
    for &(hash, len) in candidates {
        match store.holds(&hash, max_len)? {
            Some(held) if held == len => continue,
            Some(held) => {
                return Err(ServerError::BadRequest(format!(
                    "a block of {len} bytes is offered as chunk {}, which has {held} bytes",
                    hash.short()
                )));
            }
            None => {}
        }
        let base = match replaced.get(&hash) {
            Some(old) if bases.contains_key(old) => bases[old].clone(),
            Some(old) if read < BASE_ANSWER_READ => {
                // Without a readable base the chunk simply travels whole.
                let base = store.get_with_pages(old, max_len).ok().map(
                    |Paged {
                         content,
                         tree,
                         depth,
                     }| {
                        read += content.len();
                        let pages = PageDigests::of_tree(&tree, DIGEST_LEN);
                        let keep = kept + tree.held_bytes() <= BASE_ANSWER_KEEP;
                        kept += if keep { tree.held_bytes() } else { 0 };
                        let kept_base = keep.then(|| Arc::new(KeptBase { tree, depth }));
                        (Base { hash: *old, pages }, kept_base)
                    },
                );
                bases.insert(*old, base.clone());
                base
            }
            _ => None,
        };
        needs.push((hash, len, base));
    }
    Ok(needs)
}

fn reply(kind: upload_reply::Kind) -> pb::UploadReply {
    pb::UploadReply { kind: Some(kind) }
}

/// One session of an upload.
struct Upload {
    data: Arc<DataDir>,
    /// Where the console reads the upload's progress.
    live: Arc<Live>,
    /// Who opened the stream: the version records this user.
    session: Session,
    update: UpdateRow,
    parent: Manifest,
    /// Block indexes offered in this session, a bit each: each may be offered once.
    offered: Vec<u64>,
    /// Set when a newer stream takes the upload over.
    stop: watch::Receiver<bool>,
    /// Hashes asked for in this session and not yet stored.
    pending: HashMap<Hash, Pending>,
    /// Offers being answered, off the stream's loop so that chunks keep flowing...
    answering: JoinSet<Result<Answer, ServerError>>,
    /// ...and those waiting for a place among them.
    queued: VecDeque<OfferJob>,
    /// Hashes (with their block length) in offers still being answered: a later offer
    /// does not ask for them again.
    asking: HashMap<Hash, usize>,
    /// The bases named in answers, until their chunks arrive.
    base_cache: BaseCache,
    /// Verify jobs in flight; each yields the chunk and its bytes as received.
    verifying: JoinSet<Result<(Stored, u64), ServerError>>,
    /// Verified chunks waiting for the next group commit...
    verified: Vec<(Stored, u64)>,
    /// ...since the first of them verified.
    group_since: Option<tokio::time::Instant>,
    /// The group commit in flight (at most one), off the stream's loop; it yields the
    /// group once durable and counted.
    committing: JoinSet<Result<Vec<(Stored, u64)>, ServerError>>,
    replies: mpsc::Sender<Result<pb::UploadReply, Status>>,
}

impl Upload {
    async fn run(mut self, mut inbound: Streaming<pb::UploadRequest>) -> Result<(), Status> {
        let result = self.serve(&mut inbound).await;
        // Whatever happened, what was verified is stored.
        let stored = self.commit_all().await;
        result.and(stored)
    }

    async fn serve(&mut self, inbound: &mut Streaming<pb::UploadRequest>) -> Result<(), Status> {
        let mut poll = tokio::time::interval(STATE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let group_due = self.group_since.map(|since| since + GROUP_WAIT);
            let message = tokio::select! {
                Ok(()) = self.stop.changed() => {
                    let _ = self.drain().await;
                    return Err(ServerError::from(MetaError::TakenOver).into());
                }
                _ = poll.tick() => {
                    self.check_still_ours().await?;
                    continue;
                }
                Some(done) = self.answering.join_next(), if !self.answering.is_empty() => {
                    self.answered(done).await?;
                    continue;
                }
                Some(done) = self.verifying.join_next(), if !self.verifying.is_empty() => {
                    self.verified(done).await?;
                    continue;
                }
                Some(done) = self.committing.join_next(), if !self.committing.is_empty() => {
                    self.committed(done).await?;
                    continue;
                }
                () = sleep_until_or_never(group_due), if self.committing.is_empty() => {
                    self.start_commit();
                    continue;
                }
                message = inbound.message() => message,
            };
            let message = match message {
                Ok(Some(message)) => message,
                // The client went away: store what it sent, keep everything.
                Ok(None) => return self.drain().await,
                Err(status) => {
                    let _ = self.drain().await;
                    return Err(status);
                }
            };
            match message.kind {
                Some(upload_request::Kind::Offer(offer)) => self.offer(offer).await?,
                Some(upload_request::Kind::Chunk(chunk)) => self.chunk(chunk).await?,
                Some(upload_request::Kind::Finish(finish)) => return self.finish(finish).await,
                Some(upload_request::Kind::Open(_)) | None => {
                    return Err(ServerError::BadRequest("unexpected message".into()).into());
                }
            }
        }
    }

    /// Ends the stream when its update was aborted or cancelled, or another session
    /// took it over (perhaps in another process).
    async fn check_still_ours(&self) -> Result<(), Status> {
        let data = self.data.clone();
        let guid = self.update.guid.clone();
        let now = blocking(move || Ok(data.meta().update(&guid)?)).await?;
        Ok(still_uploading(&now, self.update.session).map_err(ServerError::from)?)
    }

    async fn offer(&mut self, offer: pb::Offer) -> Result<(), Status> {
        let count = self.parent.len() as u64;
        if offer.entries.len() as u64 > count {
            return Err(ServerError::BadRequest(format!(
                "an offer of {} entries for a disk of {count} blocks",
                offer.entries.len()
            ))
            .into());
        }
        let mut offers = Vec::with_capacity(offer.entries.len());
        for entry in offer.entries {
            let offer = offered(entry, &self.parent)?;
            let (word, bit) = ((offer.index / 64) as usize, 1u64 << (offer.index % 64));
            let seen = self.offered[word] & bit != 0;
            self.offered[word] |= bit;
            if seen {
                return Err(ServerError::BadRequest(format!(
                    "block {} was offered twice in one upload",
                    offer.index
                ))
                .into());
            }
            offers.push(offer);
        }
        // Each hash names content of one length: a hash offered for blocks of different
        // lengths is a lie about one of them.
        let mut lengths: HashMap<Hash, usize> = HashMap::new();
        for offer in &offers {
            if let Some(hash) = offer.entry.hash() {
                let len = block_len(&self.parent, offer.index);
                let known = lengths
                    .get(&hash)
                    .copied()
                    .or_else(|| self.pending.get(&hash).map(|p| p.len))
                    .or_else(|| self.asking.get(&hash).copied());
                if known.is_some_and(|known| known != len) {
                    return Err(ServerError::BadRequest(format!(
                        "chunk {} is offered for blocks of different lengths",
                        hash.short()
                    ))
                    .into());
                }
                lengths.insert(hash, len);
            }
        }
        let candidates: Vec<(Hash, usize)> = lengths
            .iter()
            .filter(|(h, _)| !self.pending.contains_key(h) && !self.asking.contains_key(h))
            .map(|(h, len)| (*h, *len))
            .collect();
        if self.pending.len() + self.asking.len() + candidates.len() > MAX_PENDING {
            return Err(ServerError::OverBudget(format!(
                "more than {MAX_PENDING} chunks asked for and not yet sent; send them before offering more"
            ))
            .into());
        }
        self.asking.extend(candidates.iter().copied());
        let replaced = replaced_blocks(&self.parent, &offers);
        self.queued.push_back(OfferJob {
            batch: offer.batch,
            offers,
            candidates,
            replaced,
        });
        self.start_answers();
        while self.queued.len() > OFFERS_QUEUED {
            if let Some(done) = self.answering.join_next().await {
                self.answered(done).await?;
            }
        }
        Ok(())
    }

    /// Starts answering queued offers while fewer than `OFFER_JOBS` are.
    fn start_answers(&mut self) {
        while self.answering.len() < OFFER_JOBS {
            let Some(job) = self.queued.pop_front() else {
                return;
            };
            let data = self.data.clone();
            let guid = self.update.guid.clone();
            let session = self.update.session;
            let max_len = self.parent.block_size().bytes();
            self.answering.spawn_blocking(move || {
                data.meta().record_offers(&guid, session, &job.offers)?;
                let store = data.store();
                let needs = lacking(store.as_ref(), &job.candidates, &job.replaced, max_len)?;
                Ok(Answer {
                    batch: job.batch,
                    candidates: job.candidates,
                    needs,
                })
            });
        }
    }

    /// Takes a finished offer, and starts the next queued one in its place: its missing
    /// hashes become pending, then the client hears which to send.
    async fn answered(
        &mut self,
        done: Result<Result<Answer, ServerError>, tokio::task::JoinError>,
    ) -> Result<(), Status> {
        let answer = done.map_err(ServerError::from)??;
        self.start_answers();
        for (hash, _) in &answer.candidates {
            self.asking.remove(hash);
        }
        let mut need = pb::Need {
            batch: answer.batch,
            ..pb::Need::default()
        };
        let needed: usize = answer.needs.iter().map(|(_, len, _)| len).sum();
        self.live
            .needed(&self.update.guid, self.update.session, needed as u64);
        for (hash, len, base) in answer.needs {
            need.hashes.push(hotate_proto::hash_bytes(&hash));
            let base = base.map(|(base, content)| {
                need.bases.push(hotate_proto::delta_base(&hash, &base));
                if let Some(kept) = content {
                    self.base_cache.keep(base.hash, kept);
                }
                base.hash
            });
            self.pending.insert(hash, Pending { base, len });
        }
        self.send(upload_reply::Kind::Need(need)).await
    }

    async fn chunk(&mut self, chunk: pb::Chunk) -> Result<(), Status> {
        let chunk =
            Incoming::try_from(chunk).map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let (hash, base, received) = match &chunk {
            Incoming::Whole(whole) => (whole.hash, None, whole.frame.payload.len()),
            Incoming::Delta(delta) => (
                delta.hash,
                Some(delta.delta.base),
                delta.delta.encoded_len(),
            ),
        };
        Counters::add(&self.live.counters.bytes_received, received as u64);
        let Some(&pending) = self.pending.get(&hash) else {
            return Err(ServerError::BadRequest(format!(
                "chunk {} was not asked for",
                hash.short()
            ))
            .into());
        };
        if base.is_some() && base != pending.base {
            return Err(ServerError::BadRequest(format!(
                "chunk {} is a delta against a base the server did not offer",
                hash.short()
            ))
            .into());
        }
        // The chunk came: its base leaves the cache, used or not.
        let cached = pending.base.and_then(|b| self.base_cache.take(&b));
        let len = pending.len;
        let jobs = (VERIFY_BYTES / self.parent.block_size().bytes()).clamp(2, VERIFY_JOBS);
        while self.verifying.len() >= jobs {
            if let Some(done) = self.verifying.join_next().await {
                self.verified(done).await?;
            }
        }
        let max_len = self.parent.block_size().bytes();
        let store = self.data.store().clone();
        self.verifying.spawn_blocking(move || match chunk {
            Incoming::Whole(whole) => {
                let received = whole.frame.payload.len() as u64;
                let chunk = Stored::from(whole.verify(max_len)?);
                Ok((chunk.check_len(len)?, received))
            }
            Incoming::Delta(delta) => {
                let received = delta.delta.encoded_len() as u64;
                if let Some(kept) = cached
                    && let Some(chunk) = delta.verify_by_pages(&kept.tree, kept.depth, max_len)?
                {
                    return Ok((chunk.check_len(len)?, received));
                }
                // A base whose layout cannot be read is not patched: the block stands alone.
                let base_depth = store
                    .layout(&delta.delta.base)
                    .map_or(MAX_PATCH_DEPTH, |layout| layout.depth());
                let base = store.get(&delta.delta.base, max_len)?;
                let chunk = delta.verify(&base, base_depth, max_len, DEFAULT_ZSTD_LEVEL)?;
                Ok((chunk.check_len(len)?, received))
            }
        });
        Ok(())
    }

    /// Takes a finished verification; commits the group when it is full, waiting for the
    /// commit in flight. A group that does not fill commits `GROUP_WAIT` after its first
    /// chunk (the stream's loop keeps that time).
    async fn verified(
        &mut self,
        done: Result<Result<(Stored, u64), ServerError>, tokio::task::JoinError>,
    ) -> Result<(), Status> {
        let chunk = self.checked(done)?;
        if self.verified.is_empty() {
            self.group_since = Some(tokio::time::Instant::now());
        }
        self.verified.push(chunk);
        if self.group_full() {
            while let Some(done) = self.committing.join_next().await {
                self.committed(done).await?;
            }
            self.start_commit();
        }
        Ok(())
    }

    fn group_full(&self) -> bool {
        let bytes: u64 = self.verified.iter().map(|(_, received)| received).sum();
        self.verified.len() >= GROUP_COMMIT || bytes >= GROUP_COMMIT_BYTES
    }

    /// A verify job's outcome; chunks that failed verification are counted.
    fn checked(
        &self,
        done: Result<Result<(Stored, u64), ServerError>, tokio::task::JoinError>,
    ) -> Result<(Stored, u64), ServerError> {
        let outcome = done.map_err(ServerError::from)?;
        if let Err(ServerError::BadChunk(_)) = &outcome {
            Counters::add(&self.live.counters.verification_failures, 1);
        }
        outcome
    }

    /// Stores the verified chunks durably in one group and counts them, in the
    /// background.
    fn start_commit(&mut self) {
        if self.verified.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.verified);
        self.group_since = None;
        let data = self.data.clone();
        let guid = self.update.guid.clone();
        self.committing.spawn_blocking(move || {
            let chunks: Vec<Stored> = group.iter().map(|(c, _)| c.clone()).collect();
            data.store().put_many(&chunks)?;
            let bytes = group.iter().map(|(_, received)| received).sum();
            data.meta().add_received(&guid, group.len() as u64, bytes)?;
            Ok(group)
        });
    }

    /// Takes a durable group (its chunks are no longer pending), commits what verified
    /// meanwhile, and acknowledges the group.
    async fn committed(
        &mut self,
        done: Result<Result<Vec<(Stored, u64)>, ServerError>, tokio::task::JoinError>,
    ) -> Result<(), Status> {
        let group = done.map_err(ServerError::from)??;
        let mut stored = pb::Stored::default();
        let mut content = 0;
        for (chunk, bytes) in &group {
            if let Some(pending) = self.pending.remove(&chunk.hash()) {
                content += pending.len as u64;
            }
            stored.hashes.push(hotate_proto::hash_bytes(&chunk.hash()));
            stored.bytes += bytes;
        }
        self.live.stored(
            &self.update.guid,
            self.update.session,
            group.len() as u64,
            content,
            stored.bytes,
        );
        // What verified meanwhile commits now if it filled a group, else when it is due.
        if self.group_full() {
            self.start_commit();
        }
        self.send(upload_reply::Kind::Stored(stored)).await
    }

    /// Waits for the offers and verifications in flight and stores what was verified.
    async fn drain(&mut self) -> Result<(), Status> {
        while let Some(done) = self.answering.join_next().await {
            done.map_err(ServerError::from)??;
        }
        while let Some(done) = self.verifying.join_next().await {
            let chunk = self.checked(done)?;
            self.verified.push(chunk);
        }
        self.commit_all().await
    }

    /// Commits every verified chunk and waits until all are durable, acknowledging them
    /// while the client listens.
    async fn commit_all(&mut self) -> Result<(), Status> {
        self.start_commit();
        let mut result = Ok(());
        while let Some(done) = self.committing.join_next().await {
            match self.committed(done).await {
                // The client went away: the rest is stored all the same.
                Err(status) if status.code() == tonic::Code::Cancelled => {}
                Err(status) => result = result.and(Err(status)),
                Ok(()) => {}
            }
        }
        result
    }

    async fn finish(&mut self, finish: pb::Finish) -> Result<(), Status> {
        self.drain().await?;
        if !self.pending.is_empty() {
            return Err(ServerError::Incomplete(format!(
                "{} needed chunks were not sent",
                self.pending.len()
            ))
            .into());
        }
        crate::text::check_comment(&finish.comment)?;
        let client_root = hotate_proto::parse_hash(&finish.root)
            .map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let data = self.data.clone();
        let update = self.update.clone();
        let parent = self.parent.clone();
        let mut manifest = self.parent.clone();
        let comment = finish.comment;
        let creator = self.session.user.clone();
        let block_count = finish.block_count;
        let version = blocking(move || {
            let (guid, session) = (update.guid.clone(), update.session);
            let commit = || {
                if block_count != manifest.len() as u64 {
                    return Err(ServerError::BadRequest(format!(
                        "the client counted {block_count} blocks, the disk has {}",
                        manifest.len()
                    )));
                }
                let offers = data.meta().offers(&update.guid, update.session)?;
                let mut changed = HashMap::new();
                for offer in &offers {
                    manifest.set(offer.index, offer.entry)?;
                    if let Entry::Chunk(hash) = offer.entry {
                        changed.insert(hash, (offer.index, block_len(&manifest, offer.index)));
                    }
                }
                // Every chunk is present and exactly its block's length, or nothing commits.
                let max_len = manifest.block_size().bytes();
                let mut missing = Vec::new();
                for (hash, (index, len)) in changed {
                    match data.store().content_len(&hash, max_len)? {
                        None => missing.push(hash),
                        Some(held) if held != len => {
                            return Err(ServerError::BadRequest(format!(
                                "block {index} has {len} bytes but its chunk {} has {held}",
                                hash.short()
                            )));
                        }
                        Some(_) => {}
                    }
                }
                if let Some(first) = missing.first() {
                    return Err(ServerError::Incomplete(format!(
                        "{} chunks are missing (first {})",
                        missing.len(),
                        first.short()
                    )));
                }
                let root = manifest.root();
                if root != client_root {
                    return Err(ServerError::RootMismatch(format!(
                        "server root {} differs from the client's {}; run finish again",
                        root.short(),
                        client_root.short()
                    )));
                }
                let changed_blocks = manifest.diff(&parent)?.count() as u64;
                let fresh = data.meta().update(&update.guid)?;
                let version = VersionRow {
                    disk_id: update.disk_id.clone(),
                    id: data.new_version_id(&update.disk_id)?,
                    parent: Some(update.base_version.clone()),
                    comment,
                    user: creator,
                    terminal: update.terminal.clone(),
                    created_at: now(),
                    root,
                    blocks_changed: changed_blocks,
                    bytes_stored: fresh.bytes_received,
                };
                data.meta()
                    .commit(&update.guid, update.session, &version, || {
                        data.write_manifest(&version.disk_id, &version.id, &manifest)
                    })?;
                Ok(version)
            };
            match commit() {
                // An abort or a takeover may have dropped this session's offers while
                // they were read: say that, not that the content differs.
                Err(e @ (ServerError::Incomplete(_) | ServerError::RootMismatch(_))) => {
                    still_uploading(&data.meta().update(&guid)?, session)?;
                    Err(e)
                }
                done => done,
            }
        })
        .await?;
        Counters::add(&self.live.counters.versions_committed, 1);
        tracing::info!(update = %self.update.guid, version = %version.id, "update committed");
        self.send(upload_reply::Kind::Committed(pb::Committed {
            version: version.id,
        }))
        .await
    }

    async fn send(&self, kind: upload_reply::Kind) -> Result<(), Status> {
        self.replies
            .send(Ok(reply(kind)))
            .await
            .map_err(|_| Status::cancelled("the client went away"))
    }
}
