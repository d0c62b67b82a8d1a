//! The data dir: metadata, the chunk store and the manifests, and the operations that
//! touch more than one of them (import, export, commit).
//!
//! Layout: `meta.sqlite` (WAL), `store/` (chunks), `manifests/DISK/VERSION.manifest`.
//! Manifests are written to a temp file, fsynced and renamed before the version row that
//! names them is committed, so a crash never leaves a version without its manifest.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hotate_engine::source::{
    BlockContent, ParentRef, QCOW2_CLUSTER, Qcow2Cluster as Cluster, VHD_BLOCK, VhdParent,
    VhdWriter, VhdxWriter,
};
use hotate_engine::{
    BlockSize, ChunkStore, Entry, Format, FsStore, ImageSource, Manifest, PipelineConfig, Progress,
    StoreSink, VhdImage, VhdxImage, pipeline,
};

use crate::error::ServerError;
use crate::meta::{DiskRow, Meta, VersionRow, now};

/// An open data dir.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    pub meta: Meta,
    pub store: Arc<FsStore>,
}

impl DataDir {
    /// Opens (creating when needed) the data dir at `root`.
    ///
    /// # Errors
    /// When the directories, the database or the store cannot be opened.
    pub fn open(root: &Path) -> Result<Arc<Self>, ServerError> {
        if !root.exists() {
            // Only the server's user may read a new data dir.
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(root)?;
        }
        fs::create_dir_all(root.join("manifests"))?;
        let meta_path = root.join("meta.sqlite");
        let new_meta = !meta_path.exists();
        let meta = Meta::open(&meta_path)?;
        #[cfg(unix)]
        if new_meta {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&meta_path, fs::Permissions::from_mode(0o600))?;
        }
        let store = Arc::new(FsStore::open(&root.join("store"))?);
        Ok(Arc::new(Self {
            root: root.to_owned(),
            meta,
            store,
        }))
    }

    /// Locks the store against `store gc` while an import writes chunks that no version
    /// names yet: imports share the lock, gc takes it alone. The lock goes with the
    /// process, so a killed import never blocks gc.
    ///
    /// # Errors
    /// When the lock file cannot be opened or locked.
    pub fn lock_store(&self, exclusive: bool) -> Result<Option<File>, ServerError> {
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
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// The directory of a disk's manifests.
    pub fn manifest_dir(&self, disk_id: &str) -> PathBuf {
        self.root.join("manifests").join(disk_id)
    }

    /// The directory holding every disk's manifest directory.
    pub fn manifests_root(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn manifest_path(&self, disk_id: &str, version: &str) -> PathBuf {
        self.root
            .join("manifests")
            .join(disk_id)
            .join(format!("{version}.manifest"))
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
        let path = self.manifest_path(disk_id, version);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let temp = path.with_extension("manifest.tmp");
        let mut file = File::create(&temp)?;
        file.write_all(&manifest.encode())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Reads a version's manifest and checks it against the root recorded for it.
    ///
    /// # Errors
    /// When the file is missing or damaged, or its root is not the version's.
    pub fn manifest(&self, version: &VersionRow) -> Result<Manifest, ServerError> {
        let bytes = fs::read(self.manifest_path(&version.disk_id, &version.id))?;
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
        progress: &Progress,
    ) -> Result<(DiskRow, VersionRow), ServerError> {
        if self.meta.disk(name).is_ok() {
            return Err(ServerError::DiskExists(name.to_owned()));
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
            user: "admin".to_owned(),
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

    /// Writes a version as a dynamic VHDX image (zero blocks absent), or with `parent`
    /// (an earlier version and its VHDX image) as a differencing image holding only the
    /// blocks that differ from it; every chunk verified. Returns the virtual size.
    ///
    /// # Errors
    /// When a chunk is missing or damaged, the parent image is not that version, or the
    /// output cannot be written. The output is only created (by rename) once complete.
    pub fn export_vhdx(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.manifest(version)?;
        let size = manifest.disk_size();
        let disk_block = manifest.block_size().bytes() as u64;
        let vhdx_block = disk_block.max(1 << 20);
        let per = vhdx_block / disk_block;
        let base = match parent {
            None => None,
            Some((earlier, image)) => Some(self.vhdx_parent(earlier, image, output, &manifest)?),
        };
        let temp = output.with_extension("hotate-export.tmp");
        let result = (|| {
            let parent_ref = base.as_ref().map(|(_, parent)| parent.clone());
            let mut writer = VhdxWriter::create(&temp, size, vhdx_block, 512, parent_ref)?;
            let mut data = vec![0u8; vhdx_block as usize];
            for vb in 0..size.div_ceil(vhdx_block) {
                let entries = vb * per..((vb + 1) * per).min(manifest.len() as u64);
                if let Some((earlier, _)) = &base
                    && entries.clone().all(|i| manifest.get(i) == earlier.get(i))
                {
                    continue; // the parent's
                }
                if entries
                    .clone()
                    .all(|i| manifest.get(i) == Some(Entry::Zero))
                {
                    if base.is_some() {
                        writer.write_block(vb, BlockContent::Zero)?;
                    }
                    continue;
                }
                data.fill(0);
                for i in entries.clone() {
                    if let Some(Entry::Chunk(hash)) = manifest.get(i) {
                        let range = manifest.block_size().range(i, size);
                        let chunk = self.store.get(&hash, disk_block as usize)?;
                        if chunk.len() as u64 != range.end - range.start {
                            return Err(ServerError::Internal(format!(
                                "chunk {hash} has {} bytes, block {i} needs {}",
                                chunk.len(),
                                range.end - range.start
                            )));
                        }
                        let at = ((i - vb * per) * disk_block) as usize;
                        data[at..at + chunk.len()].copy_from_slice(&chunk);
                    }
                }
                writer.write_block(vb, BlockContent::Full(&data))?;
            }
            writer.finish()?;
            fs::rename(&temp, output)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// The manifest of `earlier` and how a child names its VHDX image, once sample blocks
    /// of the image are found to be that version's.
    fn vhdx_parent(
        &self,
        earlier: &VersionRow,
        image: &Path,
        output: &Path,
        manifest: &Manifest,
    ) -> Result<(Manifest, ParentRef), ServerError> {
        let parent = VhdxImage::open(image, None).map_err(|e| bad_parent(image, &e))?;
        let earlier_manifest = self.check_image_is(&parent, image, earlier, manifest)?;
        let name = child_name(image, output)?;
        let path = if name.contains('/') {
            name
        } else {
            format!(".\\{name}")
        };
        Ok((
            earlier_manifest,
            ParentRef {
                data_write_guid: parent.data_write_guid(),
                path,
            },
        ))
    }

    /// Checks on sample blocks that `image` holds version `earlier` (of a disk shaped like
    /// `manifest`); returns that version's manifest.
    fn check_image_is(
        &self,
        image: &dyn ImageSource,
        path: &Path,
        earlier: &VersionRow,
        manifest: &Manifest,
    ) -> Result<Manifest, ServerError> {
        let earlier_manifest = self.manifest(earlier)?;
        let bad =
            |why: String| ServerError::BadImage(format!("parent image {}: {why}", path.display()));
        if image.size() != manifest.disk_size()
            || earlier_manifest.disk_size() != manifest.disk_size()
        {
            return Err(bad("it is not the size of this disk".into()));
        }
        let block = earlier_manifest.block_size();
        let count = earlier_manifest.len() as u64;
        let mut buf = hotate_engine::direct_io::AlignedBuf::zeroed(block.bytes());
        for index in (0..count)
            .step_by((count / 16).max(1) as usize)
            .chain([count - 1])
        {
            let range = block.range(index, manifest.disk_size());
            let len = (range.end - range.start) as usize;
            image
                .read_at(range.start, len, &mut buf)
                .map_err(|e| bad(e.to_string()))?;
            let entry = if hotate_engine::block::is_zero(&buf[..len]) {
                Entry::Zero
            } else {
                Entry::Chunk(hotate_engine::Hash::of(&buf[..len]))
            };
            if earlier_manifest.get(index) != Some(entry) {
                return Err(bad(format!(
                    "block {index} differs from version {}; export that version there first",
                    earlier.id
                )));
            }
        }
        Ok(earlier_manifest)
    }

    /// Writes a version as a qcow2 image (zero blocks unallocated), or with `parent` (an
    /// earlier version and its image, raw, qcow2 or VHDX) as an overlay holding only what
    /// differs from it; every chunk verified. Returns the virtual size.
    ///
    /// # Errors
    /// As [`DataDir::export_vhdx`].
    pub fn export_qcow2(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.manifest(version)?;
        let size = manifest.disk_size();
        let block = manifest.block_size();
        let per_block = block.bytes() as u64 / QCOW2_CLUSTER;
        let (base, backing) = match parent {
            None => (None, None),
            Some((earlier, image)) => {
                let format = Format::detect(image)?;
                let opened = hotate_engine::source::open(image, format, None)
                    .map_err(|e| bad_parent(image, &e))?;
                let base = self.check_image_is(opened.as_ref(), image, earlier, &manifest)?;
                let format = match format {
                    Format::Qcow2 => "qcow2",
                    Format::Vhdx => "vhdx",
                    Format::Vhd => "vpc",
                    Format::Raw | Format::Auto => "raw",
                };
                let backing = hotate_engine::source::Qcow2Backing {
                    name: child_name(image, output)?,
                    format: format.to_owned(),
                };
                (Some(base), Some(backing))
            }
        };
        let mut plan = Vec::new();
        for (i, entry) in manifest.entries().iter().enumerate() {
            let i = i as u64;
            if base.as_ref().is_some_and(|b| b.get(i) == Some(*entry)) {
                continue; // the backing image's
            }
            let kind = match entry {
                Entry::Chunk(_) => Cluster::Data,
                Entry::Zero if base.is_some() => Cluster::Zero,
                Entry::Zero => continue,
            };
            let clusters = size.div_ceil(QCOW2_CLUSTER);
            plan.extend((i * per_block..((i + 1) * per_block).min(clusters)).map(|c| (c, kind)));
        }
        let temp = output.with_extension("hotate-export.tmp");
        let mut current: Option<(u64, bytes::Bytes)> = None;
        let result = (|| {
            hotate_engine::source::write_qcow2(&temp, size, backing.as_ref(), &plan, |c, out| {
                let offset = c * QCOW2_CLUSTER;
                let index = offset / block.bytes() as u64;
                if current.as_ref().is_none_or(|(i, _)| *i != index) {
                    let Some(Entry::Chunk(hash)) = manifest.get(index) else {
                        return Err(std::io::Error::other("a data cluster of a zero block"));
                    };
                    let chunk = self
                        .store
                        .get(&hash, block.bytes())
                        .map_err(std::io::Error::other)?;
                    let range = block.range(index, size);
                    if chunk.len() as u64 != range.end - range.start {
                        return Err(std::io::Error::other(format!(
                            "chunk {hash} has {} bytes, block {index} needs {}",
                            chunk.len(),
                            range.end - range.start
                        )));
                    }
                    current = Some((index, chunk));
                }
                let (_, chunk) = current
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("no chunk"))?;
                let within = (offset - index * block.bytes() as u64) as usize;
                out.copy_from_slice(&chunk[within..within + out.len()]);
                Ok(())
            })?;
            fs::rename(&temp, output)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Writes a version as a dynamic VHD (2 MiB blocks, zero blocks absent), or with
    /// `parent` (an earlier version and its VHD) as a differencing VHD holding only the
    /// blocks that differ from it; every chunk verified. Returns the virtual size.
    ///
    /// # Errors
    /// As [`DataDir::export_vhdx`].
    pub fn export_vhd(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.manifest(version)?;
        let size = manifest.disk_size();
        let (base, parent_ref) = match parent {
            None => (None, None),
            Some((earlier, image)) => {
                let opened = VhdImage::open(image, None).map_err(|e| bad_parent(image, &e))?;
                let base = self.check_image_is(&opened, image, earlier, &manifest)?;
                let parent_ref = VhdParent {
                    unique_id: opened.unique_id(),
                    name: image
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    absolute: fs::canonicalize(image)?.display().to_string(),
                };
                (Some(base), Some(parent_ref))
            }
        };
        let temp = output.with_extension("hotate-export.tmp");
        let result = (|| {
            let mut writer = VhdWriter::create(&temp, size, parent_ref)?;
            let mut data = vec![0u8; VHD_BLOCK as usize];
            let mut chunks = ChunkCursor::default();
            for vb in 0..size.div_ceil(VHD_BLOCK) {
                let start = vb * VHD_BLOCK;
                let end = (start + VHD_BLOCK).min(size);
                let blocks = manifest.block_size();
                let entries = start / blocks.get() as u64..end.div_ceil(blocks.get() as u64);
                if let Some(earlier) = &base
                    && entries.clone().all(|i| manifest.get(i) == earlier.get(i))
                {
                    continue; // the parent's
                }
                let zero = entries
                    .clone()
                    .all(|i| manifest.get(i) == Some(Entry::Zero));
                if zero && base.is_none() {
                    continue;
                }
                let len = (end - start) as usize;
                chunks.read(self, &manifest, start, &mut data[..len])?;
                writer.write_block(vb, &data[..len], None)?;
            }
            writer.finish()?;
            fs::rename(&temp, output)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Writes a version as a raw image, every chunk verified; returns the bytes written.
    ///
    /// # Errors
    /// When a chunk is missing or damaged, or the output cannot be written. The output
    /// file is only created (by rename) once the whole image is written.
    pub fn export(&self, version: &VersionRow, output: &Path) -> Result<u64, ServerError> {
        let manifest = self.manifest(version)?;
        let temp = output.with_extension("hotate-export.tmp");
        let result = (|| {
            let file = File::create(&temp)?;
            let mut out = std::io::BufWriter::with_capacity(4 << 20, &file);
            let block = manifest.block_size();
            for (index, entry) in manifest.entries().iter().enumerate() {
                let range = block.range(index as u64, manifest.disk_size());
                let len = (range.end - range.start) as usize;
                match entry {
                    Entry::Zero => {
                        out.flush()?;
                        // Leave a hole: the file is extended by set_len below.
                        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(range.end))?;
                    }
                    Entry::Chunk(hash) => {
                        let data = self.store.get(hash, block.bytes())?;
                        if data.len() != len {
                            return Err(ServerError::Internal(format!(
                                "chunk {hash} has {} bytes, block {index} needs {len}",
                                data.len()
                            )));
                        }
                        out.write_all(&data)?;
                    }
                }
            }
            out.flush()?;
            drop(out);
            file.set_len(manifest.disk_size())?;
            file.sync_all()?;
            fs::rename(&temp, output)?;
            Ok(manifest.disk_size())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// An error about the parent image given to an export.
fn bad_parent(image: &Path, cause: &dyn std::fmt::Display) -> ServerError {
    ServerError::BadImage(format!("parent image {}: {cause}", image.display()))
}

/// How an image written at `output` names `parent`: its file name when both share a
/// directory, else its absolute path.
fn child_name(parent: &Path, output: &Path) -> Result<String, ServerError> {
    let dir_of = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()
    };
    if dir_of(parent).is_some() && dir_of(parent) == dir_of(output) {
        Ok(parent
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default())
    } else {
        Ok(fs::canonicalize(parent)?.display().to_string())
    }
}

/// Reads a version's bytes by range from its chunks, each verified, keeping the last
/// chunk for the next range.
#[derive(Debug, Default)]
struct ChunkCursor {
    current: Option<(u64, bytes::Bytes)>,
}

impl ChunkCursor {
    fn read(
        &mut self,
        data: &DataDir,
        manifest: &Manifest,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), ServerError> {
        let block = manifest.block_size();
        let bytes = block.get() as u64;
        let mut done = 0usize;
        while done < out.len() {
            let at = start + done as u64;
            let index = at / bytes;
            let within = (at % bytes) as usize;
            let range = block.range(index, manifest.disk_size());
            let take = ((range.end - at) as usize).min(out.len() - done);
            match manifest.get(index) {
                Some(Entry::Chunk(hash)) => {
                    if self.current.as_ref().is_none_or(|(i, _)| *i != index) {
                        let chunk = data.store.get(&hash, block.bytes())?;
                        if chunk.len() as u64 != range.end - range.start {
                            return Err(ServerError::Internal(format!(
                                "chunk {hash} has {} bytes, block {index} needs {}",
                                chunk.len(),
                                range.end - range.start
                            )));
                        }
                        self.current = Some((index, chunk));
                    }
                    if let Some((_, chunk)) = &self.current {
                        out[done..done + take].copy_from_slice(&chunk[within..within + take]);
                    }
                }
                _ => out[done..done + take].fill(0),
            }
            done += take;
        }
        Ok(())
    }
}
