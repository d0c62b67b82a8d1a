//! What a child process cost: wall time, CPU seconds and peak RSS, from `wait4`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CPU seconds and peak RSS of a finished child, from `wait4`.
#[derive(Debug)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: f64,
    pub max_rss_mib: f64,
    pub success: bool,
    pub stdout: String,
}

#[allow(unsafe_code, clippy::zombie_processes)] // reaped by wait4 below
///
/// # Panics
/// When the command cannot be started or reaped.
pub fn run_measured(cmd: &mut Command) -> Usage {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; `pid` is our own child, reaped once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to the locals above.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let wall = started.elapsed();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: reader.join().unwrap_or_default(),
    }
}
