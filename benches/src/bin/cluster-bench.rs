//! `cluster-bench`: N terminals finishing at once (N = 1, 2, 4) against one and against
//! two transfer servers (`serve --role transfer`) behind a control server, on one
//! PostgreSQL database (a fresh one per run, from `HOTATE_TEST_POSTGRES`) and one store
//! (the shared data dir's, or `--store s3://...` with the AWS_* variables). Reports the
//! aggregate throughput and the transfer servers' CPU seconds per GB received.
//!
//! `target/release/cluster-bench [--size-mib 256] [--change 30] [--store URL]`; start
//! PostgreSQL with `tests/postgres.sh start DIR` first.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hotate_benches::flags::Flags;
use hotate_benches::measure::proc_usage;
use hotate_tests::harness::{Server, Terminal, admin_json, admin_ok, text};
use hotate_tests::images::{self, ImagePair};

struct Args {
    size_mib: u64,
    change: u32,
    store: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        size_mib: 256,
        change: 30,
        store: None,
    };
    let mut flags = Flags::new("cluster-bench [--size-mib 256] [--change 30] [--store URL]");
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--size-mib" => args.size_mib = flags.parse(&flag),
            "--change" => args.change = flags.parse(&flag),
            "--store" => args.store = Some(flags.value(&flag)),
            other => flags.unknown(other),
        }
    }
    args
}

struct Run {
    servers: usize,
    terminals: usize,
    wall: f64,
    changed: u64,
    received: u64,
    server_cpu: f64,
}

#[allow(unsafe_code)]
fn run(dir: &Path, pairs: &[ImagePair], changed: u64, servers: usize, terminals: usize) -> Run {
    let meta = hotate_tests::postgres::fresh_database("cluster-bench")
        .expect("cluster-bench needs HOTATE_TEST_POSTGRES (tests/postgres.sh start DIR)");
    // SAFETY: no other thread of this process reads the environment meanwhile.
    unsafe { std::env::set_var("HOTATE_META", &meta) };
    let data = dir.join(format!("data-{servers}-{terminals}"));
    admin_ok(&data, &["user", "add", hotate_tests::harness::USER]);
    let control = Server::start_with(&data, &["--role", "control", "--listen", "127.0.0.1:0"]);
    let transfers: Vec<Server> = (0..servers)
        .map(|_| Server::start_transfer(&data, &[]))
        .collect();
    let mut started = Vec::new();
    for (i, pair) in pairs.iter().take(terminals).enumerate() {
        let name = format!("lab{i}");
        let imported = admin_json(
            &data,
            &["disk", "import", &name, pair.base.to_str().expect("path")],
        );
        let terminal = Terminal::new(
            &dir.join(format!("run-{servers}-{terminals}")),
            &format!("PC-{i:03}"),
            imported["disk_id"].as_str().expect("disk_id"),
            imported["version"].as_str().expect("version"),
            &pair.updated,
        );
        let start = terminal.run(&["--url", &control.url(), "update", "start"]);
        assert!(start.status.success(), "{}", text(&start));
        started.push(terminal);
    }
    let cpu_before: f64 = transfers.iter().map(|t| proc_usage(t.pid()).0).sum();
    let began = Instant::now();
    let finishes: Vec<_> = started
        .iter()
        .map(|t| {
            t.client(&["update", "finish"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("finish")
        })
        .collect();
    for finish in finishes {
        let out = finish.wait_with_output().expect("finish");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wall = began.elapsed().as_secs_f64();
    let server_cpu: f64 = transfers.iter().map(|t| proc_usage(t.pid()).0).sum::<f64>() - cpu_before;
    let updates = admin_json(&data, &["update", "list"]);
    let received = updates.as_array().map_or(0, |u| {
        u.iter().filter_map(|u| u["bytes_received"].as_u64()).sum()
    });
    for server in transfers {
        server.stop();
    }
    control.stop();
    let _ = Command::new("rm").arg("-rf").arg(&data).status();
    Run {
        servers,
        terminals,
        wall,
        changed: changed * terminals as u64,
        received,
        server_cpu,
    }
}

#[allow(unsafe_code)]
fn main() {
    let args = parse_args();
    if let Some(store) = &args.store {
        // SAFETY: first in `main`, before any other thread runs.
        unsafe { std::env::set_var("HOTATE_STORE", store) };
    }
    let dir = tempfile::tempdir().expect("bench dir");
    let size = args.size_mib << 20;
    eprintln!("generating four {} MiB pairs...", args.size_mib);
    let pairs: Vec<ImagePair> = (0..4)
        .map(|i| {
            let at = dir.path().join(format!("pair{i}"));
            std::fs::create_dir_all(&at).expect("pair dir");
            images::synthetic_pair(&at, size, args.change, 300 + i)
        })
        .collect();
    let changed = changed_bytes(&pairs[0].base, &pairs[0].updated);
    println!(
        "{} MiB pairs, {:.0} MB of changed blocks each; store: {}; {} cores",
        args.size_mib,
        changed as f64 / 1e6,
        args.store.as_deref().unwrap_or("the shared data dir"),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| transfer servers | terminals | wall time | changed content MB/s (all) | received MB | transfer servers' CPU s per GB received |"
    );
    println!("|---|---|---|---|---|---|");
    for servers in [1, 2] {
        for terminals in [1, 2, 4] {
            let r = run(dir.path(), &pairs, changed, servers, terminals);
            println!(
                "| {} | {} | {:.2} s | {:.0} | {:.1} | {:.1} |",
                r.servers,
                r.terminals,
                r.wall,
                r.changed as f64 / 1e6 / r.wall,
                r.received as f64 / 1e6,
                r.server_cpu / (r.received as f64 / 1e9).max(1e-9)
            );
        }
    }
}

/// Bytes of the 1 MiB blocks that differ between two images.
fn changed_bytes(a: &Path, b: &Path) -> u64 {
    let (a, b) = (
        std::fs::read(a).expect("base"),
        std::fs::read(b).expect("updated"),
    );
    a.chunks(1 << 20)
        .zip(b.chunks(1 << 20))
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.len() as u64)
        .sum()
}
