//! The state dir: `terminal.toml` (what the boot environment knows), the cached server
//! URL, the current update's record and its base version's manifest. Every write is
//! atomic (temp file, fsync, rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hotate_engine::{Hash, Manifest};
use serde::{Deserialize, Serialize};

use crate::error::UsageError;
use crate::i18n::{Lang, WriteCacheWord};

const TERMINAL: &str = "terminal.toml";
const URL: &str = "server-url";
const UPDATE: &str = "update.toml";
const BASE_MANIFEST: &str = "base.manifest";
/// The secret that lets this terminal cancel its update without a login (hex, owner-only).
const CANCEL_SECRET: &str = "cancel.secret";

/// The terminal's write-cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteCache {
    /// Writes are discarded at reboot.
    Restore,
    /// Writes persist in the differential disk.
    NonRestore,
}

impl WriteCache {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restore => "restore",
            Self::NonRestore => "non-restore",
        }
    }

    pub fn word(self) -> WriteCacheWord {
        match self {
            Self::Restore => WriteCacheWord::Restore,
            Self::NonRestore => WriteCacheWord::NonRestore,
        }
    }
}

/// `terminal.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Terminal {
    pub name: String,
    pub disk_id: String,
    pub booted_version: String,
    pub write_cache: WriteCache,
    pub image: PathBuf,
    /// `raw`, `qcow2`, `vhd`, `vhdx` or `auto` (detected by the file's magic).
    #[serde(default = "raw")]
    pub format: String,
    /// The backing image of an overlay, overriding the path the overlay names.
    #[serde(default)]
    pub parent: Option<PathBuf>,
}

impl Terminal {
    /// Opens the differential disk in its format (an overlay with its backing chain).
    ///
    /// # Errors
    /// An unknown format, or an image that cannot be opened.
    pub fn open_image(
        &self,
    ) -> Result<std::sync::Arc<dyn hotate_engine::ImageSource>, hotate_engine::source::ImageError>
    {
        hotate_engine::Format::parse(&self.format).and_then(|format| {
            hotate_engine::source::open(&self.image, format, self.parent.as_deref())
        })
    }
}

fn raw() -> String {
    "raw".to_owned()
}

/// The record of the update in progress on this terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub disk_id: String,
    pub data_write_guid: String,
    pub base_version: String,
    pub write_cache_before: WriteCache,
    /// Set once an upload has been opened.
    #[serde(default)]
    pub upload_id: Option<String>,
    /// The images below an overlay when the update started (path, size and a hash of
    /// their ends), nearest first: the finish refuses to trust a top layer whose
    /// parents changed since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers_below: Vec<String>,
    /// The transfer service as the server named it at `update start`: the finish
    /// connects to it and fetches the base manifest while it logs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_url: Option<String>,
    /// The base version's manifest root as the server named it at `update start`: the
    /// manifest kept beside this record is used only if it has this root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_root: Option<String>,
}

/// The client's state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// The language of its error messages.
    lang: Lang,
}

impl StateDir {
    /// `--state-dir`, else `HOTATE_STATE_DIR`, else the platform default; errors in `lang`.
    pub fn locate(flag: Option<PathBuf>, lang: Lang) -> Self {
        let dir = flag
            .or_else(|| std::env::var_os("HOTATE_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(default_dir);
        Self { dir, lang }
    }

    fn malformed(&self, path: &Path, cause: impl std::fmt::Display) -> UsageError {
        UsageError(
            self.lang
                .file_malformed(&path.display().to_string(), &cause.to_string()),
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where `terminal.toml` is, for messages.
    pub fn terminal_toml(&self) -> PathBuf {
        self.file(TERMINAL)
    }

    /// Reads `terminal.toml`.
    ///
    /// # Errors
    /// A usage error when it is missing or malformed.
    pub fn terminal(&self) -> anyhow::Result<Terminal> {
        let path = self.file(TERMINAL);
        let text = fs::read_to_string(&path).map_err(|e| {
            UsageError(
                self.lang
                    .terminal_unreadable(&path.display().to_string(), &e.to_string()),
            )
        })?;
        let terminal: Terminal = toml::from_str(&text).map_err(|e| self.malformed(&path, e))?;
        hotate_engine::Format::parse(&terminal.format).map_err(|e| self.malformed(&path, e))?;
        Ok(terminal)
    }

    /// Sets `write_cache` in `terminal.toml`, keeping every other key.
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn set_write_cache(&self, mode: WriteCache) -> anyhow::Result<()> {
        let path = self.file(TERMINAL);
        let text = fs::read_to_string(&path)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| self.malformed(&path, e))?;
        table.insert(
            "write_cache".into(),
            toml::Value::String(mode.as_str().into()),
        );
        write_atomic(&path, toml::to_string(&table)?.as_bytes())
    }

    pub fn url(&self) -> Option<String> {
        fs::read_to_string(self.file(URL))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// # Errors
    /// When the file cannot be written.
    pub fn save_url(&self, url: &str) -> anyhow::Result<()> {
        write_atomic(&self.file(URL), format!("{url}\n").as_bytes())
    }

    /// Forgets the cached URL; returns whether there was one.
    ///
    /// # Errors
    /// When the file exists but cannot be removed.
    pub fn clear_url(&self) -> anyhow::Result<bool> {
        remove_if_exists(&self.file(URL))
    }

    /// # Errors
    /// When the record exists but cannot be read.
    pub fn update(&self) -> anyhow::Result<Option<UpdateRecord>> {
        let path = self.file(UPDATE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                toml::from_str(&text).map_err(|e| self.malformed(&path, e))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// # Errors
    /// When the record cannot be written.
    pub fn save_update(&self, record: &UpdateRecord) -> anyhow::Result<()> {
        write_atomic(&self.file(UPDATE), toml::to_string(record)?.as_bytes())
    }

    /// Clears the update's record and its base manifest.
    ///
    /// # Errors
    /// When they exist but cannot be removed.
    pub fn clear_update(&self) -> anyhow::Result<()> {
        self.forget_base_manifest()?;
        remove_if_exists(&self.file(CANCEL_SECRET))?;
        remove_if_exists(&self.file(UPDATE)).map(|_| ())
    }

    /// Keeps the secret that lets this terminal cancel its update without a login,
    /// readable by its owner only. It is never printed or logged.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_cancel_secret(&self, secret: &[u8]) -> anyhow::Result<()> {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&self.file(CANCEL_SECRET), hex.as_bytes())
    }

    /// The kept cancel secret, if any.
    pub fn cancel_secret(&self) -> Option<Vec<u8>> {
        let hex = fs::read_to_string(self.file(CANCEL_SECRET)).ok()?;
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .filter(|bytes| !bytes.is_empty())
    }

    /// Keeps the base version's manifest for the finish, which can then read the image
    /// before it logs in.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_base_manifest(&self, manifest: &Manifest) -> anyhow::Result<()> {
        write_atomic(&self.file(BASE_MANIFEST), &manifest.encode())
    }

    /// The kept base manifest, if there is one with the root `record` names; anything
    /// else (none kept, unreadable, damaged, another root) is `None`: the finish then
    /// downloads it.
    pub fn base_manifest(&self, record: &UpdateRecord) -> Option<Manifest> {
        let root: Hash = record.base_root.as_deref()?.parse().ok()?;
        let bytes = fs::read(self.file(BASE_MANIFEST)).ok()?;
        Manifest::decode(&bytes)
            .inspect_err(|e| tracing::debug!(cause = %e, "the kept base manifest is damaged"))
            .ok()
            .filter(|manifest| manifest.root() == root)
    }

    /// # Errors
    /// When the kept base manifest exists but cannot be removed.
    pub fn forget_base_manifest(&self) -> anyhow::Result<()> {
        remove_if_exists(&self.file(BASE_MANIFEST)).map(|_| ())
    }
}

#[cfg(windows)]
fn default_dir() -> PathBuf {
    let base = std::env::var_os("ProgramData")
        .map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from);
    base.join("Hotate").join("Client")
}

#[cfg(not(windows))]
fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/hotate-client")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, false)
}

/// As [`write_atomic`], the file readable and writable by its owner only (Unix; on
/// Windows the state dir's own permissions apply).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, true)
}

/// Writes a temp file, makes it durable and renames it over `path`.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        // A fresh file, so that a private one never had wider permissions.
        let _ = fs::remove_file(&temp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_cache_switch_keeps_other_keys_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::locate(Some(dir.path().to_owned()), Lang::En);
        assert!(state.terminal().is_err());
        fs::write(
            dir.path().join(TERMINAL),
            "name = \"PC-001\"\ndisk_id = \"d\"\nbooted_version = \"c3066470\"\nwrite_cache = \"restore\"\nimage = \"/x.img\"\nformat = \"raw\"\nextra = 5\n",
        )
        .unwrap();
        assert_eq!(state.terminal().unwrap().write_cache, WriteCache::Restore);
        state.set_write_cache(WriteCache::NonRestore).unwrap();
        let t = state.terminal().unwrap();
        assert_eq!(t.write_cache, WriteCache::NonRestore);
        assert_eq!(t.name, "PC-001");
        assert!(
            fs::read_to_string(dir.path().join(TERMINAL))
                .unwrap()
                .contains("extra = 5")
        );

        assert_eq!(state.update().unwrap(), None);
        let record = UpdateRecord {
            disk_id: "d".into(),
            data_write_guid: "g".into(),
            base_version: "c3066470".into(),
            write_cache_before: WriteCache::Restore,
            upload_id: None,
            layers_below: vec!["/images/v1.vhdx (4096 bytes, ends 00ff)".into()],
            transfer_url: Some("https://srv:30811".into()),
            base_root: None,
        };
        state.save_update(&record).unwrap();
        assert_eq!(state.update().unwrap(), Some(record));
        state.clear_update().unwrap();
        assert_eq!(state.update().unwrap(), None);

        assert_eq!(state.url(), None);
        state.save_url("http://127.0.0.1:1").unwrap();
        assert_eq!(state.url().as_deref(), Some("http://127.0.0.1:1"));
        assert!(state.clear_url().unwrap());
        assert!(!state.clear_url().unwrap());
    }

    #[test]
    fn the_kept_base_manifest_is_used_only_with_the_recorded_root() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::locate(Some(dir.path().to_owned()), Lang::En);
        let block = hotate_engine::BlockSize::new(1 << 20).unwrap();
        let mut manifest = Manifest::zeroed(8 << 20, block).unwrap();
        manifest
            .set(3, hotate_engine::Entry::Chunk(Hash::of(b"block 3")))
            .unwrap();
        let mut record = UpdateRecord {
            disk_id: "d".into(),
            data_write_guid: "g".into(),
            base_version: "c3066470".into(),
            write_cache_before: WriteCache::Restore,
            upload_id: None,
            layers_below: Vec::new(),
            transfer_url: None,
            base_root: Some(manifest.root().to_string()),
        };
        assert_eq!(state.base_manifest(&record), None, "none kept yet");
        state.save_base_manifest(&manifest).unwrap();
        state.save_update(&record).unwrap();
        assert_eq!(state.update().unwrap(), Some(record.clone()));
        assert_eq!(state.base_manifest(&record), Some(manifest.clone()));

        // Another root, no root, or a damaged file: not used.
        let other = Manifest::zeroed(8 << 20, block).unwrap();
        record.base_root = Some(other.root().to_string());
        assert_eq!(state.base_manifest(&record), None);
        record.base_root = None;
        assert_eq!(state.base_manifest(&record), None);
        record.base_root = Some(manifest.root().to_string());
        let path = dir.path().join(BASE_MANIFEST);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(state.base_manifest(&record), None);

        // Clearing the update forgets it.
        state.save_base_manifest(&manifest).unwrap();
        state.clear_update().unwrap();
        assert!(!path.exists());
        assert_eq!(state.update().unwrap(), None);
    }
}
