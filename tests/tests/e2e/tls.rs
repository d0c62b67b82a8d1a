//! TLS with a generated certificate: the client, and the console on the same port.

use super::*;

#[test]
fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 4 << 20, 20, 12);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    let (cert, key) = site.certificate(dir.path(), &["localhost", "127.0.0.1"]);
    // The key is the owner's alone, the data dir and metadata too; a pair is not
    // overwritten without --force.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&site.data), 0o700);
        assert_eq!(mode(&site.data.join("meta.sqlite")), 0o600);
        let first_key = std::fs::read(&key).expect("key");
        let again = admin(
            &site.data,
            &[
                "cert",
                "generate",
                "--out",
                key.parent().and_then(Path::to_str).expect("path"),
                "--host",
                "localhost",
            ],
        );
        assert!(!again.status.success());
        assert!(text(&again).contains("--force"), "{}", text(&again));
        assert_eq!(
            std::fs::read(&key).expect("key"),
            first_key,
            "the key was kept"
        );
    }
    let server = Server::start_tls(&site.data, &cert, &key);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    let url = format!("https://{}", server.control);
    // Without the CA the certificate is not trusted.
    let untrusted = terminal.run(&["--url", &url, "update", "start"]);
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains("the TLS handshake failed")
            && text(&untrusted).contains("`--ca FILE`"),
        "{}",
        text(&untrusted)
    );
    let untrusted = terminal.run(&["--lang", "ja", "--url", &url, "update", "start"]);
    assert!(
        text(&untrusted).contains("TLS の確認に失敗しました"),
        "{}",
        text(&untrusted)
    );
    let ca = cert.to_str().expect("path");
    assert_ok(&terminal.run(&["--url", &url, "--ca", ca, "update", "start"]));
    let finish = terminal.run(&["--ca", ca, "update", "finish"]);
    assert_ok(&finish);
    assert_latest_is(&site, dir.path(), &pair.updated);
    // The console shares the port and its TLS (HTTP/2 by ALPN); its cookie is Secure.
    let found = hotate_tests::has_command("curl");
    if !hotate_tests::needs("the TLS test", "curl, as an HTTP/2 client", found) {
        return;
    }
    let login = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-i",
                "--cacert",
                ca,
                "-H",
                "content-type: application/json",
            ])
            .args(extra)
            .args([
                "-d",
                &format!(r#"{{"user":"{USER}","password":"{PASSWORD}"}}"#),
            ])
            .arg(format!("{url}/api/v1/login"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reply = login(&[]);
    assert!(reply.starts_with("HTTP/2 200"), "{reply}");
    assert!(
        reply.contains("HttpOnly; SameSite=Strict; Secure"),
        "{reply}"
    );
    // Over HTTP/2 (no Host header, only :authority) a page of another site is refused
    // too, and no cookie is set.
    let foreign = login(&["-H", "Origin: https://evil.example"]);
    assert!(foreign.starts_with("HTTP/2 403"), "{foreign}");
    assert!(
        !foreign.to_ascii_lowercase().contains("set-cookie"),
        "{foreign}"
    );
    let own = login(&["-H", &format!("Origin: {url}")]);
    assert!(own.starts_with("HTTP/2 200"), "{own}");
}
