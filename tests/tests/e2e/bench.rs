//! `hotate-client bench`: what it measures and predicts, that it changes nothing on the
//! server, and that the bytes it predicts are the bytes a finish then sends.

use serde_json::Value;

use hotate_tests::harness::admin_json;

use super::*;

fn bench(s: &Setup, args: &[&str]) -> Value {
    let url = s.server.url();
    let mut all = vec!["--url", &url, "bench", "--json", "--link-seconds", "1"];
    all.extend_from_slice(args);
    let out = s.terminal.run(&all);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn bench_predicts_a_finish_and_changes_nothing_on_the_server() {
    let s = setup_changing(16 << 20, 30, 81);
    // It predicts the finish of the update in progress: without one it says to start.
    let url = s.server.url();
    let none = s
        .terminal
        .run(&["--url", &url, "bench", "--link-seconds", "1"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(
        text(&none).contains("update start` first"),
        "{}",
        text(&none)
    );
    s.start_update();
    let updates_before = admin_json(&s.site.data, &["update", "list"]);
    let stats_before = admin_json(&s.site.data, &["store", "stats"]);
    let report = bench(&s, &[]);
    for key in [
        "rtt_ms",
        "upload_bytes_per_sec",
        "disk_read_bytes_per_sec",
        "hash_bytes_per_sec",
        "compress_bytes_per_sec",
        "predicted_finish_secs",
        "dry_run_secs",
    ] {
        assert!(report[key].as_f64().expect(key) > 0.0, "{key}: {report}");
    }
    assert!(report["upload_measured_bytes"].as_u64().expect("measured") > 0);
    assert_eq!(report["image_size"], 16 << 20);
    assert_eq!(
        report["bytes_to_read"],
        16 << 20,
        "a raw image without holes"
    );
    let to_send = report["bytes_to_send"].as_u64().expect("bytes_to_send");
    assert!(to_send > 0 && to_send < 16 << 20, "{report}");
    assert!(
        ["disk", "hashing", "compression", "link"]
            .contains(&report["bound_by"].as_str().expect("bound_by")),
        "{report}"
    );
    // Nothing changed on the server: the update as it was, no chunk.
    assert_eq!(
        admin_json(&s.site.data, &["update", "list"]),
        updates_before
    );
    assert_eq!(updates_before[0]["state"], "reserved");
    assert_eq!(admin_json(&s.site.data, &["store", "stats"]), stats_before);

    // A capped finish: the prediction assumes the cap.
    let capped = bench(&s, &["--limit-rate", "512k"]);
    assert!(capped["upload_bytes_per_sec"].as_f64().expect("rate") <= 512.0 * 1024.0);
    assert_eq!(capped["bound_by"], "link");
    let floor = to_send as f64 / (512.0 * 1024.0);
    assert!(
        capped["predicted_finish_secs"].as_f64().expect("predicted") >= floor,
        "{capped}"
    );

    // In Japanese, as people read it.
    let ja = s
        .terminal
        .run(&["--lang", "ja", "bench", "--link-seconds", "1"]);
    assert_ok(&ja);
    let shown = text(&ja);
    assert!(
        shown.contains("予測所要時間") && shown.contains("律速段階"),
        "{shown}"
    );

    // The finish then sends exactly the predicted bytes.
    assert_ok(&s.terminal.run(&["update", "finish"]));
    let received = s.site.updates()[0]["bytes_received"]
        .as_u64()
        .expect("received");
    assert_eq!(received, to_send);
    assert_latest_is(&s.site, s.dir.path(), &s.pair.updated);
}
