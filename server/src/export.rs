//! `disk export`: a version written as a raw, qcow2, VHDX or VHD image, whole or (but
//! raw) as an overlay on an earlier version's export, every chunk verified on the way.
//! The output appears (by rename) only once complete.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use hotate_engine::source::{
    BlockContent, ParentRef, QCOW2_CLUSTER, Qcow2Backing, Qcow2Cluster, VHD_BLOCK, VhdParent,
    VhdWriter, VhdxWriter,
};
use hotate_engine::{Entry, Format, ImageSource, Manifest, VhdImage, VhdxImage};

use crate::data::DataDir;
use crate::error::ServerError;
use crate::meta::VersionRow;

/// Writes the versions of a data dir as images.
#[derive(Debug, Clone, Copy)]
pub struct Exporter<'a> {
    dir: &'a DataDir,
}

impl<'a> Exporter<'a> {
    pub fn new(dir: &'a DataDir) -> Self {
        Self { dir }
    }

    /// Writes a version as a raw image (zero blocks as holes); returns the bytes written.
    ///
    /// # Errors
    /// When a chunk is missing or damaged, or the output cannot be written.
    pub fn raw(&self, version: &VersionRow, output: &Path) -> Result<u64, ServerError> {
        let manifest = self.dir.manifest(version)?;
        let size = manifest.disk_size();
        via_temp(output, |temp| {
            let file = File::create(temp)?;
            let mut out = std::io::BufWriter::with_capacity(4 << 20, &file);
            for (index, entry) in manifest.entries().iter().enumerate() {
                match entry {
                    Entry::Zero => {
                        out.flush()?;
                        // Leave a hole: the file is extended by set_len below.
                        let end = manifest.block_size().range(index as u64, size).end;
                        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(end))?;
                    }
                    Entry::Chunk(_) => {
                        out.write_all(&self.block_chunk(&manifest, index as u64)?)?
                    }
                }
            }
            out.flush()?;
            drop(out);
            file.set_len(size)?;
            file.sync_all()?;
            Ok(())
        })?;
        Ok(size)
    }

    /// Writes a version as a qcow2 image (zero blocks unallocated), or with `parent` (an
    /// earlier version and its image, raw, qcow2, VHDX or VHD) as an overlay holding only
    /// what differs from it. Returns the virtual size.
    ///
    /// # Errors
    /// When a chunk is missing or damaged, the parent image is not that version, or the
    /// output cannot be written.
    pub fn qcow2(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.dir.manifest(version)?;
        let size = manifest.disk_size();
        let block = manifest.block_size();
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
                let backing = Qcow2Backing {
                    name: child_name(image, output)?,
                    format: format.to_owned(),
                };
                (Some(base), Some(backing))
            }
        };
        let clusters = size.div_ceil(QCOW2_CLUSTER);
        let per_block = block.bytes() as u64 / QCOW2_CLUSTER;
        let mut plan = Vec::new();
        for (i, _, span) in spans_to_write(&manifest, base.as_ref(), block.bytes() as u64) {
            let kind = match span {
                Span::Zero => Qcow2Cluster::Zero,
                Span::Data => Qcow2Cluster::Data,
            };
            plan.extend((i * per_block..((i + 1) * per_block).min(clusters)).map(|c| (c, kind)));
        }
        via_temp(output, |temp| {
            let mut chunks = ChunkCursor::default();
            hotate_engine::source::write_qcow2(temp, size, backing.as_ref(), &plan, |c, out| {
                chunks
                    .read(self, &manifest, c * QCOW2_CLUSTER, out)
                    .map_err(std::io::Error::other)
            })?;
            Ok(())
        })?;
        Ok(size)
    }

    /// Writes a version as a dynamic VHDX image (zero blocks absent; 1 MiB blocks, or the
    /// disk's when larger), or with `parent` (an earlier version and its VHDX image) as a
    /// differencing image holding only the blocks that differ from it. Returns the
    /// virtual size.
    ///
    /// # Errors
    /// As [`DataDir::export_qcow2`].
    pub fn vhdx(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.dir.manifest(version)?;
        let size = manifest.disk_size();
        let vhdx_block = (manifest.block_size().bytes() as u64).max(1 << 20);
        let (base, parent_ref) = match parent {
            None => (None, None),
            Some((earlier, image)) => {
                let opened = VhdxImage::open(image, None).map_err(|e| bad_parent(image, &e))?;
                let base = self.check_image_is(&opened, image, earlier, &manifest)?;
                let name = child_name(image, output)?;
                let path = if name.contains('/') {
                    name
                } else {
                    format!(".\\{name}")
                };
                let parent_ref = ParentRef {
                    data_write_guid: opened.data_write_guid(),
                    path,
                };
                (Some(base), Some(parent_ref))
            }
        };
        via_temp(output, |temp| {
            let mut writer = VhdxWriter::create(temp, size, vhdx_block, 512, parent_ref)?;
            let mut data = vec![0u8; vhdx_block as usize];
            let mut chunks = ChunkCursor::default();
            for (vb, range, span) in spans_to_write(&manifest, base.as_ref(), vhdx_block) {
                match span {
                    Span::Zero => writer.write_block(vb, BlockContent::Zero)?,
                    Span::Data => {
                        let len = (range.end - range.start) as usize;
                        chunks.read(self, &manifest, range.start, &mut data[..len])?;
                        data[len..].fill(0);
                        writer.write_block(vb, BlockContent::Full(&data))?;
                    }
                }
            }
            writer.finish()?;
            Ok(())
        })?;
        Ok(size)
    }

    /// Writes a version as a dynamic VHD (2 MiB blocks, zero blocks absent), or with
    /// `parent` (an earlier version and its VHD) as a differencing VHD holding only the
    /// blocks that differ from it. Returns the virtual size.
    ///
    /// # Errors
    /// As [`DataDir::export_qcow2`].
    pub fn vhd(
        &self,
        version: &VersionRow,
        output: &Path,
        parent: Option<(&VersionRow, &Path)>,
    ) -> Result<u64, ServerError> {
        let manifest = self.dir.manifest(version)?;
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
        via_temp(output, |temp| {
            let mut writer = VhdWriter::create(temp, size, parent_ref)?;
            let mut data = vec![0u8; VHD_BLOCK as usize];
            let mut chunks = ChunkCursor::default();
            // A VHD block has no zero state: zeros over the parent are written as data.
            for (vb, range, _) in spans_to_write(&manifest, base.as_ref(), VHD_BLOCK) {
                let len = (range.end - range.start) as usize;
                chunks.read(self, &manifest, range.start, &mut data[..len])?;
                writer.write_block(vb, &data[..len], None)?;
            }
            writer.finish()?;
            Ok(())
        })?;
        Ok(size)
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
        let earlier_manifest = self.dir.manifest(earlier)?;
        let bad = |why: String| bad_parent(path, &why);
        if image.size() != manifest.disk_size()
            || earlier_manifest.disk_size() != manifest.disk_size()
        {
            return Err(bad("it is not the size of this disk".into()));
        }
        let differs = hotate_engine::pipeline::first_sample_differing(
            image,
            &earlier_manifest,
            PARENT_SAMPLES,
            |_| true,
        )
        .map_err(|e| bad(e.to_string()))?;
        if let Some(index) = differs {
            return Err(bad(format!(
                "block {index} differs from version {}; export that version there first",
                earlier.id
            )));
        }
        Ok(earlier_manifest)
    }

    /// The verified content of block `index`, exactly its block's length.
    fn block_chunk(&self, manifest: &Manifest, index: u64) -> Result<Bytes, ServerError> {
        let block = manifest.block_size();
        let Some(Entry::Chunk(hash)) = manifest.get(index) else {
            return Err(ServerError::Internal(format!("block {index} has no chunk")));
        };
        let chunk = self.dir.store().get(&hash, block.bytes())?;
        let range = block.range(index, manifest.disk_size());
        if chunk.len() as u64 != range.end - range.start {
            return Err(ServerError::Internal(format!(
                "chunk {hash} has {} bytes, block {index} needs {}",
                chunk.len(),
                range.end - range.start
            )));
        }
        Ok(chunk)
    }
}

/// A version's bytes by range, as its raw image holds them: what a download streams.
#[derive(Debug)]
pub struct RawReader<'a> {
    exporter: Exporter<'a>,
    manifest: Manifest,
    cursor: ChunkCursor,
}

impl<'a> RawReader<'a> {
    /// Reads `version` of the data dir.
    ///
    /// # Errors
    /// When its manifest cannot be read or is damaged.
    pub fn new(dir: &'a DataDir, version: &VersionRow) -> Result<Self, ServerError> {
        Ok(Self {
            exporter: Exporter::new(dir),
            manifest: dir.manifest(version)?,
            cursor: ChunkCursor::default(),
        })
    }

    /// The image's size.
    pub fn size(&self) -> u64 {
        self.manifest.disk_size()
    }

    /// Fills `out` with the bytes from `start` on, each chunk verified.
    ///
    /// # Errors
    /// When a chunk is missing or damaged.
    pub fn read(&mut self, start: u64, out: &mut [u8]) -> Result<(), ServerError> {
        self.cursor.read(&self.exporter, &self.manifest, start, out)
    }
}

/// Blocks of a parent image compared with its version before an export names it.
const PARENT_SAMPLES: usize = 16;

/// What an export writes for a span of a version.
enum Span {
    /// Only zero blocks, over a parent that holds something else there.
    Zero,
    Data,
}

/// The spans of `span_len` bytes an export of `manifest` writes, with their index: left
/// out are spans where every block is as in `base` (the version the export sits on),
/// and zero spans of a whole image.
fn spans_to_write<'a>(
    manifest: &'a Manifest,
    base: Option<&'a Manifest>,
    span_len: u64,
) -> impl Iterator<Item = (u64, Range<u64>, Span)> + 'a {
    let size = manifest.disk_size();
    let block = manifest.block_size().get() as u64;
    (0..size.div_ceil(span_len)).filter_map(move |index| {
        let range = index * span_len..((index + 1) * span_len).min(size);
        let blocks = range.start / block..range.end.div_ceil(block);
        if let Some(base) = base
            && blocks.clone().all(|i| manifest.get(i) == base.get(i))
        {
            return None;
        }
        if blocks.clone().all(|i| manifest.get(i) == Some(Entry::Zero)) {
            base.map(|_| (index, range, Span::Zero))
        } else {
            Some((index, range, Span::Data))
        }
    })
}

/// Runs `write` on a temp file beside `output` and renames it into place once it
/// succeeded; removes it otherwise.
fn via_temp(
    output: &Path,
    write: impl FnOnce(&Path) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let temp = output.with_extension("hotate-export.tmp");
    let result = write(&temp).and_then(|()| Ok(fs::rename(&temp, output)?));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
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

/// Reads a version's bytes by range from its chunks, keeping the last chunk for the
/// next range.
#[derive(Debug, Default)]
struct ChunkCursor {
    current: Option<(u64, Bytes)>,
}

impl ChunkCursor {
    fn read(
        &mut self,
        data: &Exporter<'_>,
        manifest: &Manifest,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), ServerError> {
        let block = manifest.block_size();
        let mut done = 0usize;
        while done < out.len() {
            let at = start + done as u64;
            let index = at / block.get() as u64;
            let range = block.range(index, manifest.disk_size());
            let within = (at - range.start) as usize;
            let take = ((range.end - at) as usize).min(out.len() - done);
            let piece = &mut out[done..done + take];
            match manifest.get(index) {
                Some(Entry::Chunk(_)) => {
                    let chunk = match &self.current {
                        Some((i, chunk)) if *i == index => chunk.clone(),
                        _ => {
                            let chunk = data.block_chunk(manifest, index)?;
                            self.current = Some((index, chunk.clone()));
                            chunk
                        }
                    };
                    piece.copy_from_slice(&chunk[within..within + take]);
                }
                _ => piece.fill(0),
            }
            done += take;
        }
        Ok(())
    }
}
