//! `update finish` of an overlay against the raw disks it stands for.
//!
//! `overlay-bench [--size-mib 16384] [--change-mib 500] [--overlay qcow2|vhdx] [--dir DIR]`
//!
//! With `--overlay vhdx` the changes go into a VHDX differencing image of the disk's VHDX
//! (written by the engine) instead of a qcow2 overlay, and the full raw copy is left out
//! (three 16 GiB files would not fit on this machine's disk).
//!
//! A disk of `size` MiB whose every 1 MiB block holds its own (compressible) content is
//! imported; `change` random 1 MiB blocks are then written three ways: into a qcow2
//! overlay on the base image (by qemu-io), into a full raw copy of the disk, and into a
//! raw disk of only `change` MiB (imported as its own disk, every block changed), each
//! with bytes of its own so that no upload finds another's chunks stored. Each is
//! uploaded with `update finish` and exported back for a byte-for-byte check; the table
//! gives wall time and the bytes the client read (`rchar` of /proc/PID/io, sampled until
//! it exits).

use hotate_benches::flags::Flags;
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
    if std::env::var_os("HOTATE_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let elapsed = started.elapsed();
    let read = sampler.join().unwrap_or(0);
    assert!(out.status.success(), "{}", text(&out));
    (elapsed, read, out)
}

fn main() {
    let (size, change, base_dir, kind) = parse_args();
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

    let vhdx = kind == "vhdx";
    let import = |name: &str, image: &Path| {
        admin_json(
            &site_data(d),
            &[
                "disk",
                "import",
                name,
                image.to_str().expect("path"),
                "--block-size",
                &MIB.to_string(),
            ],
        )
    };
    let site = Site::new(d, "big", &base, MIB as u32);
    let big_raw = (!vhdx).then(|| import("big-raw", &base));
    let small = import("small", &small_base);
    let server = Server::start(&site.data);

    // The overlay on the base image: qcow2 by qemu-io, or a VHDX differencing image.
    let overlay = make_overlay(d, vhdx, &base, &offsets, &changes);
    // The same changes in a full raw copy, and in the small disk.
    let full = d.join("full.raw");
    let small_updated = d.join("small-updated.raw");
    std::fs::copy(&small_base, &small_updated).expect("copy");
    if !vhdx {
        std::fs::copy(&base, &full).expect("copy");
    }
    write_changes(
        (!vhdx).then_some((full.as_path(), full_changes.as_slice())),
        &small_updated,
        &small_changes,
        &offsets,
    );

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
        // Nothing written before (the generated images) is left for this finish's
        // durable commits to flush.
        let _ = Command::new("sync").status();
        measured(t.client(&["update", "finish"]))
    };
    let id = |v: &serde_json::Value, key: &str| v[key].as_str().expect(key).to_owned();
    let (t_overlay, r_overlay, _) =
        run("PC-O", &site.disk_id, &site.first_version, &overlay, &kind);
    let full_run = big_raw.as_ref().map(|big| {
        run(
            "PC-F",
            &id(big, "disk_id"),
            &id(big, "version"),
            &full,
            "raw",
        )
    });
    let (t_small, r_small, _) = run(
        "PC-S",
        &id(&small, "disk_id"),
        &id(&small, "version"),
        &small_updated,
        "raw",
    );
    // Every version exports as its image, compared a span at a time.
    let mut checks = vec![("big", overlay.clone()), ("small", small_updated.clone())];
    if !vhdx {
        checks.push(("big-raw", full.clone()));
    }
    for (disk, image) in checks {
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
        assert!(same_content(&out, &image), "{disk} exported differently");
        let _ = std::fs::remove_file(out);
    }

    let mut rows = vec![(
        format!("{kind} overlay on the {size} MiB disk"),
        t_overlay,
        r_overlay,
    )];
    if let Some((t, r, _)) = full_run {
        rows.push((format!("raw {size} MiB disk, same changes"), t, r));
    }
    rows.push((
        format!("raw {change} MiB disk, every block changed"),
        t_small,
        r_small,
    ));
    print_table(size, change, &rows);
}

fn site_data(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Whether a raw file holds what `image` (any format) reads as, 16 MiB at a time.
fn same_content(raw: &Path, image: &Path) -> bool {
    use std::io::Read;
    let source =
        hotate_engine::source::open(image, hotate_engine::Format::Auto, None).expect("open");
    let mut file = std::fs::File::open(raw).expect("raw");
    let size = source.size();
    let mut buf = hotate_engine::direct_io::AlignedBuf::zeroed(16 << 20);
    let mut theirs = vec![0u8; 16 << 20];
    let mut at = 0;
    while at < size {
        let len = (size - at).min(16 << 20) as usize;
        source.read_at(at, len, &mut buf).expect("read");
        file.read_exact(&mut theirs[..len]).expect("read raw");
        if buf[..len] != theirs[..len] {
            return false;
        }
        at += len as u64;
    }
    true
}

/// `--size-mib N --change-mib N --dir DIR --overlay qcow2|vhdx`.
fn parse_args() -> (u64, u64, PathBuf, String) {
    let (mut size, mut change, mut base_dir) = (16_384u64, 500u64, std::env::temp_dir());
    let mut kind = "qcow2".to_owned();
    let mut flags = Flags::new(
        "overlay-bench [--size-mib N] [--change-mib N] [--dir DIR] [--overlay qcow2|vhdx]",
    );
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--size-mib" => size = flags.parse(&flag),
            "--change-mib" => change = flags.parse(&flag),
            "--dir" => base_dir = PathBuf::from(flags.value(&flag)),
            "--overlay" => kind = flags.value(&flag),
            other => flags.unknown(other),
        }
    }
    (size, change, base_dir, kind)
}

/// The changes written at `offsets` over `base` (in `d`) as a qcow2 overlay by qemu-io,
/// or as a VHDX differencing image by the engine over a VHDX copy of `base`.
fn make_overlay(
    d: &Path,
    vhdx: bool,
    base: &Path,
    offsets: &[u64],
    changes: &[PathBuf],
) -> PathBuf {
    if vhdx {
        let parent = d.join("base.vhdx");
        let status = Command::new("qemu-img")
            .args(["convert", "-O", "vhdx", "-o", "block_size=1M"])
            .args([base, &parent])
            .status()
            .expect("qemu-img");
        assert!(status.success());
        let writes: Vec<(u64, Vec<u8>)> = offsets
            .iter()
            .zip(changes)
            .map(|(offset, file)| (*offset, std::fs::read(file).expect("change")))
            .collect();
        let child = d.join("terminal.vhdx");
        hotate_engine::source::write_vhdx_differencing(&child, &parent, "base.vhdx", &writes)
            .expect("child");
        // Imported and converted: its room is needed for the export check.
        std::fs::remove_file(base).expect("remove base.raw");
        child
    } else {
        let overlay = d.join("overlay.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"])
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(status.success());
        let mut io = Command::new("qemu-io");
        for (file, offset) in changes.iter().zip(offsets) {
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
        overlay
    }
}

/// The same changes in a full raw copy (`full`: its path and changes, made from a copy
/// of the base beforehand) and in the small disk, at `offsets` and one per MiB.
fn write_changes(
    full: Option<(&Path, &[PathBuf])>,
    small_updated: &Path,
    small_changes: &[PathBuf],
    offsets: &[u64],
) {
    use std::os::unix::fs::FileExt;
    let full = full.map(|(path, changes)| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("full");
        (file, changes)
    });
    let small = std::fs::OpenOptions::new()
        .write(true)
        .open(small_updated)
        .expect("small");
    for (i, offset) in offsets.iter().enumerate() {
        if let Some((full, changes)) = &full {
            let data = std::fs::read(&changes[i]).expect("change");
            full.write_all_at(&data, *offset).expect("write");
        }
        let data = std::fs::read(&small_changes[i]).expect("change");
        small.write_all_at(&data, i as u64 * MIB).expect("write");
    }
    if let Some((full, _)) = &full {
        full.sync_all().expect("sync");
    }
    small.sync_all().expect("sync");
}

/// The table of finishes: wall time and bytes the client read, and the overlay's ratios.
fn print_table(size: u64, change: u64, rows: &[(String, Duration, u64)]) {
    println!("disk {size} MiB, {change} MiB changed in 1 MiB blocks (random data), 1 MiB blocks");
    println!("| image | finish wall time | bytes the client read |");
    println!("|---|---|---|");
    for (what, t, r) in rows {
        println!(
            "| {what} | {:.2} s | {:.1} MB |",
            t.as_secs_f64(),
            *r as f64 / 1e6
        );
    }
    let (overlay, small) = (&rows[0], &rows[rows.len() - 1]);
    println!(
        "overlay finish = {:.2}x the {change} MiB raw finish; read {:.1}x the changes",
        overlay.1.as_secs_f64() / small.1.as_secs_f64(),
        overlay.2 as f64 / (change * MIB) as f64
    );
}
