//! Shared pieces of the end-to-end tests, the demo and the throughput bench: the real
//! binaries as processes ([`harness`]), realistic disk images ([`images`]), and an HTTP
//! client ([`http`]) and a browser ([`webdriver`]) for the console; and what a test
//! does on a machine without a tool it needs ([`needs`]).

pub mod faultdisk;
pub mod harness;
pub mod http;
pub mod images;
pub mod pages;
pub mod postgres;
pub mod webdriver;

/// Whether the machine has `what` that `test` needs (a browser, a reference reader). When
/// it does not, the test says what it leaves out and why, except under `CI=true`, where
/// that fails it: so `cargo test` passes on a fresh machine and CI runs everything.
///
/// # Panics
/// Under `CI=true` when `what` is missing.
pub fn needs(test: &str, what: &str, found: bool) -> bool {
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs {what}, and CI must run it");
    }
    if !found {
        eprintln!("SKIPPED {test}: it needs {what}, which this machine lacks");
    }
    found
}

/// Whether `command` runs here (`command --version` starts).
pub fn has_command(command: &str) -> bool {
    std::process::Command::new(command)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}
