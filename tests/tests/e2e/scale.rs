//! Scaling out: the metadata in PostgreSQL (`--meta`, `HOTATE_META`) and the chunks and
//! manifests in an S3-compatible bucket (`--store`, `HOTATE_STORE`), with the real
//! binaries against the test servers.

use super::*;
use hotate_tests::harness::{Terminal, bin};

/// A data dir whose metadata and store live elsewhere: every command gets the places
/// and the bucket's settings through the environment, as a user's service would.
struct Elsewhere {
    data: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Elsewhere {
    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn admin(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("hotate-server"))
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .envs(self.env())
            .env("HOTATE_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server")
    }

    fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.admin(&[&["--json"], args].concat());
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

/// The bucket's settings for the test S3 server at `endpoint`.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// The test servers a test needs: a fresh PostgreSQL database (as a `--meta` URL), the
/// S3 server's endpoint, and a bucket prefix of the test's own (`s3://hotate-test/...`)
/// with `dir`'s name; `None` (skipped, failed under CI) when one is missing.
fn test_places(test: &str, dir: &std::path::Path) -> Option<(String, String, String)> {
    let meta = hotate_tests::postgres::fresh_database(test)?;
    let endpoint = std::env::var("HOTATE_TEST_S3").ok();
    let what = "an S3-compatible server (tests/run starts moto_server; or set HOTATE_TEST_S3)";
    if !hotate_tests::needs(test, what, endpoint.is_some()) {
        return None;
    }
    let prefix = dir.file_name()?.to_string_lossy().to_string();
    Some((meta, endpoint?, format!("s3://hotate-test/{prefix}")))
}

#[test]
fn postgres_and_s3_carry_a_whole_update_and_bad_places_are_told() {
    let test = "postgres_and_s3_carry_a_whole_update_and_bad_places_are_told";
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((meta, endpoint, store)) = test_places(test, dir.path()) else {
        return;
    };
    let mut env = s3_env(&endpoint);
    env.extend([
        ("HOTATE_META", meta.clone()),
        ("HOTATE_STORE", store.clone()),
    ]);
    let site = Elsewhere {
        data: dir.path().join("data"),
        env,
    };
    let pair = images::pair(dir.path(), 32 << 20, 10, 21);
    assert_ok(&site.admin(&["user", "add", USER]));
    let imported = site.admin_json(&[
        "disk",
        "import",
        "lab",
        pair.base.to_str().expect("path"),
        "--block-size",
        &BLOCK.to_string(),
    ]);
    for local in ["meta.sqlite", "manifests", "store/chunks"] {
        assert!(
            !site.data.join(local).exists(),
            "{local}: the metadata is in PostgreSQL and the store in the bucket"
        );
    }
    let server = Server::start_env(
        &site.data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--transfer-listen",
            "127.0.0.1:0",
        ],
        &site.env(),
    );
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        imported["disk_id"].as_str().expect("disk_id"),
        imported["version"].as_str().expect("version"),
        &pair.updated,
    );
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    assert_ok(&terminal.run(&["update", "finish"]));
    server.stop();

    let out = dir.path().join("latest.img");
    let exports_the_update = || {
        let path = out.to_str().expect("path");
        assert_ok(&site.admin(&["disk", "export", "lab", "--output", path]));
        same_file(&std::fs::read(&out).expect("export"), &pair.updated);
    };
    exports_the_update();
    let updates = site.admin_json(&["update", "list"]);
    assert_eq!(updates[0]["state"], "committed", "{updates}");
    // Deleting the first version leaves chunks only it named: gc removes them from the
    // bucket, and what remains verifies clean and exports the same.
    let versions = site.admin_json(&["disk", "versions", "lab"]);
    let first = versions[0]["id"].as_str().expect("id").to_owned();
    assert_ok(&site.admin(&["version", "delete", "lab", &first]));
    let gc = site.admin_json(&["store", "gc"]);
    assert!(gc["chunks_deleted"].as_u64().unwrap_or(0) > 0, "{gc}");
    let verify = site.admin_json(&["store", "verify", "--all"]);
    for found in ["damaged", "missing", "unreadable", "unreadable_manifests"] {
        assert_eq!(verify[found], serde_json::json!([]), "{verify}");
    }
    assert!(
        verify["chunks_checked"].as_u64().unwrap_or(0) > 0,
        "{verify}"
    );
    exports_the_update();

    // Places that cannot be used are each told.
    let refused = |args: &[&str], env: &[(&str, &str)], says: &str| {
        let out = std::process::Command::new(bin("hotate-server"))
            .arg("--data")
            .arg(&site.data)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    };
    refused(&["disk", "list"], &[], "no Hotate data dir");
    refused(
        &[
            "--meta",
            "postgres://hotate@127.0.0.1:1/none",
            "disk",
            "list",
        ],
        &[],
        "cannot reach the metadata database",
    );
    refused(
        &["--meta", "mysql://db/hotate", "disk", "list"],
        &[],
        "only PostgreSQL",
    );
    if let Some(empty) = hotate_tests::postgres::fresh_database(test) {
        refused(
            &["--meta", &empty, "disk", "list"],
            &[],
            "no Hotate metadata",
        );
    }
    let s3 = s3_env(&endpoint);
    let s3: Vec<(&str, &str)> = s3.iter().map(|(k, v)| (*k, v.as_str())).collect();
    refused(
        &[
            "--meta",
            &meta,
            "--store",
            "s3://no-such-bucket/x",
            "disk",
            "list",
        ],
        &s3,
        "check that the bucket exists",
    );
    refused(
        &["--meta", &meta, "--store", "/srv/chunks", "disk", "list"],
        &s3,
        "not an S3 URL",
    );
}

#[test]
fn a_data_dir_migrates_to_postgres_and_s3_and_exports_the_same() {
    let test = "a_data_dir_migrates_to_postgres_and_s3_and_exports_the_same";
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((meta, endpoint, store)) = test_places(test, dir.path()) else {
        return;
    };
    let s3 = s3_env(&endpoint);

    // A single-node site with two versions and then a live update.
    let pair = images::pair(dir.path(), 32 << 20, 10, 22);
    let site = Site::new(dir.path(), "lab", &pair.base, BLOCK);
    let server = Server::start(&site.data);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    assert_ok(&terminal.run(&["--url", &server.url(), "update", "start"]));
    assert_ok(&terminal.run(&["update", "finish"]));
    let latest = admin_ok(&site.data, &["--json", "disk", "versions", "lab"]);
    let latest: serde_json::Value = serde_json::from_str(&latest).expect("json");
    let latest = latest[1]["id"].as_str().expect("id").to_owned();
    let next = Terminal::new(dir.path(), "PC-002", &site.disk_id, &latest, &pair.updated);
    assert_ok(&next.run(&["--url", &server.url(), "update", "start"]));
    server.stop();
    let migrate = |json: bool| {
        let mut args = vec!["migrate", "--to-meta", &meta, "--to-store", &store];
        if json {
            args.insert(0, "--json");
        }
        std::process::Command::new(bin("hotate-server"))
            .arg("--data")
            .arg(&site.data)
            .args(&args)
            .envs(s3.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server")
    };
    let refused = migrate(false);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("in progress"), "{}", text(&refused));
    admin_ok(&site.data, &["update", "cancel", "lab"]);

    let first = migrate(true);
    assert_ok(&first);
    let done: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    assert_eq!(done["versions"], 2, "{done}");
    assert_eq!(done["users"], 1, "{done}");
    assert!(done["chunks_copied"].as_u64().unwrap_or(0) > 0, "{done}");

    // Every version exports from the new places as it does from the data dir.
    let mut env = s3.clone();
    env.extend([
        ("HOTATE_META", meta.clone()),
        ("HOTATE_STORE", store.clone()),
    ]);
    let cluster = Elsewhere {
        data: site.data.clone(),
        env,
    };
    let versions = cluster.admin_json(&["disk", "versions", "lab"]);
    let ids: Vec<&str> = versions
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, [site.first_version.as_str(), ids[1]], "{versions}");
    for id in &ids {
        let here = site.export("lab", Some(id), &dir.path().join("here.img"));
        let out = dir.path().join("there.img");
        let path = out.to_str().expect("path");
        assert_ok(&cluster.admin(&["disk", "export", "lab", "--version", id, "--output", path]));
        assert!(std::fs::read(&out).expect("export") == here, "version {id}");
    }
    same_file(
        &std::fs::read(dir.path().join("there.img")).expect("export"),
        &pair.updated,
    );
    let verify = cluster.admin_json(&["store", "verify", "--all"]);
    assert_eq!(verify["damaged"], serde_json::json!([]), "{verify}");

    // Run again (as after an interruption): nothing is copied twice, every chunk is
    // read back.
    let again = migrate(true);
    assert_ok(&again);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["chunks_copied"], 0, "{again}");
    assert_eq!(again["versions"], 0, "{again}");
    assert_eq!(again["chunks_kept"], done["chunks_copied"], "{again}");
}

/// Reads `update finish`'s output until it says which transfer server it reached.
fn transfer_reached(out: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let read = out.read_line(&mut line).expect("finish output");
        assert!(
            read > 0,
            "the finish ended before it reached a transfer server"
        );
        if let Some(rest) = line.trim().strip_prefix("Session established with ") {
            return rest.trim_end_matches('.').to_owned();
        }
    }
}

#[test]
fn a_killed_transfer_server_loses_nothing_while_gc_runs_elsewhere() {
    let test = "a_killed_transfer_server_loses_nothing_while_gc_runs_elsewhere";
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((meta, endpoint, store)) = test_places(test, dir.path()) else {
        return;
    };
    let mut env = s3_env(&endpoint);
    env.extend([("HOTATE_META", meta), ("HOTATE_STORE", store)]);
    let admin = Elsewhere {
        data: dir.path().join("admin"),
        env,
    };
    let env = admin.env();
    let pair = images::synthetic_pair(dir.path(), 48 << 20, 40, 23);
    assert_ok(&admin.admin(&["user", "add", USER]));
    let imported = admin.admin_json(&[
        "disk",
        "import",
        "lab",
        pair.base.to_str().expect("path"),
        "--block-size",
        &BLOCK.to_string(),
    ]);

    // A control server and two transfer servers, each a process of its own.
    let control_args = ["--role", "control", "--listen", "127.0.0.1:0"];
    let control = Server::start_env(&dir.path().join("control"), &control_args, &env);
    assert!(
        control.transfer.is_empty(),
        "a control server has no transfer port"
    );
    // Each with a scratch data dir of its own: only the database and the bucket are shared.
    let mut transfers = vec![
        Server::start_transfer(&dir.path().join("t1"), &env),
        Server::start_transfer(&dir.path().join("t2"), &env),
    ];
    // The control server's console and /metrics show both.
    let metrics = hotate_tests::http::request(&control.control, "GET", "/metrics", &[], None);
    assert!(
        metrics.text().contains("hotate_transfer_servers_alive 2"),
        "{}",
        metrics.text()
    );
    for t in &transfers {
        let line = format!(
            "hotate_transfer_uploads{{server=\"http://{}\"}} 0",
            t.transfer
        );
        assert!(metrics.text().contains(&line), "{}", metrics.text());
    }
    let terminal = Terminal::new(
        dir.path(),
        "PC-001",
        imported["disk_id"].as_str().expect("disk_id"),
        imported["version"].as_str().expect("version"),
        &pair.updated,
    );
    assert_ok(&terminal.run(&["--url", &control.url(), "update", "start"]));
    let bench = terminal.run(&["bench", "--json", "--link-seconds", "1"]);
    assert_ok(&bench);
    let bench: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json");
    let one_upload = bench["bytes_to_send"].as_u64().expect("bytes_to_send");

    // The finish is handed to one transfer server, which dies a third of the way in.
    let mut finish = terminal
        .client(&["update", "finish", "--limit-rate", "1m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = std::io::BufReader::new(finish.stdout.take().expect("stdout"));
    let first = transfer_reached(&mut out);
    let received = || {
        admin.admin_json(&["update", "list"])[0]["bytes_received"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while received() < one_upload / 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The control server's console shows the upload live, as its transfer server reports.
    let login = hotate_tests::http::json(
        &control.control,
        "POST",
        "/api/v1/login",
        &[],
        &serde_json::json!({"user": USER, "password": PASSWORD}),
    );
    let token = login.json()["token"].as_str().expect("token").to_owned();
    let bearer = format!("Bearer {token}");
    let live = || {
        let path = "/api/v1/updates?state=live";
        let reply = hotate_tests::http::request(
            &control.control,
            "GET",
            path,
            &[("Authorization", &bearer)],
            None,
        );
        reply.json()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let updates = live();
        let shown = &updates[0];
        if shown["uploading_now"] == true && shown["bytes_stored"].as_u64().unwrap_or(0) > 0 {
            break shown.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no live progress on the control server: {updates}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        seen["bytes_needed"].as_u64() >= seen["bytes_stored"].as_u64(),
        "{seen}"
    );
    assert_eq!(seen["transfer_server"], format!("http://{first}"), "{seen}");
    let cookie = format!("hotate_session={token}");
    let page =
        hotate_tests::http::request(&control.control, "GET", "/", &[("Cookie", &cookie)], None);
    assert!(
        page.text()
            .contains(&format!("title=\"Transfer server: http://{first}\"")),
        "the updates page names the transfer server: {}",
        page.text()
    );
    let carrier = transfers
        .iter()
        .position(|t| t.transfer == first)
        .expect("the finish reached one of the transfer servers");
    transfers.remove(carrier).kill();
    let failed = finish.wait_with_output().expect("finish");
    assert!(
        !failed.status.success(),
        "the finish outlived its transfer server"
    );
    let before = received();
    assert!(
        before < one_upload,
        "{before} of {one_upload} before the kill"
    );

    // gc runs from another process while the finish runs again, on the other server.
    let gc = std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let mut runs = Vec::new();
            for _ in 0..3 {
                runs.push(admin.admin_json(&["store", "gc"]));
            }
            runs
        });
        // The dead server is passed over once its heartbeat lapses.
        std::thread::sleep(Duration::from_secs(5));
        let again = terminal.run(&["update", "finish"]);
        assert_ok(&again);
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(
            said.contains(&format!(
                "Session established with {}.",
                transfers[0].transfer
            )),
            "{said}"
        );
        assert!(said.contains("Resuming"), "{said}");
        gc.join().expect("gc")
    });
    eprintln!("gc meanwhile: {gc:?}");
    let total = received();
    eprintln!("one upload {one_upload} bytes; {before} before the kill, {total} in all");
    assert!(
        total <= one_upload + one_upload / 20,
        "resumed on another transfer server: {total} bytes for an upload of {one_upload}"
    );
    let verify = admin.admin_json(&["store", "verify", "--all"]);
    for found in ["damaged", "missing", "unreadable", "unreadable_manifests"] {
        assert_eq!(verify[found], serde_json::json!([]), "{verify}");
    }
    let exported = dir.path().join("latest.img");
    let path = exported.to_str().expect("path");
    assert_ok(&admin.admin(&["disk", "export", "lab", "--output", path]));
    same_file(&std::fs::read(&exported).expect("export"), &pair.updated);
}
