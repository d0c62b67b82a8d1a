//! The data dir: metadata, the chunk store and the manifests, and the operations that
//! touch more than one of them (import here, export in [`crate::export`]).
//!
//! Layout: `meta.sqlite` (WAL; or a PostgreSQL database, `--meta`), `store/` (chunks),
//! `manifests/DISK/VERSION.manifest` (the last two in a bucket with `--store s3://`, see
//! [`crate::manifests`]).
//! Manifests are written to a temp file, fsynced and renamed before the version row that
//! names them is committed, so a crash never leaves a version without its manifest.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hotate_engine::store::{ObjectStore, Objects};
use hotate_engine::{
    BlockSize, ChunkStore, Format, FsStore, Manifest, PipelineConfig, Progress, StoreSink, pipeline,
};

use crate::error::ServerError;
use crate::manifests::Manifests;
use crate::meta::{DiskRow, MetaError, Metadata, PostgresMeta, SqliteMeta, VersionRow, now};
use crate::s3::S3Objects;

/// Where the server keeps its data: the data dir, and the metadata database when it is
/// not the data dir's SQLite (`--meta`, `HOTATE_META`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    pub data: PathBuf,
    /// `postgres://USER@HOST:PORT/DB`.
    pub meta: Option<String>,
    /// `s3://BUCKET/PREFIX`: chunks and manifests in an S3-compatible bucket.
    pub store: Option<String>,
}

impl Places {
    /// The data dir alone: metadata in its SQLite.
    pub fn data_dir(data: &Path) -> Self {
        Self {
            data: data.to_owned(),
            meta: None,
            store: None,
        }
    }

    /// Opens the metadata database `--meta` names, creating its schema when `create`;
    /// `Ok(None)` when it holds none and `create` is false.
    ///
    /// # Errors
    /// A URL of another kind, or the database's error.
    fn open_meta(url: &str, create: bool) -> Result<Option<Box<dyn Metadata>>, MetaError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(MetaError::BadRequest(format!(
                "--meta {url:?}: only PostgreSQL is supported (postgres://USER@HOST:PORT/DB); \
                 without --meta the metadata is the data dir's SQLite"
            )));
        }
        Ok(if create {
            Some(Box::new(PostgresMeta::open(url)?))
        } else {
            PostgresMeta::open_existing(url)?.map(|meta| Box::new(meta) as Box<dyn Metadata>)
        })
    }

    /// Whether the metadata exists yet (the data dir's SQLite file, or the schema in the
    /// database `--meta` names).
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub fn meta_exists(&self) -> Result<bool, MetaError> {
        match &self.meta {
            None => Ok(self.data.join("meta.sqlite").is_file()),
            Some(url) => Ok(Self::open_meta(url, false)?.is_some()),
        }
    }

    /// Where the chunks and manifests are, as a user reads it.
    pub fn store_place(&self) -> String {
        match &self.store {
            None => self.data.join("store").display().to_string(),
            Some(url) => url.clone(),
        }
    }

    /// Where the metadata is, as a user reads it.
    pub fn meta_place(&self) -> String {
        match &self.meta {
            None => self.data.join("meta.sqlite").display().to_string(),
            Some(url) => url.parse::<postgres::Config>().map_or_else(
                |_| url.clone(),
                |c| {
                    format!(
                        "PostgreSQL database {} of {}",
                        c.get_dbname().unwrap_or("?"),
                        url.split('@').next_back().unwrap_or(url)
                    )
                },
            ),
        }
    }
}

/// An open data dir.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    meta: Arc<dyn Metadata>,
    /// The metadata is a database other processes share (PostgreSQL): the store's lock
    /// is a lease there, not a lock file.
    shared: bool,
    store: Arc<dyn ChunkStore>,
    manifests: Manifests,
}

impl DataDir {
    /// Opens (creating when needed) the data dir at `root`.
    ///
    /// # Errors
    /// When the directories, the database or the store cannot be opened.
    pub fn open(root: &Path) -> Result<Arc<Self>, ServerError> {
        Self::open_at(&Places::data_dir(root))
    }

    /// Opens (creating when needed) the data dir and the metadata `places` name.
    ///
    /// # Errors
    /// When the directories, the database or the store cannot be opened.
    pub fn open_at(places: &Places) -> Result<Arc<Self>, ServerError> {
        let root = places.data.as_path();
        if !root.exists() {
            // Only the server's user may read a new data dir.
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(root)?;
        }
        let meta: Arc<dyn Metadata> = match &places.meta {
            Some(url) => Places::open_meta(url, true)?
                .ok_or_else(|| MetaError::Damaged("the metadata schema was not created".into()))?
                .into(),
            None => {
                let meta_path = root.join("meta.sqlite");
                let new_meta = !meta_path.exists();
                let meta = SqliteMeta::open(&meta_path)?;
                #[cfg(unix)]
                if new_meta {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&meta_path, fs::Permissions::from_mode(0o600))?;
                }
                Arc::new(meta)
            }
        };
        let (store, manifests): (Arc<dyn ChunkStore>, Manifests) = match &places.store {
            Some(url) => {
                // The data dir keeps only the lock that imports and `store gc` share.
                fs::create_dir_all(root.join("store"))?;
                let objects: Arc<dyn Objects> =
                    Arc::new(S3Objects::open(url).map_err(|e| ServerError::BadRequest(e.0))?);
                (
                    Arc::new(ObjectStore::new(objects.clone())),
                    Manifests::Objects(objects),
                )
            }
            None => {
                fs::create_dir_all(root.join("manifests"))?;
                (
                    Arc::new(FsStore::open(&root.join("store"))?),
                    Manifests::Files(root.join("manifests")),
                )
            }
        };
        Ok(Arc::new(Self {
            root: root.to_owned(),
            meta,
            shared: places.meta.is_some(),
            store,
            manifests,
        }))
    }

    /// The data dir's own directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database.
    pub fn meta(&self) -> &dyn Metadata {
        self.meta.as_ref()
    }

    /// The chunk store.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// Locks the store against `store gc` while an import writes chunks that no version
    /// names yet: imports share the lock, gc takes it alone. `None` when it is taken. On
    /// the data dir's own database the lock is a file lock, which goes with the process,
    /// so a killed import never blocks gc; on a shared database it is a lease there,
    /// renewed while held, that lapses [`LEASE_SECS`] after its process dies.
    ///
    /// # Errors
    /// When the lock file cannot be opened or locked, or the database fails.
    pub fn lock_store(&self, exclusive: bool) -> Result<Option<StoreLock>, ServerError> {
        if self.shared {
            // As the shared file lock does, a shared lease waits for gc to end.
            loop {
                let lease = Lease::take(self.meta.clone(), exclusive)?;
                if lease.is_some() || exclusive {
                    return Ok(lease.map(StoreLock::Lease));
                }
                tracing::info!("waiting for `store gc` to end");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("store").join("gc.lock"))?;
        let locked = if exclusive {
            file.try_lock()
        } else {
            file.lock_shared().map_err(fs::TryLockError::Error)
        };
        match locked {
            Ok(()) => Ok(Some(StoreLock::File(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Where the manifests are kept.
    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    /// Writes a manifest durably.
    ///
    /// # Errors
    /// On an IO error (a full disk among others).
    pub fn write_manifest(
        &self,
        disk_id: &str,
        version: &str,
        manifest: &Manifest,
    ) -> Result<(), ServerError> {
        self.manifests.write(disk_id, version, manifest.encode())
    }

    /// Reads a version's manifest and checks it against the root recorded for it.
    ///
    /// # Errors
    /// When it is missing or damaged, or its root is not the version's.
    pub fn manifest(&self, version: &VersionRow) -> Result<Manifest, ServerError> {
        let bytes = self.manifests.read(&version.disk_id, &version.id)?;
        let manifest = Manifest::decode(&bytes)?;
        if manifest.root() != version.root {
            return Err(ServerError::Internal(format!(
                "manifest of version {} does not match its recorded root",
                version.id
            )));
        }
        Ok(manifest)
    }

    /// A fresh 8-hex-digit version id, unique within the disk.
    ///
    /// # Errors
    /// When the metadata cannot be read.
    pub fn new_version_id(&self, disk_id: &str) -> Result<String, ServerError> {
        loop {
            let id = format!("{:08x}", rand::random::<u32>());
            if !self.meta.version_exists(disk_id, &id)? {
                return Ok(id);
            }
        }
    }

    /// Imports a raw image as a new disk and its first version.
    ///
    /// # Errors
    /// When the name is taken, the image cannot be read, or storage fails.
    pub async fn import(
        self: &Arc<Self>,
        name: &str,
        image: &Path,
        block_size: BlockSize,
        comment: &str,
        creator: &str,
        progress: &Progress,
    ) -> Result<(DiskRow, VersionRow), ServerError> {
        if self.meta.disk(name).is_ok() {
            return Err(MetaError::DiskExists(name.to_owned()).into());
        }
        let _gc_lock = self.lock_store(false)?;
        let source = hotate_engine::source::open(image, Format::Auto, None).map_err(|e| {
            ServerError::BadImage(format!("cannot open image {}: {e}", image.display()))
        })?;
        let size = source.size();
        if size == 0 {
            return Err(ServerError::BadImage(format!(
                "image {} is empty",
                image.display()
            )));
        }
        let parent = Manifest::zeroed(size, block_size)?;
        let sink = StoreSink::new(self.store.clone());
        let outcome = pipeline::run(source, &parent, &sink, &PipelineConfig::default(), progress)
            .await
            .map_err(|e| ServerError::BadImage(format!("importing {}: {e}", image.display())))?;
        let disk = DiskRow {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            size,
            block_size: block_size.get(),
            created_at: now(),
        };
        let version = VersionRow {
            disk_id: disk.id.clone(),
            id: self.new_version_id(&disk.id)?,
            parent: None,
            comment: comment.to_owned(),
            user: creator.to_owned(),
            terminal: String::new(),
            created_at: now(),
            root: outcome.manifest.root(),
            blocks_changed: outcome.progress.blocks_changed,
            bytes_stored: outcome.progress.bytes_sent,
        };
        self.write_manifest(&disk.id, &version.id, &outcome.manifest)?;
        self.meta.create_disk(&disk, &version)?;
        Ok((disk, version))
    }
}

/// How long a store lease lasts without renewal.
pub const LEASE_SECS: i64 = 60;
/// How often a held lease is renewed.
const LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(15);

/// The store's lock, held until dropped (see [`DataDir::lock_store`]).
#[derive(Debug)]
pub enum StoreLock {
    File(File),
    Lease(Lease),
}

/// A lease on the store in a shared database, renewed by a thread of its own until
/// dropped, then given back.
#[derive(Debug)]
pub struct Lease {
    meta: Arc<dyn Metadata>,
    holder: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn take(meta: Arc<dyn Metadata>, exclusive: bool) -> Result<Option<Self>, MetaError> {
        let kind = if exclusive { "gc" } else { "import" };
        let holder = format!(
            "{kind} {}:{} {}",
            hostname(),
            std::process::id(),
            uuid::Uuid::new_v4()
        );
        if !meta.take_lease(&holder, exclusive, now() + LEASE_SECS)? {
            return Ok(None);
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let (meta, holder) = (meta.clone(), holder.clone());
            std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(LEASE_RENEWAL)
                {
                    match meta.take_lease(&holder, exclusive, now() + LEASE_SECS) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(%holder, "the store lease lapsed and was taken")
                        }
                        Err(e) => {
                            tracing::warn!(%holder, cause = %e, "could not renew the store lease")
                        }
                    }
                }
            })
        };
        Ok(Some(Self {
            meta,
            holder,
            stop: Some(stop),
            renewer: Some(renewer),
        }))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if let Err(e) = self.meta.drop_lease(&self.holder) {
            tracing::warn!(holder = %self.holder, cause = %e, "could not give the store lease back; it lapses");
        }
    }
}

/// This machine's name, for a lease's holder.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .map_or_else(|_| "?".into(), |name| name.trim().to_owned())
}
