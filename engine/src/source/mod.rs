//! Image sources: where the pipeline reads a differential disk from.
//!
//! A source knows its virtual size, which extents may hold data (the rest reads as
//! zeros and is never read), and reads at an offset, or hands out the image in place
//! when it already lives in memory. `raw` is the whole disk as a file; `qcow2` an
//! overlay read through its backing chain; `vhdx` a dynamic or differencing Hyper-V
//! disk; `vhd` a fixed or dynamic Virtual PC disk. [`open`] picks the reader by format (or by
//! the file's magic).

mod opening;
mod qcow2;
mod raw;
mod vhd;
mod vhdx;

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::direct_io::AlignedBuf;

pub use opening::ImageError;
pub use qcow2::Qcow2Image;
pub use qcow2::write::{
    Backing as Qcow2Backing, CLUSTER as QCOW2_CLUSTER, Cluster as Qcow2Cluster,
    write as write_qcow2,
};
pub use raw::RawImage;
pub use vhd::VhdImage;
pub use vhd::write::{BLOCK as VHD_BLOCK, VhdParent, VhdWriter};
pub use vhdx::VhdxImage;
pub use vhdx::write::{
    BlockContent, ParentRef, VhdxWriter, write_differencing as write_vhdx_differencing,
};

/// Images a backing chain may hold at most.
const MAX_CHAIN: usize = 16;

/// The format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vhd,
    Vhdx,
    /// Detected from the file's magic.
    Auto,
}

impl Format {
    /// Parses a `terminal.toml` or command-line format name.
    ///
    /// # Errors
    /// `UnknownFormat`, which names the known formats.
    pub fn parse(name: &str) -> Result<Self, ImageError> {
        match name {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            "vhd" | "vpc" => Ok(Self::Vhd),
            "vhdx" => Ok(Self::Vhdx),
            "auto" => Ok(Self::Auto),
            other => Err(ImageError::UnknownFormat(other.to_owned())),
        }
    }

    /// The format a file's first bytes show (raw when none matches).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn detect(path: &Path) -> io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; 8];
        let got = (len as usize).min(head.len());
        read_exact_at(&file, &mut head[..got], 0)?;
        if head[..4] == qcow2::MAGIC {
            return Ok(Self::Qcow2);
        }
        if head == vhdx::MAGIC {
            return Ok(Self::Vhdx);
        }
        // A VHD ends with its footer ("conectix"); a dynamic one also starts with a copy.
        if head == vhd::COOKIE {
            return Ok(Self::Vhd);
        }
        if len >= 512 {
            let mut tail = [0u8; 8];
            read_exact_at(&file, &mut tail, len - 512)?;
            if tail == vhd::COOKIE {
                return Ok(Self::Vhd);
            }
        }
        Ok(Self::Raw)
    }
}

/// Opens a disk image of `format`; `parent` overrides the backing path an overlay names.
///
/// # Errors
/// When the file cannot be opened, is damaged or hostile, or its format is not
/// supported.
pub fn open(
    path: &Path,
    format: Format,
    parent: Option<&Path>,
) -> Result<Arc<dyn ImageSource>, ImageError> {
    let format = match format {
        Format::Auto => Format::detect(path)?,
        given => given,
    };
    match format {
        Format::Raw | Format::Auto => Ok(Arc::new(RawImage::open(path)?)),
        Format::Qcow2 => Ok(Arc::new(Qcow2Image::open(path, parent)?)),
        Format::Vhdx => Ok(Arc::new(VhdxImage::open(path, parent)?)),
        Format::Vhd => Ok(Arc::new(VhdImage::open(path, parent)?)),
    }
}

/// The images opened so far in one backing chain: refuses loops and long chains.
#[derive(Debug, Default)]
pub(crate) struct Chain(HashSet<PathBuf>);

impl Chain {
    fn enter(&mut self, path: &Path) -> Result<(), ImageError> {
        let id = std::fs::canonicalize(path)?;
        if self.0.len() >= MAX_CHAIN {
            return Err(ImageError::ChainTooLong {
                path: path.to_owned(),
            });
        }
        if !self.0.insert(id) {
            return Err(ImageError::ChainLoops {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

/// Opens one layer of a backing chain, by its named format or its magic.
fn open_layer(
    path: &Path,
    format: Option<&str>,
    chain: &mut Chain,
) -> Result<Box<dyn ImageSource>, ImageError> {
    let format = match format {
        Some(name) => Format::parse(name)?,
        None => Format::detect(path)?,
    };
    match format {
        Format::Qcow2 => Ok(Box::new(Qcow2Image::open_in_chain(path, None, chain)?)),
        Format::Raw | Format::Auto => {
            chain.enter(path)?;
            Ok(Box::new(RawImage::open(path)?))
        }
        Format::Vhdx => Ok(Box::new(VhdxImage::open_in_chain(path, None, chain)?)),
        Format::Vhd => Ok(Box::new(VhdImage::open_in_chain(path, None, chain)?)),
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of a file (buffered, positional).
pub(crate) fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Reads `len` bytes at `offset` of a disk of `size` bytes into `buf` with `fill`,
/// refusing a read past the disk's end.
pub(crate) fn read_checked(
    path: &Path,
    size: u64,
    offset: u64,
    len: usize,
    buf: &mut AlignedBuf,
    fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    if offset.saturating_add(len as u64) > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{}: {len} bytes at {offset} run past the disk's {size} bytes",
                path.display()
            ),
        ));
    }
    if buf.capacity() < len {
        *buf = AlignedBuf::zeroed(len);
    }
    fill(&mut buf.spare_mut()[..len])?;
    buf.set_len(len);
    Ok(())
}

/// Reads `out` from `file` (`file_len` bytes long) at `at`, zeros past its end: a
/// cluster or block that runs past the end of an image file reads as zeros, as QEMU
/// reads it.
pub(crate) fn read_or_zeros(
    file: &std::fs::File,
    file_len: u64,
    out: &mut [u8],
    at: u64,
) -> io::Result<()> {
    let available = file_len.saturating_sub(at).min(out.len() as u64) as usize;
    read_exact_at(file, &mut out[..available], at)?;
    out[available..].fill(0);
    Ok(())
}

/// Appends `range` to sorted extents, merged with the last one when they touch.
pub(crate) fn push_extent(out: &mut Vec<Range<u64>>, range: Range<u64>) {
    match out.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => out.push(range),
    }
}

/// The merged byte ranges of the blocks `keep` selects among `blocks` blocks of
/// `block_size` bytes on a disk of `size` bytes.
pub(crate) fn block_ranges(
    blocks: usize,
    block_size: u64,
    size: u64,
    keep: impl Fn(usize) -> bool,
) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for index in (0..blocks).filter(|&i| keep(i)) {
        let start = index as u64 * block_size;
        push_extent(&mut out, start..(start + block_size).min(size));
    }
    out
}

/// 16 unpredictable bytes for an image's identifiers; never the same twice in a process.
pub(crate) fn random_id() -> [u8; 16] {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&now.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&call.to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id
}

/// Writes all of `buf` at `offset` of a file (positional).
pub(crate) fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            done += std::os::windows::fs::FileExt::seek_write(
                file,
                &buf[done..],
                offset + done as u64,
            )?;
        }
        Ok(())
    }
}

/// The files of an image whose top layer is `top` over the image `below`, top first.
pub(crate) fn layers_over(top: &Path, below: Option<&dyn ImageSource>) -> Vec<PathBuf> {
    let below = below.map(ImageSource::layers).unwrap_or_default();
    std::iter::once(top.to_owned()).chain(below).collect()
}

/// Bytes hashed at each end of a layer file by [`layers_below`].
const LAYER_END: u64 = 1 << 20;

/// What identifies one file below an overlay's top layer: where it is, its size, and a
/// hash of its first and last MiB (which hold a VHDX's DataWriteGuid, a qcow2's header
/// and its newest tables). Recorded when an update starts, compared when it finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub ends: String,
}

impl std::fmt::Display for LayerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, ends {})",
            self.path.display(),
            self.size,
            self.ends
        )
    }
}

/// The identities of the files below `image`'s top layer, nearest first; empty when
/// the image is one whole layer.
///
/// # Errors
/// When a layer file cannot be read.
pub fn layers_below(image: &dyn ImageSource) -> io::Result<Vec<LayerIdentity>> {
    image
        .layers()
        .iter()
        .skip(1)
        .map(|path| {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            let mut hasher = blake3::Hasher::new();
            let head = size.min(LAYER_END);
            let tail_at = size.saturating_sub(LAYER_END).max(head);
            for (at, len) in [(0, head), (tail_at, size - tail_at)] {
                let mut buf = vec![0u8; len as usize];
                read_exact_at(&file, &mut buf, at)?;
                hasher.update(&buf);
            }
            Ok(LayerIdentity {
                path: std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
                size,
                ends: hasher.finalize().to_hex()[..32].to_owned(),
            })
        })
        .collect()
}

/// Reads `out.len()` bytes at any `offset` of a source whose reads must be aligned:
/// reads the aligned span around it and copies; zeros beyond the source's end.
pub(crate) fn read_through(
    source: &dyn ImageSource,
    offset: u64,
    out: &mut [u8],
) -> io::Result<()> {
    let align = crate::direct_io::ALIGN as u64;
    let size = source.size();
    let end = (offset + out.len() as u64).min(size);
    if offset >= end {
        out.fill(0);
        return Ok(());
    }
    let start = offset / align * align;
    let span_end = (end.div_ceil(align) * align).min(size);
    let mut buf = AlignedBuf::zeroed((span_end - start) as usize);
    source.read_at(start, (span_end - start) as usize, &mut buf)?;
    let from = (offset - start) as usize;
    let n = (end - offset) as usize;
    out[..n].copy_from_slice(&buf[from..from + n]);
    out[n..].fill(0);
    Ok(())
}

/// A block's sector bitmap, as much of it as one read covers: bit `i` says whether
/// sector `first + i` of the block is the image's own (else its parent's).
pub(crate) struct SectorBits {
    bytes: Vec<u8>,
    /// The block's sector that bit 0 of `bytes[0]` stands for.
    first: u64,
    /// VHD numbers a byte's bits from the most significant; VHDX from the least.
    msb_first: bool,
}

impl SectorBits {
    /// Reads the bits for sectors `sectors` of a bitmap that starts at `bitmap_at` of
    /// `file`, whose first bit is sector `base_bit` (several VHDX blocks share a bitmap).
    pub(crate) fn read(
        file: &std::fs::File,
        bitmap_at: u64,
        base_bit: u64,
        sectors: Range<u64>,
        msb_first: bool,
    ) -> io::Result<Self> {
        let first_byte = (base_bit + sectors.start) / 8;
        let end_byte = (base_bit + sectors.end).div_ceil(8);
        let mut bytes = vec![0u8; (end_byte - first_byte) as usize];
        read_exact_at(file, &mut bytes, bitmap_at + first_byte)?;
        Ok(Self {
            bytes,
            first: (first_byte * 8).wrapping_sub(base_bit),
            msb_first,
        })
    }

    fn is_own(&self, sector: u64) -> bool {
        let bit = sector.wrapping_sub(self.first);
        let byte = self.bytes[(bit / 8) as usize];
        let mask = if self.msb_first {
            0x80 >> (bit % 8)
        } else {
            1 << (bit % 8)
        };
        byte & mask != 0
    }

    /// Fills `out`, bytes `within..` of the block in sectors of `sector` bytes, a run of
    /// alike sectors at a time: the image's own from `own`, the rest from `parent`
    /// (each given the part and its offset within the block).
    pub(crate) fn read_runs(
        &self,
        sector: u64,
        within: u64,
        out: &mut [u8],
        mut own: impl FnMut(&mut [u8], u64) -> io::Result<()>,
        mut parent: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let at = within + done as u64;
            let present = self.is_own(at / sector);
            let mut end = done + ((sector - at % sector) as usize).min(out.len() - done);
            while end < out.len() && self.is_own((within + end as u64) / sector) == present {
                end += (sector as usize).min(out.len() - end);
            }
            let part = &mut out[done..end];
            if present {
                own(part, at)?;
            } else {
                parent(part, at)?;
            }
            done = end;
        }
        Ok(())
    }
}

/// The sectors of `sector` bytes that bytes `within..within + len` of a block touch.
pub(crate) fn sectors_of(within: u64, len: usize, sector: u64) -> Range<u64> {
    within / sector..(within + len as u64).div_ceil(sector)
}

/// The union of two sorted extent lists, clipped to `size`.
pub(crate) fn merge_extents(a: Vec<Range<u64>>, b: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a.into_iter().chain(b).filter(|r| r.start < size).collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(all.len());
    for mut range in all {
        range.end = range.end.min(size);
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

/// A disk image the pipeline can read block by block, from several threads at once.
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// The virtual size of the disk in bytes.
    fn size(&self) -> u64;

    /// Sorted, disjoint byte ranges that may hold data; everything else is zeros.
    ///
    /// # Errors
    /// On an IO error while probing.
    fn data_extents(&self) -> io::Result<Vec<Range<u64>>>;

    /// The bytes at `offset` in place, where the image lives in memory (a raw file on
    /// tmpfs): the pipeline then uses them instead of reading copies. `None` (the
    /// default) for images on a device.
    ///
    /// # Errors
    /// As [`ImageSource::read_at`].
    fn map_at(&self, _offset: u64, _len: usize) -> Option<io::Result<Bytes>> {
        None
    }

    /// The files this image reads, top layer first (an overlay's chain of parents).
    fn layers(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// For an overlay, the byte ranges its top layer writes: everything else reads as
    /// the layers below. `None` (the default) when the image is one whole layer.
    ///
    /// # Errors
    /// On an IO error or a damaged table.
    fn top_layer_extents(&self) -> Option<io::Result<Vec<Range<u64>>>> {
        None
    }

    /// Reads exactly `len` bytes at `offset` (a multiple of the block size) into `buf`.
    ///
    /// # Errors
    /// On an IO error, or `UnexpectedEof` when the image ends early.
    fn read_at(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()>;
}

#[cfg(test)]
mod fixtures {
    //! One small image of each format, made once by qemu-img and kept (zstd-compressed)
    //! beside this file, whose content is known by hand: a 2 MiB disk whose first 64 KiB
    //! are 0x11, 4 KiB at 1 MiB 0x22, and its last sector 0x33; zeros elsewhere.
    use super::*;

    fn expected() -> Vec<u8> {
        let mut disk = vec![0u8; 2 << 20];
        disk[..64 << 10].fill(0x11);
        disk[1 << 20..(1 << 20) + 4096].fill(0x22);
        disk[(2 << 20) - 512..].fill(0x33);
        disk
    }

    #[test]
    fn the_kept_images_read_as_written_down() {
        let dir = tempfile::tempdir().unwrap();
        for (name, packed, format) in [
            (
                "disk.qcow2",
                &include_bytes!("fixtures/disk.qcow2.zst")[..],
                Format::Qcow2,
            ),
            (
                "disk.vhdx",
                &include_bytes!("fixtures/disk.vhdx.zst")[..],
                Format::Vhdx,
            ),
            (
                "disk.vhd",
                &include_bytes!("fixtures/disk.vhd.zst")[..],
                Format::Vhd,
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, zstd::decode_all(packed).unwrap()).unwrap();
            assert_eq!(Format::detect(&path).unwrap(), format, "{name}");
            let image = open(&path, Format::Auto, None).unwrap();
            assert_eq!(image.size(), 2 << 20, "{name}");
            let mut buf = AlignedBuf::zeroed(1);
            image.read_at(0, 2 << 20, &mut buf).unwrap();
            assert!(buf[..] == expected()[..], "{name} reads differently");
            let extents = image.data_extents().unwrap();
            assert!(extents.iter().any(|r| r.start == 0), "{name}: {extents:?}");
        }
    }
}

#[cfg(test)]
mod sector_bits_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every byte comes from the image or its parent as its sector's bit says, and
        /// each run of alike sectors is one read.
        #[test]
        fn runs_follow_the_bitmap(
            bitmap in proptest::collection::vec(any::<u8>(), 1..16),
            msb_first in any::<bool>(),
            sector in prop_oneof![Just(512u64), Just(4096u64)],
            base_bit in 0u64..9,
            start in 0usize..4096,
            len in 1usize..20_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bitmap");
            std::fs::write(&path, &bitmap).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let base_bit = base_bit.min(bitmap.len() as u64 * 8 - 1);
            let bits = (bitmap.len() * 8) as u64 - base_bit;
            let block = bits * sector;
            let within = start as u64 % block;
            let len = len.min((block - within) as usize);
            let is_own = |s: u64| {
                let bit = base_bit + s;
                let mask = if msb_first { 0x80 >> (bit % 8) } else { 1 << (bit % 8) };
                bitmap[(bit / 8) as usize] & mask != 0
            };
            let sectors = sectors_of(within, len, sector);
            let reader = SectorBits::read(&file, 0, base_bit, sectors.clone(), msb_first).unwrap();
            let mut out = vec![0u8; len];
            let reads = std::cell::Cell::new(0);
            reader
                .read_runs(
                    sector,
                    within,
                    &mut out,
                    |part, at| {
                        reads.set(reads.get() + 1);
                        part.iter_mut().enumerate().for_each(|(i, b)| *b = 0x80 | ((at + i as u64) / sector) as u8 & 0x7f);
                        Ok(())
                    },
                    |part, at| {
                        reads.set(reads.get() + 1);
                        part.iter_mut().enumerate().for_each(|(i, b)| *b = ((at + i as u64) / sector) as u8 & 0x7f);
                        Ok(())
                    },
                )
                .unwrap();
            for (i, &b) in out.iter().enumerate() {
                let s = (within + i as u64) / sector;
                let tag = (s as u8) & 0x7f;
                prop_assert_eq!(b, if is_own(s) { 0x80 | tag } else { tag }, "byte {}", i);
            }
            let runs = 1 + sectors.clone().zip(sectors.skip(1)).filter(|&(a, b)| is_own(a) != is_own(b)).count();
            prop_assert_eq!(reads.get(), runs);
        }
    }
}
