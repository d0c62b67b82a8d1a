//! Scaling out: the metadata in PostgreSQL (`--meta`, `HOTATE_META`), with the real
//! binaries against the test cluster.

use super::*;
use hotate_tests::harness::{Terminal, admin_json, bin};

#[test]
fn metadata_in_postgres_carries_a_whole_update_and_bad_urls_are_told() {
    let test = "metadata_in_postgres_carries_a_whole_update_and_bad_urls_are_told";
    let Some(meta) = hotate_tests::postgres::fresh_database(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::pair(dir.path(), 32 << 20, 10, 21);
    let data = dir.path().join("data");
    admin_ok(&data, &["--meta", &meta, "user", "add", USER]);
    let imported = admin_json(
        &data,
        &[
            "--meta",
            &meta,
            "disk",
            "import",
            "lab",
            pair.base.to_str().expect("path"),
            "--block-size",
            &BLOCK.to_string(),
        ],
    );
    assert!(
        !data.join("meta.sqlite").exists(),
        "the metadata is in PostgreSQL, not the data dir"
    );
    let server = Server::start_with_flags(&data, &["--meta", &meta]);
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

    // The admin commands read it through HOTATE_META as well as --meta.
    let with_env = |args: &[&str]| {
        std::process::Command::new(bin("hotate-server"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("HOTATE_META", &meta)
            .stdin(Stdio::null())
            .output()
            .expect("run hotate-server")
    };
    let out = dir.path().join("latest.img");
    assert_ok(&with_env(&[
        "disk",
        "export",
        "lab",
        "--output",
        out.to_str().expect("path"),
    ]));
    same_file(&std::fs::read(&out).expect("export"), &pair.updated);
    assert_ok(&with_env(&["store", "verify"]));
    let updates: serde_json::Value =
        serde_json::from_slice(&with_env(&["--json", "update", "list"]).stdout).expect("json");
    assert_eq!(updates[0]["state"], "committed", "{updates}");

    // Without --meta the data dir holds no metadata; a database that cannot be reached,
    // a URL of another kind and an empty database are each told.
    let refused = |args: &[&str], says: &str| {
        let out = admin(&data, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    };
    refused(&["disk", "list"], "no Hotate data dir");
    refused(
        &[
            "--meta",
            "postgres://hotate@127.0.0.1:1/none",
            "disk",
            "list",
        ],
        "cannot reach the metadata database",
    );
    refused(
        &["--meta", "mysql://db/hotate", "disk", "list"],
        "only PostgreSQL",
    );
    if let Some(empty) = hotate_tests::postgres::fresh_database(test) {
        refused(&["--meta", &empty, "disk", "list"], "no Hotate metadata");
    }
}
