//! The client against hostile or mistaken setups: plain http to another host, an
//! http URL for a TLS server, images that are not files or shrink while read, a busy
//! server and a locked-out login.

use hotate_tests::harness::admin_json;

use super::*;

#[test]
fn plain_http_to_another_host_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![1u8; 1 << 20]).expect("image");
    let terminal = Terminal::new(dir.path(), "PC-001", "d", "v", &image);
    // The userinfo trick: the host is 192.0.2.1, not localhost.
    for url in [
        "http://192.0.2.1:30806",
        "http://localhost@192.0.2.1:30806/",
    ] {
        let out = terminal.run(&["--url", url, "update", "start"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("Refusing plain http"), "{}", text(&out));
        let ja = terminal.run(&["--lang", "ja", "--url", url, "update", "start"]);
        assert!(text(&ja).contains("暗号化されていない"), "{}", text(&ja));
    }
}

#[test]
fn images_that_are_not_files_say_what_they_are() {
    let s = setup(2 << 20, 31);
    s.start_update();
    let fifo = s.dir.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    for (path, kind) in [
        (s.dir.path().to_owned(), "is a directory"),
        (fifo, "is a named pipe (FIFO)"),
        (Path::new("/dev/null").to_owned(), "is a character device"),
        (s.dir.path().join("absent.img"), "does not exist"),
    ] {
        let t = Terminal {
            image: path,
            ..s.terminal.clone()
        };
        t.write_config(&s.site.disk_id, &s.site.first_version, "non-restore");
        let out = t.run(&["update", "finish"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(kind), "{kind}: {}", text(&out));
    }
}

#[test]
fn an_image_truncated_during_finish_is_a_clear_error_not_a_crash() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let s = setup_changing(8 << 20, 10, 32);
    // The updated image on tmpfs, large enough that the reads outlast the truncation.
    let big = tempfile::tempdir_in(shm).expect("tmpfs dir");
    let image = big.path().join("disk.img");
    let site = Site::new(
        &s.dir.path().join("big"),
        "big",
        &{
            let base = s.dir.path().join("big-base.img");
            std::fs::write(&base, vec![0u8; 0]).expect("base");
            std::fs::File::options()
                .write(true)
                .open(&base)
                .expect("open")
                .set_len(256 << 20)
                .expect("size");
            base
        },
        BLOCK,
    );
    {
        let mut data = vec![0u8; 256 << 20];
        for (i, block) in data.chunks_mut(BLOCK as usize).enumerate() {
            block[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        std::fs::write(&image, data).expect("image");
    }
    let server = Server::start(&site.data);
    let terminal = site.terminal(s.dir.path(), "PC-007", &image);
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    let child = finish_in_background(&terminal, &site, "4m");
    std::fs::File::options()
        .write(true)
        .open(&image)
        .expect("open")
        .set_len(1 << 20)
        .expect("truncate");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(1),
        "killed by a signal?\n{}",
        text(&out)
    );
    let said = text(&out);
    assert!(said.contains("was truncated while it was read"), "{said}");
    // Nothing is lost: the terminal still holds its update.
    assert!(terminal.state.join("update.toml").exists());
}

#[test]
fn an_http_url_for_a_tls_server_says_it_expects_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 2 << 20, 20, 33);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let (cert, key) = site.certificate(dir.path(), &["localhost"]);
    let server = Server::start_tls(&site.data, &cert, &key);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    let out = terminal.run(&["--url", &server.url(), "update", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("expects TLS: use https://"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_busy_server_is_waited_for_and_a_locked_out_login_says_when_to_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 16 << 20, 50, 34);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let second = admin_json(
        &site.data,
        &[
            "disk",
            "import",
            "win11",
            pair.base.to_str().expect("path"),
            "--block-size",
            &BLOCK.to_string(),
        ],
    );
    let server = Server::start_with(
        &site.data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--transfer-listen",
            "127.0.0.1:0",
            "--max-uploads",
            "1",
        ],
    );
    let first = site.terminal(dir.path(), "PC-001", &pair.updated);
    let other = Terminal::new(
        dir.path(),
        "PC-002",
        second["disk_id"].as_str().expect("id"),
        second["version"].as_str().expect("version"),
        &pair.updated,
    );
    assert_ok(&first.run(&["--url", &server.url(), "update", "start"]));
    assert_ok(&other.run(&["--url", &server.url(), "update", "start"]));
    let slow = first
        .client(&["update", "finish", "--limit-rate", "256k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("finish");
    // Until the first upload has stored something.
    let stored_by_first = || {
        site.updates()
            .iter()
            .find(|u| u["terminal"] == "PC-001")
            .and_then(|u| u["bytes_received"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_by_first() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = other.run(&["update", "finish"]);
    assert_ok(&waited);
    assert!(text(&waited).contains("retrying in"), "{}", text(&waited));
    assert_ok(&slow.wait_with_output().expect("slow finish"));

    // Five wrong passwords, then the right one: locked out for now, and told so.
    for _ in 0..5 {
        let bad = other
            .client(&["--url", &server.url(), "update", "start"])
            .env("HOTATE_PASSWORD", "wrong")
            .output()
            .expect("run");
        assert_eq!(bad.status.code(), Some(1));
    }
    let locked = other.run(&["update", "start"]);
    assert_eq!(locked.status.code(), Some(1), "{}", text(&locked));
    assert!(text(&locked).contains("Try again in"), "{}", text(&locked));
}

/// The HTTP/2 preface and an empty SETTINGS frame, as a client opens a connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// The settings the server announces on a fresh HTTP/2 connection to `addr`.
fn announced_settings(addr: &str) -> Vec<(u16, u32)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(H2_PREFACE).expect("preface");
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).expect("a frame");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).expect("its payload");
        // SETTINGS, not an ACK.
        if head[3] == 4 && head[4] & 1 == 0 {
            return payload
                .chunks_exact(6)
                .map(|e| {
                    (
                        u16::from_be_bytes([e[0], e[1]]),
                        u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                    )
                })
                .collect();
        }
    }
}

/// Both ports bound the streams one connection may open, so that one client cannot grow
/// the server's memory with thousands of streams.
#[test]
fn http2_streams_per_connection_are_bounded() {
    let s = setup(1 << 20, 59);
    for addr in [&s.server.control, &s.server.transfer] {
        let settings = announced_settings(addr);
        // SETTINGS_MAX_CONCURRENT_STREAMS
        let streams = settings.iter().find(|(id, _)| *id == 3).map(|(_, v)| *v);
        assert!(
            streams.is_some_and(|n| (1..=1000).contains(&n)),
            "{addr}: max concurrent streams {streams:?} in {settings:?}"
        );
    }
}

/// Connections from one address cannot take every place: another still logs in.
#[test]
fn one_address_cannot_take_every_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 1 << 20, 20, 61);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let server = Server::start_with_flags(&site.data, &["--max-connections", "20"]);
    let control: std::net::SocketAddr = server.control.parse().expect("address");
    // 20 connections from 127.0.0.2, each past the handshake.
    let mut held = Vec::new();
    for _ in 0..20 {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let from: std::net::SocketAddr = "127.0.0.2:0".parse().expect("address");
        socket.bind(&from.into()).expect("bind 127.0.0.2");
        socket.connect(&control.into()).expect("connect");
        let mut conn: std::net::TcpStream = socket.into();
        let _ = conn.write_all(H2_PREFACE);
        held.push(conn);
    }
    std::thread::sleep(Duration::from_millis(300));
    let closed = held
        .iter()
        .filter(|conn| {
            let mut conn: &std::net::TcpStream = conn;
            conn.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) => {
                        break !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        );
                    }
                }
            }
        })
        .count();
    assert!(closed >= 10, "only {closed} of 20 were refused");
    // A terminal from 127.0.0.1 still gets in.
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    let start = terminal.run(&["--url", &server.url(), "update", "start"]);
    assert!(start.status.success(), "{}", text(&start));
    drop(held);
}
