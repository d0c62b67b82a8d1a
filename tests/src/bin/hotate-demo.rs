//! The demo: the whole terminal-side update on loopback, on a generated disk.
//!
//! `hotate-demo [SIZE_MIB] [CHANGE_PERCENT]` (defaults 256 and 10): starts `hotate-server`
//! with a fresh data dir, imports a generated base image (a real ext4 filesystem where
//! e2fsprogs is installed), runs `update start` on a terminal, changes its disk the way a
//! software install does, runs `update finish`, exports the new version, verifies it byte
//! for byte, and prints the throughput and the bytes sent.

use std::process::ExitCode;
use std::time::Instant;

use hotate_tests::harness::{Server, Site, text};
use hotate_tests::images;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let change: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("temporary dir");
    println!("Generating a {size_mib} MiB disk and an install changing ~{change}% of its data...");
    let pair = images::pair(dir.path(), size_mib << 20, change, 2026);
    println!("  {} image pair in {}", pair.kind, dir.path().display());

    let site = Site::new(dir.path(), "demo-disk", &pair.base, 1 << 20);
    println!(
        "Imported disk demo-disk ({}), version {}.",
        site.disk_id, site.first_version
    );
    let server = Server::start(&site.data);
    println!(
        "Server listening: control={} transfer={}",
        server.control, server.transfer
    );

    // The terminal boots the base version; its differential disk starts as the base.
    let disk = dir.path().join("terminal-disk.img");
    std::fs::copy(&pair.base, &disk).expect("copy base");
    let terminal = site.terminal(dir.path(), "PC-001", &disk);
    let step = |name: &str, out: std::process::Output| {
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{name} failed:\n{}", text(&out));
            return false;
        }
        true
    };
    println!("\n$ hotate-client update start");
    if !step(
        "start",
        terminal.run(&["--url", &server.url(), "update", "start"]),
    ) {
        return ExitCode::FAILURE;
    }

    println!("\n(the administrator installs software: the disk changes)");
    std::fs::copy(&pair.updated, &disk).expect("apply the install");

    println!("\n$ hotate-client update finish");
    let started = Instant::now();
    let finish = terminal.run(&["update", "finish", "--comment", "Demo install"]);
    let elapsed = started.elapsed();
    let summary = String::from_utf8_lossy(&finish.stdout).into_owned();
    if !step("finish", finish) {
        return ExitCode::FAILURE;
    }

    let exported = dir.path().join("exported.img");
    let bytes = site.export("demo-disk", None, &exported);
    let expected = std::fs::read(&disk).expect("read terminal disk");
    let same = bytes == expected;
    let sent = summary
        .split(", sent ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?");
    println!("\n| image | changed | sent | wall time | image MB/s | verified |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {size_mib} MiB ({}) | ~{change}% of data | {sent} MB | {:.2} s | {:.0} | {} |",
        pair.kind,
        elapsed.as_secs_f64(),
        (size_mib << 20) as f64 / 1e6 / elapsed.as_secs_f64(),
        if same { "byte for byte" } else { "MISMATCH" }
    );
    server.stop();
    if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
