//! The real binaries as processes: a server on loopback with its data dir, and terminals
//! (a state dir with `terminal.toml`) running the client.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The user every harness server knows.
pub const USER: &str = "coadmin";
pub const PASSWORD: &str = "PasSw0rd";

/// Path of a workspace binary, built next to the running test or program.
///
/// # Panics
/// When the binary has not been built (`cargo build --workspace --bins` builds it).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs an admin command on a data dir.
pub fn admin(data: &Path, args: &[&str]) -> Output {
    Command::new(bin("hotate-server"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env("HOTATE_PASSWORD", PASSWORD)
        // English unless a test asks otherwise.
        .env("LANG", "C")
        .env_remove("LC_ALL")
        .stdin(Stdio::null())
        .output()
        .expect("run hotate-server")
}

/// Runs an admin command that must succeed; returns its stdout.
///
/// # Panics
/// When the command fails.
pub fn admin_ok(data: &Path, args: &[&str]) -> String {
    let out = admin(data, args);
    assert!(
        out.status.success(),
        "hotate-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs an admin command with `--json` and parses its output.
pub fn admin_json(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&admin_ok(data, &all)).expect("json output")
}

/// A data dir with the harness user and one imported disk.
#[derive(Debug)]
pub struct Site {
    pub data: PathBuf,
    pub disk_id: String,
    pub first_version: String,
}

impl Site {
    /// Creates the data dir under `dir` and imports `image` as disk `name`.
    pub fn new(dir: &Path, name: &str, image: &Path, block_size: u32) -> Self {
        let data = dir.join("data");
        admin_ok(&data, &["user", "add", USER]);
        let imported = admin_json(
            &data,
            &[
                "disk",
                "import",
                name,
                image.to_str().expect("utf-8 path"),
                "--block-size",
                &block_size.to_string(),
            ],
        );
        Self {
            data,
            disk_id: imported["disk_id"].as_str().expect("disk_id").to_owned(),
            first_version: imported["version"].as_str().expect("version").to_owned(),
        }
    }

    /// Terminal `name` (its state dir under `dir`) booted from the first version, whose
    /// differential disk is `image`.
    pub fn terminal(&self, dir: &Path, name: &str, image: &Path) -> Terminal {
        Terminal::new(dir, name, &self.disk_id, &self.first_version, image)
    }

    /// Exports a version (the latest when `None`) and returns its bytes.
    pub fn export(&self, disk: &str, version: Option<&str>, out: &Path) -> Vec<u8> {
        let mut args = vec![
            "disk",
            "export",
            disk,
            "--output",
            out.to_str().expect("path"),
        ];
        if let Some(v) = version {
            args.extend(["--version", v]);
        }
        admin_ok(&self.data, &args);
        std::fs::read(out).expect("read export")
    }

    /// A self-signed certificate for `hosts` made by `cert generate` under `dir`:
    /// the paths of `cert.pem` and `key.pem`.
    pub fn certificate(&self, dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let certs = dir.join("certs");
        let mut args = vec!["cert", "generate", "--out", certs.to_str().expect("path")];
        args.push("--host");
        args.extend_from_slice(hosts);
        admin_ok(&self.data, &args);
        (certs.join("cert.pem"), certs.join("key.pem"))
    }

    /// The state of the disk's updates, newest last.
    pub fn updates(&self) -> Vec<serde_json::Value> {
        admin_json(&self.data, &["update", "list"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A running `hotate-server serve`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub control: String,
    pub transfer: String,
}

impl Server {
    /// Starts a server on free loopback ports.
    pub fn start(data: &Path) -> Self {
        Self::start_with_flags(data, &[])
    }

    /// Starts a server with these `serve` arguments; waits for its `listening` line.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_with(data: &Path, args: &[&str]) -> Self {
        Self::start_env(data, args, &[])
    }

    /// As [`Server::start_with`], with these environment variables.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin("hotate-server"))
            .arg("--data")
            .arg(data)
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hotate-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addrs: HashMap<&str, &str> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|part| part.split_once('='))
            .collect();
        assert!(
            line.starts_with("listening "),
            "unexpected first line {line:?}"
        );
        // A server of one role listens on one port: the other stays empty.
        let port = |name: &str| addrs.get(name).copied().unwrap_or_default().to_owned();
        Self {
            control: port("control"),
            transfer: port("transfer"),
            child,
        }
    }

    /// Starts a transfer server (`serve --role transfer`) on a free loopback port,
    /// registered at its `http://` URL, with these environment variables.
    ///
    /// # Panics
    /// When no port is free or it does not start.
    pub fn start_transfer(data: &Path, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let args = [
            "--role",
            "transfer",
            "--transfer-listen",
            &listen,
            "--advertise-transfer",
            &url,
        ];
        Self::start_env(data, &args, env)
    }

    /// Starts a server on free loopback ports with these further `serve` flags.
    pub fn start_with_flags(data: &Path, flags: &[&str]) -> Self {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--transfer-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(flags);
        Self::start_with(data, &args)
    }

    /// Starts a server on free loopback ports with TLS from `cert` and `key`.
    pub fn start_tls(data: &Path, cert: &Path, key: &Path) -> Self {
        Self::start_with_flags(
            data,
            &[
                "--tls-cert",
                cert.to_str().expect("path"),
                "--tls-key",
                key.to_str().expect("path"),
            ],
        )
    }

    /// The server's peak resident memory so far, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.control)
    }

    /// Stops the server with SIGTERM (graceful), waiting for it.
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }

    /// Kills the server at once (SIGKILL), as a crash or a power cut would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM and waits; kills after 10 s.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A terminal: its state dir and differential disk.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub name: String,
    pub state: PathBuf,
    pub image: PathBuf,
}

impl Terminal {
    /// Writes `terminal.toml` for a terminal booted from `booted` of `disk_id`.
    pub fn new(dir: &Path, name: &str, disk_id: &str, booted: &str, image: &Path) -> Self {
        let state = dir.join(format!("state-{name}"));
        std::fs::create_dir_all(&state).expect("state dir");
        let terminal = Self {
            name: name.to_owned(),
            state,
            image: image.to_owned(),
        };
        terminal.write_config(disk_id, booted, "restore");
        terminal
    }

    pub fn write_config(&self, disk_id: &str, booted: &str, write_cache: &str) {
        std::fs::write(
            self.state.join("terminal.toml"),
            format!(
                "name = \"{}\"\ndisk_id = \"{disk_id}\"\nbooted_version = \"{booted}\"\nwrite_cache = \"{write_cache}\"\nimage = \"{}\"\nformat = \"raw\"\n",
                self.name,
                self.image.display()
            ),
        )
        .expect("write terminal.toml");
    }

    /// Sets the image's `format` in `terminal.toml`, and its `parent` image when given.
    pub fn set_format(&self, format: &str, parent: Option<&Path>) {
        let path = self.state.join("terminal.toml");
        let mut setting = format!("format = \"{format}\"");
        if let Some(parent) = parent {
            setting.push_str(&format!("\nparent = \"{}\"", parent.display()));
        }
        let text = std::fs::read_to_string(&path).expect("terminal.toml");
        std::fs::write(&path, text.replace("format = \"raw\"", &setting))
            .expect("write terminal.toml");
    }

    /// `write_cache` as `terminal.toml` says now.
    pub fn write_cache(&self) -> String {
        let text =
            std::fs::read_to_string(self.state.join("terminal.toml")).expect("terminal.toml");
        text.lines()
            .find_map(|l| l.strip_prefix("write_cache = "))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    }

    /// A client command for this terminal: English, harness credentials, no stdin.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("hotate-client"));
        cmd.arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("HOTATE_USER", USER)
            .env("HOTATE_PASSWORD", PASSWORD)
            .env("LANG", "C")
            .env_remove("LC_ALL")
            .env_remove("HOTATE_URL")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a client command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.client(args).output().expect("run hotate-client")
    }
}

/// Stdout and stderr of a finished command, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
