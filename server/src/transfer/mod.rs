//! The transfer service: manifests out, uploads in.
//!
//! - [`TransferService`] (here) serves `hotate.v1.Transfer`: manifests, probes, the
//!   discard stream of `bench`, and opening an upload stream, one stream per update at a
//!   time (a newly opened stream stops the older one, which stores what it verified,
//!   then ends with "another finish took over this upload");
//! - [`session`] is one session of an upload: offers answered, chunks verified and
//!   stored in group commits, and (in `session::finish`) the version committed;
//! - [`offers`] checks offers and works out what the store lacks and against which base.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotate_engine::{Hash, Manifest};
use hotate_proto::pb::{self, transfer_server::Transfer, upload_reply, upload_request};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, blocking};
use crate::error::ServerError;
use crate::gate::caller;
use crate::limits::Limits;
use crate::live::Live;
use crate::pace::Pace;

mod offers;
mod session;
mod sources;

use offers::{BASE_ANSWER_READ, lacking, offered, replaced_blocks};
use session::{Upload, reply};

/// Replies queued towards the client.
const REPLY_QUEUE: usize = 256;
/// How long a new stream waits for the one it takes over to store what it verified.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);
/// Size of the parts a manifest is sent in.
const MANIFEST_PART: usize = 1 << 20;
/// Probes answered at once, server-wide (each may read `BASE_ANSWER_READ` of bases);
/// more wait.
const PROBE_JOBS: usize = 4;
/// Most entries in one probe, as in one offer batch of the client.
const PROBE_ENTRIES: usize = 1024;
/// Bytes of held chunks one probe may make the server read and verify; beyond, a held
/// chunk counts as held unread (a probe stores nothing).
const PROBE_VERIFY: usize = 64 << 20;
/// Probes waiting for a place, server-wide; more are told the server is busy.
const PROBE_WAITERS: usize = 64;
/// Bytes probes may make the server read per account and second, and at once: a dry run
/// of `hotate-client bench` reads its changed blocks' bases at about this pace.
const PROBE_READ_RATE: f64 = 256.0 * (1 << 20) as f64;
const PROBE_READ_BURST: f64 = 512.0 * (1 << 20) as f64;
/// The most one probe makes the server read, spent ahead of it.
const PROBE_MOST_READ: f64 = (PROBE_VERIFY + BASE_ANSWER_READ) as f64;
/// Longest a probe waits for its account's allowance; beyond, it is refused.
const PROBE_PACE_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting probe looks at its account's allowance again.
const PROBE_RECHECK: Duration = Duration::from_millis(50);
/// A discard stream ends after this many bytes...
const DISCARD_BYTES: u64 = 4 << 30;
/// ...or this long.
const DISCARD_TIME: Duration = Duration::from_secs(30);
/// Discard streams (link measurements of `hotate-client bench`) at once, server-wide;
/// one per account. They never take an upload's place.
const MEASUREMENTS: usize = 4;

/// Serves `hotate.v1.Transfer`.
#[derive(Debug, Clone)]
pub struct TransferService {
    app: Arc<App>,
    live: Arc<Live>,
    streams: Arc<Mutex<HashMap<String, LiveStream>>>,
    /// One permit per upload stream, up to `Limits::max_uploads`.
    uploads: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    /// Probes answered at once.
    probes: Arc<tokio::sync::Semaphore>,
    /// The manifest probes last read: a bench probes one base many times.
    probed: Arc<Mutex<Option<Probed>>>,
    /// Probes waiting for a place.
    probe_waiters: Arc<std::sync::atomic::AtomicUsize>,
    /// The bytes each account's probes made the server read.
    probe_reads: Arc<Pace>,
    /// Places for link measurements, apart from the uploads'...
    measurements: Arc<tokio::sync::Semaphore>,
    /// ...and the accounts measuring now (one stream each).
    measuring: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// An account's place among the measurements, given back when its stream ends.
struct Measuring {
    measuring: Arc<Mutex<std::collections::HashSet<String>>>,
    user: String,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Measuring {
    fn drop(&mut self) {
        self.measuring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.user);
    }
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
    pub fn new(app: Arc<App>, limits: Limits) -> Self {
        Self {
            live: app.live().clone(),
            app,
            streams: Arc::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(limits.max_uploads.max(1))),
            limits,
            probes: Arc::new(tokio::sync::Semaphore::new(PROBE_JOBS)),
            probed: Arc::default(),
            probe_waiters: Arc::default(),
            probe_reads: Arc::new(Pace::new(PROBE_READ_RATE, PROBE_READ_BURST)),
            measurements: Arc::new(tokio::sync::Semaphore::new(MEASUREMENTS)),
            measuring: Arc::default(),
        }
    }

    /// A place for `user`'s link measurement: one per account, `MEASUREMENTS` in all;
    /// else `Busy`.
    fn measurement_place(&self, user: &str) -> Result<Measuring, ServerError> {
        let mut measuring = self.measuring.lock().unwrap_or_else(|e| e.into_inner());
        if measuring.contains(user) {
            return Err(ServerError::Busy(
                "this account is already measuring the link".into(),
            ));
        }
        let place = self.measurements.clone().try_acquire_owned().map_err(|_| {
            ServerError::Busy(format!("{MEASUREMENTS} link measurements are running"))
        })?;
        measuring.insert(user.to_owned());
        Ok(Measuring {
            measuring: self.measuring.clone(),
            user: user.to_owned(),
            _place: place,
        })
    }

    /// The turn of a probe of `user`: its account's allowance, then one of the
    /// `PROBE_JOBS` places, waiting behind at most `PROBE_WAITERS` others (server-wide)
    /// and at most `PROBE_PACE_WAIT` for the allowance; else `Busy`. The most a probe may
    /// read is spent as it passes (so probes sent at once take turns); the caller gives
    /// back what it did not read.
    async fn probe_turn(
        &self,
        user: &str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ServerError> {
        let waiting = self
            .probe_waiters
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _left = scopeguard(&self.probe_waiters);
        if waiting >= PROBE_WAITERS {
            return Err(ServerError::Busy(format!(
                "{PROBE_WAITERS} probes are waiting"
            )));
        }
        let give_up = tokio::time::Instant::now() + PROBE_PACE_WAIT;
        while let Err(wait) = self.probe_reads.try_spend(user, PROBE_MOST_READ) {
            if tokio::time::Instant::now() + wait > give_up {
                return Err(ServerError::Busy(format!(
                    "this account's probes read more than {} MiB/s; try again in {} s",
                    PROBE_READ_RATE as u64 >> 20,
                    wait.as_secs() + 1
                )));
            }
            // Looked at again soon: what earlier probes did not read comes back.
            tokio::time::sleep(wait.min(PROBE_RECHECK)).await;
        }
        self.probes
            .acquire()
            .await
            .map_err(|_| ServerError::Internal("probes closed".into()))
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
        let session = caller(&request)?;
        let req = request.into_inner();
        if req.entries.len() > PROBE_ENTRIES {
            return Err(ServerError::BadRequest(format!(
                "a probe of {} entries; at most {PROBE_ENTRIES}",
                req.entries.len()
            ))
            .into());
        }
        // Only the caller's own update in progress, against its base, as an upload.
        let (app, who, disk, version) = (
            self.app.clone(),
            session.clone(),
            req.disk_id.clone(),
            req.version.clone(),
        );
        let update = blocking(move || app.may_probe(&who, &disk, &version)).await?;
        tracing::info!(update = %update.guid, user = %session.user, terminal = %session.terminal, entries = req.entries.len(), "probe");
        let _permit = self.probe_turn(&session.user).await?;
        let (reads, user) = (self.probe_reads.clone(), session.user.clone());
        let app = self.app.clone();
        let probed = self.probed.clone();
        let need = blocking(move || {
            // The update's base, which `may_probe` found: its manifest is read once.
            let (disk, base) = (update.disk_id, update.base_version);
            let parent = {
                let mut probed = probed.lock().unwrap_or_else(|e| e.into_inner());
                match probed.as_ref() {
                    Some((d, v, manifest)) if *d == disk && *v == base => manifest.clone(),
                    _ => {
                        let manifest = Arc::new(app.manifest(&app.version_of(&disk, &base)?)?);
                        *probed = Some((disk, base, manifest.clone()));
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
                .filter_map(|o| Some((o.entry.hash()?, parent.block_len(o.index))))
                .collect();
            let replaced = replaced_blocks(&parent, &offers);
            let candidates: Vec<(Hash, usize)> = lengths.into_iter().collect();
            let max_len = parent.block_size().bytes();
            let store = app.data().store();
            let (needs, read) = lacking(
                store.as_ref(),
                &candidates,
                &replaced,
                max_len,
                PROBE_VERIFY,
            )?;
            reads.refund(&user, PROBE_MOST_READ - read as f64);
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
        let session = caller(&request)?;
        // Apart from the uploads' places: a measurement never keeps an upload out.
        let permit = self.measurement_place(&session.user)?;
        tracing::info!(user = %session.user, terminal = %session.terminal, "link measurement");
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
        let app = self.app.clone();
        let bytes = blocking(move || {
            let version = app.version_of(&req.disk_id, &req.version)?;
            Ok(app.manifest(&version)?.encode())
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
        // The place is taken once the stream has said which upload it is: a stream that
        // never opens holds none.
        let permit = self.upload_permit()?;
        let (app, guid, caller) = (self.app.clone(), open.upload_id.clone(), session.clone());
        blocking(move || app.may_upload(&caller, &guid)).await?;
        self.take_over(&open.upload_id).await;
        let app = self.app.clone();
        let (parent, record) = blocking(move || app.open_upload(&open.upload_id)).await?;
        let update = record.update().clone();
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
            page_copies: true,
            job_progress: true,
        };
        let _ = tx.send(Ok(reply(upload_reply::Kind::Opened(opened)))).await;
        let upload = Upload::new(
            self.app.data().store().clone(),
            record,
            self.live.clone(),
            session,
            parent,
            stop,
            tx.clone(),
        );
        tokio::spawn(async move {
            let guid = upload.guid().to_owned();
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

/// Counts a waiter out when it stops waiting (its place taken, or its call dropped).
fn scopeguard(waiters: &std::sync::atomic::AtomicUsize) -> impl Drop + '_ {
    struct Left<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Left<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
    Left(waiters)
}
