//! The hostile-client bench: the attacks that once grew the server without bound, run
//! against a real server while a normal upload proceeds.
//!
//! `attack-bench [--size-mib N] [--no-attacks | --only bases|flood|logins|silent]`
//! (`--no-attacks`: the upload alone, for comparison)
//!
//! Attacks, all at once: offers naming many 16 MiB base blocks (again and again, each
//! stream taking over the last), offer floods of random hashes, 128 concurrent logins of
//! unknown users plus a password brute force, and 500 connections that never speak or
//! send half a preface. Prints the server's idle RSS, its peak over that (goal: under
//! 256 MiB), what each attack was told, and whether the upload finished and exports byte
//! for byte.

use hotate_benches::flags::Flags;
use std::path::Path;
use std::time::{Duration, Instant};

use hotate_engine::{Entry, Hash, Offer};
use hotate_proto::pb::{
    self, control_client::ControlClient, transfer_client::TransferClient, upload_reply,
    upload_request,
};
use hotate_tests::harness::{PASSWORD, Server, Site, admin_ok, text};
use hotate_tests::images;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request
            .metadata_mut()
            .insert(hotate_proto::AUTHORIZATION, value);
    }
    request
}

async fn control(server: &Server) -> ControlClient<Channel> {
    ControlClient::connect(format!("http://{}", server.control))
        .await
        .expect("connect control")
}

async fn login(
    server: &Server,
    user: &str,
    password: &str,
    terminal: &str,
) -> Result<String, tonic::Status> {
    Ok(control(server)
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

/// Starts an update of `disk` and opens its upload; returns the update's id.
async fn start(server: &Server, token: &str, disk: &str) -> String {
    let mut control = control(server).await;
    let disk = control
        .get_disk(authed(token, pb::GetDiskRequest { disk: disk.into() }))
        .await
        .expect("disk")
        .into_inner();
    let update = control
        .start_update(authed(
            token,
            pb::StartUpdateRequest {
                disk_id: disk.id,
                booted_version: disk.latest_version,
                terminal: String::new(),
            },
        ))
        .await
        .expect("start")
        .into_inner();
    control
        .begin_upload(authed(
            token,
            pb::UpdateRef {
                data_write_guid: update.data_write_guid.clone(),
            },
        ))
        .await
        .expect("begin");
    update.data_write_guid
}

/// Opens an upload stream, sends `offers` (index, hash) in batches, and returns what the
/// server said last.
async fn offer_stream(
    server: &Server,
    token: &str,
    guid: &str,
    batches: Vec<Vec<(u64, Hash)>>,
) -> String {
    let single_answer = batches.len() == 1;
    let mut transfer = TransferClient::connect(format!("http://{}", server.transfer))
        .await
        .expect("connect transfer")
        .max_decoding_message_size(hotate_proto::MAX_MESSAGE)
        .max_encoding_message_size(hotate_proto::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(8);
    let open = upload_request::Kind::Open(pb::Open {
        upload_id: guid.into(),
    });
    let _ = tx.send(pb::UploadRequest { kind: Some(open) }).await;
    let mut replies = match transfer
        .upload(authed(token, ReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("{:?}: {}", s.code(), s.message()),
    };
    for (batch, entries) in batches.into_iter().enumerate() {
        let entries = entries
            .into_iter()
            .map(|(index, hash)| {
                pb::Entry::from(Offer {
                    index,
                    entry: Entry::Chunk(hash),
                })
            })
            .collect();
        let offer = upload_request::Kind::Offer(pb::Offer {
            batch: batch as u64,
            entries,
        });
        let _ = tx.send(pb::UploadRequest { kind: Some(offer) }).await;
    }
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), replies.message()).await {
            Ok(Ok(Some(pb::UploadReply {
                kind: Some(upload_reply::Kind::Need(need)),
            }))) => {
                last = format!(
                    "asked for {} chunks, {} bases",
                    need.hashes.len(),
                    need.bases.len()
                );
                if single_answer {
                    return last;
                }
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Err(_) => return last,
            Ok(Err(s)) => return format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

fn random_hash(i: u64) -> Hash {
    Hash::of(&(i ^ rand::random::<u64>()).to_le_bytes())
}

fn patterned(path: &Path, block: usize, blocks: usize, holes: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create");
    for i in 0..blocks {
        file.write_all(&vec![i as u8 + 1; block]).expect("write");
    }
    file.set_len((blocks as u64 + holes) * block as u64)
        .expect("extend");
}

/// Offers naming 12 bases of 16 MiB each, 20 streams one after the other.
async fn offers_naming_big_bases(server: &Server, token: &str, guid: &str) -> String {
    let mut said = String::new();
    for _ in 0..20 {
        let entries: Vec<(u64, Hash)> = (0..12).map(|i| (i, random_hash(i))).collect();
        said = offer_stream(server, token, guid, vec![entries]).await;
    }
    said
}

/// Floods of 90,000 random hashes in three batches, 3 streams.
async fn offer_floods(server: &Server, token: &str, guid: &str) -> String {
    let mut said = String::new();
    for _ in 0..3 {
        let batches = (0..3u64)
            .map(|b| {
                (b * 30_000..((b + 1) * 30_000).min(70_000))
                    .map(|i| (i, random_hash(i)))
                    .collect()
            })
            .collect();
        said = offer_stream(server, token, guid, batches).await;
    }
    said
}

/// 178 concurrent logins: 128 unknown users and 50 guesses of one.
async fn login_burst(server: &Server) -> String {
    let users = (0..128)
        .map(|i| format!("nobody-{i}"))
        .chain((0..50).map(|_| "mallory".to_owned()));
    let attempts = users.map(|user| async move { login(server, &user, "guess", "PC-X").await });
    let results = futures::future::join_all(attempts).await;
    let refused = results.iter().filter(|r| r.is_err()).count();
    let locked = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    format!(
        "{refused} of {} refused, {locked} of them locked out or queue full",
        results.len()
    )
}

/// 500 connections that say nothing or half a preface, checked 12 s later.
async fn silent_connections(server: &Server) -> String {
    let mut held = Vec::new();
    for i in 0..500 {
        let addr = if i % 2 == 0 {
            &server.control
        } else {
            &server.transfer
        };
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr.as_str()).await {
            if i % 4 == 1 {
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n").await;
            }
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut closed = 0;
    for stream in &mut held {
        // The server's own preface may be waiting; closed means end of stream.
        let mut buf = [0u8; 256];
        let ended = loop {
            let read = tokio::io::AsyncReadExt::read(stream, &mut buf);
            match tokio::time::timeout(Duration::from_millis(20), read).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => {}
                Err(_) => break false,
            }
        };
        closed += usize::from(ended);
    }
    format!(
        "{} opened, {closed} closed by the server within 12 s",
        held.len()
    )
}

/// Runs `attack` when `run`, else says it did not.
async fn unless_skipped(run: bool, attack: impl std::future::Future<Output = String>) -> String {
    if run {
        attack.await
    } else {
        "not run".to_owned()
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut size_mib = 512u64;
    let mut attack = true;
    let mut only: Option<String> = None;
    let mut flags = Flags::new("attack-bench [--size-mib N] [--no-attacks] [--only NAME]");
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--no-attacks" => attack = false,
            "--only" => only = Some(flags.value(&flag)),
            "--size-mib" => size_mib = flags.parse(&flag),
            other => flags.unknown(other),
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), size_mib << 20, 20, 7);
    let site = Site::new(dir.path(), "win10", &pair.base, 1 << 20);
    admin_ok(
        &site.data,
        &["user", "add", "mallory", "--role", "operator"],
    );
    for (name, block, blocks, holes) in [
        ("huge", 16usize << 20, 12usize, 0u64),
        ("wide", 64 << 10, 1, 69_999),
    ] {
        let image = dir.path().join(format!("{name}.img"));
        patterned(&image, block, blocks, holes);
        admin_ok(
            &site.data,
            &[
                "disk",
                "import",
                name,
                image.to_str().expect("path"),
                "--block-size",
                &block.to_string(),
            ],
        );
        std::fs::remove_file(image).expect("remove");
    }
    let server = Server::start(&site.data);
    let pid = server.pid();
    let _ = login(&server, "mallory", PASSWORD, "PC-M0").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = status_kb(pid, "VmRSS:");

    // The normal upload, paced so that it runs through the attacks.
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    let started = terminal.run(&["--url", &server.url(), "update", "start"]);
    assert!(started.status.success(), "{}", text(&started));
    let honest = terminal
        .client(&["update", "finish", "--limit-rate", "8m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("finish");
    let began = Instant::now();

    let mallory = login(&server, "mallory", PASSWORD, "PC-M1")
        .await
        .expect("login");
    let huge = start(&server, &mallory, "huge").await;
    let wide = start(&server, &mallory, "wide").await;
    let runs = |name: &str| attack && only.as_deref().is_none_or(|o| o == name);
    let (bases, flood, logins, silent) = tokio::join!(
        unless_skipped(
            runs("bases"),
            offers_naming_big_bases(&server, &mallory, &huge)
        ),
        unless_skipped(runs("flood"), offer_floods(&server, &mallory, &wide)),
        unless_skipped(runs("logins"), login_burst(&server)),
        unless_skipped(runs("silent"), silent_connections(&server)),
    );
    let attacks_done = began.elapsed();
    let out = tokio::task::spawn_blocking(move || honest.wait_with_output())
        .await
        .expect("join")
        .expect("finish");
    let peak = status_kb(pid, "VmHWM:");
    let exported = site.export("win10", None, &dir.path().join("export.img"));
    let same = exported == std::fs::read(&pair.updated).expect("updated");

    println!(
        "attacks (for {:.1} s) and what the server said:",
        attacks_done.as_secs_f64()
    );
    println!("  offers naming 12 bases of 16 MiB, 20 streams: {bases}");
    println!("  offer floods of 90,000 random hashes, 3 streams: {flood}");
    println!("  178 concurrent logins: {logins}");
    println!("  silent connections: {silent}");
    println!(
        "server RSS: idle {} MiB, peak {} MiB, +{} MiB over idle (goal < 256 MiB)",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024
    );
    println!(
        "normal upload of {size_mib} MiB: {} ({}), exported byte for byte: {}",
        if out.status.success() {
            "finished"
        } else {
            "FAILED"
        },
        text(&out)
            .lines()
            .find(|l| l.starts_with("New version"))
            .unwrap_or("no version"),
        same
    );
    // Returning (not exiting) stops the server and removes the site.
    if out.status.success() && same && peak.saturating_sub(idle) < 256 * 1024 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
