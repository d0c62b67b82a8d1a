//! Durability on a disk that fails: the data dir lives on `hotate-faultdisk` (ext4 over a
//! FUSE file with a volatile write cache), writes fail with EIO and the power is cut, and
//! every version a terminal was told is committed survives and exports byte for byte.

use super::*;
use hotate_tests::faultdisk::FaultyDisk;
use hotate_tests::harness::admin_json;

/// A site whose data dir is on a faulty disk, and a terminal booted from its first
/// version (its state and images stay on the machine's own disk, as a terminal's would).
struct FaultySite {
    dir: tempfile::TempDir,
    pair: ImagePair,
    disk: FaultyDisk,
    site: Site,
    terminal: Terminal,
}

impl FaultySite {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = images::synthetic_pair(dir.path(), 16 << 20, 20, seed);
        let disk = FaultyDisk::create(dir.path(), 512 << 20);
        let site = Site::new(disk.root(), "win10", &pair.base, BLOCK);
        let terminal = Terminal::new(
            dir.path(),
            "PC-001",
            &site.disk_id,
            &site.first_version,
            &pair.updated,
        );
        Self {
            dir,
            pair,
            disk,
            site,
            terminal,
        }
    }

    /// Runs `update finish` until it succeeds (at most `tries` times); the version told.
    fn finish(&self, tries: usize) -> Option<String> {
        for _ in 0..tries {
            let out = self.terminal.run(&["update", "finish"]);
            if out.status.success() {
                return Some(new_version(&out));
            }
            eprintln!("finish failed (tried again):\n{}", text(&out));
        }
        None
    }

    /// Every version of the disk the data dir knows.
    fn versions(&self) -> Vec<String> {
        admin_json(&self.site.data, &["disk", "versions", "win10"])
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// `version` is listed, exports as the updated image, and the store verifies clean.
    fn assert_kept(&self, version: &str) {
        assert!(
            self.versions().iter().any(|v| v == version),
            "told version {version} was lost: {:?}",
            self.versions()
        );
        let exported = self
            .site
            .export("win10", Some(version), &self.dir.path().join("out.img"));
        same_file(&exported, &self.pair.updated);
        let verify = admin(&self.site.data, &["store", "verify", "--all"]);
        assert_ok(&verify);
    }
}

/// The raw hash of the first block the terminal changed: it is in the rows an upload
/// records for its offers, and in no other write before the commit's manifest.
fn first_changed_hash(pair: &ImagePair) -> String {
    let base = std::fs::read(&pair.base).expect("base");
    let updated = std::fs::read(&pair.updated).expect("updated");
    let block = BLOCK as usize;
    let (changed, _) = updated
        .chunks(block)
        .zip(base.chunks(block))
        .find(|(new, old)| new != old && new.iter().any(|&b| b != 0))
        .expect("a changed block");
    Hash::of(changed)
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The data loss of a failed write then a power cut: the write that fails carries the
/// upload's recorded offers; the finish fails, a re-run says `New version X`, then the
/// power fails. X must be there after the restart.
#[test]
fn a_told_version_survives_a_failed_write_and_a_power_cut() {
    if !FaultyDisk::available("a_told_version_survives_a_failed_write_and_a_power_cut") {
        return;
    }
    let mut s = FaultySite::new(281);
    let server = Server::start(&s.site.data);
    assert_ok(&s.terminal.run(&["--url", &server.url(), "update", "start"]));
    s.disk.control(&format!(
        "fail-write-with {} 1",
        first_changed_hash(&s.pair)
    ));

    let told = s
        .finish(3)
        .expect("a finish succeeds after the failed write");
    assert_eq!(s.disk.counter("failed_writes"), 1, "the write was failed");
    drop(server);
    let recovery = s.disk.power_cut(None);
    eprintln!("fsck and mount after the cut: {recovery:?}");
    s.assert_kept(&told);
}
