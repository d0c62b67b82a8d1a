//! An ext4 file system on `hotate-faultdisk` (a FUSE file with a volatile write cache,
//! through a loop device), for tests that cut the power or fail writes under a server's
//! data dir. Needs root, `/dev/fuse`, loop devices and e2fsprogs: [`FaultyDisk::check`]
//! says what is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::bin;

/// A mounted ext4 file system on a disk whose cache a test controls.
#[derive(Debug)]
pub struct FaultyDisk {
    /// FUSE mount point holding `disk` and `ctl`.
    fuse: PathBuf,
    daemon: Child,
    loop_device: String,
    mount: PathBuf,
}

/// Runs a command that must succeed; returns its stdout.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

impl FaultyDisk {
    /// What this machine lacks for a faulty disk, if anything.
    pub fn check() -> Result<(), String> {
        if !cfg!(target_os = "linux") {
            return Err("not Linux".into());
        }
        let root = run("id", &["-u"]).map(|uid| uid.trim() == "0");
        if root != Ok(true) {
            return Err("not root (mounting needs it)".into());
        }
        for device in ["/dev/fuse", "/dev/loop-control"] {
            if !Path::new(device).exists() {
                return Err(format!("no {device}"));
            }
        }
        for tool in ["losetup", "mkfs.ext4", "e2fsck", "filefrag"] {
            if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
                return Err(format!("no {tool}"));
            }
        }
        Ok(())
    }

    /// Whether a test that needs a faulty disk runs here: yes when the machine has what
    /// it takes; otherwise the test says why and skips, except under `CI=true`, where a
    /// missing piece fails it.
    ///
    /// # Panics
    /// Under `CI=true` when something is missing.
    pub fn available(test: &str) -> bool {
        match Self::check() {
            Ok(()) => true,
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{test} needs a faulty disk, and CI must run it: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: it needs a faulty disk, and {why}");
                false
            }
        }
    }

    /// A fresh ext4 file system of `size` bytes under `dir`, mounted at `dir/mnt`.
    ///
    /// # Panics
    /// When any step fails (call [`FaultyDisk::available`] first).
    pub fn create(dir: &Path, size: u64) -> Self {
        let platter = dir.join("platter");
        std::fs::File::create(&platter)
            .and_then(|f| f.set_len(size))
            .expect("platter file");
        let fuse = dir.join("fuse");
        let mount = dir.join("mnt");
        for d in [&fuse, &mount] {
            std::fs::create_dir_all(d).expect("mount point");
        }
        let daemon = Command::new(bin("hotate-faultdisk"))
            .arg(&platter)
            .arg(&fuse)
            .stdin(Stdio::null())
            .spawn()
            .expect("start hotate-faultdisk");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fuse.join("ctl").exists() {
            assert!(Instant::now() < deadline, "hotate-faultdisk did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        let loop_device = run("losetup", &["-f", "--show", path_str(&fuse.join("disk"))])
            .expect("losetup")
            .trim()
            .to_owned();
        let disk = Self {
            fuse,
            daemon,
            loop_device,
            mount,
        };
        run("mkfs.ext4", &["-q", "-b", "4096", &disk.loop_device]).expect("mkfs.ext4");
        disk.mount_fs();
        disk
    }

    fn mount_fs(&self) {
        run("mount", &[&self.loop_device, path_str(&self.mount)]).expect("mount ext4");
    }

    /// Where the file system is mounted.
    pub fn root(&self) -> &Path {
        &self.mount
    }

    /// Sends commands to the disk (see `hotate-faultdisk`).
    ///
    /// # Panics
    /// When the disk refuses them.
    pub fn control(&self, commands: &str) {
        std::fs::write(self.fuse.join("ctl"), format!("{commands}\n")).expect("write ctl");
    }

    /// The disk's counter `name` (writes, flushes, failed_writes, cuts, pages_lost, ...).
    pub fn counter(&self, name: &str) -> u64 {
        let report = std::fs::read_to_string(self.fuse.join("ctl")).expect("read ctl");
        report
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in {report}"))
    }

    /// A power cut, then the restart: what the disk's cache held is lost (but for a random
    /// half of it with `survivors_seed`) and the disk fails every access; `stop` then
    /// kills the processes that used it; the file system is unmounted, checked with
    /// `e2fsck -p` (which replays the journal) and mounted again. Returns how long the
    /// check and mount took.
    ///
    /// # Panics
    /// When the file system cannot be mounted again.
    pub fn power_cut(&mut self, survivors_seed: Option<u64>, stop: impl FnOnce()) -> Duration {
        match survivors_seed {
            Some(seed) => self.control(&format!("cut-half {seed}")),
            None => self.control("cut"),
        }
        stop();
        self.detach();
        self.control("revive");
        let started = Instant::now();
        self.loop_device = run(
            "losetup",
            &["-f", "--show", path_str(&self.fuse.join("disk"))],
        )
        .expect("losetup")
        .trim()
        .to_owned();
        // -p repairs what is safe to repair; exit 1 means it did.
        let fsck = Command::new("e2fsck")
            .args(["-p", &self.loop_device])
            .output()
            .expect("e2fsck");
        assert!(
            matches!(fsck.status.code(), Some(0 | 1)),
            "e2fsck after the power cut: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        self.mount_fs();
        started.elapsed()
    }

    /// Unmounts the file system (what it cannot write is lost) and frees the loop device.
    fn detach(&self) {
        let mounted = run("umount", &[path_str(&self.mount)]);
        if mounted.is_err() {
            let _ = run("umount", &["-l", path_str(&self.mount)]);
        }
        let _ = run("losetup", &["-d", &self.loop_device]);
    }

    /// The byte ranges of the disk that hold `file`'s allocated blocks (`filefrag`).
    pub fn extents(&self, file: &Path) -> Vec<std::ops::Range<u64>> {
        let listing = run("filefrag", &["-e", "-b4096", path_str(file)]).expect("filefrag");
        listing
            .lines()
            .filter_map(|line| {
                // "   0:        0..       3:      34816..     34819:      4:   ..."
                let fields: Vec<&str> = line.split(':').map(str::trim).collect();
                let (first, last) = fields.get(2)?.split_once("..")?;
                let first: u64 = first.trim().parse().ok()?;
                let last: u64 = last.trim().parse().ok()?;
                Some(first * 4096..(last + 1) * 4096)
            })
            .collect()
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        self.detach();
        let _ = run("umount", &[path_str(&self.fuse)]);
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
