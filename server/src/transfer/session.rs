//! One session of an upload. The stream's loop only routes messages; the work runs
//! beside it on the blocking pool, so that a slow disk never stalls the stream:
//! - offers are persisted and answered (`OFFER_JOBS` at a time, `OFFERS_QUEUED` more
//!   waiting while chunks keep flowing) with the hashes the store lacks and this
//!   session has not already asked for, each with the page digests of the base
//!   version's block at its index where that block had content, so the client may send
//!   only the changed pages (the page values of the base blocks read for that are kept
//!   until their chunks arrive);
//! - chunks are verified, up to `VERIFY_BYTES` of blocks (and `VERIFY_JOBS`) at a time:
//!   a delta that changes few pages by hashing those pages into its base's kept page
//!   values, and stored as a patch of its base; others rebuilt against their base; a
//!   block with pages copied from chunks this session offered and either stored or
//!   received before it ([`sources`](super::sources)), rebuilt from those chunks and
//!   stored whole or as a patch;
//! - verified chunks are stored durably in groups (one group commit for up to
//!   `GROUP_COMMIT` chunks, or what verified within `GROUP_WAIT` of a group's first
//!   chunk; one group in flight while the next fills) and acknowledged once on disk;
//! - [`finish`] commits the version.
//!
//! A session ends within `STATE_POLL` when its update is aborted or cancelled, from this
//! process or an admin command. A later session of the same update asks only for what
//! is still missing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hotate_engine::block::DEFAULT_ZSTD_LEVEL;
use hotate_engine::{ChunkStore, Hash, Incoming, MAX_PATCH_DEPTH, Manifest, Stored};
use hotate_proto::pb::{self, upload_reply, upload_request};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::Status;

use crate::app::{UploadRecord, blocking};
use crate::error::ServerError;
use crate::live::{Counters, Live};
use crate::meta::{MetaError, Session, UpdateRow};

mod finish;
#[cfg(test)]
mod tests;

use super::offers::{Answer, BaseCache, OfferJob, Pending, lacking, offered, replaced_blocks};
use super::sources::Sources;

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
/// Hashes one upload session may have asked for and not yet received: an honest client
/// has at most its window's worth outstanding; the bound keeps an offer flood from
/// growing the server.
const MAX_PENDING: usize = 16_384;
/// zstd level of blocks rebuilt from copied pages, which the server compresses itself
/// (other chunks are stored as they came): level 3 took a third more server CPU on an
/// install that repeats files, for a few per cent of stored bytes.
const COMPOSED_LEVEL: i32 = 1;
/// How often a stream checks that its update is still live and still its own.
const STATE_POLL: Duration = Duration::from_secs(1);

/// The requests of an upload stream: tonic's `Streaming`, or a channel in the tests.
pub(super) trait Inbound:
    Stream<Item = Result<pb::UploadRequest, Status>> + Unpin + Send
{
}

impl<S: Stream<Item = Result<pb::UploadRequest, Status>> + Unpin + Send> Inbound for S {}

/// Sleeps until `due`, or forever without one.
async fn sleep_until_or_never(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

pub(super) fn reply(kind: upload_reply::Kind) -> pb::UploadReply {
    pb::UploadReply { kind: Some(kind) }
}

/// One session of an upload.
pub(super) struct Upload {
    /// Where chunks are read (bases, dedup hits) and verified against.
    store: Arc<dyn ChunkStore>,
    /// Every state change of the session: offers, stored chunks, the commit.
    record: UploadRecord,
    /// Where the console reads the upload's progress.
    live: Arc<Live>,
    /// Who opened the stream: the version records this user.
    session: Session,
    update: UpdateRow,
    parent: Manifest,
    /// Block indexes offered in this session, a bit each: each may be offered once.
    offered: Vec<u64>,
    /// Hashes offered in this session (at most one per block): a chunk may copy pages
    /// only from these...
    offered_hashes: HashSet<Hash>,
    /// ...stored, or received in this session before it.
    received: HashSet<Hash>,
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
    /// Chunks copied from, kept a while.
    sources: Arc<Sources>,
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
    /// A session of the upload `record` opened, by `session`, over `parent` (the base version's
    /// manifest), recording through `record`, replying on `replies`; `stop` says a
    /// newer stream took it over.
    pub(super) fn new(
        store: Arc<dyn ChunkStore>,
        record: UploadRecord,
        live: Arc<Live>,
        session: Session,
        parent: Manifest,
        stop: watch::Receiver<bool>,
        replies: mpsc::Sender<Result<pb::UploadReply, Status>>,
    ) -> Self {
        Self {
            store,
            update: record.update().clone(),
            record,
            live,
            session,
            offered: vec![0; parent.len().div_ceil(64)],
            offered_hashes: HashSet::new(),
            received: HashSet::new(),
            parent,
            stop,
            pending: HashMap::new(),
            answering: JoinSet::new(),
            queued: VecDeque::new(),
            asking: HashMap::new(),
            base_cache: BaseCache::default(),
            sources: Arc::default(),
            verifying: JoinSet::new(),
            verified: Vec::new(),
            group_since: None,
            committing: JoinSet::new(),
            replies,
        }
    }

    /// The update's id.
    pub(super) fn guid(&self) -> &str {
        &self.update.guid
    }

    /// Serves the session's messages from `inbound` (the stream's requests) until it
    /// ends, fails or commits.
    #[tracing::instrument(name = "upload", skip_all, fields(update = %self.update.guid, session = self.update.session))]
    pub(super) async fn run(mut self, mut inbound: impl Inbound) -> Result<(), Status> {
        let result = self.serve(&mut inbound).await;
        // Whatever happened, what was verified is stored.
        let stored = self.commit_all().await;
        result.and(stored)
    }

    async fn serve(&mut self, inbound: &mut impl Inbound) -> Result<(), Status> {
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
                message = inbound.next() => message.transpose(),
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
                Some(upload_request::Kind::Progress(job)) => self.job(&job),
                Some(upload_request::Kind::Open(_)) | None => {
                    return Err(ServerError::BadRequest("unexpected message".into()).into());
                }
            }
        }
    }

    /// Ends the stream when its update was aborted or cancelled, or another session
    /// took it over (perhaps in another process).
    async fn check_still_ours(&self) -> Result<(), Status> {
        let record = self.record.clone();
        Ok(blocking(move || record.still_ours()).await?)
    }

    /// The terminal's account of its whole finish, for the console: a few figures kept
    /// in place of the last ones, so a flood of them grows nothing.
    fn job(&self, job: &pb::JobProgress) {
        let report = crate::meta::JobReport {
            percent: u64::from(job.percent.min(100)),
            total: job.total_bytes,
            eta_secs: (job.eta_secs > 0).then_some(job.eta_secs),
            rate: job.rate,
        };
        self.live
            .job(&self.update.guid, self.update.session, report);
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
                let len = self.parent.block_len(offer.index);
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
                self.offered_hashes.insert(hash);
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
            let (record, store) = (self.record.clone(), self.store.clone());
            let max_len = self.parent.block_size().bytes();
            self.answering.spawn_blocking(move || {
                record.offers(&job.offers)?;
                let (needs, _) = lacking(
                    store.as_ref(),
                    &job.candidates,
                    &job.replaced,
                    max_len,
                    usize::MAX,
                )?;
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
        let (hash, base) = (chunk.hash(), chunk.base());
        Counters::add(
            &self.live.counters.bytes_received,
            chunk.encoded_len() as u64,
        );
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
        if let Incoming::Composed(composed) = &chunk
            && let Some(other) = composed
                .composed
                .copies
                .sources
                .iter()
                .find(|source| !self.offered_hashes.contains(source))
        {
            return Err(ServerError::BadRequest(format!(
                "chunk {} copies pages from chunk {}, which this upload did not offer",
                hash.short(),
                other.short()
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
        let (store, sources) = (self.store.clone(), self.sources.clone());
        // Which chunks it copies from came on this stream (they may still be verifying).
        let sent: Vec<bool> = match &chunk {
            Incoming::Composed(composed) => (composed.composed.copies.sources.iter())
                .map(|source| self.received.contains(source))
                .collect(),
            _ => Vec::new(),
        };
        self.received.insert(hash);
        let job_sources = sources.clone();
        let verify = move || match chunk {
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
            Incoming::Composed(composed) => {
                let received = composed.composed.encoded_len() as u64;
                let base = match composed.composed.base {
                    Some(base) => Some((
                        store.get(&base, max_len)?,
                        store
                            .layout(&base)
                            .map_or(MAX_PATCH_DEPTH, |layout| layout.depth()),
                    )),
                    None => None,
                };
                // Each chunk copied from: stored, or verified (or verifying) here.
                let copied = (composed.composed.copies.sources.iter().zip(sent))
                    .map(|(source, sent)| job_sources.get(store.as_ref(), source, sent, max_len))
                    .collect::<Result<Vec<_>, _>>()?;
                let base = base.as_ref().map(|(content, depth)| (&content[..], *depth));
                let chunk = composed.verify(len, base, &copied, max_len, COMPOSED_LEVEL)?;
                Ok((chunk, received))
            }
        };
        self.verifying.spawn_blocking(move || {
            let verified = verify();
            if let Ok((chunk, _)) = &verified {
                sources.verified(chunk);
            }
            verified
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
        let record = self.record.clone();
        self.committing.spawn_blocking(move || {
            let chunks: Vec<Stored> = group.iter().map(|(c, _)| c.clone()).collect();
            record.stored(&chunks, group.iter().map(|(_, received)| received).sum())?;
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
        self.sources
            .stored(group.iter().map(|(chunk, _)| chunk.hash()));
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

    async fn send(&self, kind: upload_reply::Kind) -> Result<(), Status> {
        self.replies
            .send(Ok(reply(kind)))
            .await
            .map_err(|_| Status::cancelled("the client went away"))
    }
}
