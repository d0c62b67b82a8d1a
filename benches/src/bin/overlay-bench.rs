//! `update finish` of an overlay against the raw disks it stands for.
//!
//! `overlay-bench [--size-mib 16384] [--change-mib 500] [--dir DIR]`
//!
//! A disk of `size` MiB whose every 1 MiB block holds its own (compressible) content is
//! imported; `change` random 1 MiB blocks are then written three ways: into a qcow2
//! overlay on the base image (by qemu-io), into a full raw copy of the disk, and into a
//! raw disk of only `change` MiB (imported as its own disk, every block changed), each
//! with bytes of its own so that no upload finds another's chunks stored. Each is
//! uploaded with `update finish` and exported back for a byte-for-byte check; the table
//! gives wall time and the bytes the client read (`rchar` of /proc/PID/io, sampled until
//! it exits).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotate_tests::harness::{Server, Site, Terminal, admin_json, admin_ok, text};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn pattern_disk(path: &Path, mib: u64) {
    let mut out =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).expect("create"));
    let mut block = vec![0u8; MIB as usize];
    for i in 0..mib {
        for (j, word) in block.chunks_mut(8).enumerate() {
            word.copy_from_slice(&(i.wrapping_mul(0x9e37_79b9) ^ (j as u64 & 0xff)).to_le_bytes());
        }
        out.write_all(&block).expect("write");
    }
    out.flush().expect("flush");
}

/// `count` random 1 MiB blocks, each with its own file of random bytes; each `set` has
/// other bytes, so that no upload finds another's chunks already stored.
fn change_files(dir: &Path, count: u64, set: u64) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("change-{set}-{i}.bin"));
            let mut data = vec![0u8; MIB as usize];
            rand::rngs::StdRng::seed_from_u64(i + (set << 32)).fill(&mut data[..]);
            std::fs::write(&path, data).expect("change");
            path
        })
        .collect()
}

/// Runs a client command, sampling its read bytes; returns wall time, bytes and output.
fn measured(mut cmd: Command) -> (Duration, u64, std::process::Output) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut last = 0;
        while let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            if let Some(v) = io.lines().find_map(|l| l.strip_prefix("rchar: ")) {
                last = v.trim().parse().unwrap_or(last);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        last
    });
    let out = child.wait_with_output().expect("wait");
    let elapsed = started.elapsed();
    let read = sampler.join().unwrap_or(0);
    assert!(out.status.success(), "{}", text(&out));
    (elapsed, read, out)
}

fn main() {
    let (mut size, mut change, mut base_dir) = (16_384u64, 500u64, std::env::temp_dir());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => size = value.parse().expect("--size-mib N"),
            "--change-mib" => change = value.parse().expect("--change-mib N"),
            "--dir" => base_dir = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = tempfile::tempdir_in(base_dir).expect("tempdir");
    let d = dir.path();
    eprintln!(
        "generating a {size} MiB disk and {change} MiB of changes in {}...",
        d.display()
    );
    let base = d.join("base.raw");
    pattern_disk(&base, size);
    let small_base = d.join("small.raw");
    pattern_disk(&small_base, change);
    let changes = change_files(d, change, 0);
    let full_changes = change_files(d, change, 1);
    let small_changes = change_files(d, change, 2);
    let step = size / change;
    let offsets: Vec<u64> = (0..change)
        .map(|i| (i * step + (i * 7919) % step.max(1)) * MIB)
        .collect();

    let site = Site::new(d, "big", &base, MIB as u32);
    let big_raw = admin_json(
        &site.data,
        &[
            "disk",
            "import",
            "big-raw",
            base.to_str().expect("path"),
            "--block-size",
            &MIB.to_string(),
        ],
    );
    let small = admin_json(
        &site.data,
        &[
            "disk",
            "import",
            "small",
            small_base.to_str().expect("path"),
            "--block-size",
            &MIB.to_string(),
        ],
    );
    let server = Server::start(&site.data);

    // The qcow2 overlay on the base image.
    let overlay = d.join("overlay.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"])
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let mut io = Command::new("qemu-io");
    for (file, offset) in changes.iter().zip(&offsets) {
        io.arg("-c")
            .arg(format!("write -s {} {offset} 1M", file.display()));
    }
    assert!(
        io.arg(&overlay)
            .stdout(Stdio::null())
            .status()
            .expect("qemu-io")
            .success()
    );
    // The same changes in a full raw copy, and in the small disk.
    let full = d.join("full.raw");
    std::fs::copy(&base, &full).expect("copy");
    let small_updated = d.join("small-updated.raw");
    std::fs::copy(&small_base, &small_updated).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open(&full)
            .expect("full");
        let small = std::fs::OpenOptions::new()
            .write(true)
            .open(&small_updated)
            .expect("small");
        for (i, offset) in offsets.iter().enumerate() {
            let data = std::fs::read(&full_changes[i]).expect("change");
            full.write_all_at(&data, *offset).expect("write");
            let data = std::fs::read(&small_changes[i]).expect("change");
            small.write_all_at(&data, i as u64 * MIB).expect("write");
        }
        full.sync_all().expect("sync");
        small.sync_all().expect("sync");
    }

    let run = |name: &str, disk: &str, version: &str, image: &Path, format: &str| {
        let t = Terminal::new(d, name, disk, version, image);
        std::fs::write(
            t.state.join("terminal.toml"),
            std::fs::read_to_string(t.state.join("terminal.toml"))
                .expect("toml")
                .replace("format = \"raw\"", &format!("format = \"{format}\"")),
        )
        .expect("toml");
        let start = t.run(&["--url", &server.url(), "update", "start"]);
        assert!(start.status.success(), "{}", text(&start));
        measured(t.client(&["update", "finish"]))
    };
    let id = |v: &serde_json::Value, key: &str| v[key].as_str().expect(key).to_owned();
    let (t_overlay, r_overlay, _) = run(
        "PC-Q",
        &site.disk_id,
        &site.first_version,
        &overlay,
        "qcow2",
    );
    let (t_full, r_full, _) = run(
        "PC-F",
        &id(&big_raw, "disk_id"),
        &id(&big_raw, "version"),
        &full,
        "raw",
    );
    let (t_small, r_small, _) = run(
        "PC-S",
        &id(&small, "disk_id"),
        &id(&small, "version"),
        &small_updated,
        "raw",
    );
    // Every version exports as its image (compared by qemu-img, streaming).
    for (disk, image, format) in [
        ("big", &overlay, "qcow2"),
        ("big-raw", &full, "raw"),
        ("small", &small_updated, "raw"),
    ] {
        let out = d.join("check.raw");
        admin_ok(
            &site.data,
            &[
                "disk",
                "export",
                disk,
                "--output",
                out.to_str().expect("path"),
            ],
        );
        let same = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", format])
            .args([&out, image])
            .status()
            .expect("qemu-img");
        assert!(same.success(), "{disk} exported differently");
        let _ = std::fs::remove_file(out);
    }

    println!("disk {size} MiB, {change} MiB changed in 1 MiB blocks (random data), 1 MiB blocks");
    println!("| image | finish wall time | bytes the client read |");
    println!("|---|---|---|");
    for (what, t, r) in [
        (
            format!("qcow2 overlay on the {size} MiB disk"),
            t_overlay,
            r_overlay,
        ),
        (format!("raw {size} MiB disk, same changes"), t_full, r_full),
        (
            format!("raw {change} MiB disk, every block changed"),
            t_small,
            r_small,
        ),
    ] {
        println!(
            "| {what} | {:.2} s | {:.1} MB |",
            t.as_secs_f64(),
            r as f64 / 1e6
        );
    }
    println!(
        "overlay finish = {:.2}x the {change} MiB raw finish; read {:.1}x the changes",
        t_overlay.as_secs_f64() / t_small.as_secs_f64(),
        r_overlay as f64 / (change * MIB) as f64
    );
}
