//! One upload session driven through channels, no network: offers answered, chunks
//! verified and stored, the version committed; a forged chunk and a finish with a
//! missing chunk refused without committing.

use std::sync::Arc;

use hotate_engine::{BlockSize, Entry, Hash, Manifest, Progress};
use hotate_proto::pb::{self, upload_reply, upload_request};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Upload;
use crate::app::App;
use crate::data::DataDir;
use crate::live::Live;
use crate::meta::{Role, Session};

const BLOCK: usize = 64 << 10;
const BLOCKS: usize = 8;

/// A data dir with one imported disk, and an update of it begun by an operator.
struct Site {
    _dir: tempfile::TempDir,
    data: Arc<DataDir>,
    app: App,
    caller: Session,
    disk_id: String,
    base: Vec<u8>,
    guid: String,
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(&dir.path().join("data")).unwrap();
    let base: Vec<u8> = (0..BLOCKS as u8).flat_map(block).collect();
    let image = dir.path().join("base.img");
    std::fs::write(&image, &base).unwrap();
    let size = BlockSize::new(BLOCK as u32).unwrap();
    let (disk, version) = data
        .import(
            "win10",
            &image,
            size,
            "first",
            "admin",
            &Progress::default(),
        )
        .await
        .unwrap();
    let app = App::offline(data.clone());
    let caller = Session {
        user: "op".into(),
        terminal: "PC-001".into(),
        role: Role::Operator,
    };
    let started = app.start_update(&caller, &disk.id, &version.id).unwrap();
    let guid = started.update.guid;
    app.begin_upload(&caller, &guid).unwrap();
    Site {
        _dir: dir,
        data,
        app,
        caller,
        disk_id: disk.id,
        base,
        guid,
    }
}

/// A running session: requests in, replies out, and how it ended.
struct Running {
    requests: mpsc::Sender<Result<pb::UploadRequest, Status>>,
    replies: mpsc::Receiver<Result<pb::UploadReply, Status>>,
    ended: tokio::task::JoinHandle<Result<(), Status>>,
    parent: Manifest,
}

fn open(site: &Site) -> Running {
    site.app.may_upload(&site.caller, &site.guid).unwrap();
    let (parent, record) = site.app.open_upload(&site.guid).unwrap();
    let (requests, inbound) = mpsc::channel(64);
    let (replies_tx, replies) = mpsc::channel(256);
    let (_stop, stop) = watch::channel(false);
    let upload = Upload::new(
        site.data.store().clone(),
        record,
        Arc::new(Live::default()),
        site.caller.clone(),
        parent.clone(),
        stop,
        replies_tx,
    );
    let ended = tokio::spawn(upload.run(ReceiverStream::new(inbound)));
    Running {
        requests,
        replies,
        ended,
        parent,
    }
}

impl Running {
    async fn send(&self, kind: upload_request::Kind) {
        let request = pb::UploadRequest { kind: Some(kind) };
        self.requests.send(Ok(request)).await.unwrap();
    }

    /// The next reply that is not `Stored`.
    async fn answer(&mut self) -> upload_reply::Kind {
        loop {
            let reply = self
                .replies
                .recv()
                .await
                .expect("a reply")
                .expect("no error");
            match reply.kind.expect("a kind") {
                upload_reply::Kind::Stored(_) => continue,
                kind => return kind,
            }
        }
    }

    /// Offers `blocks` (index and new content) and returns the hashes the server asked for.
    async fn offer(&mut self, blocks: &[(u64, Vec<u8>)]) -> Vec<Hash> {
        let entries = blocks
            .iter()
            .map(|(index, content)| pb::Entry {
                index: *index,
                hash: hotate_proto::hash_bytes(&Hash::of(content)),
            })
            .collect();
        self.send(upload_request::Kind::Offer(pb::Offer { batch: 1, entries }))
            .await;
        match self.answer().await {
            upload_reply::Kind::Need(need) => need
                .hashes
                .iter()
                .map(|h| hotate_proto::parse_hash(h).unwrap())
                .collect(),
            other => panic!("expected a Need, got {other:?}"),
        }
    }

    async fn chunk(&self, claimed: Hash, content: &[u8]) {
        self.send(upload_request::Kind::Chunk(pb::Chunk {
            hash: hotate_proto::hash_bytes(&claimed),
            codec: pb::Codec::Raw as i32,
            data: content.to_vec().into(),
            ..Default::default()
        }))
        .await;
    }

    async fn finish(&self, blocks: &[(u64, Vec<u8>)]) -> Manifest {
        let mut manifest = self.parent.clone();
        for (index, content) in blocks {
            manifest
                .set(*index, Entry::Chunk(Hash::of(content)))
                .unwrap();
        }
        self.send(upload_request::Kind::Finish(pb::Finish {
            block_count: manifest.len() as u64,
            root: hotate_proto::hash_bytes(&manifest.root()),
            comment: "installed".into(),
        }))
        .await;
        manifest
    }
}

#[tokio::test]
async fn offers_chunks_and_finish_commit_a_version_that_reads_back() {
    let site = site().await;
    let mut session = open(&site);
    let changed = vec![(2, block(0xa5)), (5, block(0x5a))];
    let needed = session.offer(&changed).await;
    assert_eq!(needed.len(), 2, "both new blocks are asked for");
    for (_, content) in &changed {
        session.chunk(Hash::of(content), content).await;
    }
    let manifest = session.finish(&changed).await;
    let upload_reply::Kind::Committed(committed) = session.answer().await else {
        panic!("not committed");
    };
    session.ended.await.unwrap().unwrap();

    let meta = site.data.meta();
    let latest = meta.latest_version(&site.disk_id).unwrap();
    assert_eq!(latest.id, committed.version);
    assert_eq!(latest.root, manifest.root());
    assert_eq!(latest.user, "op");
    let mut want = site.base.clone();
    for (index, content) in &changed {
        want[*index as usize * BLOCK..][..BLOCK].copy_from_slice(content);
    }
    let stored = site.data.manifest(&latest).unwrap();
    for (index, entry) in stored.entries().iter().enumerate() {
        let hash = entry.hash().expect("no zero blocks here");
        let got = site.data.store().get(&hash, BLOCK).unwrap();
        assert!(got[..] == want[index * BLOCK..][..BLOCK], "block {index}");
    }
}

#[tokio::test]
async fn a_forged_chunk_ends_the_session_and_nothing_of_it_is_stored() {
    let site = site().await;
    let mut session = open(&site);
    let changed = vec![(3, block(0x77))];
    session.offer(&changed).await;
    let claimed = Hash::of(&changed[0].1);
    session.chunk(claimed, &block(0x78)).await;
    let err = session
        .ended
        .await
        .unwrap()
        .expect_err("a forged chunk is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(!site.data.store().has(&claimed).unwrap());

    // The update is still uploading: the next session sends it right and commits.
    let mut session = open(&site);
    assert_eq!(session.offer(&changed).await, vec![claimed]);
    session.chunk(claimed, &changed[0].1).await;
    session.finish(&changed).await;
    assert!(matches!(
        session.answer().await,
        upload_reply::Kind::Committed(_)
    ));
}

#[tokio::test]
async fn a_finish_missing_a_chunk_commits_nothing() {
    let site = site().await;
    let mut session = open(&site);
    let changed = vec![(1, block(0x11)), (6, block(0x66))];
    session.offer(&changed).await;
    session.chunk(Hash::of(&changed[0].1), &changed[0].1).await;
    session.finish(&changed).await;
    let err = session.ended.await.unwrap().expect_err("incomplete");
    assert_eq!(
        hotate_proto::Refusal::read(err.metadata()),
        Some(hotate_proto::Refusal::UploadIncomplete),
        "{err:?}"
    );
    let latest = site.data.meta().latest_version(&site.disk_id).unwrap();
    assert_eq!(latest.parent, None, "still the imported version");
}
