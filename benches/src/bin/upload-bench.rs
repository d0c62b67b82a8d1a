//! The whole upload on loopback against rsync, for a realistic image pair.
//!
//! `upload-bench [--size-mib N] [--change PERCENT] [--scattered | --repeats] [--ntfs] [--meta URL] [--store URL] [--block-size BYTES] [--link-rate MBIT] [--rtt MS] [--cold] [--dir DIR]`
//!
//! `--repeats` takes the install-like pair whose install copies runtime files into
//! several program folders (`hotate_tests::images::install_pair`). Every run reports the
//! floor: `zstd -19 --long=27` of the changed pages, and Hotate's bytes against it.
//! `--ntfs` makes the pair on NTFS (`mkntfs`, `ntfscp` from ntfs-3g) instead of ext4.
//! `--meta URL` and `--store URL` put the server's metadata in PostgreSQL and its chunks
//! in an S3-compatible bucket (the `AWS_*` variables name it), as `HOTATE_META` and
//! `HOTATE_STORE` for every command the bench runs.
//!
//! `--scattered` replaces the install with the worst case for block-level transfer: one
//! random 4 KiB page rewritten in every MiB of the base that holds data; the report then
//! adds how much the server's data dir grew for the bytes it received.
//!
//! Builds an ext4 image pair (see `hotate_tests::images`), imports the base, and times
//! `hotate-client update finish` of the updated disk, reporting image size, changed
//! bytes, bytes on the wire, wall time, MB/s, CPU seconds and peak RSS of client and
//! server. The same delta then goes through an rsync daemon on loopback with
//! `--inplace --no-whole-file`, with and without `-z --compress-choice=zstd`.
//! `--link-rate` and `--rtt` put the link emulator ([`hotate_benches::link`]: a rate cap and
//! half the RTT of delay in each direction) in front of both of Hotate's ports and rsync's,
//! and report each time against the ideal bytes / rate, with Hotate's time to its first
//! data byte and the time its upload left the link idle mid-stream (`HOTATE_TRACE=1`
//! prints the upload per 100 ms). `--cold` (root) empties the page cache before Hotate's
//! finish and before each rsync run: rsync otherwise reads the images the bench has just
//! written from memory, while Hotate reads the disk unbuffered.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hotate_benches::flags::Flags;
use hotate_benches::link::{self, LinkSpec};
use hotate_benches::measure::{Usage, proc_usage, run_measured};
use hotate_tests::harness::{Server, Site, Terminal, admin_ok, text};
use hotate_tests::images;
use hotate_tests::pages::ChangedPages;

const USAGE: &str = "upload-bench [--size-mib N] [--change PERCENT] [--scattered | --repeats] [--ntfs] \
[--meta URL] [--store URL] [--block-size BYTES] [--link-rate MBIT] [--rtt MS] [--cold] [--dir DIR]";

struct Args {
    size_mib: u64,
    change: u32,
    link_mbit: Option<f64>,
    rtt_ms: u64,
    block_size: u32,
    dir: PathBuf,
    scattered: bool,
    /// The install-like pair with repeated files.
    repeats: bool,
    /// NTFS instead of ext4.
    ntfs: bool,
    /// `HOTATE_META` and `HOTATE_STORE` of the server and its commands.
    meta: Option<String>,
    store: Option<String>,
    /// Drop the page cache before each tool runs, as after a terminal's fresh boot.
    cold: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        size_mib: 2048,
        change: 10,
        link_mbit: None,
        rtt_ms: 0,
        block_size: 1 << 20,
        dir: std::env::temp_dir(),
        scattered: false,
        repeats: false,
        ntfs: false,
        meta: None,
        store: None,
        cold: false,
    };
    let mut flags = Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--scattered" => args.scattered = true,
            "--repeats" => args.repeats = true,
            "--ntfs" => args.ntfs = true,
            "--cold" => args.cold = true,
            "--size-mib" => args.size_mib = flags.parse(&flag),
            "--change" => args.change = flags.parse(&flag),
            "--link-rate" => {
                let value = flags.value(&flag);
                match value.trim_end_matches("mbit").parse() {
                    Ok(mbit) => args.link_mbit = Some(mbit),
                    Err(_) => flags.fail(&format!("--link-rate {value}: megabits per second")),
                }
            }
            "--rtt" => {
                let value = flags.value(&flag);
                match value.trim_end_matches("ms").parse() {
                    Ok(ms) => args.rtt_ms = ms,
                    Err(_) => flags.fail(&format!("--rtt {value}: milliseconds")),
                }
            }
            "--dir" => args.dir = PathBuf::from(flags.value(&flag)),
            "--block-size" => args.block_size = flags.parse(&flag),
            "--meta" => args.meta = Some(flags.value(&flag)),
            "--store" => args.store = Some(flags.value(&flag)),
            other => flags.unknown(other),
        }
    }
    args
}

struct Rsync {
    child: std::process::Child,
    port: u16,
    module_dir: PathBuf,
}

impl Rsync {
    fn start(dir: &Path) -> Self {
        let module_dir = dir.join("rsync-module");
        std::fs::create_dir_all(&module_dir).expect("rsync module dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("probe")
            .local_addr()
            .expect("addr")
            .port();
        let conf = dir.join("rsyncd.conf");
        let mut f = std::fs::File::create(&conf).expect("rsyncd.conf");
        writeln!(
            f,
            "use chroot = no\n[disk]\n  path = {}\n  read only = no\n  uid = root\n  gid = root",
            module_dir.display()
        )
        .expect("write conf");
        let child = Command::new("rsync")
            .args([
                "--daemon",
                "--no-detach",
                "--address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&conf)
            .spawn()
            .expect("start rsync --daemon (install rsync)");
        std::thread::sleep(Duration::from_millis(500));
        Self {
            child,
            port,
            module_dir,
        }
    }

    /// Sends `updated` over the base copy in the module (the page cache dropped first when
    /// `cold`); returns (wall, bytes sent).
    fn run(
        &self,
        base: &Path,
        updated: &Path,
        port: u16,
        compress: bool,
        cold: bool,
    ) -> (Duration, u64) {
        let target = self.module_dir.join("disk.img");
        let _ = Command::new("cp")
            .arg("--sparse=always")
            .arg(base)
            .arg(&target)
            .status();
        settle_disk(cold);
        let mut cmd = Command::new("rsync");
        cmd.args(["--inplace", "--no-whole-file", "--stats"]);
        if compress {
            cmd.args(["-z", "--compress-choice=zstd"]);
        }
        cmd.arg(updated)
            .arg(format!("rsync://127.0.0.1:{port}/disk/disk.img"));
        let started = Instant::now();
        let out = cmd.output().expect("run rsync");
        let wall = started.elapsed();
        assert!(
            out.status.success(),
            "rsync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = String::from_utf8_lossy(&out.stdout);
        let sent = stats
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent: "))
            .map(|v| v.replace(',', ""))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (wall, sent)
    }
}

impl Drop for Rsync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Names the server's metadata and store for every command run from here on.
#[allow(unsafe_code)]
fn set_places(args: &Args) {
    for (name, value) in [("HOTATE_META", &args.meta), ("HOTATE_STORE", &args.store)] {
        if let Some(value) = value {
            // SAFETY: called first in `main`, before any other thread runs.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

fn main() {
    let args = parse_args();
    set_places(&args);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir_in(&args.dir).expect("bench dir");
    let size = args.size_mib << 20;
    eprintln!(
        "generating a {} MiB image pair in {}...",
        args.size_mib,
        dir.path().display()
    );
    let repeats = if args.repeats {
        images::Repeats::Runtimes
    } else {
        images::Repeats::None
    };
    let pair = if args.ntfs {
        images::fs_pair(
            images::FileSystem::Ntfs,
            repeats,
            dir.path(),
            size,
            args.change,
            2026,
        )
        .expect("--ntfs needs mkntfs and ntfscp (ntfs-3g)")
    } else if args.repeats {
        images::install_pair(dir.path(), size, args.change, 2026)
            .expect("--repeats needs mkfs.ext4 and debugfs (e2fsprogs)")
    } else {
        images::pair(dir.path(), size, args.change, 2026)
    };
    if args.scattered {
        scatter_pages(&pair.base, &pair.updated);
    }
    let changed = changed_bytes(&pair.base, &pair.updated, args.block_size as usize);

    let site = Site::new(dir.path(), "bench", &pair.base, args.block_size);
    let server = Server::start(&site.data);
    let terminal = site.terminal(dir.path(), "PC-001", &pair.updated);
    let start = terminal.run(&["--url", &server.url(), "update", "start"]);
    assert!(start.status.success(), "{}", text(&start));
    let spec = LinkSpec {
        mbit: args.link_mbit,
        one_way: Duration::from_millis(args.rtt_ms / 2),
    };
    let emulated = args.link_mbit.is_some() || args.rtt_ms > 0;
    let (server, link) = if emulated {
        let (server, counters) = through_link(&runtime, server, &site, &terminal, spec);
        (server, Some(counters))
    } else {
        (server, None)
    };
    let run = finish(
        &args,
        server,
        &site,
        &terminal,
        link.as_deref(),
        dir.path(),
        &pair.updated,
    );

    // After Hotate's finish: this process's memory would show in its client's peak RSS.
    let floor = ChangedPages::of(&pair.base, &pair.updated, args.block_size as usize).floor();
    let rsync = Rsync::start(dir.path());
    let rsync_port = if emulated {
        link::link(
            &runtime,
            &[SocketAddr::from(([127, 0, 0, 1], rsync.port))],
            spec,
        )
        .0[0]
            .port()
    } else {
        rsync.port
    };
    let rsync_z = rsync.run(&pair.base, &pair.updated, rsync_port, true, args.cold);
    let rsync_plain = rsync.run(&pair.base, &pair.updated, rsync_port, false, args.cold);
    let setting = format!(
        "image: {} MiB {} pair, block size {} KiB, {:.0} MB in changed blocks (install rewrote ~{}% of data), link: {}, page cache: {}",
        args.size_mib,
        pair.kind,
        args.block_size >> 10,
        changed as f64 / 1e6,
        args.change,
        if emulated {
            format!("emulated, {}", spec.describe())
        } else {
            "loopback".to_owned()
        },
        if args.cold {
            "dropped before each run"
        } else {
            "as the bench left it (rsync reads the images from memory)"
        }
    );
    report(&args, &setting, size, changed, &run, rsync_z, rsync_plain);
    println!(
        "floor (zstd -19 --long=27 of the changed pages): {:.1} MB; hotate's bytes on the wire = {:.2}x the floor",
        floor as f64 / 1e6,
        run.wire as f64 / floor.max(1) as f64
    );
}

/// Restarts `server` behind two emulated links (control and transfer, the transfer
/// port's with its own counters) and points the terminal's cached URL and recorded
/// transfer service at them; the data dir keeps the reservation.
fn through_link(
    runtime: &tokio::runtime::Runtime,
    server: Server,
    site: &Site,
    terminal: &Terminal,
    spec: LinkSpec,
) -> (Server, std::sync::Arc<link::Counters>) {
    let address = |a: &String| -> SocketAddr { a.parse().expect("server address") };
    let control_relay = link::link(runtime, &[address(&server.control)], spec).0[0];
    let (transfer_relay, counters) = link::link(runtime, &[address(&server.transfer)], spec);
    let relays = [control_relay, transfer_relay[0]];
    let (control, transfer) = (server.control.clone(), server.transfer.clone());
    server.stop();
    let advertise = format!("http://{}", relays[1]);
    let server = Server::start_with(
        &site.data,
        &[
            "--listen",
            &control,
            "--transfer-listen",
            &transfer,
            "--advertise-transfer",
            &advertise,
        ],
    );
    std::fs::write(
        terminal.state.join("server-url"),
        format!("http://{}\n", relays[0]),
    )
    .expect("server-url");
    let record = terminal.state.join("update.toml");
    let recorded = std::fs::read_to_string(&record).expect("update.toml");
    let direct = format!("transfer_url = \"http://{transfer}\"");
    assert!(recorded.contains(&direct), "{recorded}");
    std::fs::write(
        &record,
        recorded.replace(&direct, &format!("transfer_url = \"{advertise}\"")),
    )
    .expect("update.toml");
    (server, counters)
}

/// One measured finish, and what `hotate-client bench` predicted for it.
struct FinishRun {
    client: Usage,
    server_cpu: f64,
    server_rss: f64,
    /// Chunk bytes the server received.
    wire: u64,
    data_growth: u64,
    verified: bool,
    /// When the first byte reached the transfer port, and how long the link idled.
    trace: Option<(Duration, Duration)>,
    predicted: serde_json::Value,
}

/// Runs `hotate-client bench`, then the measured finish, exports the new version and
/// compares it with `updated`; stops the server.
fn finish(
    args: &Args,
    server: Server,
    site: &Site,
    terminal: &Terminal,
    link: Option<&link::Counters>,
    scratch: &Path,
    updated: &Path,
) -> FinishRun {
    // What `hotate-client bench` predicts for this finish, through the same link.
    let predicted = terminal.run(&["bench", "--json"]);
    assert!(
        predicted.status.success(),
        "bench failed:\n{}",
        text(&predicted)
    );
    let predicted: serde_json::Value =
        serde_json::from_slice(&predicted.stdout).expect("bench --json");
    if let Some(counters) = link {
        counters.reset();
    }
    let server_pid = server.pid();
    settle_disk(args.cold);
    let data_before = dir_bytes(&site.data);
    let (cpu_before, _) = proc_usage(server_pid);
    let log = std::env::var("HOTATE_LOG").unwrap_or_else(|_| "warn".into());
    let client = run_measured(
        terminal
            .client(&["update", "finish"])
            .env("HOTATE_LOG", log),
    );
    let (cpu_after, server_rss) = proc_usage(server_pid);
    assert!(client.success, "finish failed:\n{}", client.stdout);
    let data_growth = dir_bytes(&site.data).saturating_sub(data_before);
    let wire = site
        .updates()
        .last()
        .and_then(|u| u["bytes_received"].as_u64())
        .unwrap_or(0);
    let exported = scratch.join("exported.img");
    admin_ok(
        &site.data,
        &[
            "disk",
            "export",
            "bench",
            "--output",
            exported.to_str().expect("path"),
        ],
    );
    let verified = Command::new("cmp")
        .arg("-s")
        .arg(&exported)
        .arg(updated)
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&exported);
    server.stop();
    let trace = link.map(|c| {
        let steps = c.upload_trace();
        if std::env::var_os("HOTATE_TRACE").is_some() {
            // KB delivered per 100 ms, to see where the link idles.
            let per_tenth: Vec<String> = steps
                .chunks(10)
                .map(|c| (c.iter().sum::<u64>() / 1000).to_string())
                .collect();
            eprintln!("upload KB per 100 ms: {}", per_tenth.join(" "));
        }
        link::trace_summary(&steps)
    });
    FinishRun {
        client,
        server_cpu: cpu_after - cpu_before,
        server_rss,
        wire,
        data_growth,
        verified,
        trace,
        predicted,
    }
}

/// Prints the table and the ratios: Hotate's finish against rsync's runs (wall time
/// and bytes sent each).
fn report(
    args: &Args,
    setting: &str,
    size: u64,
    changed: u64,
    run: &FinishRun,
    (rsync_z_wall, rsync_z_sent): (Duration, u64),
    (rsync_wall, rsync_sent): (Duration, u64),
) {
    let mb = |b: u64| b as f64 / 1e6;
    let ideal = |bytes: u64| args.link_mbit.map(|mbit| bytes as f64 * 8.0 / (mbit * 1e6));
    println!("{setting}");
    println!(
        "| tool | wall time | on the wire | image MB/s | changes MB/s | vs ideal | CPU s (client / server) | peak RSS MiB (client / server) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |name: &str, wall: Duration, sent: u64, cpu: &str, rss: &str| {
        let secs = wall.as_secs_f64();
        let vs = ideal(sent).map_or("-".to_owned(), |i| format!("{:.0}%", 100.0 * secs / i));
        println!(
            "| {name} | {secs:.2} s | {:.1} MB | {:.0} | {:.0} | {vs} | {cpu} | {rss} |",
            mb(sent),
            mb(size) / secs,
            mb(changed) / secs
        );
    };
    let client = &run.client;
    row(
        "hotate",
        client.wall,
        run.wire,
        &format!("{:.2} / {:.2}", client.cpu, run.server_cpu),
        &format!("{:.0} / {:.0}", client.max_rss_mib, run.server_rss),
    );
    row("rsync -z zstd", rsync_z_wall, rsync_z_sent, "-", "-");
    row("rsync", rsync_wall, rsync_sent, "-", "-");
    if let Some((first, idle)) = run.trace {
        println!(
            "hotate on the link: first byte to the transfer port {:.2} s after the finish started, link idle {:.2} s mid-stream (10 ms steps without a byte)",
            first.as_secs_f64(),
            idle.as_secs_f64()
        );
    }
    let predicted = &run.predicted;
    let predicted_secs = predicted["predicted_finish_secs"].as_f64().unwrap_or(0.0);
    let predicted_bytes = predicted["bytes_to_send"].as_u64().unwrap_or(0);
    println!(
        "hotate-client bench predicted {predicted_secs:.2} s (bound by {}, link {:.1} MB/s, RTT {:.1} ms) and {:.1} MB: the finish took {:.0}% of the prediction and sent {:.0}% of its bytes",
        predicted["bound_by"].as_str().unwrap_or("?"),
        predicted["upload_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
        predicted["rtt_ms"].as_f64().unwrap_or(0.0),
        mb(predicted_bytes),
        100.0 * client.wall.as_secs_f64() / predicted_secs.max(1e-9),
        100.0 * run.wire as f64 / predicted_bytes.max(1) as f64,
    );
    println!(
        "server data dir grew {:.1} MB for {:.1} MB received ({:.1}x)",
        mb(run.data_growth),
        mb(run.wire),
        run.data_growth as f64 / run.wire.max(1) as f64
    );
    println!(
        "hotate wall time = {:.0}% of rsync-with-zstd's; bytes on the wire = {:.0}% of its; export verified: {}",
        100.0 * client.wall.as_secs_f64() / rsync_z_wall.as_secs_f64(),
        100.0 * run.wire as f64 / rsync_z_sent.max(1) as f64,
        run.verified
    );
}

/// Rewrites `updated` as `base` with one random 4 KiB page changed in every MiB that
/// holds data. A MiB at a time: the peak memory of this process would otherwise show in
/// the peak RSS `wait4` reports for the client it spawns.
fn scatter_pages(base: &Path, updated: &Path) {
    use std::io::{Read, Seek, SeekFrom};

    use rand::{Rng, SeedableRng};
    const MIB: usize = 1 << 20;
    const PAGE: usize = 4096;
    std::fs::copy(base, updated).expect("copy the base");
    let mut source = std::fs::File::open(base).expect("base image");
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .open(updated)
        .expect("updated image");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4096);
    let mut mib = vec![0u8; MIB];
    let mut offset = 0u64;
    loop {
        let got = source.read(&mut mib).expect("read base");
        if got == 0 {
            break;
        }
        let held = &mib[..got];
        if held.iter().any(|&b| b != 0) && got >= PAGE {
            let mut page = [0u8; PAGE];
            rng.fill(&mut page[..]);
            let at = rng.random_range(0..got / PAGE) * PAGE;
            target
                .seek(SeekFrom::Start(offset + at as u64))
                .expect("seek");
            target.write_all(&page).expect("write page");
        }
        offset += got as u64;
    }
}

/// Before a tool runs: writes what the bench wrote (so the tool does not pay for it), and
/// with `cold` (`--cold`) empties the page cache, so that every tool reads the images from
/// the disk, as Hotate's unbuffered reads always do. Dropping needs root.
fn settle_disk(cold: bool) {
    let _ = Command::new("sync").status();
    if cold {
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .expect("--cold drops the page cache: run as root (/proc/sys/vm/drop_caches)");
    }
}

/// Bytes of the files under `dir` (their apparent sizes).
fn dir_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sb", "--apparent-size"])
        .arg(dir)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Bytes in blocks that differ between two images.
fn changed_bytes(a: &Path, b: &Path, block: usize) -> u64 {
    use std::io::Read;
    let mut fa = std::fs::File::open(a).expect("open base");
    let mut fb = std::fs::File::open(b).expect("open updated");
    let (mut ba, mut bb) = (vec![0u8; block], vec![0u8; block]);
    let mut changed = 0;
    loop {
        let na = fa.read(&mut ba).expect("read");
        let nb = fb.read(&mut bb).expect("read");
        if na == 0 && nb == 0 {
            return changed;
        }
        if ba[..na] != bb[..nb] {
            changed += nb as u64;
        }
    }
}
