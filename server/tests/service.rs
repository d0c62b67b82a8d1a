//! The real server binary on loopback, driven by a real tonic client speaking hotate.v1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use hotate_engine::{
    BlockSize, ChunkStore, Delta, Entry, FsStore, Hash, Manifest, Offer, Outgoing, VerifiedChunk,
};
use hotate_proto::pb::{
    self, control_client::ControlClient, transfer_client::TransferClient, upload_reply,
    upload_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use hotate_tests::harness::{PASSWORD, Server, admin, admin_ok, bin};

const BLOCK: usize = 64 << 10;
const BLOCKS: usize = 48;

/// The gRPC side of a harness server.
trait Grpc {
    fn control_addr(&self) -> String;
    async fn control(&self) -> ControlClient<Channel>;
    async fn transfer(&self) -> TransferClient<Channel>;
}

impl Grpc for Server {
    fn control_addr(&self) -> String {
        self.control.clone()
    }

    async fn control(&self) -> ControlClient<Channel> {
        ControlClient::connect(format!("http://{}", self.control))
            .await
            .expect("connect control")
    }

    async fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::connect(format!("http://{}", self.transfer))
            .await
            .expect("connect transfer")
            .max_decoding_message_size(hotate_proto::MAX_MESSAGE)
            .max_encoding_message_size(hotate_proto::MAX_MESSAGE)
    }
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        hotate_proto::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Deterministic content: mixed data and zero blocks.
fn base_image() -> Vec<u8> {
    let mut data = vec![0u8; BLOCK * BLOCKS + 1234];
    for (i, block) in data.chunks_mut(BLOCK).enumerate() {
        if i % 5 != 0 {
            let mut h = blake3::Hasher::new();
            h.update(&(i as u64).to_le_bytes());
            h.finalize_xof().fill(block);
        }
    }
    data
}

fn updated_image(base: &[u8], salt: u8) -> Vec<u8> {
    let mut data = base.to_vec();
    for i in (1..BLOCKS).step_by(2) {
        data[i * BLOCK + 100] ^= salt; // every odd block changes
    }
    data[3 * BLOCK..4 * BLOCK].fill(0); // one becomes zero
    let end = data.len();
    data[end - 5] = salt; // the short tail changes
    data
}

fn manifest_of(image: &[u8]) -> (Manifest, HashMap<Hash, Bytes>) {
    let bs = BlockSize::new(BLOCK as u32).expect("block size");
    let mut manifest = Manifest::zeroed(image.len() as u64, bs).expect("manifest");
    let mut chunks = HashMap::new();
    for (i, block) in image.chunks(BLOCK).enumerate() {
        if block.iter().any(|&b| b != 0) {
            let hash = Hash::of(block);
            chunks.insert(hash, Bytes::copy_from_slice(block));
            manifest.set(i as u64, Entry::Chunk(hash)).expect("set");
        }
    }
    (manifest, chunks)
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    work: PathBuf,
    disk_id: String,
    first_version: String,
    base: Vec<u8>,
}

fn fixture() -> Fixture {
    fixture_of(base_image())
}

fn fixture_of(base: Vec<u8>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let work = dir.path().to_owned();
    std::fs::write(work.join("base.img"), &base).expect("write base");
    admin_ok(&data, &["user", "add", "coadmin"]);
    admin_ok(&data, &["user", "add", "alice", "--role", "operator"]);
    admin_ok(&data, &["user", "add", "bob", "--role", "operator"]);
    let out = admin_ok(
        &data,
        &[
            "--json",
            "disk",
            "import",
            "win10",
            work.join("base.img").to_str().expect("path"),
            "--block-size",
            "65536",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    Fixture {
        disk_id: json["disk_id"].as_str().expect("disk_id").to_owned(),
        first_version: json["version"].as_str().expect("version").to_owned(),
        _dir: dir,
        data,
        work,
        base,
    }
}

async fn login(server: &Server, terminal: &str) -> String {
    login_as(server, "coadmin", terminal).await
}

async fn login_as(server: &Server, user: &str, terminal: &str) -> String {
    try_login(server, user, PASSWORD, terminal)
        .await
        .expect("login")
}

async fn try_login(
    server: &Server,
    user: &str,
    password: &str,
    terminal: &str,
) -> Result<String, tonic::Status> {
    Ok(server
        .control()
        .await
        .login(pb::LoginRequest {
            user: user.into(),
            password: password.into(),
            terminal: terminal.into(),
            ..pb::LoginRequest::default()
        })
        .await?
        .into_inner()
        .token)
}

/// A server for `f`'s site with an update of its disk started by PC-001:
/// (server, token, update GUID).
async fn started(f: &Fixture) -> (Server, String, String) {
    started_as(f, "coadmin", "PC-001").await
}

/// As [`started`], by `user` on `terminal`.
async fn started_as(f: &Fixture, user: &str, terminal: &str) -> (Server, String, String) {
    let server = Server::start(&f.data);
    let token = login_as(&server, user, terminal).await;
    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    (server, token, guid)
}

async fn start(
    server: &Server,
    token: &str,
    disk: &str,
    booted: &str,
) -> Result<String, tonic::Status> {
    let update = server
        .control()
        .await
        .start_update(authed(
            token,
            pb::StartUpdateRequest {
                disk_id: disk.into(),
                booted_version: booted.into(),
                terminal: String::new(),
            },
        ))
        .await?
        .into_inner();
    let mut control = server.control().await;
    control
        .begin_upload(authed(
            token,
            pb::UpdateRef {
                data_write_guid: update.data_write_guid.clone(),
            },
        ))
        .await?;
    Ok(update.data_write_guid)
}

/// What one upload session did.
#[derive(Debug, Default)]
struct Session {
    needed: usize,
    sent: usize,
    /// Chunks sent as page deltas against a base the server offered.
    deltas: usize,
    version: Option<String>,
    error: Option<tonic::Status>,
}

/// Runs one whole upload session of `image` against `parent`, untampered.
async fn upload_all(
    server: &Server,
    token: &str,
    guid: &str,
    parent: &Manifest,
    image: &[u8],
) -> Session {
    upload(server, token, guid, parent, image, usize::MAX, |_| {}).await
}

/// Runs one upload session of `image` against `parent`; sends at most `send_limit`
/// chunks and then drops the stream (an interruption), and finishes only when all went.
/// `tamper` may damage a chunk before it is sent.
async fn upload(
    server: &Server,
    token: &str,
    guid: &str,
    parent: &Manifest,
    image: &[u8],
    send_limit: usize,
    tamper: impl Fn(&mut pb::Chunk),
) -> Session {
    let (manifest, chunks) = manifest_of(image);
    let (tx, rx) = mpsc::channel(64);
    let mut transfer = server.transfer().await;
    let open = upload_request::Kind::Open(pb::Open {
        upload_id: guid.into(),
    });
    tx.send(pb::UploadRequest { kind: Some(open) })
        .await
        .expect("queue");
    let mut session = Session::default();
    let mut replies = match transfer
        .upload(authed(token, ReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            session.error = Some(status);
            return session;
        }
    };
    let offer = upload_request::Kind::Offer(pb::Offer {
        batch: 1,
        entries: entries_of(&changed_offers(&manifest, parent)),
    });
    if tx
        .send(pb::UploadRequest { kind: Some(offer) })
        .await
        .is_err()
    {
        // The server ended the stream already (an abort): its status says why.
        session.error = stream_end(&mut replies).await;
        return session;
    }
    let mut stored = 0;
    let mut finished = false;
    loop {
        let reply = match replies.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => break,
            Err(status) => {
                session.error = Some(status);
                break;
            }
        };
        match reply.kind.expect("kind") {
            upload_reply::Kind::Opened(_) => {}
            upload_reply::Kind::Need(need) => {
                session.needed = need.hashes.len();
                for need in hotate_proto::needs(&need).into_iter().take(send_limit) {
                    // Like the client: only the changed pages where the server offers a base.
                    let block = &chunks[&need.hash];
                    let chunk = need
                        .base
                        .and_then(|base| Delta::encode(block, &base, 1))
                        .map_or_else(
                            || Outgoing::Whole(VerifiedChunk::seal(block.clone(), 1)),
                            |delta| Outgoing::Delta {
                                hash: need.hash,
                                len: block.len(),
                                delta,
                            },
                        );
                    session.deltas += usize::from(matches!(chunk, Outgoing::Delta { .. }));
                    let mut wire = pb::Chunk::from(&chunk);
                    tamper(&mut wire);
                    let chunk = pb::UploadRequest {
                        kind: Some(upload_request::Kind::Chunk(wire)),
                    };
                    if tx.send(chunk).await.is_err() {
                        session.error = stream_end(&mut replies).await;
                        return session;
                    }
                    session.sent += 1;
                }
                if session.needed > send_limit {
                    // Interrupted: wait for the acks of what went, then vanish.
                    while stored < session.sent {
                        match replies.message().await {
                            Ok(Some(pb::UploadReply {
                                kind: Some(upload_reply::Kind::Stored(acked)),
                            })) => stored += acked.hashes.len(),
                            Ok(_) => break,
                            Err(status) => {
                                session.error = Some(status);
                                break;
                            }
                        }
                    }
                    return session;
                }
                if session.needed == 0 {
                    finished = true;
                    send_finish(&tx, &manifest).await;
                }
            }
            upload_reply::Kind::Stored(acked) => {
                stored += acked.hashes.len();
                if stored == session.needed && !finished {
                    finished = true;
                    send_finish(&tx, &manifest).await;
                }
            }
            upload_reply::Kind::Committed(c) => {
                session.version = Some(c.version);
                break;
            }
        }
    }
    session
}

/// The blocks of `manifest` that differ from `parent`, as an upload offers them.
fn changed_offers(manifest: &Manifest, parent: &Manifest) -> Vec<Offer> {
    manifest
        .diff(parent)
        .expect("geometry")
        .map(|index| Offer {
            index,
            entry: manifest.get(index).expect("entry"),
        })
        .collect()
}

fn entries_of(offers: &[Offer]) -> Vec<pb::Entry> {
    offers.iter().copied().map(pb::Entry::from).collect()
}

async fn send_finish(tx: &mpsc::Sender<pb::UploadRequest>, manifest: &Manifest) {
    let finish = upload_request::Kind::Finish(pb::Finish {
        block_count: manifest.len() as u64,
        root: hotate_proto::hash_bytes(&manifest.root()),
        comment: "Updated on terminal PC-001.".into(),
    });
    // A stream the server ended already: the replies tell why.
    let _ = tx.send(pb::UploadRequest { kind: Some(finish) }).await;
}

/// The status an upload stream ended with, once the server stopped reading it.
async fn stream_end(replies: &mut tonic::Streaming<pb::UploadReply>) -> Option<Status> {
    loop {
        match replies.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

fn export(f: &Fixture, version: &str) -> Vec<u8> {
    let out = f.work.join(format!("export-{version}.img"));
    admin_ok(
        &f.data,
        &[
            "disk",
            "export",
            "win10",
            "--version",
            version,
            "--output",
            out.to_str().expect("path"),
        ],
    );
    std::fs::read(out).expect("read export")
}

fn parent_manifest(f: &Fixture) -> Manifest {
    manifest_of(&f.base).0
}

#[tokio::test]
async fn login_good_and_bad() {
    let f = fixture();
    let server = Server::start(&f.data);
    assert!(!login(&server, "PC-001").await.is_empty());
    // Users and roles: the first user is an admin.
    let users: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "user", "list"])).expect("json");
    let roles: Vec<(&str, &str)> = users
        .as_array()
        .expect("array")
        .iter()
        .map(|u| {
            (
                u["name"].as_str().expect("name"),
                u["role"].as_str().expect("role"),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("alice", "operator"),
            ("bob", "operator"),
            ("coadmin", "admin")
        ]
    );
    let again = admin(&f.data, &["user", "add", "alice"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bob = login_as(&server, "bob", "PC-002").await;
    admin_ok(&f.data, &["user", "delete", "bob"]);
    let gone = server
        .control()
        .await
        .get_disk(authed(
            &bob,
            pb::GetDiskRequest {
                disk: "win10".into(),
            },
        ))
        .await
        .expect_err("a deleted user's session ends");
    assert_eq!(gone.code(), Code::Unauthenticated);
    let passwd = Command::new(bin("hotate-server"))
        .arg("--data")
        .arg(&f.data)
        .args(["user", "passwd", "alice"])
        .env("HOTATE_PASSWORD", "n3w-secret")
        .output()
        .expect("passwd");
    assert!(passwd.status.success());
    let old = try_login(&server, "alice", PASSWORD, "PC-001")
        .await
        .expect_err("the old password is refused");
    assert_eq!(old.code(), Code::Unauthenticated);
    let err = server
        .control()
        .await
        .login(pb::LoginRequest {
            user: "coadmin".into(),
            password: "nope".into(),
            terminal: "PC-001".into(),
            ..pb::LoginRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Without a token nothing else answers.
    let err = server
        .control()
        .await
        .get_disk(pb::GetDiskRequest {
            disk: "win10".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = server
        .control()
        .await
        .get_disk(authed(
            "forged",
            pb::GetDiskRequest {
                disk: "win10".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_whole_upload_then_start_refused_for_the_old_version_and_a_second_terminal() {
    let f = fixture();
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let disk = server
        .control()
        .await
        .get_disk(authed(
            &token,
            pb::GetDiskRequest {
                disk: "win10".into(),
            },
        ))
        .await
        .expect("disk")
        .into_inner();
    assert_eq!(disk.latest_version, f.first_version);
    assert_eq!(disk.id, f.disk_id);

    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    // A second terminal is refused while the disk is reserved, and told who holds it.
    let other = login(&server, "PC-002").await;
    let busy = start(&server, &other, &f.disk_id, &f.first_version)
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::Aborted);
    assert!(busy.message().contains("PC-001"), "{}", busy.message());

    let updated = updated_image(&f.base, 0x5a);
    let session = upload_all(&server, &token, &guid, &parent_manifest(&f), &updated).await;
    assert!(session.error.is_none(), "{:?}", session.error);
    // Each odd block that had content changed one byte (but block 3, now zero): it
    // travels as one page.
    let odd_with_content = (1..BLOCKS)
        .step_by(2)
        .filter(|&i| i % 5 != 0 && i != 3)
        .count();
    assert_eq!(session.deltas, odd_with_content);
    let version = session.version.expect("committed");
    assert_eq!(export(&f, &version), updated);
    assert_eq!(
        export(&f, &f.first_version),
        f.base,
        "the old version is intact"
    );

    // The terminal that booted the old version may not start.
    let stale = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains(&format!("latest={version}")),
        "{}",
        stale.message()
    );
    assert!(
        stale
            .message()
            .contains(&format!("booted={}", f.first_version))
    );

    let listed: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "disk", "versions", "win10"]))
            .expect("json");
    assert_eq!(listed[1]["id"], version.as_str());
    assert_eq!(listed[1]["parent"], f.first_version.as_str());
    assert_eq!(listed[1]["terminal"], "PC-001");
}

#[tokio::test]
async fn two_blocks_changed_from_one_shared_base_both_travel_as_deltas() {
    // Blocks 1 and 2 of the base are equal; the update changes each differently, so both
    // deltas name the same base (the second reads it from the store, not the cache).
    let mut base = base_image();
    base.copy_within(BLOCK..2 * BLOCK, 2 * BLOCK);
    let f = fixture_of(base);
    let (server, token, guid) = started(&f).await;
    let mut updated = f.base.clone();
    updated[BLOCK + 10] ^= 1;
    updated[2 * BLOCK + 20_000] ^= 1;
    let parent = parent_manifest(&f);
    let session = upload_all(&server, &token, &guid, &parent, &updated).await;
    assert!(session.error.is_none(), "{:?}", session.error);
    assert_eq!(session.deltas, 2);
    assert_eq!(export(&f, &session.version.expect("committed")), updated);
}

#[tokio::test]
async fn few_changed_pages_are_stored_as_patches_that_outlive_their_versions() {
    let f = fixture();
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let store = FsStore::open(&f.data.join("store")).expect("store");
    let stored_size = |hash: &Hash| std::fs::metadata(store.path_of(hash)).map_or(0, |m| m.len());
    // Two versions in a row, each changing one page of every odd block.
    let mut parent = parent_manifest(&f);
    let mut booted = f.first_version.clone();
    let mut image = f.base.clone();
    let mut versions = Vec::new();
    for (depth, salt) in [(1u8, 0x5a), (2, 0x33)] {
        let guid = start(&server, &token, &f.disk_id, &booted)
            .await
            .expect("start");
        let updated = updated_image(&image, salt);
        let session = upload_all(&server, &token, &guid, &parent, &updated).await;
        assert!(session.error.is_none(), "{:?}", session.error);
        let version = session.version.expect("committed");
        let (manifest, _) = manifest_of(&updated);
        for i in (1..BLOCKS).step_by(2).filter(|&i| i % 5 != 0 && i != 3) {
            let hash = manifest
                .get(i as u64)
                .and_then(|e| e.hash())
                .expect("content");
            assert_eq!(
                store.layout(&hash).expect("stored").depth(),
                depth,
                "block {i}"
            );
            // A page's bytes and a small head, not a whole block's.
            assert!(
                stored_size(&hash) < 2 * 4096,
                "block {i}: {}",
                stored_size(&hash)
            );
        }
        assert_eq!(export(&f, &version), updated);
        (parent, booted, image) = (manifest, version.clone(), updated);
        versions.push(version);
    }
    // The versions the patches were made against go; gc keeps the chunks the patches
    // are made of, and collects the rest.
    for version in [&f.first_version, &versions[0]] {
        admin_ok(&f.data, &["version", "delete", "win10", version]);
    }
    let gc: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "store", "gc"])).expect("json");
    assert!(gc["chunks_deleted"].as_u64().expect("count") >= 2, "{gc}");
    let stats: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "store", "stats"])).expect("json");
    assert_eq!(stats["unreferenced_chunks"], 0, "{stats}");
    assert_eq!(export(&f, &versions[1]), image);
    let verify: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "store", "verify"])).expect("json");
    assert_eq!(verify["damaged"], serde_json::json!([]), "{verify}");
    assert_eq!(verify["missing"], serde_json::json!([]), "{verify}");
}

#[tokio::test]
async fn an_upload_cut_mid_stream_resumes_without_resending_and_survives_a_restart() {
    let f = fixture();
    let mut server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 0x77);

    let first = upload(&server, &token, &guid, &parent, &updated, 7, |_| {}).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.sent, 7);
    let total = first.needed;
    assert!(total > 15);

    let second = upload(&server, &token, &guid, &parent, &updated, 5, |_| {}).await;
    assert_eq!(
        second.needed,
        total - 7,
        "stored chunks are not asked for again"
    );

    // Restart the server: stored chunks and the update survive; the token too.
    drop(server);
    server = Server::start(&f.data);
    let third = upload_all(&server, &token, &guid, &parent, &updated).await;
    assert_eq!(third.needed, total - 12);
    assert!(third.error.is_none(), "{:?}", third.error);
    let version = third.version.expect("committed");
    assert_eq!(export(&f, &version), updated);
}

#[tokio::test]
async fn corrupt_and_oversized_chunks_are_rejected_and_nothing_is_damaged() {
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 0x11);

    // A flipped byte: the content no longer hashes to its name.
    let corrupt = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        if c.base.is_empty() {
            let mut data = c.data.to_vec();
            data[10] ^= 1;
            c.data = Bytes::from(data);
            c.codec = pb::Codec::Raw.into();
        }
    })
    .await;
    let err = corrupt.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hash"), "{}", err.message());

    // A whole chunk whose content does not hash to its name.
    let misnamed = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        let content = Bytes::from(vec![7u8; 1000]);
        *c = pb::Chunk::from(&Outgoing::Whole(VerifiedChunk::seal(content, 1)));
        c.hash = hotate_proto::hash_bytes(&Hash::of(b"another block"));
    })
    .await;
    let err = misnamed.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not asked for"), "{}", err.message());

    // A delta against a block the server did not offer as its base.
    let wrong_base = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        if !c.base.is_empty() {
            c.base = hotate_proto::hash_bytes(&Hash::of(&f.base[..BLOCK]));
        }
    })
    .await;
    let err = wrong_base.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("did not offer"), "{}", err.message());

    // A delta whose page map names pages that were not sent.
    let short_pages = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        if !c.base.is_empty() {
            c.changed_pages = Bytes::from(vec![0xff; c.changed_pages.len()]);
        }
    })
    .await;
    let err = short_pages.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page"), "{}", err.message());

    // A delta whose pages rebuild another block.
    let other_pages = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        if !c.base.is_empty() {
            c.data = Bytes::from(vec![9u8; 4096]);
            c.codec = pb::Codec::Raw.into();
        }
    })
    .await;
    let err = other_pages.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hash"), "{}", err.message());

    // A frame that decodes beyond the block size.
    let oversized = upload(&server, &token, &guid, &parent, &updated, usize::MAX, |c| {
        c.data = Bytes::from(zstd::bulk::compress(&vec![1u8; BLOCK * 4], 1).expect("zstd"));
        c.codec = pb::Codec::Zstd.into();
    })
    .await;
    let err = oversized.error.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("block size"), "{}", err.message());

    // A clean run still completes, and the base version is untouched.
    let clean = upload_all(&server, &token, &guid, &parent, &updated).await;
    assert!(clean.error.is_none(), "{:?}", clean.error);
    assert_eq!(export(&f, &clean.version.expect("committed")), updated);
    assert_eq!(export(&f, &f.first_version), f.base);
}

#[tokio::test]
async fn only_the_user_and_terminal_that_started_an_update_or_an_admin_may_touch_it() {
    let f = fixture();
    let (server, owner, guid) = started_as(&f, "alice", "PC-001").await;
    let update_ref = || pb::UpdateRef {
        data_write_guid: guid.clone(),
    };
    // Another operator, from another terminal or claiming the owner's terminal name.
    for intruder in [
        login_as(&server, "bob", "PC-002").await,
        login_as(&server, "bob", "PC-001").await,
        login_as(&server, "alice", "PC-002").await,
    ] {
        let mut control = server.control().await;
        let denied = [
            control.cancel_update(authed(&intruder, update_ref())).await,
            control
                .begin_upload(authed(&intruder, update_ref()))
                .await
                .map(|_| tonic::Response::new(pb::Update::default())),
            control.show_update(authed(&intruder, update_ref())).await,
            control.abort_update(authed(&intruder, update_ref())).await,
        ];
        for result in denied {
            assert_eq!(result.expect_err("denied").code(), Code::PermissionDenied);
        }
        let attempt = upload_all(
            &server,
            &intruder,
            &guid,
            &parent_manifest(&f),
            &updated_image(&f.base, 3),
        )
        .await;
        assert_eq!(
            attempt.error.expect("refused").code(),
            Code::PermissionDenied
        );
    }
    // The owner may not abort (an admin's right) but may cancel; an admin sees it.
    let err = server
        .control()
        .await
        .abort_update(authed(&owner, update_ref()))
        .await
        .expect_err("operators do not abort");
    assert_eq!(err.code(), Code::PermissionDenied);
    let admin_token = login(&server, "PC-009").await;
    server
        .control()
        .await
        .show_update(authed(&admin_token, update_ref()))
        .await
        .expect("an admin sees every update");
    let cancelled = server
        .control()
        .await
        .cancel_update(authed(&owner, update_ref()))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.state, pb::UpdateState::Cancelled as i32);

    // The version records the user who finished it.
    let bob = login_as(&server, "bob", "PC-002").await;
    let fresh = start(&server, &bob, &f.disk_id, &f.first_version)
        .await
        .expect("free again");
    let updated = updated_image(&f.base, 5);
    let done = upload_all(
        &server,
        &admin_token,
        &fresh,
        &parent_manifest(&f),
        &updated,
    )
    .await;
    assert!(done.error.is_none(), "{:?}", done.error);
    let listed: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "disk", "versions", "win10"]))
            .expect("json");
    assert_eq!(listed[1]["user"], "coadmin", "the admin finished it");
    assert_eq!(listed[1]["terminal"], "PC-002");
}

#[tokio::test]
async fn a_login_begins_only_an_upload_its_user_and_terminal_may_begin() {
    let f = fixture();
    let (server, owner, guid) = started_as(&f, "alice", "PC-001").await;
    let login = |user: &str, password: &str, terminal: &str, guid: &str| {
        let request = pb::LoginRequest {
            user: user.into(),
            password: password.into(),
            terminal: terminal.into(),
            begin_update: guid.into(),
        };
        let server = &server;
        async move { server.control().await.login(request).await }
    };
    // Another user or terminal logs in, but begins nothing.
    for (user, terminal) in [("bob", "PC-002"), ("bob", "PC-001"), ("alice", "PC-002")] {
        let reply = login(user, PASSWORD, terminal, &guid)
            .await
            .expect("the login itself succeeds")
            .into_inner();
        assert!(!reply.token.is_empty());
        assert_eq!(reply.begun, None, "{user} on {terminal}");
    }
    let unknown = login("alice", PASSWORD, "PC-001", "no-such-update").await;
    assert_eq!(unknown.expect("login").into_inner().begun, None);
    let refused = login("alice", "wrong", "PC-001", &guid).await;
    assert_eq!(
        refused.expect_err("bad password").code(),
        Code::Unauthenticated
    );

    // The owner's login begins it, as `BeginUpload` would.
    let reply = login("alice", PASSWORD, "PC-001", &guid)
        .await
        .expect("login")
        .into_inner();
    let begun = reply.begun.expect("begun with the login");
    assert_eq!(begun.upload_id, guid);
    assert_eq!(begun.base_version, f.first_version);
    let by_call = server
        .control()
        .await
        .begin_upload(authed(
            &reply.token,
            pb::UpdateRef {
                data_write_guid: guid.clone(),
            },
        ))
        .await
        .expect("begin")
        .into_inner();
    assert_eq!(begun, by_call);

    // A cancelled update is not begun again.
    server
        .control()
        .await
        .cancel_update(authed(
            &owner,
            pb::UpdateRef {
                data_write_guid: guid.clone(),
            },
        ))
        .await
        .expect("cancel");
    let after = login("alice", PASSWORD, "PC-001", &guid).await;
    assert_eq!(after.expect("login").into_inner().begun, None);
}

#[tokio::test]
async fn admin_commands_work_while_serving_and_abort_reserves_the_update_again() {
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 0x42);
    let half = upload(&server, &token, &guid, &parent, &updated, 4, |_| {}).await;
    assert!(half.error.is_none());

    // While the server runs: list, import another disk, abort.
    let updates: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "update", "list"])).expect("json");
    assert_eq!(updates[0]["state"], "uploading");
    assert_eq!(updates[0]["data_write_guid"], guid.as_str());
    assert_eq!(updates[0]["terminal"], "PC-001");
    let second_image = f.work.join("second.img");
    std::fs::write(&second_image, updated_image(&f.base, 9)).expect("write");
    admin_ok(
        &f.data,
        &[
            "disk",
            "import",
            "other",
            second_image.to_str().expect("path"),
        ],
    );
    let disks: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "disk", "list"])).expect("json");
    assert_eq!(disks.as_array().expect("array").len(), 2);
    admin_ok(&f.data, &["update", "abort", "win10"]);
    let updates: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "update", "list"])).expect("json");
    assert_eq!(
        updates[0]["state"], "reserved",
        "back to the state after start"
    );
    // An abort of an update that is not uploading is allowed and does the same.
    admin_ok(&f.data, &["update", "abort", "win10"]);

    // The same update uploads again (its chunks held already) and commits.
    begin(&server, &token, &guid).await;
    let done = upload_all(&server, &token, &guid, &parent, &updated).await;
    assert!(done.error.is_none(), "{:?}", done.error);
    assert!(
        done.needed < half.needed,
        "chunks of the aborted upload are reused"
    );
    assert_eq!(export(&f, &done.version.expect("committed")), updated);
    let again = admin(&f.data, &["update", "abort", "win10"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no update in progress"));

    // Bad input to admin commands: unknown disk, existing name.
    let unknown = admin(&f.data, &["disk", "versions", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown disk nope"));
    let dup = admin(
        &f.data,
        &[
            "disk",
            "import",
            "other",
            second_image.to_str().expect("path"),
        ],
    );
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
}

/// Opens an upload stream by hand; returns the request queue and the replies after
/// `Opened`.
async fn open_stream(
    server: &Server,
    token: &str,
    guid: &str,
) -> (
    mpsc::Sender<pb::UploadRequest>,
    tonic::Streaming<pb::UploadReply>,
) {
    let (tx, rx) = mpsc::channel(64);
    let open = upload_request::Kind::Open(pb::Open {
        upload_id: guid.into(),
    });
    tx.send(pb::UploadRequest { kind: Some(open) })
        .await
        .expect("queue");
    let mut replies = server
        .transfer()
        .await
        .upload(authed(token, ReceiverStream::new(rx)))
        .await
        .expect("open")
        .into_inner();
    let opened = replies.message().await.expect("opened").expect("a reply");
    assert!(matches!(opened.kind, Some(upload_reply::Kind::Opened(_))));
    (tx, replies)
}

async fn send(tx: &mpsc::Sender<pb::UploadRequest>, kind: upload_request::Kind) {
    tx.send(pb::UploadRequest { kind: Some(kind) })
        .await
        .expect("queue");
}

fn offer_of(batch: u64, entries: &[(u64, Hash)]) -> upload_request::Kind {
    upload_request::Kind::Offer(pb::Offer {
        batch,
        entries: entries
            .iter()
            .map(|&(index, hash)| {
                pb::Entry::from(Offer {
                    index,
                    entry: Entry::Chunk(hash),
                })
            })
            .collect(),
    })
}

/// Reads replies until the stream ends (10 s at most): the committed version, or the
/// error.
async fn outcome(replies: &mut tonic::Streaming<pb::UploadReply>) -> Result<String, tonic::Status> {
    let read = async {
        loop {
            match replies.message().await? {
                Some(pb::UploadReply {
                    kind: Some(upload_reply::Kind::Committed(c)),
                }) => return Ok(c.version),
                Some(_) => {}
                None => return Err(tonic::Status::unknown("the stream ended without a result")),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the stream never ended")))
}

fn version_count(f: &Fixture, disk: &str) -> usize {
    let listed: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "disk", "versions", disk]))
            .expect("json");
    listed.as_array().expect("array").len()
}

#[tokio::test]
async fn a_chunk_shorter_than_its_block_is_refused_and_nothing_commits() {
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    // Block 1 (64 KiB) claimed to be a 4-byte chunk, which is sent, then finished with
    // the matching root.
    let tiny = Bytes::from_static(b"evil");
    let mut manifest = parent_manifest(&f);
    manifest.set(1, Entry::Chunk(Hash::of(&tiny))).expect("set");
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(1, Hash::of(&tiny))])).await;
    let need = replies.message().await.expect("need").expect("a reply");
    assert!(matches!(need.kind, Some(upload_reply::Kind::Need(_))));
    let chunk = Outgoing::Whole(VerifiedChunk::seal(tiny, 1));
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&chunk))).await;
    send_finish(&tx, &manifest).await;
    let refused = outcome(&mut replies).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("4 bytes"),
        "{}",
        refused.message()
    );
    assert_eq!(version_count(&f, "win10"), 1, "no version was committed");
}

#[tokio::test]
async fn a_held_chunk_of_another_length_is_refused_when_offered() {
    let f = fixture();
    // A second disk with 1 MiB blocks; the store holds 64 KiB chunks of the first.
    let big = f.work.join("big.img");
    std::fs::write(&big, vec![7u8; 2 << 20]).expect("write");
    admin_ok(
        &f.data,
        &[
            "disk",
            "import",
            "big",
            big.to_str().expect("path"),
            "--block-size",
            "1048576",
        ],
    );
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let disk = server
        .control()
        .await
        .get_disk(authed(&token, pb::GetDiskRequest { disk: "big".into() }))
        .await
        .expect("disk")
        .into_inner();
    let guid = start(&server, &token, &disk.id, &disk.latest_version)
        .await
        .expect("start");
    let held = Hash::of(&f.base[BLOCK..2 * BLOCK]);
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(0, held)])).await;
    let refused = outcome(&mut replies).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("65536 bytes"),
        "{}",
        refused.message()
    );
    assert_eq!(version_count(&f, "big"), 1);
}

#[tokio::test]
async fn an_admin_abort_ends_the_live_stream_at_once() {
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(1, Hash::of(b"something new"))])).await;
    let need = replies.message().await.expect("need").expect("a reply");
    assert!(matches!(need.kind, Some(upload_reply::Kind::Need(_))));
    admin_ok(&f.data, &["update", "abort", "win10"]);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), outcome(&mut replies))
        .await
        .expect("the stream ends within seconds of the abort")
        .expect_err("aborted");
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert_eq!(
        hotate_proto::Refusal::read(ended.metadata()),
        Some(hotate_proto::Refusal::UploadAborted),
        "{ended:?}"
    );
    drop(tx);
}

/// An abort that lands while the server commits a finish is either too late (the version
/// is committed and the abort finds nothing to abort) or wins (nothing is committed and
/// the stream says it was aborted): never "the uploaded content does not match".
#[tokio::test]
async fn an_abort_at_the_commit_is_too_late_or_wins_never_a_mismatch() {
    let f = fixture();
    let (server, token, first) = started(&f).await;
    let mut guid = Some(first);
    let mut latest = (f.first_version.clone(), f.base.clone());
    let mut outcomes = std::collections::HashMap::new();
    for round in 0..12u8 {
        let live = match guid.take() {
            Some(live) => {
                begin(&server, &token, &live).await;
                live
            }
            None => start(&server, &token, &f.disk_id, &latest.0)
                .await
                .expect("start"),
        };
        let parent = manifest_of(&latest.1).0;
        let updated = updated_image(&f.base, 0x60 + round);
        let data = f.data.clone();
        let delay = u64::from(round) * 20;
        let aborter = tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay));
            admin(&data, &["update", "abort", "win10"])
        });
        let done = upload_all(&server, &token, &live, &parent, &updated).await;
        aborter.await.expect("abort");
        let outcome = match (&done.error, &done.version) {
            (None, Some(version)) => {
                assert_eq!(export(&f, version), updated);
                latest = (version.clone(), updated);
                "committed"
            }
            (Some(status), _) => {
                assert!(
                    !status.message().contains("does not match")
                        && !status.message().contains("differs"),
                    "round {round}: {status:?}"
                );
                assert_eq!(status.code(), Code::Aborted, "round {round}: {status:?}");
                guid = Some(live);
                "aborted"
            }
            (None, None) => panic!("round {round}: neither committed nor refused"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    eprintln!("abort at the commit: {outcomes:?}");
}

/// Begins (again) the upload of a reserved update, as `update finish` does.
async fn begin(server: &Server, token: &str, guid: &str) {
    server
        .control()
        .await
        .begin_upload(authed(
            token,
            pb::UpdateRef {
                data_write_guid: guid.into(),
            },
        ))
        .await
        .expect("begin");
}

#[tokio::test]
async fn a_second_stream_takes_the_upload_over_and_nothing_stored_is_lost() {
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 0x33);
    let (manifest, chunks) = manifest_of(&updated);
    // The first stream offers everything and sends three whole chunks, then idles.
    let (tx, mut first) = open_stream(&server, &token, &guid).await;
    let changed: Vec<(u64, Hash)> = manifest
        .diff(&parent)
        .expect("geometry")
        .filter_map(|i| manifest.get(i).and_then(|e| e.hash()).map(|h| (i, h)))
        .collect();
    send(&tx, offer_of(1, &changed)).await;
    let Some(pb::UploadReply {
        kind: Some(upload_reply::Kind::Need(need)),
    }) = first.message().await.expect("need")
    else {
        panic!("expected a need");
    };
    let total = need.hashes.len();
    for need in hotate_proto::needs(&need).into_iter().take(3) {
        let chunk = Outgoing::Whole(VerifiedChunk::seal(chunks[&need.hash].clone(), 1));
        send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&chunk))).await;
    }
    // A second finish of the same update opens its stream: it takes over.
    let second = upload_all(&server, &token, &guid, &parent, &updated).await;
    let ended = outcome(&mut first).await.expect_err("taken over");
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("took over"), "{}", ended.message());
    assert!(second.error.is_none(), "{:?}", second.error);
    assert_eq!(
        second.needed,
        total - 3,
        "what the first stream sent is kept"
    );
    assert_eq!(export(&f, &second.version.expect("committed")), updated);
    drop(tx);
}

#[tokio::test]
async fn a_login_flood_is_bounded_in_memory_and_repeated_failures_lock_out() {
    let f = fixture();
    let server = Server::start(&f.data);
    let _ = login(&server, "PC-000").await;
    let baseline = server.peak_rss();
    // 64 logins of unknown users at once: argon2 runs a few at a time, so memory stays.
    let mut flood = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(server.control().await);
    }
    for (i, mut control) in clients.into_iter().enumerate() {
        flood.push(tokio::spawn(async move {
            control
                .login(pb::LoginRequest {
                    user: format!("nobody-{i}"),
                    password: "guess".into(),
                    terminal: "PC-666".into(),
                    ..pb::LoginRequest::default()
                })
                .await
        }));
    }
    for attempt in flood {
        let err = attempt.await.expect("join").expect_err("refused");
        assert!(
            matches!(err.code(), Code::Unauthenticated | Code::ResourceExhausted),
            "{err:?}"
        );
    }
    let grown = server.peak_rss().saturating_sub(baseline);
    eprintln!("64 logins at once: server peak +{} MiB", grown >> 20);
    assert!(
        grown < 96 << 20,
        "64 logins grew the server by {} MiB",
        grown >> 20
    );

    // Five wrong passwords lock the user out, even with the right one next.
    for _ in 0..5 {
        let err = try_login(&server, "alice", "wrong", "PC-001")
            .await
            .expect_err("wrong");
        assert!(matches!(
            err.code(),
            Code::Unauthenticated | Code::ResourceExhausted
        ));
    }
    let locked = try_login(&server, "alice", PASSWORD, "PC-001")
        .await
        .expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    assert!(locked.metadata().get("hotate-retry-after").is_some());
}

#[tokio::test]
async fn silent_connections_are_closed_and_connections_and_uploads_are_capped() {
    use tokio::io::AsyncReadExt;
    let f = fixture();
    let server = Server::start_with_flags(
        &f.data,
        &[
            "--handshake-timeout",
            "1s",
            "--max-connections",
            "3",
            "--max-connections-per-address",
            "3",
            "--max-uploads",
            "1",
        ],
    );
    // Never a byte, or half a preface: closed after the handshake timeout.
    let mut buf = [0u8; 64];
    for said in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let started = std::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(server.control_addr())
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut silent, said)
            .await
            .expect("send");
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a silent connection stayed open");
        assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // Beyond the cap, connections are closed at once; a login works when they go.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(server.control_addr())
                .await
                .expect("connect"),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(server.control_addr())
        .await
        .expect("connect");
    let closed = tokio::time::timeout(std::time::Duration::from_millis(800), extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(closed, Ok(0) | Err(_)));
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let token = login(&server, "PC-001").await;

    // An upload stream that never sends `open` is ended; one upload at a time.
    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    let (_quiet_tx, quiet_rx) = mpsc::channel::<pb::UploadRequest>(1);
    let never_opened = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server
            .transfer()
            .await
            .upload(authed(&token, ReceiverStream::new(quiet_rx))),
    )
    .await
    .expect("the server answers")
    .expect_err("refused");
    assert_eq!(
        never_opened.code(),
        Code::InvalidArgument,
        "{never_opened:?}"
    );
    let (_tx, first) = open_stream(&server, &token, &guid).await;
    let (tx2, rx2) = mpsc::channel(1);
    tx2.send(pb::UploadRequest {
        kind: Some(upload_request::Kind::Open(pb::Open {
            upload_id: guid.clone(),
        })),
    })
    .await
    .expect("queue");
    let busy = server
        .transfer()
        .await
        .upload(authed(&token, ReceiverStream::new(rx2)))
        .await
        .expect_err("busy");
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.metadata().get("hotate-busy").is_some());
    drop(first);
}

/// A disk named `name` with `blocks` blocks of `block` bytes, block `i` filled with byte
/// `i + 1` (distinct, cheap to store); `sparse_blocks` zero blocks follow as a hole.
fn import_patterned(f: &Fixture, name: &str, block: usize, blocks: usize, sparse_blocks: u64) {
    let path = f.work.join(format!("{name}.img"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).expect("create");
        for i in 0..blocks {
            file.write_all(&vec![i as u8 + 1; block]).expect("write");
        }
        file.set_len((blocks as u64 + sparse_blocks) * block as u64)
            .expect("extend");
    }
    admin_ok(
        &f.data,
        &[
            "disk",
            "import",
            name,
            path.to_str().expect("path"),
            "--block-size",
            &block.to_string(),
        ],
    );
    std::fs::remove_file(path).expect("remove");
}

async fn start_on(server: &Server, token: &str, disk: &str) -> String {
    let disk = server
        .control()
        .await
        .get_disk(authed(token, pb::GetDiskRequest { disk: disk.into() }))
        .await
        .expect("disk")
        .into_inner();
    start(server, token, &disk.id, &disk.latest_version)
        .await
        .expect("start")
}

fn random_hash(i: u64) -> Hash {
    Hash::of(&(i ^ 0x5eed_0000_0000).to_le_bytes())
}

#[tokio::test]
async fn offers_cannot_make_the_server_read_and_hold_many_base_blocks() {
    let f = fixture();
    import_patterned(&f, "huge", 16 << 20, 12, 0);
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let guid = start_on(&server, &token, "huge").await;
    let baseline = server.peak_rss();
    // Twelve new hashes, each replacing a 16 MiB base block.
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    let entries: Vec<(u64, Hash)> = (0..12).map(|i| (i, random_hash(i))).collect();
    send(&tx, offer_of(1, &entries)).await;
    let Some(pb::UploadReply {
        kind: Some(upload_reply::Kind::Need(need)),
    }) = replies.message().await.expect("need")
    else {
        panic!("expected a need");
    };
    assert_eq!(need.hashes.len(), 12);
    assert!(
        (1..=4).contains(&need.bases.len()),
        "{} bases offered",
        need.bases.len()
    );
    let grown = server.peak_rss().saturating_sub(baseline);
    eprintln!(
        "an offer naming 12 bases of 16 MiB: server peak +{} MiB",
        grown >> 20
    );
    assert!(grown < 96 << 20, "grew by {} MiB", grown >> 20);
    // The same block twice in one upload, and more entries than blocks, are refused.
    send(&tx, offer_of(2, &[(3, random_hash(99))])).await;
    let twice = outcome(&mut replies).await.expect_err("refused");
    assert_eq!(twice.code(), Code::InvalidArgument);
    assert!(
        twice.message().contains("offered twice"),
        "{}",
        twice.message()
    );
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    let many: Vec<(u64, Hash)> = (0..13).map(|i| (i % 12, random_hash(i))).collect();
    send(&tx, offer_of(1, &many)).await;
    let refused = outcome(&mut replies).await.expect_err("refused");
    assert!(
        refused.message().contains("13 entries"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn an_offer_flood_meets_the_upload_budget() {
    let f = fixture();
    // 40,000 blocks of 64 KiB, nearly all a hole.
    import_patterned(&f, "wide", 64 << 10, 1, 39_999);
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let guid = start_on(&server, &token, "wide").await;
    let baseline = server.peak_rss();
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    for batch in 0..3u64 {
        let entries: Vec<(u64, Hash)> = (batch * 10_000..(batch + 1) * 10_000)
            .map(|i| (i, random_hash(i)))
            .collect();
        send(&tx, offer_of(batch + 1, &entries)).await;
    }
    let refused = outcome(&mut replies).await.expect_err("over budget");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("memory budget"),
        "{}",
        refused.message()
    );
    let grown = server.peak_rss().saturating_sub(baseline);
    eprintln!("an offer flood: server peak +{} MiB", grown >> 20);
    assert!(grown < 64 << 20, "grew by {} MiB", grown >> 20);
}

#[tokio::test]
async fn hostile_names_and_comments_are_refused_before_they_are_stored() {
    let f = fixture();
    let server = Server::start(&f.data);
    let mut control = server.control().await;
    for terminal in [
        "x".repeat(4 << 20),
        "x".repeat(1000),
        "PC\u{1b}]0;owned\u{7}".into(),
        "PC\nforged line".into(),
        // A name that reads backwards, and one that looks like another.
        "PC\u{202E}100-CP".into(),
        "PC\u{200B}-001".into(),
    ] {
        let err = control
            .login(pb::LoginRequest {
                user: "coadmin".into(),
                password: PASSWORD.into(),
                terminal,
                ..pb::LoginRequest::default()
            })
            .await
            .expect_err("refused");
        // Control messages are small: a huge one is refused before it is decoded.
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::OutOfRange),
            "{err:?}"
        );
    }
    let token = login(&server, "PC-001").await;
    // What a request sent is not echoed back whole.
    let unknown = start(&server, &token, &"d".repeat(60_000), &f.first_version)
        .await
        .expect_err("no such disk");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(
        unknown.message().len() < 1100,
        "{} bytes",
        unknown.message().len()
    );
    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    let manifest = parent_manifest(&f);
    let finish = upload_request::Kind::Finish(pb::Finish {
        block_count: manifest.len() as u64,
        root: hotate_proto::hash_bytes(&manifest.root()),
        comment: "c".repeat(15 << 20),
    });
    send(&tx, finish).await;
    let err = outcome(&mut replies).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("version comment"),
        "{}",
        err.message()
    );
    assert_eq!(version_count(&f, "win10"), 1);
    let size = std::fs::metadata(f.data.join("meta.sqlite"))
        .expect("meta")
        .len();
    assert!(size < 1 << 20, "meta.sqlite is {size} bytes");
}

#[tokio::test]
async fn a_probe_answers_as_an_offer_would_and_records_nothing() {
    let f = fixture();
    let server = Server::start(&f.data);
    let token = login_as(&server, "alice", "PC-001").await;
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 7);
    let (manifest, _) = manifest_of(&updated);
    let changed = changed_offers(&manifest, &parent);
    let entries = entries_of(&changed);
    let probe = |token: Option<&str>, entries: Vec<pb::Entry>| {
        let request = pb::ProbeRequest {
            disk_id: f.disk_id.clone(),
            version: f.first_version.clone(),
            entries,
        };
        let request = match token {
            Some(token) => authed(token, request),
            None => Request::new(request),
        };
        let server = &server;
        async move { server.transfer().await.probe(request).await }
    };
    // Only for the caller's own update in progress, against its base: an operator with
    // no update learns nothing, of this disk or any other.
    let refused = probe(Some(&token), entries.clone())
        .await
        .expect_err("no update in progress");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(matches!(
        hotate_proto::Refusal::read(refused.metadata()),
        Some(hotate_proto::Refusal::NoUpdate { .. })
    ));
    start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    let started = admin_ok(&f.data, &["--json", "update", "list"]);
    let bob = login_as(&server, "bob", "PC-002").await;
    let others = probe(Some(&bob), entries.clone())
        .await
        .expect_err("another user's update");
    assert_eq!(others.code(), Code::FailedPrecondition, "{others:?}");
    let need = probe(Some(&token), entries.clone())
        .await
        .expect("probe")
        .into_inner();
    // Every changed block with content is lacking; those whose base block had content
    // come with it as a delta base, as an upload's need would.
    // (Equal content is asked for once.)
    let wanted: std::collections::HashSet<Hash> =
        changed.iter().filter_map(|o| o.entry.hash()).collect();
    let needs = hotate_proto::needs(&need);
    assert_eq!(needs.len(), wanted.len());
    for need in &needs {
        assert!(wanted.contains(&need.hash));
        let index = changed
            .iter()
            .find(|o| o.entry.hash() == Some(need.hash))
            .expect("offered")
            .index;
        assert_eq!(
            need.base.as_ref().map(|b| b.hash),
            parent.get(index).and_then(|e| e.hash()),
            "block {index}"
        );
    }
    // Held content is not asked for: the base's own blocks.
    let held: Vec<pb::Entry> = (0..parent.len() as u64)
        .filter_map(|index| {
            let entry = parent.get(index)?;
            entry.hash()?;
            Some(pb::Entry::from(Offer { index, entry }))
        })
        .collect();
    let none = probe(Some(&token), held).await.expect("probe").into_inner();
    assert!(none.hashes.is_empty());

    let status = probe(None, entries.clone()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let many = vec![entries[0].clone(); 1025];
    let status = probe(Some(&token), many).await.expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);

    // The discard stream counts what it receives and acknowledges each message.
    let (tx, rx) = mpsc::channel(4);
    let mut replies = server
        .transfer()
        .await
        .discard(authed(&token, ReceiverStream::new(rx)))
        .await
        .expect("discard")
        .into_inner();
    for n in 1..=3u64 {
        tx.send(pb::DiscardRequest {
            data: Bytes::from(vec![n as u8; 65536]),
        })
        .await
        .expect("send");
        let reply = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(reply.received, n * 65536);
        assert!(!reply.done);
    }
    drop(tx);
    assert!(replies.message().await.expect("end").is_none());
    let (_tx, rx) = mpsc::channel::<pb::DiscardRequest>(1);
    let status = server
        .transfer()
        .await
        .discard(Request::new(ReceiverStream::new(rx)))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Nothing was recorded or stored: the update is as `start` left it.
    assert_eq!(admin_ok(&f.data, &["--json", "update", "list"]), started);
    let stats: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "store", "stats"])).expect("json");
    assert_eq!(stats["unreferenced_chunks"], 0);
}

#[tokio::test]
async fn chunks_arriving_one_by_one_share_group_commits() {
    // A slow link: each chunk arrives alone, 5 ms after the last. Each used to get its
    // own durable commit (and its own acknowledgement); now a group waits a little to
    // fill.
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    let parent = parent_manifest(&f);
    let updated = updated_image(&f.base, 9);
    let (manifest, chunks) = manifest_of(&updated);
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    let entries = entries_of(&changed_offers(&manifest, &parent));
    send(
        &tx,
        upload_request::Kind::Offer(pb::Offer { batch: 1, entries }),
    )
    .await;
    let need = loop {
        match replies
            .message()
            .await
            .expect("reply")
            .expect("a reply")
            .kind
        {
            Some(upload_reply::Kind::Need(need)) => break need,
            _ => continue,
        }
    };
    let needed = hotate_proto::needs(&need);
    assert!(needed.len() >= 16, "{} chunks", needed.len());
    for need in &needed {
        let chunk = Outgoing::Whole(VerifiedChunk::seal(chunks[&need.hash].clone(), 1));
        send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&chunk))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (mut acks, mut stored) = (0, 0);
    while stored < needed.len() {
        match replies
            .message()
            .await
            .expect("reply")
            .expect("a reply")
            .kind
        {
            Some(upload_reply::Kind::Stored(group)) => {
                acks += 1;
                stored += group.hashes.len();
            }
            _ => continue,
        }
    }
    assert!(
        acks * 3 <= needed.len(),
        "{acks} group commits for {} chunks",
        needed.len()
    );
    send_finish(&tx, &manifest).await;
    let version = outcome(&mut replies).await.expect("committed");
    assert_eq!(export(&f, &version), updated);
}

/// The secret `StartUpdate` gives a terminal cancels that update without a login, and
/// nothing else: not another update, not with a wrong secret, not once the update ended.
#[tokio::test]
async fn a_cancel_secret_cancels_its_own_update_and_nothing_else() {
    let f = fixture();
    let server = Server::start(&f.data);
    let token = login(&server, "PC-001").await;
    let other_image = f.work.join("other.img");
    std::fs::write(&other_image, updated_image(&f.base, 7)).expect("write");
    let other: serde_json::Value = serde_json::from_str(&admin_ok(
        &f.data,
        &[
            "--json",
            "disk",
            "import",
            "other",
            other_image.to_str().expect("path"),
        ],
    ))
    .expect("json");
    let mut control = server.control().await;
    let mut started = Vec::new();
    for (disk, booted) in [
        (f.disk_id.clone(), f.first_version.clone()),
        (
            other["disk_id"].as_str().expect("id").to_owned(),
            other["version"].as_str().expect("version").to_owned(),
        ),
    ] {
        let update = control
            .start_update(authed(
                &token,
                pb::StartUpdateRequest {
                    disk_id: disk,
                    booted_version: booted,
                    terminal: String::new(),
                },
            ))
            .await
            .expect("start")
            .into_inner();
        assert_eq!(update.cancel_secret.len(), 32);
        started.push(update);
    }
    let (a, b) = (&started[0], &started[1]);
    // No token at all: the secret is the credential.
    let mut open = server.control().await;
    let cancel = |guid: &str, secret: &[u8]| pb::CancelOwnRequest {
        data_write_guid: guid.to_owned(),
        cancel_secret: secret.to_vec().into(),
    };
    for (guid, secret) in [
        (&b.data_write_guid, &a.cancel_secret[..]),
        (&a.data_write_guid, &[0u8; 32][..]),
        (&"no-such-update".to_owned(), &a.cancel_secret[..]),
    ] {
        let refused = open
            .cancel_own_update(cancel(guid, secret))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let cancelled = open
        .cancel_own_update(cancel(&a.data_write_guid, &a.cancel_secret))
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(cancelled.state, pb::UpdateState::Cancelled as i32);
    // It does not outlive the update, and it reads nothing.
    let again = open
        .cancel_own_update(cancel(&a.data_write_guid, &a.cancel_secret))
        .await
        .expect_err("ended");
    assert_eq!(again.code(), Code::PermissionDenied);
    let hex: String = a.cancel_secret.iter().map(|x| format!("{x:02x}")).collect();
    let read = open
        .show_update(authed(
            &hex,
            pb::UpdateRef {
                data_write_guid: b.data_write_guid.clone(),
            },
        ))
        .await
        .expect_err("a secret is no token");
    assert_eq!(read.code(), Code::Unauthenticated);
    let live: serde_json::Value =
        serde_json::from_str(&admin_ok(&f.data, &["--json", "update", "list"])).expect("json");
    assert_eq!(
        live[1]["state"], "reserved",
        "the other update is untouched"
    );
}

/// Link measurements (Discard) and upload streams that never say `open` hold no place an
/// upload needs: with every measurement place and more quiet streams than upload places
/// taken, a real upload still opens at once.
#[tokio::test]
async fn measurements_and_unopened_streams_leave_the_upload_places_free() {
    let f = fixture();
    let server = Server::start_with_flags(&f.data, &["--max-uploads", "2"]);
    let token = login(&server, "PC-001").await;
    let mut held = Vec::new();
    admin_ok(&f.data, &["user", "add", "carol", "--role", "operator"]);
    for user in ["alice", "bob", "carol"] {
        let token = login_as(&server, user, "PC-M").await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::DiscardRequest {
            data: vec![0u8; 1024].into(),
        })
        .await
        .expect("queue");
        let replies = server
            .transfer()
            .await
            .discard(authed(&token, ReceiverStream::new(rx)))
            .await
            .expect("a measurement")
            .into_inner();
        held.push((tx, replies));
    }
    // One account measures once at a time.
    let (_again_tx, again_rx) = mpsc::channel::<pb::DiscardRequest>(1);
    let again = server
        .transfer()
        .await
        .discard(authed(
            &login_as(&server, "alice", "PC-M").await,
            ReceiverStream::new(again_rx),
        ))
        .await
        .expect_err("a second measurement of one account");
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    let mut quiet = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel::<pb::UploadRequest>(1);
        let mut client = server.transfer().await;
        let token = token.clone();
        let call =
            tokio::spawn(
                async move { client.upload(authed(&token, ReceiverStream::new(rx))).await },
            );
        quiet.push((tx, call));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let guid = start(&server, &token, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    let (_tx, _replies) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        open_stream(&server, &token, &guid),
    )
    .await
    .expect("the upload opened at once");
    drop((held, quiet));
}

#[tokio::test]
async fn one_accounts_probes_are_paced_and_another_account_still_gets_answers() {
    let f = fixture();
    const BLOCK: usize = 16 << 20;
    import_patterned(&f, "huge", BLOCK, 12, 0);
    let server = Server::start(&f.data);
    let alice = login_as(&server, "alice", "PC-001").await;
    let huge = server
        .control()
        .await
        .get_disk(authed(
            &alice,
            pb::GetDiskRequest {
                disk: "huge".into(),
            },
        ))
        .await
        .expect("disk")
        .into_inner();
    start(&server, &alice, &huge.id, &huge.latest_version)
        .await
        .expect("start");
    let bob = login_as(&server, "bob", "PC-002").await;
    start(&server, &bob, &f.disk_id, &f.first_version)
        .await
        .expect("start");
    // Each probe names six held 16 MiB chunks at other places (read and verified) and
    // six new ones replacing 16 MiB bases (read for their pages): about 128 MiB read.
    let heavy: Vec<pb::Entry> = (0..12u64)
        .map(|index| {
            let entry = if index < 6 {
                Entry::Chunk(Hash::of(&vec![index as u8 + 7; BLOCK]))
            } else {
                Entry::Chunk(random_hash(index))
            };
            pb::Entry::from(Offer { index, entry })
        })
        .collect();
    let probe = |token: String, disk: String, version: String, entries: Vec<pb::Entry>| {
        let request = authed(
            &token,
            pb::ProbeRequest {
                disk_id: disk,
                version,
                entries,
            },
        );
        let server = &server;
        async move { server.transfer().await.probe(request).await }
    };
    let started = std::time::Instant::now();
    let flood: Vec<_> = (0..20)
        .map(|_| {
            probe(
                alice.clone(),
                huge.id.clone(),
                huge.latest_version.clone(),
                heavy.clone(),
            )
        })
        .collect();
    let flood = async {
        let answers = futures::future::join_all(flood).await;
        (answers, started.elapsed())
    };
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let asked = std::time::Instant::now();
        let answer = probe(
            bob.clone(),
            f.disk_id.clone(),
            f.first_version.clone(),
            vec![],
        )
        .await;
        (answer, asked.elapsed())
    };
    let ((answers, flood_took), (other, other_took)) = tokio::join!(flood, other);
    other.expect("another account's probe is answered");
    eprintln!(
        "20 probes of ~128 MiB at once from one account: {:.1} s; another account's probe meanwhile: {:.2} s",
        flood_took.as_secs_f64(),
        other_took.as_secs_f64()
    );
    for answer in answers {
        answer.expect("paced, not refused");
    }
    // 2.5 GiB at 256 MiB/s after a 512 MiB burst: 8 s at least.
    assert!(
        flood_took > std::time::Duration::from_secs(6),
        "one account's probes read 2.5 GiB in {flood_took:?}"
    );
    assert!(
        other_took < flood_took / 2,
        "another account waited {other_took:?} behind the flood"
    );
}

#[tokio::test]
async fn the_history_is_paged_starts_are_paced_and_operators_see_their_own() {
    use hotate_tests::http::{self, Events};
    let f = fixture();
    let server = Server::start(&f.data);
    let alice = login_as(&server, "alice", "PC-A").await;
    // A start+cancel loop is paced: past its burst, starts are refused for a while.
    let mut ended = Vec::new();
    let refused = loop {
        match start(&server, &alice, &f.disk_id, &f.first_version).await {
            Ok(guid) => {
                server
                    .control()
                    .await
                    .cancel_update(authed(
                        &alice,
                        pb::UpdateRef {
                            data_write_guid: guid.clone(),
                        },
                    ))
                    .await
                    .expect("cancel");
                ended.push(guid);
            }
            Err(status) => break status,
        }
        assert!(
            ended.len() <= 40,
            "40 updates started and cancelled at once"
        );
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("try again"), "{refused:?}");
    // Another account is not held back.
    let admin = login(&server, "PC-001").await;
    let live = start(&server, &admin, &f.disk_id, &f.first_version)
        .await
        .expect("another account starts");

    let addr = server.control.clone();
    let get = |token: &str, path: &str| {
        let bearer = format!("Bearer {token}");
        http::request(&addr, "GET", path, &[("Authorization", &bearer)], None)
    };
    let guids = |reply: &http::Reply| -> Vec<String> {
        let list = reply.json();
        let list = list.as_array().expect("a list");
        let guid = |u: &serde_json::Value| u["data_write_guid"].as_str().expect("guid").to_owned();
        list.iter().map(guid).collect()
    };
    // Pages of ten ended updates after the live one, each page's Link naming the next.
    let mut path = "/api/v1/updates?limit=10".to_owned();
    let (mut seen, mut pages) = (Vec::new(), 0);
    loop {
        let reply = get(&admin, &path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let page = guids(&reply);
        assert!(page.len() <= 10 + usize::from(pages == 0), "{path}");
        seen.extend(page);
        pages += 1;
        let Some(link) = reply.header("link") else {
            break;
        };
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        path = link[1..link.find('>').expect("<…>")].to_owned();
    }
    let expected: Vec<String> = std::iter::once(live.clone())
        .chain(ended.iter().rev().cloned())
        .collect();
    assert_eq!(seen, expected, "live first, then ended ones newest first");
    assert!(pages >= 3, "{pages} pages");
    let only_live = get(&admin, "/api/v1/updates?state=live");
    assert_eq!(guids(&only_live), std::slice::from_ref(&live));
    assert_eq!(get(&admin, "/api/v1/updates?state=bogus").status, 400);
    let page = get(&admin, "/?limit=10").text();
    assert!(
        page.contains("rel=\"next\""),
        "the page links the older updates"
    );

    // An operator sees its own user's updates only, in every view.
    let own = get(&alice, "/api/v1/updates?limit=500");
    assert_eq!(guids(&own), ended.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(get(&alice, &format!("/api/v1/updates/{live}")).status, 404);
    assert_eq!(get(&admin, &format!("/api/v1/updates/{live}")).status, 200);
    assert!(!get(&alice, "/").text().contains(&live));
    let bearer = format!("Bearer {alice}");
    let mut events = Events::open(&addr, "/api/v1/events", &[("Authorization", &bearer)]);
    assert_eq!(events.next("updates"), "[]", "another user's live update");
    let admin_bearer = format!("Bearer {admin}");
    let mut watching = Events::open(&addr, "/api/v1/events", &[("Authorization", &admin_bearer)]);
    assert!(watching.next("updates").contains(&live));

    // One user cannot hold every event stream: past its share it gets 429, others not.
    let mut held = vec![events];
    let refused = loop {
        match Events::try_open(&addr, "/api/v1/events", &[("Authorization", &bearer)]) {
            Ok(stream) => held.push(stream),
            Err(status) => break status,
        }
        assert!(held.len() < 64, "one user took every event stream");
    };
    assert_eq!(refused, 429);
    let _another = Events::open(&addr, "/api/v1/events", &[("Authorization", &admin_bearer)]);
    // A logout ends its session's streams at once.
    let out = http::request(
        &addr,
        "POST",
        "/api/v1/logout",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(out.status, 204);
    assert!(
        held[0].ends_within(std::time::Duration::from_secs(5)),
        "the stream outlived its session"
    );
}

#[tokio::test]
async fn copied_pages_rebuild_a_block_and_copies_from_elsewhere_are_refused() {
    use hotate_engine::PageIndex;
    let f = fixture();
    let (server, token, guid) = started(&f).await;
    const PAGE: usize = 4096;
    let page = |seed: u64| -> Vec<u8> {
        (0..PAGE as u64)
            .map(|i| (i.wrapping_mul(seed | 1) >> 3) as u8 ^ seed as u8)
            .collect()
    };
    // Block 1 new; block 2 repeats twelve of its pages elsewhere, beside four new ones.
    let first: Vec<Vec<u8>> = (1..=16).map(page).collect();
    let mut second: Vec<Vec<u8>> = (100..104).map(page).collect();
    second.extend(first[2..14].iter().cloned());
    let (first, second) = (Bytes::from(first.concat()), Bytes::from(second.concat()));
    let (a, b) = (Hash::of(&first), Hash::of(&second));
    let index = std::sync::Mutex::new(PageIndex::default());
    assert!(PageIndex::compose(&index, &first, (a, 0), 0, None, 3).is_none());
    let composed =
        PageIndex::compose(&index, &second, (b, 1), 1, None, 3).expect("twelve copied pages");
    let sent = Outgoing::Composed {
        hash: b,
        len: second.len(),
        composed: composed.clone(),
    };
    assert!(sent.encoded_len() < 5 * PAGE, "{}", sent.encoded_len());

    // Copying from a chunk this upload did not offer, or one neither stored nor sent
    // before: refused.
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(2, b)])).await;
    let _need = replies.message().await.expect("need");
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&sent))).await;
    let refused = outcome(&mut replies).await.expect_err("not offered");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("did not offer"), "{refused:?}");
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(1, a), (2, b)])).await;
    let _need = replies.message().await.expect("need");
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&sent))).await;
    let refused = outcome(&mut replies).await.expect_err("not stored");
    assert!(
        refused.message().contains("not sent before it"),
        "{refused:?}"
    );

    // A copy of the wrong page rebuilds another block: refused, nothing stored.
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(1, a), (2, b)])).await;
    let _need = replies.message().await.expect("need");
    let whole = Outgoing::Whole(VerifiedChunk::seal(first.clone(), 3));
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&whole))).await;
    let stored = replies.message().await.expect("stored").expect("a reply");
    assert!(matches!(stored.kind, Some(upload_reply::Kind::Stored(_))));
    let mut wrong = composed.clone();
    wrong.copies.from[0].1 = 15;
    let lie = Outgoing::Composed {
        hash: b,
        len: second.len(),
        composed: wrong,
    };
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&lie))).await;
    let refused = outcome(&mut replies).await.expect_err("another block");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("hashes to"), "{refused:?}");

    // Sent right, the block is rebuilt, verified and committed; so is one that copies
    // pages of a chunk sent just before it, not yet acknowledged. The export has both.
    let third = Bytes::from((200..216).map(page).collect::<Vec<_>>().concat());
    let mut fourth: Vec<Vec<u8>> = (200..208).map(page).collect();
    fourth.extend((300..308).map(page));
    let fourth = Bytes::from(fourth.concat());
    let (c, d) = (Hash::of(&third), Hash::of(&fourth));
    assert!(PageIndex::compose(&index, &third, (c, 2), 2, None, 3).is_none());
    let copies_c = PageIndex::compose(&index, &fourth, (d, 3), 3, None, 3).expect("copies");
    assert_eq!(copies_c.copies.sources, [c]);
    let (tx, mut replies) = open_stream(&server, &token, &guid).await;
    send(&tx, offer_of(1, &[(1, a), (2, b), (3, c), (4, d)])).await;
    let need = replies.message().await.expect("need").expect("a reply");
    let Some(upload_reply::Kind::Need(need)) = need.kind else {
        panic!("a need");
    };
    assert_eq!(need.hashes.len(), 3, "the first block is stored already");
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&sent))).await;
    let whole = Outgoing::Whole(VerifiedChunk::seal(third.clone(), 3));
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&whole))).await;
    let after = Outgoing::Composed {
        hash: d,
        len: fourth.len(),
        composed: copies_c,
    };
    send(&tx, upload_request::Kind::Chunk(pb::Chunk::from(&after))).await;
    let mut manifest = parent_manifest(&f);
    for (index, hash) in [(1, a), (2, b), (3, c), (4, d)] {
        manifest.set(index, Entry::Chunk(hash)).expect("set");
    }
    send_finish(&tx, &manifest).await;
    let version = outcome(&mut replies).await.expect("committed");
    let exported = export(&f, &version);
    let block = 64 << 10;
    assert_eq!(&exported[block..2 * block], &first[..]);
    assert_eq!(&exported[2 * block..3 * block], &second[..]);
    assert_eq!(&exported[3 * block..4 * block], &third[..]);
    assert_eq!(&exported[4 * block..5 * block], &fourth[..]);
}
